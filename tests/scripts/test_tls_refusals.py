"""scripts/tls_refusals.py, which makes docs/SECURITY.md's table from live nodes, still runs and
still finds every case refused, with the nodes committing afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(150)
def test_every_bad_connection_is_refused_and_the_nodes_keep_committing() -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "tls_refusals.py"), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=140, cwd=ROOT)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rows, summary = lines[:-1], lines[-1]
    assert summary["all_refused"] and summary["still_committing"], summary
    assert len(rows) == 12 and all(r["refused"] for r in rows), rows
    by_case = {r["case"]: r for r in rows}
    impostor = next(r for c, r in by_case.items() if c.startswith("a member presenting another's"))
    assert impostor["caller_got"].startswith("PERMISSION_DENIED"), impostor
    assert impostor["node_logged"].startswith("events.log (1 line): peer_refused reason=wrong_ca"), impostor
    assert impostor["counted"] == "peer_refused_wrong_ca +2", impostor  # refused twice, logged once
    expired = next(r for c, r in by_case.items() if c.startswith("expired"))
    assert "certificate has expired" in expired["node_logged"], expired
    assert expired["node_logged"].startswith("events.log (1 line): tls_refused reason=expired"), expired
    assert expired["counted"] == "tls_refused_expired +2", expired
