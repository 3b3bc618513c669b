#!/usr/bin/env python3
"""Write the known-answer vectors in tests/vectors/ from the project's own code.

    python scripts/gen_vectors.py          write tests/vectors/*.json
    python scripts/gen_vectors.py --check  exit 1 if the committed vectors differ from what the
                                           code computes now (a changed byte on the wire)

The vectors are what a client in another language checks itself against (docs/PROTOCOL.md):
keys from fixed seeds, signing bytes and signatures in both domains (Ed25519 is deterministic),
transaction bodies and ids, Merkle roots and proofs, one block (batch hash, header, digest,
results executed by the real ledger, results root, a commit certificate and attestations) and a
whole receipt that client/verify.py accepts, with tampered copies it rejects, and read tokens
(docs/PROTOCOL.md, section 10). Every byte string
is lowercase hex. tests/ledger/test_vectors.py recomputes each value independently.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from google.protobuf.descriptor import FieldDescriptor  # noqa: E402
from google.protobuf.message import Message  # noqa: E402

from client.proofs import verify_balance_proof  # noqa: E402
from client.tx import LegSpec, Transaction, TxBuilder  # noqa: E402
from client.verify import ReceiptError, verify_receipt  # noqa: E402
from ledger import block, merkle, readtoken  # noqa: E402
from ledger import statetree as lt  # noqa: E402
from ledger.crypto import DOMAIN_CONSENSUS, DOMAIN_READ, DOMAIN_TX, SigningKey, signing_bytes, tx_id_of  # noqa: E402
from ledger.genesis import Genesis, parse_genesis  # noqa: E402
from ledger.statetree import ProofError  # noqa: E402
from ledger.v1 import api_pb2, consensus_pb2, tx_pb2  # noqa: E402
from node.api.proofs import build_balance_proof  # noqa: E402
from node.app import statetree  # noqa: E402
from node.app.ledger import Ledger  # noqa: E402
from node.pbft import journal, wire  # noqa: E402
from node.storage import blocks  # noqa: E402
from node.storage.memory import MemoryStore  # noqa: E402

VECTORS = ROOT / "tests" / "vectors"
CHAIN_ID = "vectors-chain"
BANKS = ("BANK-A", "BANK-B", "BANK-C", "BANK-D")
ASSETS = {"BANK-A": ("USD", 2), "BANK-B": ("EUR", 2), "BANK-C": ("GBP", 2), "BANK-D": ("JPY", 0)}
CLIENTS = ("alice", "bob")
HEIGHT = 1
VIEW = 0
TIMESTAMP_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
COMMITTERS = (0, 1, 2)  # 2f+1 of n = 4
ATTESTERS = (0, 3)  # f+1
RECEIPT_INDEX = 3  # the transfer


def seed_of(label: str) -> bytes:
    """A fixed Ed25519 seed per key label (SHA-256 of a readable string, so anyone can redo it)."""
    return hashlib.sha256(f"consortium-ledger/vectors/{label}".encode()).digest()


def key_labels() -> list[str]:
    return [f"{b}/node" for b in BANKS] + [f"{b}/operator" for b in BANKS] + [f"client/{c}" for c in CLIENTS]


def keys() -> dict[str, SigningKey]:
    return {label: SigningKey(seed_of(label)) for label in key_labels()}


def genesis_document(k: dict[str, SigningKey]) -> dict[str, Any]:
    members = []
    for i, bank in enumerate(BANKS):
        ccy, scale = ASSETS[bank]
        members.append(
            {
                "member_id": bank,
                "replica": i,
                "node_key": k[f"{bank}/node"].public_key.hex(),
                "operator_key": k[f"{bank}/operator"].public_key.hex(),
                "host": "127.0.0.1",
                "replica_port": 7000 + i,
                "api_port": 7100 + i,
                "assets": [{"asset": f"{ccy}.{bank}", "scale": scale}],
            }
        )
    return {"chain_id": CHAIN_ID, "f": 1, "members": members}


def _hexes(items: Sequence[bytes]) -> list[str]:
    return [x.hex() for x in items]


def _fields(msg: Message) -> dict[str, Any]:
    """The fields a message carries on the wire, for readers: proto3 leaves a field at its
    default (0, "", false, empty) out, and so does this. Bytes in hex, enums by name."""
    return {fd.name: _field_value(fd, value) for fd, value in msg.ListFields()}


def _field_value(fd: FieldDescriptor, value: Any) -> Any:
    if fd.is_repeated:
        return [_one_value(fd, v) for v in value]
    return _one_value(fd, value)


def _one_value(fd: FieldDescriptor, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _fields(value)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return bytes(value).hex()
    if fd.type == FieldDescriptor.TYPE_ENUM:
        assert fd.enum_type is not None
        return fd.enum_type.values_by_number[value].name
    return value


# --- the files -------------------------------------------------------------------------------


def keys_file(k: dict[str, SigningKey]) -> dict[str, Any]:
    return {
        "about": "Ed25519 keys from fixed seeds: seed = SHA-256('consortium-ledger/vectors/' + label)",
        "keys": [
            {"label": label, "seed": key.seed.hex(), "public_key": key.public_key.hex()}
            for label, key in k.items()
        ],
    }


def signing_file(k: dict[str, SigningKey]) -> dict[str, Any]:
    cases = [
        ("DOMAIN_TX", CHAIN_ID, b"example body", "client/alice"),
        ("DOMAIN_TX", "", b"", "client/bob"),
        ("DOMAIN_TX", "x" * 64, bytes(range(16)), "BANK-A/operator"),  # the longest chain id
        ("DOMAIN_CONSENSUS", CHAIN_ID, b"example consensus body", "BANK-B/node"),
    ]
    domains = {"DOMAIN_TX": DOMAIN_TX, "DOMAIN_CONSENSUS": DOMAIN_CONSENSUS}
    return {
        "about": "signature = Ed25519(domain || 0x00 || len(chain_id) as 1 byte || chain_id || body)",
        "domains": {name: {"ascii": d.decode(), "hex": d.hex()} for name, d in domains.items()},
        "cases": [
            {
                "domain": name,
                "chain_id": chain_id,
                "body": body.hex(),
                "key": label,
                "public_key": k[label].public_key.hex(),
                "signing_bytes": signing_bytes(domains[name], chain_id, body).hex(),
                "signature": k[label].sign(domains[name], chain_id, body).hex(),
            }
            for name, chain_id, body, label in cases
        ],
    }


def readtoken_file(k: dict[str, SigningKey], tx_id: bytes) -> dict[str, Any]:
    cases = [
        ("GetAccount", "alice", "client/alice"),
        ("GetSupply", readtoken.SCOPE_ALL, "client/bob"),
        ("GetBlocks", readtoken.SCOPE_ALL, "BANK-A/operator"),
        ("GetTransaction", readtoken.tx_scope(tx_id), "client/alice"),
    ]
    out = []
    for method, scope, label in cases:
        token = readtoken.build(
            k[label], CHAIN_ID, method, scope, TIMESTAMP_MS, readtoken.LIFETIME_MS_DEFAULT
        )
        t = readtoken.decode(token)
        out.append(
            {
                "method": method,
                "scope": scope,
                "issued_ms": t.issued_ms,
                "expires_ms": t.expires_ms,
                "key": label,
                "public_key": t.public_key.hex(),
                "body": t.body.hex(),
                "signing_bytes": signing_bytes(DOMAIN_READ, CHAIN_ID, t.body).hex(),
                "signature": t.signature.hex(),
                "token": token.hex(),
            }
        )
    return {
        "about": "read token = public_key || signature || body; body = u8(1) || u8(len(method)) || method "
        "|| u8(len(scope)) || scope || u64be(issued_ms) || u64be(expires_ms); signature = "
        "Ed25519(DOMAIN_READ || 0x00 || len(chain_id) as 1 byte || chain_id || body). Sent as gRPC "
        f"metadata {readtoken.METADATA_KEY}",
        "domain": {"ascii": DOMAIN_READ.decode(), "hex": DOMAIN_READ.hex()},
        "chain_id": CHAIN_ID,
        "cases": out,
    }


def transactions(k: dict[str, SigningKey]) -> list[tuple[str, list[str], Transaction]]:
    """The block's transactions: (name, signer labels, signed transaction). Nonces are fixed."""
    b = TxBuilder(CHAIN_ID)
    alice, bob = k["client/alice"].public_key, k["client/bob"].public_key

    def nonce(i: int) -> bytes:
        return bytes([i]) * 16

    made = [
        (
            "open alice at BANK-A",
            ["BANK-A/operator"],
            b.open_account("BANK-A", "alice", alice, nonce=nonce(1)),
        ),
        ("open bob at BANK-B", ["BANK-B/operator"], b.open_account("BANK-B", "bob", bob, nonce=nonce(2))),
        (
            "mint 1,000.00 USD.BANK-A to alice",
            ["BANK-A/operator"],
            b.mint("USD.BANK-A", "alice", 100_000, "deposit-1", nonce=nonce(3)),
        ),
        (
            "transfer 25.00 USD.BANK-A from alice to bob",
            ["client/alice"],
            b.transfer(
                [LegSpec("alice", "bob", "USD.BANK-A", 2_500)], memo="invoice 7 – café", nonce=nonce(4)
            ),
        ),
        (
            "transfer from bob signed by alice only (MISSING_SIGNATURE, not final)",
            ["client/alice"],
            b.transfer([LegSpec("bob", "alice", "USD.BANK-A", 1)], nonce=nonce(5)),
        ),
    ]
    return [(name, labels, tx.signed_by(*(k[x] for x in labels))) for name, labels, tx in made]


