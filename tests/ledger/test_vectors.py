"""The known-answer vectors of tests/vectors (docs/PROTOCOL.md) against the code.

Each value is recomputed here from the vector's inputs: with the project's functions, and
where docs/PROTOCOL.md states a byte layout, also by hand from that statement (signing bytes,
batch hash, header digest, RFC 6962 Merkle trees and audit paths, TxResult encoding), so
neither the code nor the document can drift from the vectors. The whole receipt must verify
with client/verify.py and each tampered copy must fail with its stated reason.
"""

from __future__ import annotations

import hashlib
import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import VerifyKey

from client.proofs import verify_balance_proof
from client.verify import ReceiptError, verify_attestations, verify_block, verify_certificate, verify_receipt
from ledger import block, merkle, readtoken, statetree
from ledger.crypto import (
    DOMAIN_CONSENSUS,
    DOMAIN_READ,
    DOMAIN_TX,
    SigningKey,
    signing_bytes,
    tx_id_of,
    verify,
)
from ledger.genesis import Genesis, parse_genesis
from ledger.v1 import api_pb2, consensus_pb2, tx_pb2
from node.app.ledger import Ledger
from node.app.validate import decode_and_verify
from node.config import NodeLimits
from node.pbft import wire
from node.pbft.crypto import Ed25519Crypto
from node.pbft.verify import Verifier
from node.storage.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"


@cache
def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def hs(texts: list[str]) -> list[bytes]:
    return [h(t) for t in texts]


def genesis() -> Genesis:
    return parse_genesis(load("genesis.json"))


def public_key(label: str) -> bytes:
    (key,) = [k for k in load("keys.json")["keys"] if k["label"] == label]
    return h(key["public_key"])


def seed(label: str) -> bytes:
    (key,) = [k for k in load("keys.json")["keys"] if k["label"] == label]
    return h(key["seed"])


# --- by hand, from docs/PROTOCOL.md ---------------------------------------------------------


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def rfc6962_root(leaves: list[bytes]) -> bytes:
    """MTH of RFC 6962 section 2.1: split at the largest power of two below n."""
    n = len(leaves)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return sha256(b"\x00" + leaves[0])
    k = 1 << ((n - 1).bit_length() - 1)
    return sha256(b"\x01" + rfc6962_root(leaves[:k]) + rfc6962_root(leaves[k:]))


def rfc6962_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 section 2.1.1: the audit path, the leaf's sibling first."""
    n = len(leaves)
    if n <= 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*rfc6962_path(m, leaves[:k]), rfc6962_root(leaves[k:])]
    return [*rfc6962_path(m - k, leaves[k:]), rfc6962_root(leaves[:k])]


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tx_result_bytes(fields: dict[str, Any]) -> bytes:
    """TxResult as PROTOCOL.md gives it: fields in number order, each left out at its default."""
    tx_id = h(fields.get("tx_id", ""))
    code = tx_pb2.ResultCode.Value(fields.get("code", "RESULT_CODE_UNSPECIFIED"))
    detail = fields.get("detail", "").encode()
    out = b""
    if tx_id:
        out += b"\x0a" + varint(len(tx_id)) + tx_id
    if code:
        out += b"\x10" + varint(code)
    if detail:
        out += b"\x1a" + varint(len(detail)) + detail
    if fields.get("height", 0):
        out += b"\x20" + varint(fields["height"])
    if fields.get("index", 0):
        out += b"\x28" + varint(fields["index"])
    if fields.get("final", False):
        out += b"\x30\x01"
    return out


# --- keys and signatures -------------------------------------------------------------------


def test_keys_come_from_their_stated_seeds() -> None:
    keys = load("keys.json")["keys"]
    assert len(keys) == 10
    for k in keys:
        assert h(k["seed"]) == sha256(f"consortium-ledger/vectors/{k['label']}".encode())
        assert SigningKey(h(k["seed"])).public_key == h(k["public_key"])


