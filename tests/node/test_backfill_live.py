"""Over real processes: a node that catches up on blocks whose Attestation messages it never
received (its peers' queues for it overflowed while it was down) gets their f+1 attestations
from its peers in the background, without any client asking for a receipt (issue 21)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledger.v1 import api_pb2, tx_pb2
from tests.node.helpers import (
    Consortium,
    factory_for,
    primary_of,
    read_md,
    running_consortium,
    statuses,
    stub,
    submit_one,
    wait_converged,
    wait_for,
)

BANKS = ["BANK-A", "BANK-B", "BANK-C", "BANK-D"]
# A short peer queue: what the peers send a down node past 16 messages is dropped, as a long
# outage drops it with the default bound; catch-up then replays blocks whose attestations it
# never got.
LIMITS = {"peer_queue_max": 16, "checkpoint_interval": 5, "log_window": 10, "view_change_timeout_ms": 1000}
MISSED_BLOCKS = 30
SCRAPE_S_MAX = 2.0


class Scraper:
    """Scrapes a node's ledger_height in a loop from before it starts until stopped: the
    heights seen, how long each scrape took, and any scrape that failed once it had answered."""

    def __init__(self, net: Consortium, bank: str) -> None:
        self.net = net
        self.bank = bank
        self.heights: list[float] = []
        self.took: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                text = self.net.scrape(self.bank, timeout_s=5)  # as the bank's monitoring does
            except OSError as exc:
                if self.heights:  # before the first answer the node is not listening yet
                    self.failures.append(repr(exc))
                self._stop.wait(0.02)  # the next scrape: a poll period
                continue
            self.took.append(time.monotonic() - began)
            self.heights += [
                s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "ledger_height"
            ]
            self._stop.wait(0.02)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    with running_consortium(tmp_path_factory.mktemp("backfill") / "consortium", limits=LIMITS) as c:
        yield c


def test_blocks_replayed_without_their_attestations_are_backfilled_in_the_background(net: Consortium) -> None:
    fx = factory_for(net)
    primary = primary_of(net, BANKS)
    backup = next(b for b in reversed(BANKS) if b != primary)
    live = [b for b in BANKS if b != backup]
    opened = submit_one(net, live[0], fx.open_account("BANK-A", "alice", fx.client("alice")))
    assert opened.result.code == tx_pb2.OK
    wait_converged(net, BANKS, opened.result.height)  # the backup has a head: it replays, not syncs
    net.kill(backup)
    for i in range(MISSED_BLOCKS):  # one block each
        raw = fx.open_account("BANK-A", f"acct-{i}", fx.client(f"acct-{i}"))
        assert submit_one(net, live[i % len(live)], raw).result.code == tx_pb2.OK
    missed_top = statuses(net, [live[0]])[live[0]].last_executed
    scraper = Scraper(net, backup)
    scraper.start()
    try:
        net.restart(backup)
        last = submit_one(net, live[0], fx.open_account("BANK-A", "after", fx.client("after")))
        top = wait_converged(net, BANKS, last.result.height)[backup].last_executed
        wait_for(
            f"a scrape of {backup} at height {top}", lambda: scraper.heights and scraper.heights[-1] >= top
        )
    finally:
        scraper.stop()
    # Issue 19 item 5: a scrape while the node catches up answers at once, with the height it
    # has executed so far, and never goes back.
    assert scraper.failures == [], scraper.failures
    assert any(h < missed_top for h in scraper.heights), f"no scrape while catching up: {scraper.heights[:5]}"
    assert scraper.heights == sorted(scraper.heights)
    assert max(scraper.took) < SCRAPE_S_MAX, max(scraper.took)

    def incomplete() -> list[int]:
        reply = stub(net, backup).GetBlocks(
            api_pb2.GetBlocksRequest(from_height=1, max_blocks=1000),
            timeout=5,
            metadata=read_md(net, "GetBlocks"),
        )
        assert reply.next_height > top, "the range call served fewer blocks than the node has"
        return [h for h, b in enumerate(reply.blocks[:top], start=1) if not b.attestations_complete]

    wait_for(f"{backup}'s blocks to all have f+1 attestations", lambda: not incomplete())
    # Nobody asked this node for a receipt: the background backfill fetched them.
    assert statuses(net, [backup])[backup].counters["attestations_backfilled"] > 0