def transactions_file(txs: list[tuple[str, list[str], Transaction]]) -> dict[str, Any]:
    return {
        "about": "TxBody bytes as signed, tx_id = SHA-256(body), the Envelope bytes (body + signatures)",
        "transactions": [
            {
                "name": name,
                "signers": labels,
                "body_fields": _fields(tx.decoded_body()),
                "body": tx.body.hex(),
                "tx_id": tx.tx_id.hex(),
                "signatures": [{"public_key": pk.hex(), "signature": sig.hex()} for pk, sig in tx.signatures],
                "envelope": tx.envelope_bytes().hex(),
            }
            for name, labels, tx in txs
        ],
    }


def merkle_file() -> dict[str, Any]:
    cases = []
    for count in range(10):
        leaves = [f"leaf {i}".encode() for i in range(count)]
        root, proofs = merkle.all_proofs(leaves)
        cases.append(
            {
                "count": count,
                "leaves": _hexes(leaves),
                "root": root.hex(),
                "proofs": [_hexes(p) for p in proofs],
            }
        )
    return {
        "about": "leaf = SHA-256(0x00 || data), node = SHA-256(0x01 || left || right), "
        "odd last node moves up unchanged, empty root = SHA-256(''), proofs bottom first",
        "cases": cases,
    }


