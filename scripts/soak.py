#!/usr/bin/env python3
"""Soak: a consortium at a steady open-loop rate with retention on, sampled over time (issue 18).

    scripts/soak.py --rate 200 --duration 1800 --retention-blocks 3000 --out soak/
    scripts/soak.py --duration 300 --out soak-short/                 the short version

Starts a consortium (or attaches with --dir; its configs' retention is then set and the nodes
restarted), runs scripts/bench.py's open-loop load for --duration seconds, and every --sample-s
samples each node: its store's bytes on disk (allocated blocks of data.mdb) and in use (LMDB's
high page), its first kept block, height and view (GetStatus), and its anonymous RSS (RssAnon in
/proc/PID/status: the heap alone; plain RSS also counts LMDB's mapped file pages). Writes
soak.csv (one row per node per sample) and soak.svg (disk and anonymous RSS over time, a line
per node; drawn by hand, no plotting library needed), and ends with one JSON line: the run, the
StoreFullError and view-change counts, and per node the disk and RSS at the end of the first
retention period and at the end (flat means the second is close to the first).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from consortium import Consortium, exit_cleanly_on_sigterm  # noqa: E402
from store_usage import usage  # noqa: E402  (scripts/store_usage.py)

from node.backup import disk_bytes  # noqa: E402
from node.storage.prune import Retention  # noqa: E402

FIELDS = (
    "t_s",
    "bank",
    "height",
    "executed_txs",
    "first_block",
    "view",
    "disk_bytes",
    "disk_used_bytes",
    "rss_anon_mib",
    "rss_mib",
    "store_full",
    "view_changes",
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss(pid: int) -> tuple[float, float]:
    """(anonymous RSS, RSS) in MiB from /proc/PID/status."""
    anon = total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            anon = int(line.split()[1])
        elif line.startswith("VmRSS:"):
            total = int(line.split()[1])
    return anon / 1024, total / 1024


def store_full_events(c: Consortium, bank: str) -> int:
    """StoreFullError in the node's logs (its failure and refusals near the budget)."""
    count = 0
    for path in c.node_dir(bank).glob("events.log*"):
        with path.open(encoding="utf-8", errors="replace") as f:
            count += sum("StoreFullError" in line or "disk_budget_reached" in line for line in f)
    return count


def sample(c: Consortium, t_s: float) -> list[dict[str, Any]]:
    rows = []
    for bank in c.banks():
        pid = c.pid(bank)
        st = c.node_status(bank, timeout_s=2.0) if pid is not None else None
        anon, total = rss(pid) if pid is not None else (0.0, 0.0)
        rows.append(
            {
                "t_s": round(t_s, 1),
                "bank": bank,
                "height": None if st is None else st.last_executed,
                "executed_txs": None if st is None else st.counters["executed_txs"],
                "first_block": None if st is None else st.counters["first_block"],
                "view": None if st is None else st.view,
                "disk_bytes": disk_bytes(c.node_config(bank).data_dir),
                "disk_used_bytes": None if st is None else st.counters["disk_used_bytes"],
                "rss_anon_mib": round(anon, 1),
                "rss_mib": round(total, 1),
                "store_full": None if st is None else st.counters["rejected_disk_budget"],
                "view_changes": None if st is None else st.counters["note_view_change"],
            }
        )
    return rows


# --- the plot (SVG by hand) -----------------------------------------------------------------

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


