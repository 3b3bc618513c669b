"""LedgerClient against in-process fake nodes (real gRPC on 127.0.0.1, real signatures)."""

import time
from collections.abc import Iterator

import pytest

from client.models import Committed, Indefinite, NotFound, Rejected, Unreachable, Unverified
from client.sdk import LedgerClient
from client.tx import LegSpec, Transaction
from ledger.crypto import SigningKey
from tests.client.fakes import (
    FakeChain,
    FakeNode,
    closed_port,
    drop_commits,
    forge_certificate,
    lie_about_result,
    serve,
)


@pytest.fixture
def chain() -> FakeChain:
    return FakeChain()


@pytest.fixture
def honest(chain: FakeChain) -> Iterator[list[str]]:
    with serve([FakeNode(chain) for _ in range(4)]) as endpoints:
        yield endpoints


def _client(chain: FakeChain, endpoints: list[str], timeout_s: float = 5.0) -> LedgerClient:
    return LedgerClient(chain.genesis, endpoints, timeout_s=timeout_s, call_timeout_s=1.0, receipt_wait_s=0.5)


def _setup_alice(client: LedgerClient, chain: FakeChain) -> SigningKey:
    """Open alice (BANK-A) and bob (BANK-B), mint 100.00 USD.BANK-A to alice."""
    alice, bob = SigningKey.generate(), SigningKey.generate()
    op_a, op_b = chain.banks[0].operator_key, chain.banks[1].operator_key
    for tx in (
        client.tx.open_account("BANK-A", "alice", alice.public_key).signed_by(op_a),
        client.tx.open_account("BANK-B", "bob", bob.public_key).signed_by(op_b),
        client.tx.mint("USD.BANK-A", "alice", 10000, "dep-1").signed_by(op_a),
    ):
        out = client.submit(tx)
        assert isinstance(out, Committed) and out.ok, out
    return alice


def test_submit_returns_verified_committed_results_and_queries_work(
    chain: FakeChain, honest: list[str]
) -> None:
    with _client(chain, honest) as client:
        alice = _setup_alice(client, chain)
        pay = client.tx.transfer([LegSpec("alice", "bob", "USD.BANK-A", 2550)]).signed_by(alice)
        out = client.submit(pay)
        assert isinstance(out, Committed) and out.ok and out.code_name == "OK"
        assert out.height == 4 and out.receipt.block.commit_signers == (0, 1, 2)
        too_much = client.tx.transfer([LegSpec("alice", "bob", "USD.BANK-A", 10**6)]).signed_by(alice)
        fail = client.submit(too_much)
        assert isinstance(fail, Committed) and not fail.ok and fail.code_name == "INSUFFICIENT_FUNDS"

        acc = client.account("alice")
        assert acc.member_id == "BANK-A" and acc.owner_key == alice.public_key
        assert acc.balance("USD.BANK-A").available_minor == 7450
        assert client.account("bob").balance("USD.BANK-A").available_minor == 2550
        usd = {s.asset: s for s in client.supply().assets}["USD.BANK-A"]
        assert (usd.minted_minor, usd.outstanding_minor) == (10000, 10000)

        info = client.transaction(pay.tx_id)
        assert info.committed.height == 4 and info.transaction is not None
        assert info.transaction.body == pay.body
        block = client.block(4)
        assert block.tx_ids == (pay.tx_id,) and block.attested is not None
        assert client.status().last_executed == 5
        assert all(not isinstance(s, str) for s in client.statuses().values())


def test_resubmitting_the_same_envelope_commits_once(chain: FakeChain, honest: list[str]) -> None:
    with _client(chain, honest) as client:
        alice = _setup_alice(client, chain)
        pay = client.tx.transfer([LegSpec("alice", "bob", "USD.BANK-A", 100)]).signed_by(alice)
        first = client.submit(pay)
        again = client.submit(pay.envelope_bytes())
        assert isinstance(first, Committed) and isinstance(again, Committed)
        assert (again.height, again.result.index, again.tx_id) == (
            first.height,
            first.result.index,
            pay.tx_id,
        )
        assert client.account("alice").balance("USD.BANK-A").available_minor == 9900


def test_fails_over_from_down_and_unreachable_nodes(chain: FakeChain) -> None:
    nodes = [FakeNode(chain, mode="down"), FakeNode(chain)]
    with serve(nodes) as endpoints, _client(chain, [closed_port(), *endpoints]) as client:
        out = client.submit(
            client.tx.open_account("BANK-A", "x", bytes(32)).signed_by(chain.banks[0].operator_key)
        )
        assert isinstance(out, Committed) and out.endpoint == endpoints[1]
        assert nodes[0].submits == 0 and nodes[1].submits == 1
        assert client.account("x").member_id == "BANK-A"