def _signed(key: SigningKey, replica: int, msg: consensus_pb2.ConsensusMessage) -> bytes:
    body = msg.SerializeToString()
    return wire.encode_signed(body, replica, key.sign(DOMAIN_CONSENSUS, CHAIN_ID, body))


def _signed_entry(raw: bytes) -> dict[str, Any]:
    sm = consensus_pb2.SignedMessage.FromString(raw)
    body = consensus_pb2.ConsensusMessage.FromString(sm.body)
    return {
        "signer": sm.signer,
        "body_fields": _fields(body),
        "body": sm.body.hex(),
        "signature": sm.signature.hex(),
        "signed_message": raw.hex(),
    }


def block_parts(
    genesis: Genesis, k: dict[str, SigningKey], envelopes: list[bytes]
) -> tuple[dict[str, Any], api_pb2.Receipt]:
    """block.json's content and the receipt of entry RECEIPT_INDEX."""
    header = wire.build_header(CHAIN_ID, HEIGHT, TIMESTAMP_MS, envelopes)
    digest = block.digest_of(header)
    store = MemoryStore()
    with store.write() as w:
        out = Ledger(genesis).execute(w, HEIGHT, TIMESTAMP_MS, envelopes)
    tx_ids = wire.tx_ids_of(envelopes)
    tx_root, tx_proofs = merkle.all_proofs(tx_ids)
    results_root, result_proofs = merkle.all_proofs(out.results)
    assert results_root == out.results_root
    commits = [
        _signed(
            k[f"{BANKS[r]}/node"],
            r,
            consensus_pb2.ConsensusMessage(
                commit=consensus_pb2.Commit(view=VIEW, sequence=HEIGHT, digest=digest, replica=r)
            ),
        )
        for r in COMMITTERS
    ]
    attestations = [
        _signed(
            k[f"{BANKS[r]}/node"],
            r,
            consensus_pb2.ConsensusMessage(
                attestation=consensus_pb2.Attestation(
                    sequence=HEIGHT,
                    digest=digest,
                    results_root=out.results_root,
                    state_root=out.state_root,
                    replica=r,
                )
            ),
        )
        for r in ATTESTERS
    ]
    certified = wire.encode_certified_block(header, envelopes, commits)
    content = {
        "about": "one executed block of transactions.json: batch hash, header, digest, results, "
        "results root, a commit certificate (2f+1 commits) and f+1 attestations",
        "genesis": "genesis.json",
        "height": HEIGHT,
        "view": VIEW,
        "timestamp_ms": TIMESTAMP_MS,
        "envelopes": _hexes(envelopes),
        "tx_ids": _hexes(tx_ids),
        "tx_root": tx_root.hex(),
        "tx_proofs": [_hexes(p) for p in tx_proofs],
        "batch_hash": block.batch_hash(envelopes).hex(),
        "header_fields": _fields(tx_pb2.BlockHeader.FromString(header)),
        "header": header.hex(),
        "digest": digest.hex(),
        "results": [
            {"fields": _fields(tx_pb2.TxResult.FromString(r)), "bytes": r.hex()} for r in out.results
        ],
        "results_root": out.results_root.hex(),
        "result_proofs": [_hexes(p) for p in result_proofs],
        "state_root": out.state_root.hex(),
        "commits": [_signed_entry(c) for c in commits],
        "attestations": [_signed_entry(a) for a in attestations],
        "certified_block": certified.hex(),
    }
    i = RECEIPT_INDEX
    receipt = api_pb2.Receipt(
        result=tx_pb2.TxResult.FromString(out.results[i]),
        result_bytes=out.results[i],
        header=header,
        certificate=consensus_pb2.CommitCertificate(
            commits=[consensus_pb2.SignedMessage.FromString(c) for c in commits]
        ),
        tx_proof=tx_proofs[i],
        result_proof=result_proofs[i],
        attestations=[consensus_pb2.SignedMessage.FromString(a) for a in attestations],
    )
    return content, receipt


