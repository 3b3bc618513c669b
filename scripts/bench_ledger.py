#!/usr/bin/env python3
"""Ledger throughput on LMDB: signed one-leg transfers executed per second, for batches of 1,
100 and 1,000 transactions per block (one LMDB write transaction, fsync'ed, per block), with
Ed25519 signature checks excluded and included.

Signing, account opening and funding happen before the clock starts; each run uses a fresh
LMDB environment in a temporary directory; each configuration runs --repeat times and the
fastest run is reported (the machine is shared; every run's figure is printed too). Prints progress to stderr, a table to
stdout and, last, one JSON line with every figure.

    .venv/bin/python scripts/bench_ledger.py            # the default run (~1 minute)
    .venv/bin/python scripts/bench_ledger.py --txs 500 --no-sync
    .venv/bin/python scripts/bench_ledger.py --history-cost   # execute + history index, with and without

--history-cost times the history index (node/storage/history.py) as the driver writes it, in
the block's write transaction: runs with and without it alternate (signatures skipped), and the
cost per transaction is the difference of the best runs' microseconds per transaction, in wall
time (fsync included) and in this process's CPU time (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger.crypto import DOMAIN_TX, SigningKey
from ledger.genesis import Genesis, parse_genesis
from node.app.codec import decode_result, encode_body, encode_envelope
from node.app.ledger import Ledger
from node.app.tx import Code, Leg, Mint, Op, OpenAccount, SignatureEntry, Transfer, TxBody
from node.storage import history
from node.storage.lmdb_store import LmdbStore

CHAIN_ID = "bench-chain"
ASSET = "USD.BANK-A"


def key(*parts: object) -> SigningKey:
    return SigningKey(hashlib.sha256("/".join(map(str, parts)).encode()).digest())


def make_genesis() -> Genesis:
    members = [
        {
            "member_id": f"BANK-{c}",
            "replica": i,
            "node_key": key("node", c).public_key.hex(),
            "operator_key": key("operator", c).public_key.hex(),
            "host": "127.0.0.1",
            "replica_port": 20000 + i,
            "api_port": 21000 + i,
            "assets": [{"asset": f"USD.BANK-{c}", "scale": 2}],
        }
        for i, c in enumerate("ABCD")
    ]
    return parse_genesis({"chain_id": CHAIN_ID, "f": 1, "members": members})


class Signer:
    def __init__(self) -> None:
        self.counter = 0

    def envelope(self, op: Op, signer: SigningKey) -> bytes:
        self.counter += 1
        body = encode_body(TxBody(CHAIN_ID, self.counter.to_bytes(16, "big"), "", op))
        return encode_envelope(
            body, [SignatureEntry(signer.public_key, signer.sign(DOMAIN_TX, CHAIN_ID, body))]
        )


def prepare(accounts: int, transfers: int) -> tuple[list[bytes], list[bytes]]:
    """Setup envelopes (open + fund every account) and the signed transfers to time."""
    signer = Signer()
    operator = key("operator", "A")
    owners = [key("client", i) for i in range(accounts)]
    setup = [
        signer.envelope(OpenAccount("BANK-A", f"acct-{i}", k.public_key), operator)
        for i, k in enumerate(owners)
    ]
    setup += [signer.envelope(Mint(ASSET, f"acct-{i}", 10**9, f"dep-{i}"), operator) for i in range(accounts)]
    txs = []
    for n in range(transfers):
        src = n % accounts
        dst = (n * 7 + 1) % accounts
        if dst == src:
            dst = (src + 1) % accounts
        txs.append(
            signer.envelope(Transfer((Leg(f"acct-{src}", f"acct-{dst}", ASSET, 1 + n % 50),)), owners[src])
        )
    return setup, txs


def run_one(
    genesis: Genesis,
    setup: list[bytes],
    txs: list[bytes],
    batch: int,
    verify: bool,
    sync: bool,
    parent: str | None,
    index: bool = False,
    tree_interval: int = 0,
) -> dict[str, float | int | bool]:
    check = None if verify else (lambda *_: True)
    ledger = (
        Ledger(genesis, history=index, tree_interval=tree_interval)
        if check is None
        else Ledger(genesis, verify=check, history=index, tree_interval=tree_interval)
    )
    with tempfile.TemporaryDirectory(prefix="bench-ledger-", dir=parent) as tmp:
        store = LmdbStore(Path(tmp) / "db", map_size_bytes=1 << 32, sync=sync)
        try:
            height = 0
            for i in range(0, len(setup), 1000):
                height += 1
                with store.write() as w:
                    Ledger(genesis, tree_interval=tree_interval).execute(
                        w, height, 1_000, setup[i : i + 1000]
                    )
            ok = 0
            cpu_start = time.process_time()
            start = time.perf_counter()
            for i in range(0, len(txs), batch):
                height += 1
                with store.write() as w:
                    out = ledger.execute(w, height, 2_000 + height, txs[i : i + batch])
                    if index:
                        history.put_postings(w, height, out.consensus_time_ms, out.postings)
                ok += sum(1 for r in out.results if decode_result(r).code == Code.OK)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            with store.read() as r:
                violations = ledger.check_invariants(r)
        finally:
            store.close()
    if ok != len(txs) or violations:
        raise SystemExit(f"benchmark run is wrong: {ok}/{len(txs)} OK, violations {violations[:3]}")
    return {
        "batch": batch,
        "verify": verify,
        "history": index,
        "sync": sync,
        "txs": len(txs),
        "seconds": round(elapsed, 4),
        "cpu_seconds": round(cpu, 4),
        "tx_per_s": round(len(txs) / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--batches", default="1,100,1000", help="comma-separated batch sizes (default 1,100,1000)"
    )
    parser.add_argument("--txs", type=int, default=5_000, help="transfers timed per batched configuration")
    parser.add_argument(
        "--txs-batch1",
        type=int,
        default=500,
        help="transfers timed at batch size 1 (one fsync each; default 500)",
    )
    parser.add_argument(
        "--accounts", type=int, default=1_000, help="funded accounts the transfers move between"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per configuration; the fastest is reported"
    )
    parser.add_argument(
        "--dir", default=None, help="where the temporary LMDB directories go (default: $TMPDIR)"
    )
    parser.add_argument(
        "--no-sync", action="store_true", help="do not fsync commits (not durable; for comparison)"
    )
    parser.add_argument(
        "--history-cost", action="store_true", help="time execute with and without the history index"
    )
    parser.add_argument(
        "--tree-interval",
        type=int,
        default=0,
        help="build the state tree every N blocks, as a node does at checkpoints (default 0: no tree)",
    )
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if not batches or min(batches) < 1 or args.txs < 1 or args.accounts < 2 or args.repeat < 1:
        parser.error("batch sizes, --txs, --repeat and --accounts must be positive (accounts >= 2)")

    genesis = make_genesis()
    most = max(args.txs, args.txs_batch1)
    print(f"preparing {args.accounts} accounts and {most} signed transfers ...", file=sys.stderr, flush=True)
    setup, all_txs = prepare(args.accounts, most)
    if args.history_cost:
        return history_cost(args, genesis, setup, all_txs, batches)
    rows: list[dict[str, object]] = []
    for verify in (False, True):
        for batch in batches:
            txs = all_txs[: args.txs_batch1 if batch == 1 else args.txs]
            label = "included" if verify else "excluded"
            print(
                f"  batch {batch:>5}, signatures {label}: {len(txs)} transfers x {args.repeat} ...",
                file=sys.stderr,
            )
            runs = [
                run_one(
                    genesis,
                    setup,
                    txs,
                    batch,
                    verify,
                    sync=not args.no_sync,
                    parent=args.dir,
                    tree_interval=args.tree_interval,
                )
                for _ in range(args.repeat)
            ]
            best = min(runs, key=lambda row: float(row["seconds"]))
            rows.append({**best, "runs_tx_per_s": [row["tx_per_s"] for row in runs]})

    print(
        f"\nLedger throughput on LMDB (sync={'off' if args.no_sync else 'on'}), one-leg transfers, best of {args.repeat}"
    )
    print(
        f"{'batch':>6} | {'signatures':>10} | {'txs':>6} | {'seconds':>8} | {'tx/s':>10} | every run (tx/s)"
    )
    print("-" * 80)
    for row in rows:
        sig = "checked" if row["verify"] else "skipped"
        print(
            f"{row['batch']:>6} | {sig:>10} | {row['txs']:>6} | {row['seconds']:>8.3f} | {row['tx_per_s']:>10.1f}"
            f" | {row['runs_tx_per_s']}"
        )
    print(json.dumps({"bench": "ledger", "tree_interval": args.tree_interval, "results": rows}))
    return 0


def history_cost(
    args: argparse.Namespace, genesis: Genesis, setup: list[bytes], all_txs: list[bytes], batches: list[int]
) -> int:
    rows: list[dict[str, object]] = []
    for batch in batches:
        txs = all_txs[: args.txs_batch1 if batch == 1 else args.txs]
        print(
            f"  batch {batch:>5}: {len(txs)} transfers, with and without the index x {args.repeat} ...",
            file=sys.stderr,
        )
        runs: dict[bool, list[float]] = {False: [], True: []}
        cpus: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeat):
            for index in (False, True):  # interleaved: the machine's load hits both alike
                run = run_one(genesis, setup, txs, batch, False, not args.no_sync, args.dir, index)
                runs[index].append(float(run["seconds"]) / len(txs) * 1e6)
                cpus[index].append(float(run["cpu_seconds"]) / len(txs) * 1e6)
        without, with_ = min(runs[False]), min(runs[True])
        rows.append(
            {
                "batch": batch,
                "txs": len(txs),
                "us_per_tx_without": round(without, 2),
                "us_per_tx_with": round(with_, 2),
                "index_us_per_tx": round(with_ - without, 2),
                "cpu_us_per_tx_without": round(min(cpus[False]), 2),
                "cpu_us_per_tx_with": round(min(cpus[True]), 2),
                "index_cpu_us_per_tx": round(min(cpus[True]) - min(cpus[False]), 2),
                "runs_without": [round(x, 2) for x in runs[False]],
                "runs_with": [round(x, 2) for x in runs[True]],
            }
        )
    print(
        f"\nHistory index cost (sync={'off' if args.no_sync else 'on'}), one-leg transfers, best of {args.repeat}"
    )
    print(
        f"{'batch':>6} | {'us/tx without':>13} | {'us/tx with':>10} | {'index us/tx':>11} | {'index cpu us/tx':>15} | runs without / with"
    )
    print("-" * 90)
    for row in rows:
        print(
            f"{row['batch']:>6} | {row['us_per_tx_without']:>13} | {row['us_per_tx_with']:>10} | "
            f"{row['index_us_per_tx']:>11} | {row['index_cpu_us_per_tx']:>15} | {row['runs_without']} / {row['runs_with']}"
        )
    print(json.dumps({"bench": "ledger_history_index", "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