def test_genesis_lists_the_vector_keys() -> None:
    g = genesis()
    assert (g.n, g.f, g.quorum) == (4, 1, 3)
    for m in g.members:
        assert m.node_key == public_key(f"{m.member_id}/node")
        assert m.operator_key == public_key(f"{m.member_id}/operator")


def test_signing_bytes_follow_the_stated_layout_and_signatures_match() -> None:
    vec = load("signing.json")
    domains = {name: h(d["hex"]) for name, d in vec["domains"].items()}
    assert domains == {"DOMAIN_TX": DOMAIN_TX, "DOMAIN_CONSENSUS": DOMAIN_CONSENSUS}
    assert {name: d["ascii"].encode() for name, d in vec["domains"].items()} == domains
    for case in vec["cases"]:
        domain, chain_id, body = domains[case["domain"]], case["chain_id"], h(case["body"])
        chain = chain_id.encode()
        by_hand = domain + b"\x00" + bytes([len(chain)]) + chain + body
        assert h(case["signing_bytes"]) == by_hand == signing_bytes(domain, chain_id, body)
        key = SigningKey(seed(case["key"]))
        assert key.public_key == h(case["public_key"])
        signature = h(case["signature"])
        assert key.sign(domain, chain_id, body) == signature  # Ed25519 is deterministic
        assert verify(key.public_key, signature, domain, chain_id, body)
        VerifyKey(key.public_key).verify(by_hand, signature)  # plain Ed25519 over those bytes
        other = DOMAIN_CONSENSUS if domain == DOMAIN_TX else DOMAIN_TX
        assert not verify(key.public_key, signature, other, chain_id, body)
    with pytest.raises(ValueError):
        signing_bytes(DOMAIN_TX, "x" * 65, b"")  # the length is one byte; 64 is the bound


def test_transactions_ids_envelopes_and_signatures() -> None:
    g = genesis()
    for tx in load("transactions.json")["transactions"]:
        body = h(tx["body"])
        assert h(tx["tx_id"]) == tx_id_of(body) == sha256(body)
        parsed = tx_pb2.TxBody.FromString(body)
        assert parsed.chain_id == tx["body_fields"]["chain_id"] == g.chain_id
        assert parsed.nonce == h(tx["body_fields"]["nonce"])
        envelope = tx_pb2.Envelope.FromString(h(tx["envelope"]))
        assert envelope.body == body
        assert [(s.public_key.hex(), s.signature.hex()) for s in envelope.signatures] == [
            (s["public_key"], s["signature"]) for s in tx["signatures"]
        ]
        assert [s.public_key for s in envelope.signatures] == [public_key(x) for x in tx["signers"]]
        for s in envelope.signatures:
            assert verify(s.public_key, s.signature, DOMAIN_TX, g.chain_id, body)
        assert decode_and_verify(g, h(tx["envelope"])).tx_id == h(tx["tx_id"])  # a node admits it


# --- Merkle trees --------------------------------------------------------------------------


def test_merkle_roots_and_proofs() -> None:
    cases = load("merkle.json")["cases"]
    assert [c["count"] for c in cases] == list(range(10))
    for case in cases:
        leaves, root, proofs = hs(case["leaves"]), h(case["root"]), [hs(p) for p in case["proofs"]]
        assert merkle.root(leaves) == rfc6962_root(leaves) == root
        assert merkle.all_proofs(leaves) == (root, proofs)
        for i, leaf in enumerate(leaves):
            assert merkle.proof(leaves, i) == rfc6962_path(i, leaves) == proofs[i]
            assert merkle.verify(root, leaf, i, len(leaves), proofs[i])
            assert not merkle.verify(root, leaf + b"!", i, len(leaves), proofs[i])


# --- one block -----------------------------------------------------------------------------


