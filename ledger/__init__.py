"""The wire contract shared by nodes and clients: generated stubs (ledger.v1), how bytes are
signed (ledger.crypto), Merkle proofs (ledger.merkle), block hashes (ledger.block) and the
genesis file (ledger.genesis). docs/PROTOCOL.md gives every byte."""