def _tampered(receipt: api_pb2.Receipt) -> list[tuple[str, api_pb2.Receipt]]:
    """Copies of the receipt that a verifier must refuse, each with one thing wrong."""

    def copy(change: Callable[[api_pb2.Receipt], None]) -> api_pb2.Receipt:
        r = api_pb2.Receipt()
        r.CopyFrom(receipt)
        change(r)
        return r

    def drop_commit(r: api_pb2.Receipt) -> None:
        del r.certificate.commits[-1]

    def drop_attestation(r: api_pb2.Receipt) -> None:
        del r.attestations[-1]

    def bad_tx_proof(r: api_pb2.Receipt) -> None:
        r.tx_proof[0] = bytes([r.tx_proof[0][0] ^ 1]) + r.tx_proof[0][1:]

    def other_result(r: api_pb2.Receipt) -> None:  # a consistent lie: another code, same tx
        r.result.code = tx_pb2.INSUFFICIENT_FUNDS
        r.result_bytes = r.result.SerializeToString(deterministic=True)

    def commit_signature(r: api_pb2.Receipt) -> None:
        sig = r.certificate.commits[0].signature
        r.certificate.commits[0].signature = bytes([sig[0] ^ 1]) + sig[1:]

    return [
        ("a commit removed: 2 of the 3 needed", copy(drop_commit)),
        ("an attestation removed: 1 of the 2 needed", copy(drop_attestation)),
        ("a bit flipped in the tx proof", copy(bad_tx_proof)),
        ("another result code, re-encoded consistently", copy(other_result)),
        ("a bit flipped in a commit signature", copy(commit_signature)),
    ]