def _panel(rows: list[dict[str, Any]], key: str, title: str, scale: float, unit: str, top: int) -> str:
    width, height, left, bottom = 760, 220, 70, 30
    banks = sorted({r["bank"] for r in rows})
    t_max = max((r["t_s"] for r in rows), default=1) or 1
    v_max = max((r[key] or 0) / scale for r in rows) or 1
    parts = [
        f'<text x="{left}" y="{top + 14}" font-size="14" font-family="sans-serif">{title}</text>',
        f'<line x1="{left}" y1="{top + height}" x2="{left + width}" y2="{top + height}" stroke="black"/>',
        f'<line x1="{left}" y1="{top + 20}" x2="{left}" y2="{top + height}" stroke="black"/>',
    ]
    for i in range(5):
        y = top + height - i * (height - 20) / 4
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.0f}" font-size="10" text-anchor="end" '
            f'font-family="sans-serif">{v_max * i / 4:.1f}</text>'
        )
        x = left + i * width / 4
        parts.append(
            f'<text x="{x:.0f}" y="{top + height + 14}" font-size="10" text-anchor="middle" '
            f'font-family="sans-serif">{t_max * i / 4:.0f} s</text>'
        )
    parts.append(
        f'<text x="{left - 50}" y="{top + height / 2:.0f}" font-size="11" font-family="sans-serif" '
        f'transform="rotate(-90 {left - 50} {top + height / 2:.0f})">{unit}</text>'
    )
    for i, bank in enumerate(banks):
        points = " ".join(
            f"{left + r['t_s'] / t_max * width:.1f},{top + height - (r[key] or 0) / scale / v_max * (height - 20):.1f}"
            for r in rows
            if r["bank"] == bank
        )
        color = COLORS[i % len(COLORS)]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>')
        parts.append(
            f'<text x="{left + width - 80}" y="{top + 34 + 14 * i}" font-size="11" fill="{color}" '
            f'font-family="sans-serif">{bank}</text>'
        )
    del bottom
    return "\n".join(parts)


def write_svg(path: Path, rows: list[dict[str, Any]], caption: str) -> None:
    body = "\n".join(
        [
            f'<text x="20" y="20" font-size="13" font-family="sans-serif">{caption}</text>',
            _panel(rows, "disk_bytes", "store on disk (data.mdb, allocated)", 1 << 20, "MiB", 30),
            _panel(rows, "rss_anon_mib", "anonymous RSS (RssAnon)", 1, "MiB", 290),
        ]
    )
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="860" height="560" viewBox="0 0 860 560">\n'
        f'<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n'
    )


# --- the run ---------------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]], flat_from_s: float) -> dict[str, Any]:
    """Per node: disk and anonymous RSS at the first sample at or after flat_from_s, at the end,
    and the largest in between (flat: end and max close to the first)."""
    out: dict[str, Any] = {}
    for bank in sorted({r["bank"] for r in rows}):
        mine = [r for r in rows if r["bank"] == bank and r["t_s"] >= flat_from_s]
        if not mine:
            continue
        first, last = mine[0], mine[-1]
        known = [r for r in mine if r["executed_txs"] is not None and r["disk_used_bytes"] is not None]
        txs = known[-1]["executed_txs"] - known[0]["executed_txs"] if len(known) >= 2 else 0
        out[bank] = {
            "from_s": first["t_s"],
            "disk_mib": [round(first["disk_bytes"] / 2**20, 1), round(last["disk_bytes"] / 2**20, 1)],
            "disk_mib_max": round(max(r["disk_bytes"] for r in mine) / 2**20, 1),
            "rss_anon_mib": [first["rss_anon_mib"], last["rss_anon_mib"]],
            "rss_anon_mib_max": max(r["rss_anon_mib"] for r in mine),
            # Growth of the store per transaction over the period (LMDB's high page: freed
            # pages are reused first, so this is what a transaction leaves for good).
            "growth_bytes_per_tx": round(
                (known[-1]["disk_used_bytes"] - known[0]["disk_used_bytes"]) / txs, 1
            )
            if txs
            else None,
            "txs": txs,
            "height": last["height"],
            "first_block": last["first_block"],
        }
    return out


