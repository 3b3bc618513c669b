"""Postings and the history index: every kind that moves money, balances after each entry that
chain exactly, the same state roots with and without the index, and the history queries
(paging, kinds, time range, opening balances, escrows, bad input)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from ledger.v1 import api_pb2
from node import history
from node.app import postings
from node.app.ledger import BatchOutcome, Ledger
from node.storage import history as index
from node.storage.kv import KVStore
from node.storage.lmdb_store import LmdbStore
from node.storage.memory import MemoryStore
from sim.factory import Factory
from tests.app.helpers import Chain
from tests.storage.test_stores import count_reads

USD_A = "USD.BANK-A"


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KVStore]:
    s: KVStore = (
        MemoryStore() if request.param == "memory" else LmdbStore(tmp_path / "db", map_size_bytes=1 << 26)
    )
    try:
        yield s
    finally:
        s.close()


class IndexedChain(Chain):
    """Chain, with the postings indexed in the block's write transaction (as the driver does)."""

    def run(self, envelopes: Sequence[bytes], time_ms: int | None = None) -> BatchOutcome:
        if time_ms is not None:
            self.time_ms = time_ms
        with self.store.write() as w:
            out = self.ledger.execute(w, self.height + 1, self.time_ms, envelopes)
            index.put_postings(w, out.height, out.consensus_time_ms, out.postings)
        self.height += 1
        return out


def scenario(fx: Factory) -> list[tuple[int, list[bytes]]]:
    """(time_ms, block) pairs touching every posting kind, with failures in between."""
    return [
        (
            1_000,
            [
                fx.open_account("BANK-A", "alice", fx.client("alice")),
                fx.open_account("BANK-A", "bob", fx.client("bob")),
                fx.mint(USD_A, "alice", 1_000, "d-1"),
            ],
        ),
        (
            2_000,
            [
                fx.transfer(
                    [("alice", "bob", USD_A, 100), ("alice", "bob", USD_A, 50), ("bob", "alice", USD_A, 20)]
                ),
                fx.transfer([("alice", "bob", USD_A, 5_000)]),  # INSUFFICIENT_FUNDS: no posting
            ],
        ),
        (
            3_000,
            [
                fx.escrow_create("e1", "alice", "bob", USD_A, 200, 5_000),
                fx.escrow_create("e2", "alice", "bob", USD_A, 100, 10_000),
            ],
        ),
        (4_000, [fx.escrow_post("e2", 60, payer="alice")]),
        (6_000, [fx.redeem("bob", USD_A, 30, "p-1")]),  # e1 expires at the start of this block
        (7_000, [fx.escrow_create("e3", "bob", "alice", USD_A, 10, 20_000), fx.escrow_void("e3", "alice")]),
    ]


def run_scenario(store: KVStore, history_on: bool = True) -> tuple[Factory, Ledger, list[BatchOutcome]]:
    fx = Factory(banks=4, currencies=("USD",), seed=7)
    ledger = Ledger(fx.genesis, history=history_on)
    chain = IndexedChain(ledger, store)
    outs = [chain.run(block, time_ms=t) for t, block in scenario(fx)]
    return fx, ledger, outs


def entries(store: KVStore, ledger: Ledger, account: str, **kw: object) -> api_pb2.GetAccountHistoryResponse:
    req = api_pb2.GetAccountHistoryRequest(account_id=account, limit=1000, **kw)  # type: ignore[arg-type]
    with store.read() as r:
        return api_pb2.GetAccountHistoryResponse.FromString(
            history.account_history(ledger.genesis, r, req.SerializeToString())
        )


