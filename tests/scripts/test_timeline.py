"""scripts/timeline.py merges a chaos run's faults and node events into one ordered list."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import timeline  # noqa: E402


def _write(path: Path, records: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    _write(
        tmp_path / "faults.log",
        [
            {"ts_ms": 10_000, "round": 1, "action": "kill", "bank": "BANK-A"},
            {"ts_ms": 12_000, "round": 1, "action": "start", "bank": "BANK-A"},
            {"ts_ms": 20_000, "round": 2, "action": "stop", "bank": "BANK-B"},
            {"ts_ms": 21_000, "round": 2, "action": "cont", "bank": "BANK-B"},
        ],
    )
    _write(
        tmp_path / "consortium/nodes/BANK-B/events.log",
        [
            {"ts_ms": 8_500, "node": "BANK-B", "event": "too_early"},
            {"ts_ms": 9_500, "node": "BANK-B", "event": "executed", "height": 7},
            {"ts_ms": 11_000, "node": "BANK-B", "event": "view_change", "view": 1},
            {"ts_ms": 11_500, "node": "BANK-B", "event": "counters", "x": 1},
        ],
    )
    (tmp_path / "consortium/nodes/BANK-C").mkdir(parents=True)
    (tmp_path / "consortium/nodes/BANK-C/events.log").write_text(
        json.dumps({"ts_ms": 10_000, "node": "BANK-C", "event": "peer_down"})
        + "\nnot json\n"
        + json.dumps({"ts_ms": 20_500, "node": "BANK-C", "event": "view_change", "view": 2})
        + "\n"
    )
    return tmp_path


def test_a_round_is_its_faults_and_the_events_around_them_in_time_order(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert timeline.main(["--dir", str(run_dir), "--round", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "   -0.500s    BANK-B executed {'height': 7}",
        "   +0.000s ** kill BANK-A (round 1)",  # a fault sorts before a node event at the same ms
        "   +0.000s    BANK-C peer_down",
        "   +1.000s    BANK-B view_change {'view': 1}",
        "   +2.000s ** start BANK-A (round 1)",
    ]


def test_the_whole_run_and_counters_on_request(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    timeline.main(["--dir", str(run_dir)])
    plain = capsys.readouterr().out
    assert "too_early" in plain and "counters" not in plain and plain.count("**") == 4
    assert plain.splitlines()[-1] == "  +11.000s ** cont BANK-B (round 2)"
    timeline.main(["--dir", str(run_dir), "--all"])
    assert "BANK-B counters {'x': 1}" in capsys.readouterr().out


def test_an_unknown_round_or_a_wrong_dir_is_a_clear_error(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        timeline.main(["--dir", str(run_dir), "--round", "9"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        timeline.main(["--dir", str(tmp_path / "nowhere")])
    assert exc.value.code == 2
