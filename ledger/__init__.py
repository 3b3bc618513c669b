"""The wire contract shared by nodes and clients: generated stubs (ledger.v1), how bytes are
signed (ledger.crypto), Merkle proofs (ledger.merkle) and the genesis file (ledger.genesis)."""
