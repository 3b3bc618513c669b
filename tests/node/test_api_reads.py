"""The query half of the client API in-process (issue 21, "reads that say when they were
true"): heights on account and supply reads and min_height, the GetBlocks range and its
bounds, pending versus unknown in GetTransaction, attestations_complete, and the background
backfill of attestations. Real Ledger and driver, in-memory store, scripted replica."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc
import pytest

from ledger import readtoken
from ledger.crypto import SigningKey
from ledger.v1 import api_pb2
from node import receipts
from node.api import Abort as _Abort
from node.api import LedgerApi
from node.api import queries as api_module
from node.driver import Driver
from node.pbft import actions as act
from node.pbft import wire
from node.storage import blocks
from sim.factory import Factory
from tests.node.test_driver import _block, make, make_api

ATTESTATIONS = tuple(
    wire.encode_signed(b"attestation-body", i, bytes(64)) for i in range(2)
)  # f+1, not checked


def chain(blocks_count: int) -> tuple[Factory, Driver, LedgerApi, list[bytes]]:
    """A node that has executed ``blocks_count`` blocks (one account opened in each; the
    first two attested), and its API."""
    fx = Factory()
    driver, _, _ = make(fx)
    api = make_api(fx, driver)
    opened = [
        fx.open_account("BANK-A", f"acct{h}", fx.client(f"acct{h}")) for h in range(1, blocks_count + 1)
    ]
    for height, raw in enumerate(opened, start=1):
        driver.run([_block(fx, height, [raw])])
    driver.run([act.Attested(1, ATTESTATIONS), act.Attested(2, ATTESTATIONS)])
    return fx, driver, api, opened


def token(fx: Factory, method: str, scope: str = readtoken.SCOPE_ALL, key: SigningKey | None = None) -> bytes:
    """A read token, by BANK-A's operator unless ``key`` (node/api/authority.py: tests of who
    may read are in tests/node/test_read_authority.py)."""
    return readtoken.build(key or fx.operators["BANK-A"], fx.chain_id, method, scope, readtoken_now())


def readtoken_now() -> int:
    return time.time_ns() // 1_000_000


def refused(call: Awaitable[bytes]) -> _Abort:
    async def run() -> _Abort:
        try:
            await call
        except _Abort as exc:
            return exc
        raise AssertionError("the call succeeded; expected an error status")

    return asyncio.run(run())


def test_account_and_supply_carry_the_height_they_were_read_at() -> None:
    fx, _, api, _ = chain(3)
    account = api_pb2.Account.FromString(
        asyncio.run(
            api.queries.get_account(
                api_pb2.GetAccountRequest(account_id="acct2").SerializeToString(),
                token(fx, "GetAccount", "acct2"),
            )
        )
    )
    supply = api_pb2.GetSupplyResponse.FromString(
        asyncio.run(api.queries.get_supply(b"", token(fx, "GetSupply")))
    )
    assert (account.account_id, account.height, supply.height) == ("acct2", 3, 3)
    at_or_below = api_pb2.GetAccountRequest(account_id="acct1", min_height=3).SerializeToString()
    assert (
        api_pb2.Account.FromString(
            asyncio.run(api.queries.get_account(at_or_below, token(fx, "GetAccount", "acct1")))
        ).height
        == 3
    )
    unknown = refused(
        api.queries.get_account(
            api_pb2.GetAccountRequest(account_id="nobody").SerializeToString(),
            token(fx, "GetAccount", "nobody"),
        )
    )
    assert unknown.code == grpc.StatusCode.NOT_FOUND and "at height 3" in unknown.message


def test_a_read_with_min_height_waits_for_the_node_to_reach_it() -> None:
    fx, driver, api, _ = chain(1)
    late = fx.open_account("BANK-A", "late", fx.client("late"))

    async def scenario() -> tuple[api_pb2.Account, api_pb2.GetSupplyResponse]:
        account = asyncio.ensure_future(
            api.queries.get_account(
                api_pb2.GetAccountRequest(account_id="acct1", min_height=2).SerializeToString(),
                token(fx, "GetAccount", "acct1"),
            )
        )
        supply = asyncio.ensure_future(
            api.queries.get_supply(
                api_pb2.GetSupplyRequest(min_height=2).SerializeToString(), token(fx, "GetSupply")
            )
        )
        await asyncio.sleep(0)  # both handlers run up to their wait
        assert not account.done() and not supply.done(), "answered below min_height"
        driver.run([_block(fx, 2, [late])])
        return (
            api_pb2.Account.FromString(await asyncio.wait_for(account, 5)),
            api_pb2.GetSupplyResponse.FromString(await asyncio.wait_for(supply, 5)),
        )

    account, supply = asyncio.run(scenario())
    assert (account.height, supply.height) == (2, 2)
    assert not driver._height_waiters


@pytest.mark.parametrize("what", ["account", "supply"])
def test_a_min_height_the_node_does_not_reach_in_time_is_a_clear_failed_precondition(what: str) -> None:
    fx, driver, api, _ = chain(2)
    api.queries.min_height_wait_s = 0.05
    future = 2**64 - 1
    call = (
        api.queries.get_account(
            api_pb2.GetAccountRequest(account_id="acct1", min_height=future).SerializeToString(),
            token(fx, "GetAccount", "acct1"),
        )
        if what == "account"
        else api.queries.get_supply(
            api_pb2.GetSupplyRequest(min_height=future).SerializeToString(), token(fx, "GetSupply")
        )
    )
    exc = refused(call)
    assert exc.code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"node is at height 2 < min_height {future}" in exc.message
    assert not driver._height_waiters


def operator_token(api: LedgerApi, method: str) -> bytes:
    """BANK-A's operator key, from the API's genesis (the chain tests do not keep the Factory)."""
    fx = Factory()  # the default Factory: the same seed, keys and chain as chain()'s
    assert fx.chain_id == api.authority.chain_id
    return token(fx, method)


def get_blocks(api: LedgerApi, from_height: int, max_blocks: int) -> api_pb2.GetBlocksResponse:
    req = api_pb2.GetBlocksRequest(from_height=from_height, max_blocks=max_blocks)
    raw = asyncio.run(api.queries.get_blocks(req.SerializeToString(), operator_token(api, "GetBlocks")))
    return api_pb2.GetBlocksResponse.FromString(raw)


def get_block(api: LedgerApi, height: int) -> api_pb2.GetBlockResponse:
    req = api_pb2.GetBlockRequest(height=height).SerializeToString()
    raw = asyncio.run(api.queries.get_block(req, operator_token(api, "GetBlock")))
    return api_pb2.GetBlockResponse.FromString(raw)


def test_get_blocks_serves_a_range_as_get_block_serves_each_and_says_where_to_go_on() -> None:
    _, _, api, _ = chain(5)
    first = get_blocks(api, 2, 3)
    assert [b.block.header for b in first.blocks] == [get_block(api, h).block.header for h in (2, 3, 4)]
    assert list(first.blocks) == [get_block(api, h) for h in (2, 3, 4)]  # the same content, field for field
    assert (first.next_height, first.last_height) == (5, 5)
    assert [len(b.results) for b in first.blocks] == [1, 1, 1]
    assert [b.attestations_complete for b in first.blocks] == [True, False, False]
    rest = get_blocks(api, first.next_height, 3)
    assert [len(rest.blocks), rest.next_height, rest.last_height] == [1, 6, 5]
    past = get_blocks(api, 6, 10)  # past the head: nothing, and where the head is
    assert [len(past.blocks), past.next_height, past.last_height] == [0, 6, 5]
    far = get_blocks(api, 2**64 - 1, 1)
    assert [len(far.blocks), far.next_height, far.last_height] == [0, 2**64 - 1, 5]


def test_get_blocks_caps_blocks_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, api, _ = chain(5)
    huge = get_blocks(api, 1, 2**32 - 1)  # more than the cap: read as the cap
    assert [len(huge.blocks), huge.next_height] == [5, 6]
    monkeypatch.setattr(api_module, "BLOCKS_PER_REPLY_MAX", 3)
    capped = get_blocks(api, 1, 2**32 - 1)
    assert [len(capped.blocks), capped.next_height] == [3, 4]
    one_block = len(get_block(api, 3).SerializeToString())  # blocks 3, 4, 5: one size
    monkeypatch.setattr(api_module, "BLOCKS_REPLY_BYTES_MAX", 2 * one_block + 10)
    reply = get_blocks(api, 3, 100)
    assert [len(reply.blocks), reply.next_height] == [2, 5]
    assert len(reply.SerializeToString()) <= 2 * one_block + 10 + 8  # + next/last height fields
    monkeypatch.setattr(api_module, "BLOCKS_REPLY_BYTES_MAX", 10)  # smaller than any block
    alone = get_blocks(api, 3, 100)
    assert [len(alone.blocks), alone.next_height] == [1, 4], "a block larger than the bound goes alone"


@pytest.mark.parametrize(
    ("from_height", "max_blocks", "needle"),
    [(0, 5, "from_height must be >= 1"), (1, 0, "max_blocks must be >= 1")],
)
def test_get_blocks_refuses_bad_ranges(from_height: int, max_blocks: int, needle: str) -> None:
    _, _, api, _ = chain(1)
    req = api_pb2.GetBlocksRequest(from_height=from_height, max_blocks=max_blocks).SerializeToString()
    exc = refused(api.queries.get_blocks(req, operator_token(api, "GetBlocks")))
    assert exc.code == grpc.StatusCode.INVALID_ARGUMENT and needle in exc.message
    assert refused(api.queries.get_blocks(b"\xff\xff", None)).code == grpc.StatusCode.INVALID_ARGUMENT


def test_get_block_says_whether_the_block_has_its_attestations() -> None:
    _, driver, api, _ = chain(3)
    assert (get_block(api, 1).attestations_complete, len(get_block(api, 1).attestations)) == (True, 2)
    assert (get_block(api, 3).attestations_complete, len(get_block(api, 3).attestations)) == (False, 0)
    driver.run([act.Attested(3, ATTESTATIONS)])
    assert get_block(api, 3).attestations_complete
    req = api_pb2.GetBlockRequest(height=4).SerializeToString()
    assert (
        refused(api.queries.get_block(req, operator_token(api, "GetBlock"))).code == grpc.StatusCode.NOT_FOUND
    )


def test_get_transaction_tells_pending_from_unknown_and_old_clients_still_see_not_found() -> None:
    fx, driver, api, opened = chain(1)
    pending = fx.open_account("BANK-A", "waiting", fx.client("waiting"))
    relayed = fx.open_account("BANK-A", "relayed", fx.client("relayed"))
    assert driver.submit(fx.tx_id(pending), pending)  # admitted here, not executed
    driver.replica.pending[fx.tx_id(relayed)] = relayed  # type: ignore[index]  # held from a peer

    def ask(tx_id: bytes, include_pending: bool) -> Callable[[], Coroutine[Any, Any, bytes]]:
        req = api_pb2.GetTransactionRequest(tx_id=tx_id, include_pending=include_pending)
        auth = token(fx, "GetTransaction", readtoken.tx_scope(tx_id))
        return lambda: api.queries.get_transaction(req.SerializeToString(), auth)

    for tx_id in (fx.tx_id(pending), fx.tx_id(relayed)):
        old = refused(ask(tx_id, False)())
        assert old.code == grpc.StatusCode.NOT_FOUND and "pending" in old.message
        answer = api_pb2.GetTransactionResponse.FromString(asyncio.run(ask(tx_id, True)()))
        assert answer.status == api_pb2.TX_STATUS_PENDING and not answer.HasField("receipt")
    for include_pending in (False, True):
        unknown = refused(ask(bytes(32), include_pending)())
        assert unknown.code == grpc.StatusCode.NOT_FOUND and "pending" not in unknown.message
    committed = api_pb2.GetTransactionResponse.FromString(asyncio.run(ask(fx.tx_id(opened[0]), True)()))
    assert committed.status == api_pb2.TX_STATUS_COMMITTED and committed.receipt.result.height == 1
    driver.run([_block(fx, 2, [pending])])
    driver.replica.pending.pop(fx.tx_id(pending), None)  # type: ignore[attr-defined]
    executed = api_pb2.GetTransactionResponse.FromString(asyncio.run(ask(fx.tx_id(pending), True)()))
    assert executed.status == api_pb2.TX_STATUS_COMMITTED and executed.receipt.result.height == 2


def test_the_background_backfill_fills_every_block_unlikely_to_be_attested_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, driver, api, _ = chain(6)
    monkeypatch.setattr(receipts, "BACKFILL_BLOCKS_PER_S", 1000)
    monkeypatch.setattr(receipts, "BACKFILL_IDLE_S", 0.001)
    monkeypatch.setattr(receipts, "BACKFILL_RETRY_S", 0.001)
    monkeypatch.setattr(receipts, "BACKFILL_SCAN_BLOCKS", 2)  # several scan chunks
    backfill = api.queries.backfill
    fetched: list[int] = []
    fail_once = {4}

    async def fetch(height: int) -> bool:  # stands in for asking the peers
        fetched.append(height)
        if height in fail_once:
            fail_once.discard(height)
            return False
        return await driver.put_attestations(height, ATTESTATIONS, 5)  # stored by the loop

    monkeypatch.setattr(backfill, "_fill", fetch)
    woken: list[int] = []  # heights whose attestations the loop stored (and woke waiters for)

    def attested(height: int) -> None:
        woken.append(height)
        driver.wake_waiters(height)

    driver.core.on_attested = attested
    # Replayed heights and those 3 behind the head (6) are unlikely to get attestations: 3, 5.
    driver.core._replayed[5] = None
    assert [h for h in range(1, 7) if driver.unlikely_to_be_attested(h)] == [1, 2, 3, 5]

    async def scenario() -> None:
        driver.start()
        backfill.start(lambda: driver.head.last_executed, driver.unlikely_to_be_attested)
        deadline = asyncio.get_running_loop().time() + 5
        while sorted(set(woken)) != [3, 5] and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # polling the background task's progress
        driver.core._replayed[4] = None  # now 4 is unlikely too: it fails once, then is filled
        while 4 not in woken and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for _ in range(20):  # more idle rounds: nothing is fetched again
            await asyncio.sleep(0.002)
        await backfill.close()
        await driver.stop()

    asyncio.run(scenario())
    assert sorted(fetched) == [3, 4, 4, 5], "each block fetched once (4 again after its failure)"
    assert sorted(woken) == [3, 4, 5]
    with driver.store.read() as r:
        assert [h for h in range(1, 7) if not blocks.get_attestations(r, h)] == [6]


def test_concurrent_fills_of_one_block_share_one_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, api, _ = chain(3)
    calls: list[int] = []

    async def scenario() -> list[bool]:
        gate = asyncio.Event()

        async def fetch(height: int) -> bool:
            calls.append(height)
            await gate.wait()
            return True

        monkeypatch.setattr(api.queries.backfill, "_fill", fetch)
        first = asyncio.ensure_future(api.queries.backfill.fill(3))
        second = asyncio.ensure_future(api.queries.backfill.fill(3))
        await asyncio.sleep(0)
        first.cancel()  # one caller gives up: the fetch goes on for the other
        await asyncio.sleep(0)
        gate.set()
        return [await second, await api.queries.backfill.fill(3)]

    assert asyncio.run(scenario()) == [True, True]
    assert calls == [3, 3], "the two concurrent calls shared one fetch; a later call fetched again"
    assert not api.queries.backfill._filling
