"""Receipt verification against receipts synthesized with real member keys (tests/client/fakes)."""

from collections.abc import Callable
from typing import Any

import pytest

import client.verify as client_verify
from client.tx import LegSpec, TxBuilder
from client.verify import ReceiptError, VerificationCache, verify_block, verify_receipt
from ledger import crypto
from ledger.crypto import SigningKey
from ledger.v1 import api_pb2, consensus_pb2, tx_pb2
from tests.client.fakes import FakeChain, FakeNode, sign_consensus

Mutate = Callable[[FakeChain, api_pb2.Receipt], None]


def _chain_with_block() -> tuple[FakeChain, list[bytes]]:
    """A chain whose block 1 holds three transactions with different results, block 2 one."""
    chain = FakeChain(ledger=False)
    b = TxBuilder(chain.genesis.chain_id)
    key = SigningKey.generate()
    txs = [b.transfer([LegSpec("a", "b", "USD.BANK-A", i + 1)]).signed_by(key) for i in range(4)]
    chain.commit(
        [t.envelope_bytes() for t in txs[:3]],
        results=[(tx_pb2.OK, ""), (tx_pb2.INSUFFICIENT_FUNDS, "a"), (tx_pb2.OK, "")],
    )
    chain.commit([txs[3].envelope_bytes()], results=[(tx_pb2.OK, "")])
    return chain, [t.tx_id for t in txs]


def _copy(r: api_pb2.Receipt) -> api_pb2.Receipt:
    c = api_pb2.Receipt()
    c.CopyFrom(r)
    return c


def test_valid_receipts_verify_with_their_result() -> None:
    chain, ids = _chain_with_block()
    for i, tx_id in enumerate(ids[:3]):
        v = verify_receipt(chain.genesis, chain.receipts[tx_id], tx_id)
        assert (v.height, v.index) == (1, i)
        assert v.block.commit_signers == (0, 1, 2) and v.attested.signers == (0, 1)
    assert verify_receipt(chain.genesis, chain.receipts[ids[1]], ids[1]).code_name == "INSUFFICIENT_FUNDS"
    assert verify_receipt(chain.genesis, chain.receipts[ids[3]], ids[3]).height == 2


def _forge_commit_sig(c: FakeChain, r: api_pb2.Receipt) -> None:
    sig = bytearray(r.certificate.commits[1].signature)
    sig[0] ^= 1
    r.certificate.commits[1].signature = bytes(sig)


def _commit_by_outsider(c: FakeChain, r: api_pb2.Receipt) -> None:
    # A well-formed commit from a key not in genesis, claiming to be replica 2.
    msg = consensus_pb2.ConsensusMessage()
    msg.ParseFromString(r.certificate.commits[2].body)
    r.certificate.commits[2].CopyFrom(sign_consensus(c.genesis, SigningKey.generate(), 2, msg))


def _commit_from_index_outside_genesis(c: FakeChain, r: api_pb2.Receipt) -> None:
    r.certificate.commits[2].signer = 4


def _duplicate_signer(c: FakeChain, r: api_pb2.Receipt) -> None:
    r.certificate.commits[2].CopyFrom(r.certificate.commits[0])


def _too_few(c: FakeChain, r: api_pb2.Receipt) -> None:
    del r.certificate.commits[2]


def _cert_of_other_block(c: FakeChain, r: api_pb2.Receipt) -> None:
    r.certificate.CopyFrom(c.blocks[1].certificate)


def _header_of_other_block(c: FakeChain, r: api_pb2.Receipt) -> None:
    r.header = c.blocks[1].header_bytes
    r.certificate.CopyFrom(c.blocks[1].certificate)  # valid cert, but the tx is not in it


def _mixed_views(c: FakeChain, r: api_pb2.Receipt) -> None:
    d = c.digest_of(r.header)
    r.certificate.commits[2].CopyFrom(c.commit_msg(2, 1, 1, d))


def _prepare_not_commit(c: FakeChain, r: api_pb2.Receipt) -> None:
    d = c.digest_of(r.header)
    msg = consensus_pb2.ConsensusMessage(
        prepare=consensus_pb2.Prepare(view=0, sequence=1, digest=d, replica=2)
    )
    r.certificate.commits[2].CopyFrom(sign_consensus(c.genesis, c.banks[2].node_key, 2, msg))


def _commit_names_other_replica(c: FakeChain, r: api_pb2.Receipt) -> None:
    d = c.digest_of(r.header)
    msg = consensus_pb2.ConsensusMessage(commit=consensus_pb2.Commit(view=0, sequence=1, digest=d, replica=3))
    r.certificate.commits[2].CopyFrom(sign_consensus(c.genesis, c.banks[2].node_key, 2, msg))


def _wrong_tx_proof(c: FakeChain, r: api_pb2.Receipt) -> None:
    r.tx_proof[0] = bytes(32)