def test_block_batch_hash_header_digest_and_tx_root() -> None:
    vec = load("block.json")
    envelopes = hs(vec["envelopes"])
    assert envelopes == [h(t["envelope"]) for t in load("transactions.json")["transactions"]]
    by_hand = sha256(b"".join(len(e).to_bytes(4, "big") + e for e in envelopes))
    assert h(vec["batch_hash"]) == by_hand == block.batch_hash(envelopes) == wire.batch_hash(envelopes)
    tx_ids = wire.tx_ids_of(envelopes)
    assert list(tx_ids) == hs(vec["tx_ids"])
    assert h(vec["tx_root"]) == merkle.root(tx_ids) == rfc6962_root(list(tx_ids))
    assert [hs(p) for p in vec["tx_proofs"]] == merkle.all_proofs(tx_ids)[1]
    header = h(vec["header"])
    assert wire.build_header(genesis().chain_id, vec["height"], vec["timestamp_ms"], envelopes) == header
    assert h(vec["digest"]) == sha256(header) == block.digest_of(header)
    parsed = tx_pb2.BlockHeader.FromString(header)
    assert (parsed.height, parsed.timestamp_ms, parsed.tx_count) == (vec["height"], vec["timestamp_ms"], 5)
    assert (parsed.tx_root, parsed.batch_hash) == (h(vec["tx_root"]), h(vec["batch_hash"]))


def test_block_results_as_the_ledger_executes_them() -> None:
    vec = load("block.json")
    store = MemoryStore()
    with store.write() as w:
        out = Ledger(genesis()).execute(w, vec["height"], vec["timestamp_ms"], hs(vec["envelopes"]))
    results = [h(r["bytes"]) for r in vec["results"]]
    assert list(out.results) == results
    assert [tx_result_bytes(r["fields"]) for r in vec["results"]] == results
    assert h(vec["results_root"]) == out.results_root == merkle.root(results) == rfc6962_root(results)
    assert [hs(p) for p in vec["result_proofs"]] == merkle.all_proofs(results)[1]
    assert h(vec["state_root"]) == out.state_root
    assert [tx_pb2.TxResult.FromString(r).final for r in results] == [True, True, True, True, False]


def test_commits_and_attestations_are_signed_consensus_messages() -> None:
    vec, g = load("block.json"), genesis()
    digest = h(vec["digest"])
    for entry in vec["commits"]:
        signer, body = entry["signer"], h(entry["body"])
        assert body == wire.encode_body(wire.Commit(vec["view"], vec["height"], digest, signer))
        key = SigningKey(seed(f"{g.members[signer].member_id}/node"))
        assert key.sign(DOMAIN_CONSENSUS, g.chain_id, body) == h(entry["signature"])
        assert h(entry["signed_message"]) == wire.encode_signed(body, signer, h(entry["signature"]))
    for entry in vec["attestations"]:
        signer, body = entry["signer"], h(entry["body"])
        attestation = wire.Attestation(
            vec["height"], digest, h(vec["results_root"]), h(vec["state_root"]), signer
        )
        assert body == wire.encode_body(attestation)
        key = SigningKey(seed(f"{g.members[signer].member_id}/node"))
        assert key.sign(DOMAIN_CONSENSUS, g.chain_id, body) == h(entry["signature"])
        assert h(entry["signed_message"]) == wire.encode_signed(body, signer, h(entry["signature"]))
    commits = [h(c["signed_message"]) for c in vec["commits"]]
    attestations = [
        consensus_pb2.SignedMessage.FromString(h(a["signed_message"])) for a in vec["attestations"]
    ]
    # The node's check (catch-up) and the client's accept the certificate.
    config = NodeLimits().replica_config(g.n, g.f, 3, g.chain_id)
    node_check = Verifier(config, Ed25519Crypto(SigningKey(seed("BANK-D/node")), g.node_keys(), g.chain_id))
    assert node_check.commit_certificate(vec["height"], digest, commits)
    certificate = consensus_pb2.CommitCertificate(
        commits=[consensus_pb2.SignedMessage.FromString(c) for c in commits]
    )
    certified = verify_certificate(g, h(vec["header"]), certificate)
    assert (certified.digest, certified.view, certified.commit_signers) == (digest, 0, (0, 1, 2))
    attested = verify_attestations(g, vec["height"], digest, attestations)
    assert (attested.results_root, attested.state_root) == (h(vec["results_root"]), h(vec["state_root"]))
    # The whole block as GetBlock serves it (results as messages, re-encoded by the verifier).
    certified_block = h(vec["certified_block"])
    assert certified_block == wire.encode_certified_block(h(vec["header"]), hs(vec["envelopes"]), commits)
    served = api_pb2.GetBlockResponse(
        block=consensus_pb2.CertifiedBlock.FromString(certified_block),
        results=[tx_pb2.TxResult.FromString(h(r["bytes"])) for r in vec["results"]],
        attestations=attestations,
    )
    verified = verify_block(g, served)
    assert verified.tx_ids == tuple(hs(vec["tx_ids"])) and verified.attested is not None


