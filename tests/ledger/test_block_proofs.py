"""One commit-certificate rule and one attestation rule (ledger/block.py): the node's catch-up
check (node/pbft/verify.py), its attestation backfill (node/receipts.py) and the client's receipt
verification (client/verify.py) accept and refuse exactly the same sets."""

from __future__ import annotations

import pytest

from client.verify import ReceiptError, verify_attestations, verify_certificate
from ledger import block
from ledger.v1 import consensus_pb2, tx_pb2
from node.config import NodeLimits
from node.pbft.crypto import Ed25519Crypto
from node.pbft.verify import Verifier
from node.receipts import matching_attestations
from tests.client.fakes import FakeChain


def _signed(raw: bytes) -> consensus_pb2.SignedMessage:
    return consensus_pb2.SignedMessage.FromString(raw)


def _forged(raw: bytes) -> bytes:
    sm = _signed(raw)
    sm.signature = bytes(64)
    return sm.SerializeToString()


@pytest.fixture
def chain() -> FakeChain:
    chain = FakeChain(ledger=False)
    chain.commit([b"\x0a\x01x"], results=[(tx_pb2.OK, "")])  # block 1: 3 commits, 2 attestations
    return chain


def _node(chain: FakeChain) -> tuple[Verifier, Ed25519Crypto]:
    g = chain.genesis
    crypto = Ed25519Crypto(chain.banks[3].node_key, g.node_keys(), g.chain_id)
    return Verifier(NodeLimits().replica_config(g.n, g.f, 3, g.chain_id), crypto), crypto


def test_node_and_client_accept_and_refuse_the_same_commit_certificates(chain: FakeChain) -> None:
    b = chain.blocks[0]
    digest = chain.digest_of(b.header_bytes)
    commits = [c.SerializeToString() for c in b.certificate.commits]
    fourth = chain.commit_msg(3, 0, 1, digest).SerializeToString()
    other_view = chain.commit_msg(3, 1, 1, digest).SerializeToString()
    other_block = chain.commit_msg(3, 0, 2, digest).SerializeToString()
    cases: list[tuple[str, list[bytes], str | None]] = [
        ("the quorum", commits, None),
        ("the quorum and a fourth", [*commits, fourth], None),
        ("the quorum and a forged entry", [*commits, _forged(fourth)], None),
        ("the quorum and another block's commit", [other_block, *commits], None),
        ("two and a forged one", [*commits[:2], _forged(commits[2])], "bad_signature"),
        ("one signer twice", [*commits[:2], commits[0]], "duplicate_signer"),
        ("two views", [*commits[:2], other_view], "mixed_views"),
        ("two", commits[:2], "too_few_commits"),
        ("more than 2n entries", [*commits, *[fourth] * 6], "malformed"),
    ]
    verifier, _ = _node(chain)
    for name, entries, reason in cases:
        node = verifier.commit_certificate(1, digest, entries)
        assert (node is not None) == (reason is None), name
        certificate = consensus_pb2.CommitCertificate(commits=[_signed(e) for e in entries])
        if reason is None:
            client = verify_certificate(chain.genesis, b.header_bytes, certificate)
            assert node is not None and (client.view, client.commit_signers) == (node.vote, node.signers), (
                name
            )
        else:
            with pytest.raises(ReceiptError) as info:
                verify_certificate(chain.genesis, b.header_bytes, certificate)
            assert info.value.reason == reason, name
    # Bytes that are not a SignedMessage at all (the node's input is bytes): skipped as malformed.
    assert verifier.commit_certificate(1, digest, [*commits, b"\xff\xff"]) is not None
    with pytest.raises(block.ProofError, match="malformed"):
        block.certified([*commits[:2], b"\xff\xff"], 4, 1, 1, digest, lambda *_: True)


def test_the_backfill_and_the_client_count_the_same_attestations(chain: FakeChain) -> None:
    b = chain.blocks[0]
    digest = chain.digest_of(b.header_bytes)
    atts = [a.SerializeToString() for a in b.attestations]
    roots = verify_attestations(chain.genesis, 1, digest, b.attestations)
    liar = chain.attest_msg(3, 1, digest, bytes(32), roots.state_root).SerializeToString()
    _, crypto = _node(chain)
    g = chain.genesis

    def node(entries: list[bytes]) -> list[bytes]:
        return matching_attestations(g, crypto, 1, digest, roots.results_root, roots.state_root, entries)

    assert node([liar, _forged(atts[0]), *atts]) == atts
    assert verify_attestations(g, 1, digest, [_signed(e) for e in [liar, _forged(atts[0]), *atts]]) == roots
    assert node([liar, atts[0], atts[0]]) == atts[:1]  # one member counts once: not f+1
    with pytest.raises(ReceiptError, match="duplicate_signer"):
        verify_attestations(g, 1, digest, [_signed(e) for e in [liar, atts[0], atts[0]]])
    assert node([*atts, *[liar] * 7]) == []  # more than 2n entries: refused whole
    with pytest.raises(ReceiptError, match="malformed"):
        verify_attestations(g, 1, digest, [_signed(e) for e in [*atts, *[liar] * 7]])