def _wrong_result_proof(c: FakeChain, r: api_pb2.Receipt) -> None:
    del r.result_proof[:]


def _flip_result_code(c: FakeChain, r: api_pb2.Receipt) -> None:
    # The liar claims the failed payment succeeded: result_bytes no longer in results_root.
    r.result.code = tx_pb2.OK
    r.result_bytes = r.result.SerializeToString()


def _decoded_result_disagrees(c: FakeChain, r: api_pb2.Receipt) -> None:
    r.result.code = tx_pb2.OK


def _attestations_disagree(c: FakeChain, r: api_pb2.Receipt) -> None:
    a = consensus_pb2.ConsensusMessage()
    a.ParseFromString(r.attestations[1].body)
    r.attestations[1].CopyFrom(
        c.attest_msg(1, 1, a.attestation.digest, a.attestation.results_root, b"\x09" * 32)
    )


def _one_attestation(c: FakeChain, r: api_pb2.Receipt) -> None:
    del r.attestations[1]


def _duplicate_attestation(c: FakeChain, r: api_pb2.Receipt) -> None:
    r.attestations[1].CopyFrom(r.attestations[0])


def _forged_attestation(c: FakeChain, r: api_pb2.Receipt) -> None:
    r.attestations[1].signature = bytes(64)


def _attestation_of_other_block(c: FakeChain, r: api_pb2.Receipt) -> None:
    r.attestations[1].CopyFrom(c.blocks[1].attestations[1])


def _liar_attests_its_own_results(c: FakeChain, r: api_pb2.Receipt) -> None:
    # Only f (=1) attestation of the lie can exist; a second, honest one disagrees.
    a = consensus_pb2.ConsensusMessage()
    a.ParseFromString(r.attestations[0].body)
    r.result.code = tx_pb2.OK
    r.result_bytes = r.result.SerializeToString()
    r.attestations[1].CopyFrom(c.attest_msg(3, 1, a.attestation.digest, bytes(32), a.attestation.state_root))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (_forge_commit_sig, "bad_signature"),
        (_commit_by_outsider, "bad_signature"),
        (_commit_from_index_outside_genesis, "non_member"),
        (_duplicate_signer, "duplicate_signer"),
        (_too_few, "too_few_commits"),
        (_cert_of_other_block, "other_block"),
        (_header_of_other_block, "other_block"),
        (_mixed_views, "mixed_views"),
        (_prepare_not_commit, "not_commit"),
        (_commit_names_other_replica, "bad_signer"),
        (_wrong_tx_proof, "bad_tx_proof"),
        (_wrong_result_proof, "bad_result_proof"),
        (_flip_result_code, "bad_result_proof"),
        (_decoded_result_disagrees, "result_mismatch"),
        (_attestations_disagree, "attestations_disagree"),
        (_one_attestation, "too_few_attestations"),
        (_duplicate_attestation, "duplicate_signer"),
        (_forged_attestation, "bad_signature"),
        (_attestation_of_other_block, "other_block"),
        (_liar_attests_its_own_results, "attestations_disagree"),
    ],
)
@pytest.mark.parametrize("warm_cache", [False, True], ids=["no-cache", "warm-cache"])
def test_tampered_receipt_is_rejected_with_the_reason(mutate: Mutate, reason: str, warm_cache: bool) -> None:
    chain, ids = _chain_with_block()
    cache = VerificationCache(chain.genesis) if warm_cache else None
    if cache is not None:  # the genuine receipts of this block were verified and cached first
        for tx_id in ids[:3]:
            verify_receipt(chain.genesis, chain.receipts[tx_id], tx_id, cache)
    receipt = _copy(chain.receipts[ids[1]])
    mutate(chain, receipt)
    with pytest.raises(ReceiptError) as info:
        verify_receipt(chain.genesis, receipt, ids[1], cache)
    assert info.value.reason == reason, str(info.value)


def test_cache_checks_a_blocks_signatures_once(monkeypatch: pytest.MonkeyPatch) -> None:
    chain, ids = _chain_with_block()
    calls = 0
    real = crypto.verify

    def counting(*args: Any) -> bool:
        nonlocal calls
        calls += 1
        return real(*args)

    monkeypatch.setattr(client_verify, "verify", counting)
    cache = VerificationCache(chain.genesis)
    first = verify_receipt(chain.genesis, chain.receipts[ids[0]], ids[0], cache)
    per_block = calls
    assert per_block >= chain.genesis.quorum + chain.genesis.f + 1
    rest = [verify_receipt(chain.genesis, chain.receipts[t], t, cache) for t in ids[1:3]]
    assert calls == per_block, "receipts of an already verified block re-checked signatures"
    assert [r.index for r in (first, *rest)] == [0, 1, 2] and cache.hits == 4
    verify_receipt(chain.genesis, chain.receipts[ids[3]], ids[3], cache)  # block 2: a miss
    assert calls == 2 * per_block
    with pytest.raises(ValueError, match="another genesis"):
        verify_receipt(FakeChain(ledger=False).genesis, chain.receipts[ids[0]], ids[0], cache)


