#!/usr/bin/env python3
"""Seeded fault simulator of whole clusters of node cores (sim/).

    python scripts/simulate.py --seeds 1000 --json     many seeds; last line is one JSON object
    python scripts/simulate.py --seed 42               replay one run; a short trace on failure
    python scripts/simulate.py --seeds 200 --app ledger --workers 2

One seed fixes everything (network, faults, liars, requests), so a failing seed printed here
replays exactly with --seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim.cluster import Result, Simulation
from sim.scenario import Scenario, random_scenario

FAULTS_UNTIL_MS = Scenario(seed=0).faults_until_ms


def run_one(args: tuple[int, str]) -> Result:
    seed, app = args
    try:
        return Simulation(random_scenario(seed, app)).run()
    except AssertionError as exc:  # a replica's own invariant broke: a bug, report it as unsafe
        r = Result(seed)
        r.safety_violations.append(f"assertion: {exc}")
        return r


def describe(r: Result) -> str:
    problems = [*r.safety_violations]
    if r.liveness_failure:
        problems.append(f"liveness: {r.liveness_failure}")
    return f"seed {r.seed} FAILED: " + "; ".join(problems)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=100, help="run seeds start..start+N-1")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--seed", type=int, help="replay exactly this seed, print its trace on failure")
    p.add_argument("--app", choices=("echo", "ledger"), default="echo")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    p.add_argument("--trace", action="store_true", help="with --seed: print the trace even on success")
    a = p.parse_args(argv)

    if a.seed is not None:
        print(random_scenario(a.seed, a.app))
        r = run_one((a.seed, a.app))
        ok = not r.safety_violations and not r.liveness_failure
        if not ok or a.trace:
            print("\n".join(r.trace[-60:]))
        print(describe(r) if not ok else f"seed {a.seed} ok")
        print(
            f"sequences_executed={r.sequences_executed} view_changes={r.view_changes} "
            f"messages={r.messages} end_ms={r.end_ms} isolated_ms_max={r.isolated_ms_max} rejected={dict(sorted(r.counters.items()))}"
        )
        return 0 if ok else 1

    started = time.monotonic()
    seeds = [(s, a.app) for s in range(a.start, a.start + a.seeds)]
    unsafe = live = executed = view_changes = done = isolated_ms_max = 0
    failing: list[int] = []
    recovery_ms: list[int] = []  # virtual time from faults stopping to every request executed
    last_progress = started

    def account(r: Result) -> None:
        nonlocal unsafe, live, executed, view_changes, done, last_progress, isolated_ms_max
        done += 1
        isolated_ms_max = max(isolated_ms_max, r.isolated_ms_max)
        executed += r.sequences_executed
        view_changes += r.view_changes
        if r.safety_violations:
            unsafe += 1
        if r.liveness_failure:
            live += 1
        if not r.liveness_failure:
            recovery_ms.append(max(0, r.end_ms - FAULTS_UNTIL_MS))
        if r.safety_violations or r.liveness_failure:
            failing.append(r.seed)
            print(describe(r), flush=True)
        now = time.monotonic()
        if now - last_progress >= 10:
            last_progress = now
            print(
                f"... {done}/{len(seeds)} seeds, {now - started:.0f}s, failing so far {failing[:10]}",
                flush=True,
            )

    if a.workers > 1:
        with ProcessPoolExecutor(max_workers=a.workers) as pool:
            for r in pool.map(run_one, seeds, chunksize=8):
                account(r)
    else:
        for s in seeds:
            account(run_one(s))
    summary = {
        "seeds": len(seeds),
        "safety_violations": unsafe,
        "liveness_failures": live,
        "sequences_executed": executed,
        "view_changes": view_changes,
        # the longest an honest replica sat in another view than most, after faults stopped
        "isolated_ms_max": isolated_ms_max,
        "seconds": round(time.monotonic() - started, 1),
    }
    if recovery_ms:
        recovery_ms.sort()
        p99 = recovery_ms[min(len(recovery_ms) - 1, len(recovery_ms) * 99 // 100)]
        print(f"recovery after faults stop (virtual ms, 100 ms resolution): max {recovery_ms[-1]}, p99 {p99}")
    if failing:
        print(f"failing seeds: {failing[:50]} (replay: scripts/simulate.py --seed S --app {a.app})")
    print(json.dumps(summary) if a.json else summary)
    return 0 if not failing else 1


if __name__ == "__main__":
    sys.exit(main())
