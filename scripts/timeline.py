#!/usr/bin/env python3
"""One timeline of a chaos run: its faults and every node's events, merged by time.

scripts/chaos.py --dir D writes D/faults.log (each kill, start, SIGSTOP and SIGCONT) and the
nodes write D/consortium/nodes/<BANK>/events.log, all stamped ts_ms on the same wall clock.
This prints them as one list, times relative to the first fault shown:

    scripts/timeline.py --dir D              the whole run
    scripts/timeline.py --dir D --round 26   round 26 (from 1 s before its first fault to the
                                             next round's first fault)

Fault lines start with '**'. Counter snapshots are left out (--all keeps them).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BEFORE_ROUND_MS = 1_000
QUIET_EVENTS = frozenset({"counters"})


def _lines(path: Path) -> Iterable[dict[str, Any]]:
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            print(f"timeline: {path}:{n}: not JSON, skipped", file=sys.stderr)
            continue
        if isinstance(record, dict) and isinstance(record.get("ts_ms"), int):
            yield record


def load(directory: Path, keep_all: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(faults sorted by ts_ms, node events as read: render() orders everything it shows)."""
    faults_path = directory / "faults.log"
    faults = sorted(_lines(faults_path), key=lambda r: r["ts_ms"]) if faults_path.exists() else []
    events: list[dict[str, Any]] = []
    for log in sorted(directory.glob("consortium/nodes/*/events.log")):
        events.extend(r for r in _lines(log) if keep_all or r.get("event") not in QUIET_EVENTS)
    return faults, events


def window(faults: list[dict[str, Any]], round_no: int) -> tuple[int, int | None]:
    """[start, end) in ts_ms of a round: from just before its first fault to the next round's."""
    firsts: dict[int, int] = {}
    for f in faults:
        firsts.setdefault(int(f["round"]), int(f["ts_ms"]))
    if round_no not in firsts:
        raise ValueError(f"no fault of round {round_no} in faults.log (rounds {sorted(firsts)})")
    later = [t for r, t in firsts.items() if r > round_no]
    return firsts[round_no] - BEFORE_ROUND_MS, min(later) if later else None


def render(
    faults: list[dict[str, Any]], events: list[dict[str, Any]], start: int | None, end: int | None
) -> list[str]:
    merged = [(f["ts_ms"], 0, f) for f in faults] + [(e["ts_ms"], 1, e) for e in events]
    merged.sort(key=lambda item: (item[0], item[1]))
    shown = [
        (ts, kind, r)
        for ts, kind, r in merged
        if (start is None or ts >= start) and (end is None or ts < end)
    ]
    if not shown:
        return []
    origin = next((ts for ts, kind, _ in shown if kind == 0), shown[0][0])
    out = []
    for ts, kind, r in shown:
        t = f"{(ts - origin) / 1000:+9.3f}s"
        if kind == 0:
            out.append(f"{t} ** {r['action']} {r['bank']} (round {r['round']})")
        else:
            detail = {k: v for k, v in r.items() if k not in ("ts_ms", "node", "event")}
            out.append(
                f"{t}    {r.get('node', '?')} {r.get('event', '?')} {detail if detail else ''}".rstrip()
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, required=True, help="the chaos run's --dir")
    parser.add_argument("--round", type=int, default=None, help="only this fault round")
    parser.add_argument("--all", action="store_true", help="keep counter snapshots too")
    args = parser.parse_args(argv)
    if not (args.dir / "faults.log").exists() and not any(args.dir.glob("consortium/nodes/*/events.log")):
        parser.error(
            f"{args.dir}: neither faults.log nor consortium/nodes/*/events.log; is it a chaos --dir?"
        )
    faults, events = load(args.dir, args.all)
    start: int | None = None
    end: int | None = None
    if args.round is not None:
        try:
            start, end = window(faults, args.round)
        except ValueError as exc:
            parser.error(str(exc))
    for line in render(faults, events, start, end):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