def test_receipt_of_another_transaction_is_rejected() -> None:
    chain, ids = _chain_with_block()
    with pytest.raises(ReceiptError) as info:
        verify_receipt(chain.genesis, chain.receipts[ids[0]], ids[1])
    assert info.value.reason == "other_transaction"
    # Same block, the other tx's result bytes but our id: the Merkle path cannot match.
    r = _copy(chain.receipts[ids[0]])
    r.result.tx_id = ids[2]
    r.result_bytes = r.result.SerializeToString()
    with pytest.raises(ReceiptError, match="bad_tx_proof"):
        verify_receipt(chain.genesis, r, ids[2])


def test_receipt_of_another_chain_is_rejected() -> None:
    honest, _ = _chain_with_block()
    other = FakeChain(banks=honest.banks, ledger=False, chain_id="other-chain")
    key = SigningKey.generate()
    tx = TxBuilder("other-chain").escrow_void("e").signed_by(key)
    other.commit([tx.envelope_bytes()], results=[(tx_pb2.OK, "")])
    with pytest.raises(ReceiptError, match="wrong_chain"):
        verify_receipt(honest.genesis, other.receipts[tx.tx_id], tx.tx_id)


def test_garbage_bytes_are_rejected_not_crashing() -> None:
    chain, ids = _chain_with_block()
    for field, value in (("header", b"\xff" * 10), ("result_bytes", b"\xff\xff")):
        r = _copy(chain.receipts[ids[0]])
        setattr(r, field, value)
        r.ClearField("result")
        with pytest.raises(ReceiptError, match="malformed"):
            verify_receipt(chain.genesis, r, ids[0])
    r = _copy(chain.receipts[ids[0]])
    r.certificate.commits[0].body = b"\xff\xff"
    with pytest.raises(ReceiptError, match="bad_signature"):
        verify_receipt(chain.genesis, r, ids[0])


class _Ctx:
    def abort(self, code: object, details: str) -> None:
        raise AssertionError(details)


def test_blocks_verify_and_tampered_batches_do_not() -> None:
    chain, ids = _chain_with_block()
    node = FakeNode(chain)
    resp = node.GetBlock(api_pb2.GetBlockRequest(height=1), _Ctx())  # type: ignore[arg-type]
    v = verify_block(chain.genesis, resp)
    assert v.tx_ids == tuple(ids[:3]) and [r.code for r in v.results] == [1, 13, 1]
    dropped = api_pb2.GetBlockResponse()
    dropped.CopyFrom(resp)
    del dropped.block.batch.envelopes[2]
    with pytest.raises(ReceiptError, match="bad_batch"):
        verify_block(chain.genesis, dropped)
    swapped = api_pb2.GetBlockResponse()
    swapped.CopyFrom(resp)
    env = tx_pb2.Envelope.FromString(swapped.block.batch.envelopes[0])
    env.signatures[0].signature = bytes(64)  # tx ids equal, bytes not
    swapped.block.batch.envelopes[0] = env.SerializeToString()
    with pytest.raises(ReceiptError, match="batch_hash"):
        verify_block(chain.genesis, swapped)
    lying = api_pb2.GetBlockResponse()
    lying.CopyFrom(resp)
    lying.results[1].code = tx_pb2.OK
    with pytest.raises(ReceiptError, match="bad_results"):
        verify_block(chain.genesis, lying)


def test_extra_invalid_votes_beside_a_quorum_do_not_spoil_a_receipt() -> None:
    # An honest node may pass on every vote it saw, including a faulty replica's: what counts
    # is 2f+1 valid commits and f+1 matching attestations, whatever else is there.
    chain, ids = _chain_with_block()
    r = _copy(chain.receipts[ids[1]])
    digest = chain.digest_of(r.header)
    r.certificate.commits.append(chain.commit_msg(3, 0, 1, digest))
    forged = r.certificate.commits.add()
    forged.CopyFrom(r.certificate.commits[0])
    forged.signature = bytes(64)
    a = consensus_pb2.ConsensusMessage()
    a.ParseFromString(r.attestations[0].body)
    r.attestations.append(chain.attest_msg(3, 1, digest, bytes(32), bytes(32)))  # a liar's attestation
    v = verify_receipt(chain.genesis, r, ids[1])
    assert v.block.commit_signers == (0, 1, 2, 3) and v.attested.signers == (0, 1)
    assert v.attested.results_root == a.attestation.results_root
    del r.attestations[1]  # now one honest and one lying attestation: no f+1 agreement
    with pytest.raises(ReceiptError, match="attestations_disagree"):
        verify_receipt(chain.genesis, r, ids[1])