# --- a whole receipt -----------------------------------------------------------------------


def test_receipt_verifies_and_each_tampered_copy_fails_for_its_reason() -> None:
    vec, blk, g = load("receipt.json"), load("block.json"), genesis()
    tx_id, index = h(vec["tx_id"]), vec["tx_index"]
    receipt = api_pb2.Receipt.FromString(h(vec["receipt"]))
    assert receipt.result_bytes == h(blk["results"][index]["bytes"])
    assert receipt.header == h(blk["header"])
    assert list(receipt.tx_proof) == hs(blk["tx_proofs"][index])
    assert list(receipt.result_proof) == hs(blk["result_proofs"][index])
    verified = verify_receipt(g, receipt, tx_id)
    expect = vec["expect"]
    assert (verified.code_name, verified.height, verified.index) == (
        expect["code"],
        expect["height"],
        expect["index"],
    )
    assert verified.result.final == expect["final"]
    assert list(verified.block.commit_signers) == expect["commit_signers"]
    assert list(verified.attested.signers) == expect["attestation_signers"]
    assert len(vec["tampered"]) == 5
    for bad in vec["tampered"]:
        with pytest.raises(ReceiptError) as err:
            verify_receipt(g, api_pb2.Receipt.FromString(h(bad["receipt"])), tx_id)
        assert err.value.reason == bad["reason"], bad["what"]


def test_state_tree_root_nodes_and_balance_proof() -> None:
    """statetree.json: the root recomputed by the definition (section 11) from the leaves alone,
    every node record under its path, the proof verified and each tampered copy refused."""
    vec, g = load("statetree.json"), genesis()
    leaves = {
        statetree.key_hash(h(x["key"])).hex(): statetree.value_hash(h(x["salt"]), h(x["value"]))
        for x in vec["leaves"]
    }
    records: dict[str, bytes] = {}

    def subtree(path: str) -> bytes | None:
        under = [k for k in leaves if k.startswith(path)]
        if path and len(under) <= 1:
            return bytes.fromhex(under[0]) + leaves[under[0]] if under else None
        slots = [subtree(path + "0123456789abcdef"[s]) for s in range(16)]
        records[path] = statetree.encode_node(slots)
        return statetree.node_hash(records[path])

    assert subtree("") == h(vec["tree_root"])
    # The results' range (all of height 1 here: tx_id order), bagged; its leaf is count || root.
    peaks: list[bytes] = []
    for i, x in enumerate(vec["results"]):
        peaks.append(hashlib.sha256(b"\x00" + h(x["tx_id"]) + h(x["result"])).digest())
        while len(peaks) > bin(i + 1).count("1"):
            right, left = peaks.pop(), peaks.pop()
            peaks.append(hashlib.sha256(b"\x01" + left + right).digest())
    root = peaks[-1]
    for peak in reversed(peaks[:-1]):
        root = hashlib.sha256(b"\x01" + peak + root).digest()
    (mmr,) = [h(x["value"]) for x in vec["leaves"] if h(x["key"]) == b"t/_/results"]
    assert mmr == len(vec["results"]).to_bytes(8, "big") + root
    assert {n["path"]: h(n["record"]) for n in vec["nodes"]} == records
    assert statetree.node_hash(bytes(4)) == h(vec["empty_root"])
    proof = api_pb2.BalanceProof.FromString(h(vec["balance_proof"]))
    verified = verify_balance_proof(g, proof, vec["expect"]["account_id"])
    assert verified.tree_root == h(vec["tree_root"]) and verified.state_root == h(vec["state_root"])
    assert [[b.asset, b.available, b.held] for b in verified.balances] == vec["expect"]["balances"]
    assert list(verified.signers) == vec["expect"]["signers"]
    assert len(vec["tampered"]) == 5
    for bad in vec["tampered"]:
        with pytest.raises(statetree.ProofError) as err:
            verify_balance_proof(g, h(bad["proof"]), "alice")
        assert err.value.reason == bad["reason"], bad["what"]