@pytest.mark.parametrize("tamper", [forge_certificate, lie_about_result, drop_commits])
def test_a_lying_node_is_caught_and_an_honest_one_answers(chain: FakeChain, tamper) -> None:  # type: ignore[no-untyped-def]
    liar = FakeNode(chain, tamper=tamper)
    with serve([liar, FakeNode(chain), FakeNode(chain)]) as endpoints, _client(chain, endpoints) as client:
        tx = client.tx.open_account("BANK-A", "x", bytes(32)).signed_by(chain.banks[0].operator_key)
        out = client.submit(tx)
        assert liar.submits == 1  # the liar was asked first and its receipt refused
        assert isinstance(out, Committed) and out.ok and out.endpoint != endpoints[0]
        # Queries too: the liar is asked first again, its copy does not verify, an honest one does.
        client._first = 0
        assert client.transaction(tx.tx_id).committed.endpoint == endpoints[1]


def test_only_liars_means_no_receipt_is_accepted(chain: FakeChain) -> None:
    liars = [FakeNode(chain, tamper=lie_about_result) for _ in range(2)]
    with serve(liars) as endpoints, _client(chain, endpoints, timeout_s=2.0) as client:
        tx = client.tx.open_account("BANK-A", "x", bytes(32)).signed_by(chain.banks[0].operator_key)
        out = client.submit(tx)
        assert isinstance(out, Indefinite) and out.reason == "no verifiable receipt"
        assert any("receipt rejected: bad_result_proof" in e for e in out.errors)
        with pytest.raises(Unverified, match="bad_result_proof"):
            client.transaction(tx.tx_id)


def test_timeout_is_indefinite_and_retrying_the_same_envelope_is_safe(chain: FakeChain) -> None:
    holders = [FakeNode(chain, mode="hold") for _ in range(2)]
    with serve(holders) as endpoints, _client(chain, endpoints, timeout_s=1.0) as client:
        tx = client.tx.open_account("BANK-A", "x", bytes(32)).signed_by(chain.banks[0].operator_key)
        started = time.monotonic()
        out = client.submit(tx)
        assert isinstance(out, Indefinite) and out.tx_id == tx.tx_id
        assert time.monotonic() - started < 3.0  # the deadline is honored
        # The held copies commit after all (possibly twice over): the retry finds one result.
        chain.commit(holders[0].held[:1] + holders[1].held[:1])
        again = client.submit(out.envelope)
        assert isinstance(again, Committed) and again.ok and again.height == 1
        assert len(chain.ledger.accounts) == 1  # type: ignore[union-attr]


def test_refusals_need_f_plus_1_nodes(chain: FakeChain) -> None:
    with (
        serve([FakeNode(chain, mode="refuse"), FakeNode(chain)]) as endpoints,
        _client(chain, endpoints) as client,
    ):
        out = client.submit(
            client.tx.open_account("BANK-A", "x", bytes(32)).signed_by(chain.banks[0].operator_key)
        )
        assert isinstance(out, Committed)  # one refusing node is not enough to give up
    with (
        serve([FakeNode(chain, mode="refuse") for _ in range(3)]) as endpoints,
        _client(chain, endpoints) as client,
    ):
        out = client.submit(
            client.tx.open_account("BANK-A", "y", bytes(32)).signed_by(chain.banks[0].operator_key)
        )
        assert isinstance(out, Rejected) and len(out.refusals) == 2
        assert out.refusals[0][1] == "INVALID_ARGUMENT" and "refused" in out.detail


def test_honest_nodes_reject_a_bad_signature_definitely(chain: FakeChain, honest: list[str]) -> None:
    with _client(chain, honest) as client:
        tx = client.tx.open_account("BANK-A", "x", bytes(32))
        # A signature by the right key over another chain's signing bytes: our from_envelope
        # check would catch it, so build the Transaction directly as a buggy client might.
        wrong = Transaction("other", tx.body).signed_by(chain.banks[0].operator_key)
        out = client.submit(Transaction(tx.chain_id, tx.body, wrong.signatures))
        assert isinstance(out, Rejected) and out.detail == "bad signature"


def test_query_errors(chain: FakeChain, honest: list[str]) -> None:
    with _client(chain, honest) as client:
        with pytest.raises(NotFound, match="account 'nobody'"):
            client.account("nobody")
        with pytest.raises(NotFound):
            client.transaction(b"\x00" * 32)
        with pytest.raises(NotFound):
            client.block(99)
        assert client.wait(b"\x00" * 32, timeout_s=1.0) is None
    with _client(chain, [closed_port(), closed_port()], timeout_s=1.0) as client:
        with pytest.raises(Unreachable, match="UNAVAILABLE"):
            client.account("alice")
        statuses = client.statuses()
        assert len(statuses) == 2 and all(isinstance(s, str) for s in statuses.values())
        out = client.submit(client.tx.escrow_void("e").signed_by(SigningKey.generate()))
        assert isinstance(out, Indefinite) and "UNAVAILABLE" in " ".join(out.errors)