def run(args: argparse.Namespace, c: Consortium) -> dict[str, Any]:
    args.out.mkdir(parents=True, exist_ok=True)
    bench_out = args.out / "bench.json"
    bench = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "--dir",
            str(c.dir),
            "--rate",
            str(args.rate),
            "--duration",
            str(args.duration),
            "--warmup",
            "10",  # latency counts from the first 10 s on (clients start together; the backlog of a slow start is not the node's)
            "--clients",
            str(args.clients),
            "--json",
        ],
        stdout=bench_out.open("w"),
        stderr=(args.out / "bench.log").open("w"),
    )
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        with (args.out / "soak.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            while bench.poll() is None:
                t_s = time.monotonic() - started
                batch = sample(c, t_s)
                rows.extend(batch)
                writer.writerows(batch)
                f.flush()
                heights = [r["height"] for r in batch]
                log(
                    f"soak {t_s:6.0f}s heights {heights} disk MiB "
                    f"{[round(r['disk_bytes'] / 2**20, 1) for r in batch]} anon MiB {[r['rss_anon_mib'] for r in batch]}"
                )
                time.sleep(args.sample_s)  # the sampling period itself
    finally:
        if bench.poll() is None:
            bench.terminate()
            bench.wait(timeout=30)
    lines = bench_out.read_text().strip().splitlines()
    result = json.loads(lines[-1]) if lines else {}
    # When the first retention period ended: the first sample where a node pruned, plus the
    # time the load takes to make retention_blocks more blocks (setup blocks are pruned first).
    pruned_at = next((r["t_s"] for r in rows if (r["first_block"] or 1) > 1), None)
    flat_from = pruned_at
    mine = [r for r in rows if r["bank"] == rows[0]["bank"] and r["height"] is not None] if rows else []
    if pruned_at is not None and len(mine) >= 2 and mine[-1]["t_s"] > mine[0]["t_s"]:
        half = mine[len(mine) // 2 :]
        blocks_per_s = (half[-1]["height"] - half[0]["height"]) / max(1e-9, half[-1]["t_s"] - half[0]["t_s"])
        if blocks_per_s > 0:
            flat_from = pruned_at + args.retention_blocks / blocks_per_s
    end = [r for r in rows if r["t_s"] == rows[-1]["t_s"]] if rows else []
    out = {
        "rate": args.rate,
        "duration_s": args.duration,
        "retention_blocks": args.retention_blocks,
        "committed_tps": result.get("committed_tps", result.get("tps")),
        "bench": {
            k: result.get(k) for k in ("p50_ms", "p99_ms", "receipt_failures", "not_ok", "view_changes")
        },
        "store_full": sum(store_full_events(c, b) for b in c.banks())
        + sum(r["store_full"] or 0 for r in end),
        "view_changes": max((r["view_changes"] or 0 for r in end), default=0),
        "views_at_end": sorted({r["view"] for r in end}),
        "first_pruned_at_s": pruned_at,
        "flat_from_s": None if flat_from is None else round(flat_from, 1),
        "nodes": summarize(rows, flat_from if flat_from is not None else 0.0),
        # What one node's store holds per transaction, by key space (scripts/store_usage.py).
        "store_usage": usage(c.node_config(c.banks()[0]).data_dir),
    }
    write_svg(
        args.out / "soak.svg",
        rows,
        f"soak: {args.rate:g} tx/s open loop, {args.duration:g} s, retention {args.retention_blocks} blocks",
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=None, help="attach to the consortium in DIR")
    parser.add_argument("--banks", type=int, default=4)
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop tx/s in total (default 200)")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--retention-blocks", type=int, default=1500, help="blocks each node keeps")
    parser.add_argument("--sample-s", type=float, default=5.0, help="sampling period (default 5 s)")
    parser.add_argument("--out", type=Path, default=Path("soak"), help="folder for soak.csv, soak.svg")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    retention = Retention(blocks=args.retention_blocks) if args.retention_blocks > 0 else Retention()

    def go(c: Consortium) -> dict[str, Any]:
        c.set_retention(retention)
        for bank in c.banks():
            if c.pid(bank) is not None:
                c.restart(bank)
        if any(c.pid(b) is None for b in c.banks()):
            c.up(args.banks)
        return run(args, c)

    if args.dir is not None:
        out = go(Consortium(args.dir))
    else:
        with tempfile.TemporaryDirectory(prefix="soak-consortium-") as tmp:
            c = Consortium(Path(tmp))
            try:
                c.init(args.banks)
                out = go(c)
            finally:
                for line in c.down():
                    log(f"soak: {line}")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
