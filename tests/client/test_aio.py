"""AsyncLedgerClient against the in-process fake nodes: same outcomes as the sync client."""

import asyncio

import pytest

from client.aio import AsyncLedgerClient
from client.models import Committed, Indefinite, NotFound, Rejected
from client.tx import LegSpec, Transaction
from ledger.crypto import SigningKey
from tests.client.fakes import FakeChain, FakeNode, closed_port, forge_certificate, lie_about_result, serve


def test_async_client_submits_verifies_fails_over_and_queries() -> None:
    chain = FakeChain()
    liar = FakeNode(chain, tamper=forge_certificate)
    nodes = [liar, FakeNode(chain, mode="down"), FakeNode(chain)]
    alice = SigningKey.generate()
    op = chain.banks[0].operator_key

    async def scenario(endpoints: list[str]) -> None:
        async with AsyncLedgerClient(
            chain.genesis, [*endpoints, closed_port()], timeout_s=5.0, call_timeout_s=1.0, receipt_wait_s=0.5
        ) as client:
            b = client.tx
            opened = await client.submit(b.open_account("BANK-A", "alice", alice.public_key).signed_by(op))
            assert isinstance(opened, Committed) and opened.ok and opened.endpoint == endpoints[2]
            assert liar.submits == 1  # asked, but its forged receipt was refused
            for tx in (
                b.open_account("BANK-A", "bob", bytes(32)).signed_by(op),
                b.mint("USD.BANK-A", "alice", 500, "d1").signed_by(op),
            ):
                assert isinstance(await client.submit(tx), Committed)
            pay = b.transfer([LegSpec("alice", "bob", "USD.BANK-A", 200)]).signed_by(alice)
            first, again = await client.submit(pay), await client.submit(pay.envelope_bytes())
            assert (
                isinstance(first, Committed) and isinstance(again, Committed) and first.height == again.height
            )
            assert (await client.account("bob")).balance("USD.BANK-A").available_minor == 200
            confirmed = await client.balances("bob", confirmations=2)
            assert confirmed["USD.BANK-A"].available_minor == 200
            assert (await client.transaction(pay.tx_id)).committed.endpoint == endpoints[2]
            assert (await client.block(first.height)).tx_ids == (pay.tx_id,)
            assert {s.asset for s in (await client.supply()).assets} >= {"USD.BANK-A"}
            assert (await client.supply(min_height=4)).height == 4
            assert (await client.account("bob", min_height=4)).height == 4
            blocks = await client.blocks(2, 10)
            assert [b.block.header.height for b in blocks.blocks] == [2, 3, 4] and blocks.next_height == 5
            assert (await client.status(endpoints[2])).last_executed == 4
            with pytest.raises(NotFound):
                await client.account("nobody")

    with serve(nodes) as endpoints:
        asyncio.run(scenario(endpoints))


def test_async_client_rejected_and_indefinite() -> None:
    chain = FakeChain()

    async def scenario(refusing: list[str], holding: list[str]) -> None:
        tx = chain.banks[0].operator_key
        async with AsyncLedgerClient(chain.genesis, refusing, timeout_s=2.0) as client:
            out = await client.submit(client.tx.open_account("BANK-A", "x", bytes(32)).signed_by(tx))
            assert isinstance(out, Rejected)
        async with AsyncLedgerClient(chain.genesis, holding, timeout_s=1.0, receipt_wait_s=0.3) as client:
            out = await client.submit(client.tx.open_account("BANK-A", "y", bytes(32)).signed_by(tx))
            assert isinstance(out, Indefinite) and "DEADLINE_EXCEEDED" in " ".join(out.errors)

    refusers = [FakeNode(chain, mode="refuse") for _ in range(2)]
    with serve(refusers) as refusing, serve([FakeNode(chain, mode="hold")]) as holding:
        asyncio.run(scenario(refusing, holding))


def test_async_submit_many_settles_chunks_in_shared_blocks_and_falls_back_past_a_liar() -> None:
    """The fake nodes serve no SubmitStream (UNIMPLEMENTED), so this is the per-chunk path;
    the stream path runs against a real consortium in test_live.py."""
    chain = FakeChain()
    liar = FakeNode(chain, tamper=lie_about_result)
    alice = SigningKey.generate()
    op_a, op_b = chain.banks[0].operator_key, chain.banks[1].operator_key

    async def scenario(endpoints: list[str]) -> None:
        async with AsyncLedgerClient(
            chain.genesis, endpoints[1:], timeout_s=5.0, call_timeout_s=1.0, receipt_wait_s=0.5
        ) as client:
            b = client.tx
            setup = [
                b.open_account("BANK-A", "alice", alice.public_key).signed_by(op_a),
                b.open_account("BANK-B", "bob", bytes(32)).signed_by(op_b),
                b.mint("USD.BANK-A", "alice", 10000, "dep-1").signed_by(op_a),
            ]
            assert all(isinstance(o, Committed) and o.ok for o in await client.submit_many(setup))
            pays = [
                b.transfer([LegSpec("alice", "bob", "USD.BANK-A", i + 1)]).signed_by(alice) for i in range(7)
            ]
            outcomes = await client.submit_many(pays, chunk_size=5)
            committed = [o for o in outcomes if isinstance(o, Committed) and o.ok]
            assert [o.tx_id for o in committed] == [t.tx_id for t in pays]
            # Two chunks, two blocks: each chunk was submitted and settled as one.
            heights = [o.height for o in committed]
            assert heights == [heights[0]] * 5 + [heights[0] + 1] * 2

        async with AsyncLedgerClient(
            chain.genesis, endpoints, timeout_s=5.0, call_timeout_s=1.0, receipt_wait_s=0.5
        ) as client:
            more = [
                client.tx.transfer([LegSpec("alice", "bob", "USD.BANK-A", 1)]).signed_by(alice)
                for _ in range(3)
            ]
            bad = Transaction(more[0].chain_id, client.tx.escrow_void("e").body, more[0].signatures)
            client._first = 0  # the chunk goes to the liar, whose receipts do not verify
            outcomes = await client.submit_many([*more, bad, more[0]])
            assert all(isinstance(o, Committed) and o.ok and o.endpoint != endpoints[0] for o in outcomes[:3])
            assert isinstance(outcomes[3], Rejected)
            assert outcomes[4] == outcomes[0], "a transaction given twice has one outcome"
            assert liar.submits >= 5, "the liar took the chunk"
            assert (await client.account("bob")).balance("USD.BANK-A").available_minor == sum(range(1, 8)) + 3

    with serve([liar, FakeNode(chain), FakeNode(chain)]) as endpoints:
        asyncio.run(scenario(endpoints))


def test_async_client_asks_a_stalling_node_last_after_it_timed_out() -> None:
    chain = FakeChain()
    staller = FakeNode(chain, mode="stall")
    op = chain.banks[0].operator_key

    async def scenario(endpoints: list[str]) -> None:
        async with AsyncLedgerClient(
            chain.genesis, endpoints, timeout_s=5.0, call_timeout_s=0.3, receipt_wait_s=0.5
        ) as client:
            for i in range(7):  # three rotations, each of which would start at the staller once
                out = await client.submit(client.tx.open_account("BANK-A", f"x{i}", bytes(32)).signed_by(op))
                assert isinstance(out, Committed) and out.endpoint != endpoints[0]
            assert staller.calls == 1, "asked first once, timed out, then asked last"

    with serve([staller, FakeNode(chain), FakeNode(chain)]) as endpoints:
        asyncio.run(scenario(endpoints))