def test_confirmations_outvote_a_node_lying_about_balances(chain: FakeChain) -> None:
    nodes = [FakeNode(chain, mode="inflate"), FakeNode(chain), FakeNode(chain)]
    with serve(nodes) as endpoints, _client(chain, endpoints, timeout_s=2.0) as client:
        _setup_alice(client, chain)
        client._first = 0  # the liar answers first
        assert client.account("alice").balance("USD.BANK-A").available_minor == 10000 + 10**6  # its word only
        confirmed = client.balances("alice", confirmations=chain.genesis.f + 1)
        assert confirmed["USD.BANK-A"].available_minor == 10000
        with pytest.raises(NotFound, match="not found at 2 nodes"):
            client.account("nobody", confirmations=2)
        with pytest.raises(ValueError, match="4 confirmations"):
            client.account("alice", confirmations=4)
    split = [FakeNode(chain, mode="inflate"), FakeNode(chain)]
    with (
        serve(split) as endpoints,
        _client(chain, endpoints, timeout_s=0.5) as client,
        pytest.raises(Unverified, match="fewer than 2 agree"),
    ):
        client.account("alice", confirmations=2)


def test_a_stripped_copy_failing_first_does_not_decide_the_outcome(
    chain: FakeChain, honest: list[str]
) -> None:
    # Anyone can strip a signature off a body and get that copy executed first: its
    # MISSING_SIGNATURE is in a certified block, but does not consume the tx id.
    with _client(chain, honest, timeout_s=1.0) as client:
        alice = _setup_alice(client, chain)
        pay = client.tx.transfer([LegSpec("alice", "bob", "USD.BANK-A", 100)]).signed_by(alice)
        chain.commit([Transaction(pay.chain_id, pay.body).envelope_bytes()])  # no signatures
        stale = client.transaction(pay.tx_id).committed
        assert stale.code_name == "MISSING_SIGNATURE" and not stale.final
        out = client.submit(pay)
        assert isinstance(out, Committed) and out.ok and out.final and out.height > stale.height
        # A node that never gets the genuine copy committed serves only the stale result:
        # that is not an answer, so the outcome stays open.
    with (
        serve([FakeNode(chain, mode="hold")]) as endpoints,
        _client(chain, endpoints, timeout_s=1.0) as client,
    ):
        again = client.tx.transfer([LegSpec("alice", "bob", "USD.BANK-A", 1)]).signed_by(alice)
        chain.commit([Transaction(again.chain_id, again.body).envelope_bytes()])
        out = client.submit(again)
        assert isinstance(out, Indefinite) and "only included with MISSING_SIGNATURE" in out.reason


def test_an_envelope_really_missing_a_cosigner_ends_indefinite_with_the_reason(
    chain: FakeChain, honest: list[str]
) -> None:
    with _client(chain, honest, timeout_s=1.0) as client:
        alice = _setup_alice(client, chain)
        pvp = client.tx.pvp(
            LegSpec("alice", "bob", "USD.BANK-A", 100), LegSpec("bob", "alice", "EUR.BANK-B", 90)
        )
        out = client.submit(pvp.signed_by(alice))  # bob never signed
        assert (
            isinstance(out, Indefinite)
            and "MISSING_SIGNATURE" in out.reason
            and "add it and resubmit" in out.reason
        )


def _payments(client: LedgerClient, alice: SigningKey, count: int) -> list[Transaction]:
    return [
        client.tx.transfer([LegSpec("alice", "bob", "USD.BANK-A", i + 1)]).signed_by(alice)
        for i in range(count)
    ]


def test_submit_many_settles_a_batch_in_one_block_with_verified_proofs(
    chain: FakeChain, honest: list[str]
) -> None:
    with _client(chain, honest) as client:
        alice = _setup_alice(client, chain)
        txs = _payments(client, alice, 7)
        outcomes = client.submit_many(txs, chunk_size=5)
        assert all(isinstance(o, Committed) and o.ok for o in outcomes)
        committed = [o for o in outcomes if isinstance(o, Committed)]
        assert [o.tx_id for o in committed] == [t.tx_id for t in txs]
        # Two chunks, two blocks; Merkle proofs at every index of a 5-leaf and a 2-leaf tree.
        assert [(o.height, o.result.index) for o in committed] == [
            (4, 0),
            (4, 1),
            (4, 2),
            (4, 3),
            (4, 4),
            (5, 0),
            (5, 1),
        ]
        assert client.account("bob").balance("USD.BANK-A").available_minor == sum(range(1, 8))