def receipt_file(genesis: Genesis, tx_id: bytes, receipt: api_pb2.Receipt) -> dict[str, Any]:
    verified = verify_receipt(genesis, receipt, tx_id)
    rejected = []
    for what, bad in _tampered(receipt):
        try:
            verify_receipt(genesis, bad, tx_id)
        except ReceiptError as exc:
            rejected.append({"what": what, "receipt": bad.SerializeToString().hex(), "reason": exc.reason})
        else:
            raise AssertionError(f"tampered receipt verified: {what}")
    return {
        "about": "a Receipt (api.proto) for block.json's entry tx_index; client/verify.py accepts "
        "it, and refuses each tampered copy with the reason given",
        "genesis": "genesis.json",
        "tx_id": tx_id.hex(),
        "tx_index": RECEIPT_INDEX,
        "receipt": receipt.SerializeToString().hex(),
        "expect": {
            "code": verified.code_name,
            "height": verified.height,
            "index": verified.index,
            "final": verified.result.final,
            "commit_signers": list(verified.block.commit_signers),
            "attestation_signers": list(verified.attested.signers),
        },
        "tampered": rejected,
    }


def statetree_file(genesis: Genesis, k: dict[str, SigningKey], envelopes: list[bytes]) -> dict[str, Any]:
    """The state tree after block.json's block (a checkpoint at height 1), alice's balance proof
    (2f+1 checkpoints signed by COMMITTERS) and tampered copies with their reasons."""
    store = MemoryStore()
    with store.write() as w:
        out = Ledger(genesis, tree_interval=HEIGHT).execute(w, HEIGHT, TIMESTAMP_MS, envelopes)
        checkpoints = [
            _signed(
                k[f"{BANKS[r]}/node"],
                r,
                consensus_pb2.ConsensusMessage(
                    checkpoint=consensus_pb2.Checkpoint(
                        sequence=HEIGHT, state_root=out.state_root, replica=r, tree_root=out.tree_root
                    )
                ),
            )
            for r in COMMITTERS
        ]
        w.put(blocks.JOURNAL + journal.STABLE, wire.encode_signed_list(checkpoints))
    with store.read() as r:
        leaves = [
            {
                "key": key[len(statetree.VALUES) :].hex(),
                "salt": v[: lt.SALT_BYTES].hex(),
                "value": v[lt.SALT_BYTES :].hex(),
            }
            for key, v in r.scan(statetree.VALUES)
        ]
        nodes = [
            {"path": key[len(statetree.NODE) :].decode(), "record": v.hex()}
            for key, v in r.scan(statetree.NODE)
        ]
        results = [{"tx_id": key[4:].hex(), "result": v.hex()} for key, v in r.scan(b"s/t/")]
        proof = build_balance_proof(genesis, r, "alice")
    assert proof is not None
    verified = verify_balance_proof(genesis, proof, "alice")

    def copy(change: Callable[[api_pb2.BalanceProof], None]) -> api_pb2.BalanceProof:
        p = api_pb2.BalanceProof()
        p.CopyFrom(proof)
        change(p)
        return p

    def more(p: api_pb2.BalanceProof) -> None:
        p.balances[0].available += 1

    def frozen(p: api_pb2.BalanceProof) -> None:
        p.account = p.account[:-1] + b"\x01"

    def node_bit(p: api_pb2.BalanceProof) -> None:
        p.nodes[-1] = p.nodes[-1][:-1] + bytes([p.nodes[-1][-1] ^ 1])

    def drop_checkpoint(p: api_pb2.BalanceProof) -> None:
        del p.checkpoints[-1]

    def checkpoint_signature(p: api_pb2.BalanceProof) -> None:
        sig = p.checkpoints[0].signature
        p.checkpoints[0].signature = bytes([sig[0] ^ 1]) + sig[1:]

    tampered = []
    for what, change in (
        ("1 minor unit more available", more),
        ("the account record says frozen", frozen),
        ("a bit flipped in a tree node", node_bit),
        ("a checkpoint removed: 2 of the 3 needed", drop_checkpoint),
        ("a bit flipped in a checkpoint signature", checkpoint_signature),
    ):
        bad = copy(change)
        try:
            verify_balance_proof(genesis, bad, "alice")
        except ProofError as exc:
            tampered.append({"what": what, "proof": bad.SerializeToString().hex(), "reason": exc.reason})
        else:
            raise AssertionError(f"tampered balance proof verified: {what}")
    return {
        "about": "the state tree after block.json's block as a checkpoint (docs/PROTOCOL.md, section "
        "11): the recorded results (all of height 1, so in tx_id order) whose range is the leaf "
        "t/_/results, every leaf (state key, salt, value), every node record by its hex path, the "
        "root; alice's BalanceProof against 2f+1 checkpoints, what it proves, and tampered copies "
        "with the reason each must fail with",
        "genesis": "genesis.json",
        "sequence": HEIGHT,
        "state_root": out.state_root.hex(),
        "empty_root": lt.EMPTY_ROOT.hex(),
        "results": results,
        "leaves": leaves,
        "nodes": nodes,
        "tree_root": out.tree_root.hex(),
        "checkpoints": [_signed_entry(c) for c in checkpoints],
        "balance_proof": proof.SerializeToString().hex(),
        "expect": {
            "account_id": verified.account_id,
            "member_id": verified.member_id,
            "frozen": verified.frozen,
            "balances": [[b.asset, b.available, b.held] for b in verified.balances],
            "signers": list(verified.signers),
        },
        "tampered": tampered,
    }


