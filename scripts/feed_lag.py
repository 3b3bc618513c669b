#!/usr/bin/env python3
"""The feed's throughput and its lag behind commit under open-loop load (issue 19's figures).

    python scripts/feed_lag.py [--rate 1500] [--duration 20] [--warmup 5] [--json]

Starts a 4-bank consortium (or attaches with --dir), subscribes one verified feed
(``LedgerClient.feed`` with BANK-A's operator key, no filter: every block whole, each verified:
2f+1 commits, f+1 attestations, batch and results) from one node, and runs scripts/bench.py's
open-loop load (--rate tx/s offered, transfers signed beforehand, from --clients processes).

For each block the feed delivers it records when the consumer had it, verified, against the
block's proposal time (the primary's timestamp; one host, one clock). Over the blocks proposed
within the timed window (from the first block carrying load + --warmup, for --duration s):
  * feed_delivered_tps: transactions per second the feed delivered;
  * proposal_to_feed_ms: proposal -> the consumer holds the verified block (p50, p99, max;
    per transaction, as receipts are counted);
  * proposal_to_receipt_ms: proposal -> the submitting client holds its verified receipt, from
    the same run's load clients (bench's latency_parts_ms) = when a transaction counts as
    committed;
  * feed_lag_behind_commit_ms: the difference of the two at p50 and at p99 (what the feed adds
    on top of commit; a difference of percentiles, so an estimate);
  * feed_blocks_behind_head: how many blocks the node had executed past each block when it
    sent it (0: the feed was at the head).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import bench  # noqa: E402
from consortium import Consortium, exit_cleanly_on_sigterm  # noqa: E402

from client.models import LedgerError  # noqa: E402
from client.sdk import LedgerClient  # noqa: E402
from ledger.crypto import load_key  # noqa: E402

CATCH_UP_S = 60.0  # after the load: how long the feed may take to reach the head


@dataclass
class Delivered:
    height: int
    txs: int
    proposed: float  # the primary's timestamp, seconds
    delivered: float
    behind: int  # the node's head minus this height when the node sent it


class Recorder:
    """The blocks one feed delivered, with times."""

    def __init__(self, c: Consortium, bank: str) -> None:
        self.c = c
        self.endpoint = c.member(bank).api_address
        self.reader = load_key(c.operator_key_path("BANK-A")).key
        self.delivered: list[Delivered] = []
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.head = 0

    def consume(self, from_height: int) -> None:
        client = LedgerClient(self.c.genesis(), [self.endpoint], reader=self.reader, insecure=self.c.insecure)
        steps = client.feed(from_height)
        try:
            for step in steps:
                if step.block is not None:
                    header = step.block.block.header
                    self.delivered.append(
                        Delivered(
                            step.height,
                            int(header.tx_count),
                            header.timestamp_ms / 1000,
                            time.time(),
                            step.last_height - step.height,
                        )
                    )
                if self.stop.is_set():
                    return
        except LedgerError as exc:
            self.errors.append(f"feed: {exc}")
        finally:
            steps.close()
            client.close()


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(bench.percentile(ordered, 0.5), 1),
        "p99": round(bench.percentile(ordered, 0.99), 1),
        "max": round(ordered[-1], 1) if ordered else float("nan"),
    }


def run(args: argparse.Namespace, c: Consortium) -> dict[str, Any]:
    genesis = c.genesis()
    bank = args.feed_node or genesis.members[1].member_id
    rec = Recorder(c, bank)
    start = c.node_status(bank) or c.node_status(genesis.members[0].member_id)
    if start is None:
        raise RuntimeError(f"{bank} does not answer")
    feed = threading.Thread(target=rec.consume, args=(start.last_executed + 1,), name="feed", daemon=True)
    feed.start()
    load_args = argparse.Namespace(
        accounts_per_bank=args.accounts_per_bank,
        clients=args.clients,
        rate=args.rate,
        expect_tps=args.rate,
        presign=0,
        warmup=args.warmup,
        duration=args.duration,
        batch=200,
        window=4,
        seed=1,
        multileg=0.0,
        submit="stream",
        escrow=0.0,
        plot=None,
    )
    try:
        load = bench.run(load_args, c)
        head = c.node_status(bank)
        rec.head = head.last_executed if head is not None else 0
        deadline = time.monotonic() + CATCH_UP_S
        while (not rec.delivered or rec.delivered[-1].height < rec.head) and time.monotonic() < deadline:
            time.sleep(0.05)  # the feed catching up to the node's head after the load; bounded
    finally:
        rec.stop.set()
        feed.join(timeout=5)
    loaded = [d for d in rec.delivered if d.txs > 1]
    if not loaded:
        raise RuntimeError(f"the feed delivered no loaded block; errors: {rec.errors[-3:]}")
    window_start = loaded[0].proposed + args.warmup
    window = [d for d in rec.delivered if window_start <= d.proposed < window_start + args.duration]
    # Per transaction, as the receipts are: a block's lag counts once for each of its transactions.
    to_feed = percentiles([(d.delivered - d.proposed) * 1000 for d in window for _ in range(d.txs)])
    to_receipt = load["latency_parts_ms"]["proposal_to_receipt"]
    return {
        "offered_tps": args.rate,
        "committed_tps": load["committed_tps"],
        "feed_node": bank,
        "feed_delivered_tps": round(sum(d.txs for d in window) / args.duration, 1),
        "feed_blocks": len(window),
        "proposal_to_feed_ms": to_feed,
        "proposal_to_receipt_ms": to_receipt,
        "feed_lag_behind_commit_ms": {q: round(to_feed[q] - to_receipt[q], 1) for q in ("p50", "p99")},
        "feed_blocks_behind_head": percentiles([float(d.behind) for d in window]),
        "commit_p50_ms": load["p50_ms"],
        "commit_p99_ms": load["p99_ms"],
        "batch_size_p50": load["batch_size_p50"],
        "view_changes": load["view_changes"],
        "caught_up": bool(rec.delivered) and rec.delivered[-1].height >= rec.head,
        "errors": rec.errors[-3:],
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, help="attach to the running consortium in DIR")
    p.add_argument("--rate", type=float, default=1500.0, help="offered load, tx/s (default 1500)")
    p.add_argument("--duration", type=float, default=20.0, help="timed window, seconds (default 20)")
    p.add_argument("--warmup", type=float, default=5.0, help="untimed warm-up, seconds (default 5)")
    p.add_argument("--clients", type=int, default=2, help="load client processes (default 2)")
    p.add_argument("--accounts-per-bank", type=int, default=25)
    p.add_argument("--feed-node", metavar="BANK", help="the node the feed reads from (default: the second)")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.warmup < 0 or args.clients < 1:
        p.error("--rate, --duration and --clients must be positive, --warmup not negative")
    exit_cleanly_on_sigterm()
    try:
        if args.dir is not None:
            out = run(args, Consortium(args.dir))
        else:
            with tempfile.TemporaryDirectory(prefix="feed-lag-") as tmp:
                c = Consortium(Path(tmp))
                try:
                    c.up(4)
                    out = run(args, c)
                finally:
                    for line in c.down():
                        bench.log(f"feed_lag: {line}")
    except (RuntimeError, OSError) as exc:
        bench.log(f"feed_lag: failed: {exc}")
        return 2
    for key, value in out.items():
        bench.log(f"  {key:<30} {value}")
    if args.json:
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