def test_postings_chain_to_the_balances_and_leave_state_roots_alone(store: KVStore, tmp_path: Path) -> None:
    _, ledger, outs = run_scenario(store)
    assert [o.expired_escrows for o in outs][4] == ("e1",)
    # The same blocks without the index: the same results and state roots, byte for byte.
    other = MemoryStore()
    _, _, plain = run_scenario(other, history_on=False)
    assert [(o.results, o.state_root) for o in outs] == [(o.results, o.state_root) for o in plain]
    assert all(not o.postings for o in plain)

    kinds = {p.kind for o in outs for p in o.postings}
    # Every kind execution makes (SNAPSHOT is written by state sync, never by a block).
    assert kinds == set(postings.KIND_NAMES) - {postings.SNAPSHOT}, f"kinds seen: {kinds}"
    chain = Chain(ledger, store)
    for account in ("alice", "bob"):
        got = list(reversed(entries(store, ledger, account).entries))  # oldest first
        available = held = 0
        for e in got:
            available += e.delta_available
            held += e.delta_held
            assert (e.available_after, e.held_after) == (available, held), f"{account}: {e}"
        assert (available, held) == chain.balance(account, USD_A)
    alice = list(reversed(entries(store, ledger, "alice").entries))
    assert [api_pb2.PostingKind.Name(e.kind).removeprefix("POSTING_KIND_") for e in alice] == [
        "MINT",
        "TRANSFER",
        "TRANSFER",
        "TRANSFER",
        "ESCROW_CREATE",
        "ESCROW_CREATE",
        "ESCROW_POST",
        "ESCROW_EXPIRE",
    ]
    assert [e.delta_available for e in alice] == [1_000, -100, -50, 20, -200, -100, 40, 200]
    assert [e.delta_held for e in alice] == [0, 0, 0, 0, 200, 100, -100, -200]
    expire = [e for e in alice if e.kind == postings.ESCROW_EXPIRE]
    assert len(expire) == 1 and expire[0].escrow_id == "e1" and expire[0].tx_id == b""
    assert expire[0].delta_available == 200 and expire[0].delta_held == -200 and expire[0].time_ms == 6_000
    mint = alice[0]
    assert mint.kind == postings.MINT and mint.counterparty == "BANK-A" and mint.delta_available == 1_000
    # Every entry names its transaction's index and tx_id as the block has them.
    by_height = {o.height: o for o in outs}
    for e in alice:
        if e.tx_id:
            assert by_height[e.height].tx_ids[e.index] == e.tx_id


def test_history_pages_kinds_time_range_and_opening(store: KVStore) -> None:
    _, ledger, _ = run_scenario(store)
    everything = list(entries(store, ledger, "alice").entries)
    paged: list[api_pb2.HistoryEntry] = []
    after = b""
    for _ in range(20):
        req = api_pb2.GetAccountHistoryRequest(account_id="alice", limit=2, after=after)
        with store.read() as r:
            page = api_pb2.GetAccountHistoryResponse.FromString(
                history.account_history(ledger.genesis, r, req.SerializeToString())
            )
        assert len(page.entries) <= 2
        paged += page.entries
        after = page.next_cursor
        if not after:
            break
    assert paged == everything
    transfers = entries(store, ledger, "alice", kinds=[postings.TRANSFER]).entries
    assert [e.kind for e in transfers] == [postings.TRANSFER] * 3
    assert [e.delta_available for e in transfers] == [20, -50, -100]  # newest first
    times = [e.time_ms for e in everything]
    assert times == sorted(times, reverse=True) and len(everything) == 8
    window = entries(store, ledger, "alice", from_time_ms=3_000, to_time_ms=6_000)
    assert {e.time_ms for e in window.entries} <= {3_000, 4_000} and window.entries
    (opening,) = window.opening
    first = window.entries[-1]  # the oldest of the window
    assert (opening.asset, opening.available, opening.held) == (
        USD_A,
        first.available_after - first.delta_available,
        first.held_after - first.delta_held,
    )
    assert not entries(store, ledger, "alice", from_time_ms=0, to_time_ms=500).opening


def _code(store: KVStore, ledger: Ledger, fn: object, req: object) -> grpc.StatusCode:
    with store.read() as r, pytest.raises(history.QueryError) as err:
        fn(ledger.genesis, r, req.SerializeToString())  # type: ignore[attr-defined, operator]
    return err.value.code