def build() -> dict[str, str]:
    """Each vector file's name and exact text."""
    k = keys()
    document = genesis_document(k)
    genesis = parse_genesis(document)
    txs = transactions(k)
    envelopes = [tx.envelope_bytes() for _, _, tx in txs]
    block_content, receipt = block_parts(genesis, k, envelopes)
    files: dict[str, Any] = {
        "keys.json": keys_file(k),
        "genesis.json": document,
        "signing.json": signing_file(k),
        "transactions.json": transactions_file(txs),
        "merkle.json": merkle_file(),
        "block.json": block_content,
        "receipt.json": receipt_file(genesis, txs[RECEIPT_INDEX][2].tx_id, receipt),
        "readtoken.json": readtoken_file(k, txs[RECEIPT_INDEX][2].tx_id),
        "statetree.json": statetree_file(genesis, k, envelopes),
    }
    assert tx_id_of(tx_pb2.Envelope.FromString(envelopes[RECEIPT_INDEX]).body) == txs[RECEIPT_INDEX][2].tx_id
    return {name: json.dumps(data, indent=2, ensure_ascii=False) + "\n" for name, data in files.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="compare instead of writing; exit 1 on a difference"
    )
    args = parser.parse_args(argv)
    files = build()
    if args.check:
        stale = [
            n
            for n, text in files.items()
            if not (VECTORS / n).is_file() or (VECTORS / n).read_text(encoding="utf-8") != text
        ]
        extra = sorted(p.name for p in VECTORS.glob("*.json") if p.name not in files)
        for name in stale:
            print(f"tests/vectors/{name}: differs from what the code computes", file=sys.stderr)
        for name in extra:
            print(f"tests/vectors/{name}: not written by this script", file=sys.stderr)
        if stale or extra:
            print("run scripts/gen_vectors.py if the change on the wire is intended", file=sys.stderr)
            return 1
        print(f"tests/vectors: {len(files)} files match the code")
        return 0
    VECTORS.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (VECTORS / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} files to {VECTORS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
