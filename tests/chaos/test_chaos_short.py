"""A short seeded chaos run over real node processes: every checker must pass.

The full run is `scripts/chaos.py --rounds 30 --json`; this keeps a few rounds so the suite
stays fast, with a fixed seed so a failure reproduces with the printed command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = 11


@pytest.mark.timeout(240)
def test_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--rounds", "4", "--seed", str(SEED)]
    cmd += ["--clients", "2", "--dir", str(tmp_path), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=220, cwd=ROOT)
    try:
        assert proc.returncode == 0, (
            f"chaos failed (rerun: {' '.join(cmd)}):\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
        )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        for checker in ("lost", "duplicated", "divergent_nodes", "conservation_violations"):
            assert result[checker] == 0, (checker, result)
        assert result["acknowledged"] > 0, "the load acknowledged nothing: the run proves nothing"
        assert result["height"] > 0
    finally:
        # The runner stops its nodes; prove it: no pid file may name a live process.
        for pid_file in tmp_path.glob("consortium/**/*.pid"):
            pid = int(pid_file.read_text().strip() or 0)
            if pid:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    continue
                os.kill(pid, 9)
                pytest.fail(f"chaos left node pid {pid} running ({pid_file})")
