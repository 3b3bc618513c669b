#!/usr/bin/env python3
"""What a node's LMDB store holds, by key space: keys, bytes (keys + values) and bytes per
executed transaction, read from another process (the node may be running).

    scripts/store_usage.py consortium/nodes/BANK-A/data [--json]

Blocks' key spaces (b/) are given per transaction in the blocks still stored, the others per
recorded transaction (s/t/ keys). Key spaces: node/storage/kv.py (s/ ledger state, with s/t/ the recorded tx results; b/ blocks,
results, outcomes, attestations, b/t/ unrecorded results; x/ the history index; j/ the journal;
m/ the head). Page overhead (B-tree branches, half-full leaves, free pages) is not in these
figures; the file's size and LMDB's own page counts are given beside them.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import lmdb

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from node.storage import blocks  # noqa: E402
from node.storage.lmdb_store import DB_NAME  # noqa: E402

SPACES = (b"s/t/", b"s/", b"b/h/", b"b/r/", b"b/o/", b"b/a/", b"b/t/", b"b/", b"x/h/", b"x/", b"j/", b"m/")


def usage(data_dir: Path) -> dict[str, Any]:
    env = lmdb.open(str(data_dir), readonly=True, lock=True, max_dbs=4, subdir=True)
    try:
        db = env.open_db(DB_NAME, create=False)
        keys: Counter[str] = Counter()
        size: Counter[str] = Counter()
        executed_txs = 0
        retained_txs = 0  # transactions in the blocks still stored
        with env.begin(db=db) as txn:
            for key, value in txn.cursor():
                space = next((s for s in SPACES if key.startswith(s)), b"other")
                keys[space.decode()] += 1
                size[space.decode()] += len(key) + len(value)
                if space == blocks.RESULTS:
                    retained_txs += len(blocks.unpack_list(value))
            raw = txn.get(b"m/last_executed")
            height = 0 if raw is None else struct.unpack(">Q", raw)[0]
            executed_txs = keys["s/t/"]  # recorded results: one per authorized transaction
            stat = txn.stat(db)
        pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        info = env.info()
    finally:
        env.close()
    # Blocks' key spaces per transaction they hold; the rest per recorded transaction.
    per_tx = {
        k: round(v / (retained_txs if k.startswith("b/") else executed_txs), 1)
        for k, v in size.items()
        if (retained_txs if k.startswith("b/") else executed_txs)
    }
    block_part = sum(v for k, v in per_tx.items() if k.startswith("b/"))
    return {
        "height": height,
        "recorded_txs": executed_txs,
        "retained_txs": retained_txs,
        "keys": dict(keys),
        "bytes": dict(size),
        "bytes_per_tx": per_tx,
        # What a transaction costs while its block is kept, and what stays once it is pruned.
        "bytes_per_tx_archive": round(sum(per_tx.values()), 1),
        "bytes_per_tx_pruned": round(sum(per_tx.values()) - block_part, 1),
        "page_bytes": pages * stat["psize"],
        "high_page_bytes": (info["last_pgno"] + 1) * stat["psize"],
        "file_bytes": (data_dir / "data.mdb").stat().st_blocks * 512,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    out = usage(args.data_dir)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:<20} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