def test_submit_many_falls_back_to_careful_submits_past_a_liar_or_a_refusal(chain: FakeChain) -> None:
    liar = FakeNode(chain, tamper=lie_about_result)
    with serve([liar, FakeNode(chain), FakeNode(chain)]) as endpoints, _client(chain, endpoints) as client:
        alice = _setup_alice(client, chain)
        txs = _payments(client, alice, 3)
        bad = Transaction(
            txs[0].chain_id, client.tx.escrow_void("e").body, txs[0].signatures
        )  # wrong body for sig
        client._first = 0  # the batch goes to the liar
        outcomes = client.submit_many([*txs, bad])
        assert liar.submits >= 4, "the liar took the chunk"
        assert all(isinstance(o, Committed) and o.ok and o.endpoint != endpoints[0] for o in outcomes[:3])
        assert isinstance(outcomes[3], Rejected)
        assert client.account("bob").balance("USD.BANK-A").available_minor == 6


def test_a_node_that_stalls_is_asked_last_instead_of_costing_every_rotation_a_timeout(
    chain: FakeChain,
) -> None:
    staller = FakeNode(chain, mode="stall")  # a paused process: connects, never answers
    with (
        serve([staller, FakeNode(chain), FakeNode(chain)]) as endpoints,
        LedgerClient(
            chain.genesis, endpoints, timeout_s=5.0, call_timeout_s=0.3, receipt_wait_s=0.5
        ) as client,
    ):
        op = chain.banks[0].operator_key
        first = client.submit(client.tx.open_account("BANK-A", "x0", bytes(32)).signed_by(op))
        assert isinstance(first, Committed) and first.endpoint != endpoints[0]
        assert staller.calls == 1, "the rotation starts at the staller: asked once, timed out"
        for i in range(1, 7):  # two more rotations: each would start at the staller once
            out = client.submit(client.tx.open_account("BANK-A", f"x{i}", bytes(32)).signed_by(op))
            assert isinstance(out, Committed) and out.endpoint != endpoints[0]
        assert staller.calls == 1


def test_reads_carry_their_height_and_min_height_is_passed_on(chain: FakeChain, honest: list[str]) -> None:
    with _client(chain, honest, timeout_s=2.0) as client:
        _setup_alice(client, chain)
        acc = client.account("alice", min_height=3)
        assert acc.height == 3 and client.supply(min_height=3).height == 3
        assert client.balances("alice", min_height=1)["USD.BANK-A"].available_minor == 10000
        with pytest.raises(Unreachable, match="node is at height 3 < min_height 4"):
            client.account("alice", min_height=4)
        with pytest.raises(Unreachable, match="node is at height 3 < min_height 9"):
            client.supply(min_height=9)


def test_blocks_reads_a_verified_range_and_refuses_one_with_a_gap(
    chain: FakeChain, honest: list[str]
) -> None:
    with _client(chain, honest) as client:
        _setup_alice(client, chain)
        got = client.blocks(1, 2)
        assert [b.block.header.height for b in got.blocks] == [1, 2]
        assert (got.next_height, got.last_height) == (3, 3)
        assert all(b.attested is not None for b in got.blocks)
        rest = client.blocks(got.next_height)
        assert [b.block.header.height for b in rest.blocks] == [3] and rest.next_height == 4
        assert client.blocks(10).blocks == ()
    with (
        serve([FakeNode(chain, mode="skip")]) as endpoints,
        _client(chain, endpoints, timeout_s=1.0) as client,
        pytest.raises(Unverified, match="asked for block 1, got 2"),
    ):
        client.blocks(1)


def test_a_transaction_held_but_not_executed_is_pending_which_is_a_not_found(chain: FakeChain) -> None:
    from client.models import Pending
    from ledger.v1 import api_pb2

    hold = FakeNode(chain, mode="hold")
    with serve([hold, FakeNode(chain)]) as endpoints, _client(chain, endpoints, timeout_s=2.0) as client:
        tx = client.tx.open_account("BANK-A", "held", bytes(32)).signed_by(chain.banks[0].operator_key)
        client._stub(endpoints[0]).Submit(api_pb2.SubmitRequest(envelope=tx.envelope()), timeout=2)
        with pytest.raises(Pending, match=f"pending .* at {endpoints[0]}"):
            client.transaction(tx.tx_id)
        assert client.wait(tx.tx_id, timeout_s=1.0) is None, "code that knows only NotFound is unchanged"
        with pytest.raises(NotFound) as unknown:
            client.transaction(b"\x01" * 32)
        assert not isinstance(unknown.value, Pending)
