"""History, statements, escrows and the feed over a real 4-node consortium, bad input included:
ledgerctl history/statement, the SDK, raw RPCs with wrong arguments, and a feed consumer that
survives the death of the node it reads from and reconciles with GetSupply."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest

from client.aio import AsyncLedgerClient
from client.cli import run
from client.feed_sqlite import IssuerBook
from client.history import FeedBlock
from client.models import LedgerError, NotFound
from client.sdk import LedgerClient
from ledger import readtoken
from ledger.crypto import SigningKey
from ledger.v1 import api_pb2
from sim.factory import Factory
from tests.node.helpers import (
    Consortium,
    factory_for,
    primary_of,
    running_consortium,
    stub,
    submit_all,
    wait_for,
)

USD_A = "USD.BANK-A"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    with running_consortium(tmp_path_factory.mktemp("history") / "c") as c:
        yield c


@pytest.fixture(scope="module")
def fx(net: Consortium) -> Factory:
    return factory_for(net)


def _height(receipts: list[api_pb2.Receipt]) -> int:
    return max(r.result.height for r in receipts)


def test_history_statement_and_escrows_through_ledgerctl_and_the_sdk(
    net: Consortium, fx: Factory, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = submit_all(
        net,
        "BANK-A",
        [
            fx.open_account("BANK-A", "h-alice", fx.client("h-alice")),
            fx.open_account("BANK-A", "h-bob", fx.client("h-bob")),
        ],
    )
    assert {r.result.code for r in setup} == {1}
    first = submit_all(net, "BANK-A", [fx.mint(USD_A, "h-alice", 10_000, "h-dep-1")])
    start_ms = int(time.time() * 1000)
    expires = start_ms + 3_600_000
    later = submit_all(
        net,
        "BANK-B",
        [
            fx.transfer([("h-alice", "h-bob", USD_A, 2_500)]),
            fx.escrow_create("h-esc-1", "h-alice", "h-bob", USD_A, 1_000, expires),
        ],
    )
    last = submit_all(net, "BANK-C", [fx.redeem("h-bob", USD_A, 500, "h-pay-1")])
    assert {r.result.code for r in first + later + last} == {1}

    assert run(["--dir", str(net.dir), "history", "h-alice", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["kind"] for e in entries] == ["MINT", "TRANSFER", "ESCROW_CREATE"]  # newest last
    assert [e["delta_available_minor"] for e in entries] == [10_000, -2_500, -1_000]
    assert (entries[-1]["available_after_minor"], entries[-1]["held_after_minor"]) == (6_500, 1_000)
    assert entries[0]["tx_id"] == first[0].result.tx_id.hex() and entries[0]["counterparty"] == "BANK-A"

    assert run(["--dir", str(net.dir), "history", "h-alice", "--limit", "1", "--json"]) == 0
    assert [e["kind"] for e in json.loads(capsys.readouterr().out)] == ["ESCROW_CREATE"]
    assert run(["--dir", str(net.dir), "history", "h-bob", "--csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("time,height,index") and len(lines) == 3  # TRANSFER in, REDEEM

    # A statement from after the mint: opening 10,000, two entries, closing 6,500 and 1,000 held.
    mint_ms = entries[0]["time_ms"]
    to_ms = entries[-1]["time_ms"] + 1
    argv = ["--dir", str(net.dir), "statement", "h-alice", "--from", str(mint_ms + 1), "--to", str(to_ms)]
    if entries[1]["time_ms"] > mint_ms:
        assert run([*argv, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        (usd,) = doc["assets"]
        assert (usd["opening_available_minor"], usd["closing_available_minor"]) == (10_000, 6_500)
        assert (usd["opening_held_minor"], usd["closing_held_minor"], usd["entries"]) == (0, 1_000, 2)
    assert run(argv) == 0
    assert "closing" in capsys.readouterr().out

    with LedgerClient(net.genesis_path, timeout_s=10, reader=fx.operators["BANK-A"]) as client:
        page = client.history("h-alice", limit=2)
        assert [e.kind for e in page.entries] == ["ESCROW_CREATE", "TRANSFER"] and page.next_cursor
        rest = client.history("h-alice", limit=2, after=page.next_cursor)
        assert [e.kind for e in rest.entries] == ["MINT"] and not rest.next_cursor
        transfers = client.history("h-alice", kinds=["transfer"])
        assert [e.delta_available for e in transfers.entries] == [-2_500]
        whole = client.statement("h-alice", 0, to_ms)
        assert [(a.asset, a.closing_available, a.closing_held) for a in whole.assets] == [
            (USD_A, 6_500, 1_000)
        ]
        esc = client.escrow("h-esc-1")
        assert (esc.status, esc.amount, esc.to_account) == ("PENDING", 1_000, "h-bob")
        assert [e.escrow_id for e in client.escrows("h-bob")] == ["h-esc-1"]
        with pytest.raises(NotFound):
            client.history("h-nobody")
        with pytest.raises(NotFound):
            client.escrow("h-no-such-escrow")
        with pytest.raises(ValueError):
            client.history("h-alice", limit=0)
    assert run(["--dir", str(net.dir), "history", "h-nobody", "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["exit_code"] == 3
    assert run(["--dir", str(net.dir), "statement", "h-alice", "--from", "yesterday", "--to", "1"]) == 2


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    """The status a call fails with (a stream is read to its end)."""
    with pytest.raises(grpc.RpcError) as err:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    code: grpc.StatusCode = cast(grpc.Call, err.value).code()
    return code


def test_bad_input_gets_a_clear_answer_and_nothing_hangs(net: Consortium, fx: Factory) -> None:
    s = stub(net, "BANK-D")
    submit_all(net, "BANK-A", [fx.open_account("BANK-A", "b-carol", fx.client("b-carol"))])
    H = api_pb2.GetAccountHistoryRequest
    bad, nf = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    chain = net.genesis().chain_id

    def md(method: str, scope: str, key: SigningKey | None = None) -> tuple[tuple[str, bytes], ...]:
        """A read token of BANK-A's operator (a member: it may read BANK-A's accounts and the feed)."""
        return readtoken.metadata(key or fx.operators["BANK-A"], chain, method, scope)

    # Who may read (node/api/history.py): no token, a stranger's key, another bank's operator,
    # a client's key on the feed.
    unauth, denied = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
    carol = H(account_id="b-carol", limit=5)
    assert _code(lambda: s.GetAccountHistory(carol, timeout=5)) == unauth
    stranger = md("GetAccountHistory", "b-carol", SigningKey.generate())
    assert _code(lambda: s.GetAccountHistory(carol, timeout=5, metadata=stranger)) == denied
    rival = md("GetAccountHistory", "b-carol", fx.operators["BANK-B"])
    assert _code(lambda: s.GetAccountHistory(carol, timeout=5, metadata=rival)) == denied
    owner = md("GetAccountHistory", "b-carol", fx.client("b-carol"))
    assert not s.GetAccountHistory(carol, timeout=5, metadata=owner).entries
    escrows = api_pb2.ListEscrowsRequest(account_id="b-carol", limit=5)
    rival_escrows = md("ListEscrows", "b-carol", fx.operators["BANK-B"])
    assert _code(lambda: s.ListEscrows(escrows, timeout=5, metadata=rival)) == unauth  # another method's
    assert _code(lambda: s.ListEscrows(escrows, timeout=5, metadata=rival_escrows)) == denied
    client_feed = md("Feed", "*", fx.client("b-carol"))
    assert (
        _code(lambda: s.Feed(api_pb2.FeedRequest(from_height=1), timeout=5, metadata=client_feed)) == denied
    )
    assert (
        _code(
            lambda: s.GetAccountHistory(
                H(account_id="b-nobody", limit=5), timeout=5, metadata=md("GetAccountHistory", "b-nobody")
            )
        )
        == nf
    )
    assert (
        _code(
            lambda: s.GetAccountHistory(
                H(account_id="b-carol", limit=0), timeout=5, metadata=md("GetAccountHistory", "b-carol")
            )
        )
        == bad
    )
    assert (
        _code(
            lambda: s.GetAccountHistory(
                H(account_id="b-carol", limit=5, after=b"junk"),
                timeout=5,
                metadata=md("GetAccountHistory", "b-carol"),
            )
        )
        == bad
    )
    assert (
        _code(
            lambda: s.GetAccountHistory(
                H(account_id="b-carol", limit=5, kinds=[42]),  # type: ignore[list-item]
                timeout=5,
                metadata=md("GetAccountHistory", "b-carol"),
            )
        )
        == bad
    )
    assert _code(lambda: s.GetAccountHistory(H(account_id="b-carol", limit=5, from_time_ms=9, to_time_ms=3), timeout=5, metadata=md("GetAccountHistory", "b-carol"))) == bad  # fmt: skip
    assert (
        _code(
            lambda: s.ListEscrows(
                api_pb2.ListEscrowsRequest(account_id="b-carol"),
                timeout=5,
                metadata=md("ListEscrows", "b-carol"),
            )
        )
        == bad
    )
    # A real cursor on an account with no entries yet: an empty page, no cursor.
    empty = s.GetAccountHistory(
        H(account_id="b-carol", limit=5), timeout=5, metadata=md("GetAccountHistory", "b-carol")
    )
    assert not empty.entries and not empty.next_cursor and empty.height >= 1

    F = api_pb2.FeedRequest
    assert _code(lambda: s.Feed(F(from_height=0, max_blocks=1), timeout=5, metadata=md("Feed", "*"))) == bad
    assert (
        _code(
            lambda: s.Feed(
                F(from_height=1, accounts=["b-nobody"], max_blocks=1), timeout=5, metadata=md("Feed", "*")
            )
        )
        == nf
    )
    assert (
        _code(
            lambda: s.Feed(
                F(from_height=1, assets=["XXX.BANK-Z"], max_blocks=1), timeout=5, metadata=md("Feed", "*")
            )
        )
        == nf
    )
    assert (
        _code(
            lambda: s.Feed(
                F(from_height=1, banks=["BANK-Z"], max_blocks=1), timeout=5, metadata=md("Feed", "*")
            )
        )
        == nf
    )
    assert (
        _code(
            lambda: s.Feed(
                F(from_height=1, accounts=["x/y"], max_blocks=1), timeout=5, metadata=md("Feed", "*")
            )
        )
        == bad
    )
    assert (
        _code(
            lambda: s.Feed(
                F(from_height=1, accounts=[f"a{i}" for i in range(65)]), timeout=5, metadata=md("Feed", "*")
            )
        )
        == bad
    )
    # A height far in the future: the node waits a bounded while, then says so.
    began = time.monotonic()
    assert (
        _code(lambda: s.Feed(F(from_height=10**9), timeout=15, metadata=md("Feed", "*")))
        == grpc.StatusCode.OUT_OF_RANGE
    )
    assert time.monotonic() - began < 10
    # The next height (not there yet): a heartbeat comes while the feed waits for the head.
    head = s.GetStatus(api_pb2.GetStatusRequest(), timeout=5).last_executed
    beat = next(
        iter(s.Feed(F(from_height=head + 1, accounts=["b-carol"]), timeout=10, metadata=md("Feed", "*")))
    )
    assert not beat.HasField("block") and beat.height >= head


def test_the_sdk_feed_answers_bad_input_clearly_and_in_bounded_time(net: Consortium, fx: Factory) -> None:
    one = [net.member("BANK-C").api_address]
    with LedgerClient(net.genesis_path, one, timeout_s=10, reader=fx.operators["BANK-A"]) as client:
        began = time.monotonic()
        with pytest.raises(LedgerError, match="no node serves that height") as err:
            next(client.feed(10**9))
        assert "OUT_OF_RANGE" in str(err.value) and time.monotonic() - began < 10
        with pytest.raises(NotFound, match="b-nobody"):
            next(client.feed(1, accounts=["b-nobody"]))
        with pytest.raises(LedgerError, match="INVALID_ARGUMENT"):
            next(client.feed(1, accounts=["x/y"]))


def test_feed_blocks_verify_and_filters_select(net: Consortium, fx: Factory) -> None:
    receipts = submit_all(
        net,
        "BANK-B",
        [
            fx.open_account("BANK-B", "f-dave", fx.client("f-dave")),
            fx.open_account("BANK-C", "f-erin", fx.client("f-erin")),
        ],
    )
    minted = submit_all(net, "BANK-A", [fx.mint(USD_A, "f-dave", 700, "f-dep-1")])
    top = _height(receipts + minted)
    with LedgerClient(net.genesis_path, timeout_s=10, reader=fx.operators["BANK-A"]) as client:
        seen: list[FeedBlock] = []
        steps = client.feed(1, accounts=["f-dave"])
        for step in steps:
            seen.append(step)
            if step.height >= top:
                break
        steps.close()
    blocks = [s for s in seen if s.block is not None]
    txs = [t for s in blocks for t in s.transactions]
    assert {t.tx_id for t in txs} == {receipts[0].result.tx_id, minted[0].result.tx_id}
    assert all(t.ok for t in txs)
    heights = [s.height for s in seen]
    assert heights == sorted(heights) and blocks


def test_the_asyncio_client_and_ledgerctl_feed(
    net: Consortium, fx: Factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    submit_all(net, "BANK-A", [fx.open_account("BANK-A", "a-gina", fx.client("a-gina"))])
    minted = submit_all(net, "BANK-A", [fx.mint(USD_A, "a-gina", 900, "a-dep-1")])
    redeemed = submit_all(net, "BANK-B", [fx.redeem("a-gina", USD_A, 400, "a-pay-1")])
    top = _height(minted + redeemed)

    async def read() -> tuple[list[str], int, list[bytes]]:
        async with AsyncLedgerClient(net.genesis_path, timeout_s=10, reader=fx.operators["BANK-A"]) as client:
            page = await client.history("a-gina", limit=10)
            statement = await client.statement("a-gina", 0, 2**62)
            assert [e.escrow_id for e in await client.escrows("a-gina")] == []
            seen: list[bytes] = []
            steps = client.feed(1, accounts=["a-gina"])
            async for step in steps:
                seen += [t.tx_id for t in step.transactions]
                if step.height >= top:
                    break
            await steps.aclose()
            (usd,) = statement.assets
            return [e.kind for e in page.entries], usd.closing_available, seen

    kinds, closing, seen = asyncio.run(read())
    assert kinds == ["REDEEM", "MINT"] and closing == 500
    assert minted[0].result.tx_id in seen and redeemed[0].result.tx_id in seen

    book = tmp_path / "book.sqlite"
    argv = [
        "--dir",
        str(net.dir),
        "feed",
        "--issuer",
        "BANK-A",
        "--sqlite",
        str(book),
        "--until-height",
        str(top),
    ]
    assert run([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["height"] >= top and doc["issuer"] == "BANK-A"
    with LedgerClient(net.genesis_path, timeout_s=10, reader=fx.operators["BANK-A"]) as client:
        supply = {a.asset: a.outstanding_minor for a in client.supply(min_height=doc["height"]).assets}
    # Every BANK-A mint and redeem of this module's tests so far, posted once: the book's
    # outstanding is the ledger's as of its height (nothing else issues USD.BANK-A meanwhile).
    assert doc["outstanding_minor"] == {USD_A: supply[USD_A]}
    before = _rows(book)
    assert minted[0].result.tx_id.hex() in before and redeemed[0].result.tx_id.hex() in before
    assert run(argv) == 0  # resumes at its height: nothing to do, nothing posted twice
    assert _rows(book) == before


def _rows(path: Path) -> list[str]:
    db = sqlite3.connect(str(path))
    try:
        return [t for (t,) in db.execute("SELECT tx_id FROM postings")]
    finally:
        db.close()


def _posted(path: Path) -> tuple[int, int]:
    db = sqlite3.connect(str(path))
    try:
        row = db.execute("SELECT height FROM feed_position").fetchone()
        (rows,) = db.execute("SELECT COUNT(*) FROM postings").fetchone()
        return (row[0] if row else 0), rows
    finally:
        db.close()


class Stop(Exception):
    pass


def test_feed_consumer_fails_over_when_its_node_dies_and_reconciles_with_supply(tmp_path: Path) -> None:
    with running_consortium(tmp_path / "c") as c:
        fx = factory_for(c)
        banks = c.banks()
        primary = primary_of(c, banks)
        victim = next(b for b in banks if b != primary)
        others = [b for b in banks if b != victim]
        endpoints = [c.member(victim).api_address, *(c.member(b).api_address for b in others)]
        submit_all(c, primary, [fx.open_account("BANK-A", f"k-{n}", fx.client(f"k-{n}")) for n in ("a", "b")])

        book_path = tmp_path / "bank-a.sqlite"
        stop = threading.Event()
        failure: list[BaseException] = []

        def consume() -> None:
            with LedgerClient(
                c.genesis_path, endpoints, timeout_s=10, reader=fx.operators["BANK-A"]
            ) as client:
                book = IssuerBook(book_path, client.genesis, "BANK-A")

                def check(_: FeedBlock) -> None:
                    if stop.is_set():
                        raise Stop

                try:
                    book.follow(client, on_step=check)
                except Stop:
                    pass
                except BaseException as exc:  # reported to the test below
                    failure.append(exc)
                finally:
                    book.close()

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        try:
            posted: set[bytes] = set()

            def batch(tag: str, to: str) -> int:
                envs = [fx.mint(USD_A, "k-a", 1_000 + i, f"{tag}-dep-{i}") for i in range(5)]
                envs += [fx.mint(USD_A, "k-b", 300, f"{tag}-dep-b")]
                envs += [fx.transfer([("k-a", "k-b", USD_A, 10)])]  # not the issuer's to post
                receipts = submit_all(c, to, envs)
                receipts += submit_all(c, to, [fx.redeem("k-b", USD_A, 100 + len(posted), f"{tag}-pay")])
                ok = [r for r in receipts if r.result.code == 1]
                assert len(ok) == len(receipts)
                posted.update(r.result.tx_id for r in receipts[:6] + receipts[-1:])
                return _height(receipts)

            h1 = batch("one", primary)
            wait_for("the book to post the first batch", lambda: _posted(book_path)[0] >= h1)
            assert not failure, failure
            c.kill(victim)  # the node the feed reads from, mid-feed
            h2 = batch("two", primary)
            wait_for(
                "the book to post the second batch from another node", lambda: _posted(book_path)[0] >= h2
            )
            assert not failure, failure
        finally:
            stop.set()
            # The consumer stops at its next step (heartbeats come every couple of seconds).
            consumer.join(timeout=15)
        assert not consumer.is_alive() and not failure, failure

        height, rows = _posted(book_path)
        assert rows == len(posted) == 14  # every mint and redeem once, no transfer
        db = sqlite3.connect(str(book_path))
        assert {bytes.fromhex(t) for (t,) in db.execute("SELECT tx_id FROM postings")} == posted
        db.close()
        readers = [c.member(b).api_address for b in others]
        with LedgerClient(c.genesis_path, readers, timeout_s=10, reader=fx.operators["BANK-A"]) as client:
            supply = {a.asset: a for a in client.supply(min_height=height).assets}
            book = IssuerBook(book_path, client.genesis, "BANK-A")
            try:
                assert book.outstanding() == {USD_A: supply[USD_A].outstanding_minor}
                # ... and with the balances: k-a and k-b hold every USD.BANK-A there is.
                held = [client.account(a, min_height=height).balance(USD_A) for a in ("k-a", "k-b")]
                assert sum(b.available_minor + b.held_minor for b in held) == book.outstanding()[USD_A]
            finally:
                book.close()
