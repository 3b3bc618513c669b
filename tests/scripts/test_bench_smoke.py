"""The benchmark is a script, not a timed test: here it only has to run and print well-formed
JSON whose figures are consistent with each other."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("mode", "load", "submit"),
    [
        ("closed", ["--clients", "1", "--expect-tps", "3000"], "stream"),
        ("open", ["--clients", "1", "--rate", "300", "--escrow", "0.2"], "batch"),
        ("closed", ["--clients", "1", "--expect-tps", "3000", "--insecure"], "stream"),  # TLS's cost
    ],
)
def test_bench_runs_briefly_and_prints_one_json_object(mode: str, load: list[str], submit: str) -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--duration", "3", "--warmup", "1"]
    cmd += [*load, "--submit", submit, "--accounts-per-bank", "3", "--batch", "50", "--json"]
    cmd += ["--multileg", "0.3"]  # the mix path too: 30% two-leg payment-versus-payment
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in (
        "banks",
        "committed_tps",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "rss_mb_max",
        "rss_growth_mb",
        "rss_anon_mb_max",
        "rss_anon_growth_mb",
        "duration_s",
        "mode",
    ):
        assert key in out, key
    assert out["banks"] == 4 and out["mode"] == mode and out["submit"] == submit and out["duration_s"] == 3
    assert out["tls"] is ("--insecure" not in load)
    assert out["committed_tps"] > 0, "nothing committed during the window"
    assert out["p50_ms"] <= out["p99_ms"] <= out["p999_ms"]
    assert out["receipt_failures"] == 0
    assert out["multileg"] == 0.3 and out["not_ok"] == 0, "every transaction, of every kind, must settle"
    kinds = out["committed_by_kind"]
    assert sum(kinds.values()) == round(out["committed_tps"] * out["duration_s"])
    assert kinds.get("transfer", 0) > 0 and kinds.get("pvp", 0) > 0
    assert (kinds.get("escrow", 0) > 0) == ("--escrow" in load) and out["escrow"] == (
        0.2 if "--escrow" in load else 0
    )
    assert out["view_changes"] == 0, "a quiet 3 s run must not change primary"
    assert not out["presign_exhausted"], "the window must measure the nodes, not the pre-signed supply"
    assert sum(out["tps_by_second"]) == round(out["committed_tps"] * out["duration_s"])
    parts = out["latency_parts_ms"]
    assert set(parts) == {"submit_ack", "to_proposal", "proposal_to_receipt"}
    # Per transaction, to_proposal + proposal_to_receipt is its latency. The proposal time is
    # the primary's clock as of its last tick (tick_ms 20), so a part may be off by about a
    # tick (and scheduling delay) either way: each part's percentiles are at most the whole's
    # plus that slack.
    slack_ms = 100
    for name in ("to_proposal", "proposal_to_receipt"):
        assert parts[name]["p50"] <= out["p50_ms"] + slack_ms, (name, parts, out["p50_ms"])
        assert parts[name]["p99"] <= out["p99_ms"] + slack_ms, (name, parts, out["p99_ms"])
    assert 0 < parts["submit_ack"]["p50"] <= parts["submit_ack"]["p99"]