def test_read_tokens_follow_the_stated_layout() -> None:
    vec = load("readtoken.json")
    assert h(vec["domain"]["hex"]) == vec["domain"]["ascii"].encode() == DOMAIN_READ
    chain_id = vec["chain_id"]
    for case in vec["cases"]:
        method, scope = case["method"].encode(), case["scope"].encode()
        by_hand = (
            bytes([1, len(method)])
            + method
            + bytes([len(scope)])
            + scope
            + case["issued_ms"].to_bytes(8, "big")
            + case["expires_ms"].to_bytes(8, "big")
        )
        assert h(case["body"]) == by_hand
        chain = chain_id.encode()
        signed = DOMAIN_READ + b"\x00" + bytes([len(chain)]) + chain + by_hand
        assert h(case["signing_bytes"]) == signed == signing_bytes(DOMAIN_READ, chain_id, by_hand)
        key = SigningKey(seed(case["key"]))
        signature = key.sign(DOMAIN_READ, chain_id, by_hand)
        assert h(case["signature"]) == signature and h(case["public_key"]) == key.public_key
        VerifyKey(key.public_key).verify(signed, signature)  # plain Ed25519 over those bytes
        assert h(case["token"]) == key.public_key + signature + by_hand
        token = readtoken.decode(h(case["token"]))
        assert (token.method, token.scope, token.issued_ms, token.expires_ms) == (
            case["method"],
            case["scope"],
            case["issued_ms"],
            case["expires_ms"],
        )
        assert token.verifies(chain_id) and not token.verifies(chain_id + "x")


def test_generator_check_passes_on_the_committed_vectors() -> None:
    """scripts/gen_vectors.py --check: what the code computes now is what is committed."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_vectors
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert gen_vectors.main(["--check"]) == 0


def test_protocol_doc_states_the_domains_and_the_worked_examples() -> None:
    """docs/PROTOCOL.md's tables and examples quote the vectors; a changed value shows here."""
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    for d in load("signing.json")["domains"].values():
        assert f"`{d['ascii']}` ({len(d['ascii'])} bytes)" in doc and d["hex"] in doc
    case = load("signing.json")["cases"][0]
    pieces = [d["hex"] for d in load("signing.json")["domains"].values() if d["ascii"].endswith("/tx/v1")]
    pieces += ["00", f"{len(case['chain_id']):02x}", case["chain_id"].encode().hex(), case["body"]]
    assert "`" + "` `".join(pieces) + "`" in doc.replace("\n  ", " ")
    assert "".join(pieces) == case["signing_bytes"]
    assert "0a20 7408f5...ad48` `10 01` (OK) `20 01` (height 1)\n`28 03` (index 3) `30 01`" in doc
    assert (
        load("block.json")["results"][3]["bytes"]
        == "0a20" + load("receipt.json")["tx_id"] + "1001200128033001"
    )
    commit = load("block.json")["commits"][1]["body"]
    assert commit == "1a2610011a20" + load("block.json")["digest"] + "2001"
    assert "`10 01` (sequence 1) `1a 20 8cd4...3965` (digest) `20 01` (replica 1)" in doc.replace("\n  ", " ")