def test_escrow_lookup_and_bad_input(store: KVStore) -> None:
    _, ledger, _ = run_scenario(store)
    with store.read() as r:
        e1 = api_pb2.Escrow.FromString(
            history.get_escrow(
                ledger.genesis, r, api_pb2.GetEscrowRequest(escrow_id="e1").SerializeToString()
            )
        )
        listed = api_pb2.ListEscrowsResponse.FromString(
            history.list_escrows(
                ledger.genesis, r, api_pb2.ListEscrowsRequest(account_id="bob", limit=2).SerializeToString()
            )
        )
        rest = api_pb2.ListEscrowsResponse.FromString(
            history.list_escrows(
                ledger.genesis,
                r,
                api_pb2.ListEscrowsRequest(
                    account_id="bob", limit=2, after=listed.next_after
                ).SerializeToString(),
            )
        )
    assert e1.status == api_pb2.ESCROW_STATUS_EXPIRED and e1.amount == 200
    assert [e.escrow_id for e in listed.escrows] == ["e1", "e2"] and listed.next_after == "e2"
    assert [e.escrow_id for e in rest.escrows] == ["e3"] and not rest.next_after
    assert rest.escrows[0].status == api_pb2.ESCROW_STATUS_VOIDED

    H, NF, BAD = api_pb2.GetAccountHistoryRequest, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
    ah = history.account_history
    assert _code(store, ledger, ah, H(account_id="nobody", limit=5)) == NF
    assert _code(store, ledger, ah, H(account_id="alice", limit=0)) == BAD
    assert _code(store, ledger, ah, H(account_id="alice", limit=5, after=b"x" * 7)) == BAD
    assert _code(store, ledger, ah, H(account_id="alice", limit=5, kinds=[99])) == BAD  # type: ignore[list-item]
    assert _code(store, ledger, ah, H(account_id="alice", limit=5, from_time_ms=5, to_time_ms=5)) == BAD
    assert _code(store, ledger, ah, H(account_id="", limit=5)) == BAD
    assert _code(store, ledger, ah, H(account_id="a" * 500, limit=5)) == BAD
    with store.read() as r, pytest.raises(history.QueryError) as err:
        ah(ledger.genesis, r, b"\xff\xff garbage")
    assert err.value.code == BAD
    assert _code(store, ledger, history.get_escrow, api_pb2.GetEscrowRequest(escrow_id="nope")) == NF
    assert (
        _code(store, ledger, history.list_escrows, api_pb2.ListEscrowsRequest(account_id="x", limit=1)) == NF
    )
    assert (
        _code(store, ledger, history.list_escrows, api_pb2.ListEscrowsRequest(account_id="bob", limit=0))
        == BAD
    )


def test_a_failed_transaction_has_no_postings() -> None:
    fx = Factory(banks=4, currencies=("USD",), seed=3)
    ledger = Ledger(fx.genesis)
    chain = IndexedChain(ledger, MemoryStore())
    chain.run([fx.open_account("BANK-A", "alice", fx.client("alice"))])
    block = [
        fx.transfer([("alice", "bob", USD_A, 1)]),  # no account bob
        fx.redeem("alice", USD_A, 5, "p"),  # INSUFFICIENT_FUNDS
        fx.mint(USD_A, "alice", 5, "d"),
    ]
    out = chain.run(block)
    assert [c for c in out.codes] == ["UNKNOWN_ACCOUNT", "INSUFFICIENT_FUNDS", "OK"]
    assert [(p.account, p.kind, p.delta_available, p.available_after) for p in out.postings] == [
        ("alice", postings.MINT, 5, 5)
    ]


def test_postings_read_nothing_more_from_the_store() -> None:
    """Execution with postings reads exactly the records execution without them reads: the
    balances come from the transactions' own writes (held only where they changed it)."""
    reads: dict[bool, int] = {}
    for history_on in (False, True):
        fx = Factory(banks=4, currencies=("USD",), seed=11)
        s = MemoryStore()
        ledger = Ledger(fx.genesis, history=history_on)
        chain = IndexedChain(ledger, s)
        names = [f"r-{i}" for i in range(6)]
        chain.run([fx.open_account("BANK-A", n, fx.client(n)) for n in names])
        chain.run([fx.mint(USD_A, n, 1_000, f"d-{n}") for n in names])
        chain.run([fx.escrow_create("r-e", "r-0", "r-1", USD_A, 5, 10_000)])
        block = [fx.transfer([(names[i], names[(i + 1) % 6], USD_A, 7)]) for i in range(6)]
        block += [fx.escrow_post("r-e", 5, payer="r-0"), fx.redeem("r-2", USD_A, 3, "p")]
        with s.write() as w:
            counter = count_reads(s, w)
            out = ledger.execute(w, chain.height + 1, 5_000, block)
        assert set(out.codes) == {"OK"}
        reads[history_on] = counter[0]
        assert bool(out.postings) == history_on
    assert reads[True] == reads[False], reads
