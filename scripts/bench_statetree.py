#!/usr/bin/env python3
"""Micro-benchmark of the state tree (node/app/statetree.py): the cost of folding 1,000 changed
keys into a tree of --keys keys, on LMDB without fsync (the tree's own CPU and store work).

    python scripts/bench_statetree.py --keys 100000 --rounds 20 --json

Each round writes --writes keys (three quarters existing balances with new values, a quarter
recorded results: new keys), records them as one block's write set and updates the tree, in one
write transaction; the figure is the update's CPU time per changed key (results go to the range,
balances to the radix tree).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.app import statetree
from node.app.codec import encode_result_fields
from node.app.state import result_key
from node.app.tx import Code
from node.storage.lmdb_store import LmdbStore


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=100_000, help="keys in the tree before the rounds")
    p.add_argument("--writes", type=int, default=1_000, help="changed keys per update")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    rng = random.Random(7)
    with (
        tempfile.TemporaryDirectory() as tmp,
        LmdbStore(Path(tmp), map_size_bytes=4 << 30, sync=False) as store,
    ):
        keys = [f"s/b/acct-{i}\x00USD.BANK-A".encode() for i in range(a.keys)]
        started = time.perf_counter()
        with store.write() as w:
            for key in keys:
                w.put(key, rng.randbytes(8))
            statetree.record_writes(w, 1, keys)
            statetree.update(w, 1)
        build_s = time.perf_counter() - started
        per_write_us: list[float] = []
        for height in range(2, a.rounds + 2):
            changed = rng.sample(keys, a.writes * 3 // 4)
            fresh = [result_key(rng.randbytes(32)) for _ in range(a.writes - len(changed))]
            with store.write() as w:
                for key in changed:
                    w.put(key, rng.randbytes(8))
                for i, key in enumerate(fresh):
                    w.put(key, encode_result_fields(key[4:], Code.OK, "", height, i, True))
                written = sorted(changed + fresh)
                t0 = time.process_time()
                statetree.record_writes(w, height, written)
                statetree.update(w, height)
                per_write_us.append((time.process_time() - t0) * 1e6 / len(written))
    out = {
        "keys": a.keys,
        "writes_per_update": a.writes,
        "rounds": a.rounds,
        "initial_build_s": round(build_s, 2),
        "update_us_per_write_median": round(statistics.median(per_write_us), 1),
        "update_us_per_write_min": round(min(per_write_us), 1),
        "update_ms_per_1000_writes_median": round(statistics.median(per_write_us), 1),
    }
    print(json.dumps(out) if a.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
