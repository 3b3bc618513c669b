"""Structured event log: one JSON object per line, so tests and scripts can grep and parse it.

Every line has ``ts_ms`` (wall clock), ``node`` (member id) and ``event``; the rest is detail.
Counters live beside it: ``count(name)`` bumps a named counter shown in GetStatus, which is how
dropped peer input and rejected client input are made visible without a log line each.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

LogValue = int | str | bool | float | None


class EventLog:
    def __init__(self, node: str, path: Path | None = None) -> None:
        self.node = node
        self.counters: Counter[str] = Counter()
        self._own_file = path is not None
        self._out: TextIO
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._out = path.open("a", buffering=1, encoding="utf-8")  # line-buffered
        else:
            self._out = sys.stderr

    def event(self, event: str, /, **detail: LogValue) -> None:
        record: dict[str, LogValue] = {"ts_ms": int(time.time() * 1000), "node": self.node, "event": event}
        for key, value in detail.items():  # a detail never overwrites the fixed fields
            record[f"detail_{key}" if key in ("ts_ms", "node", "event") else key] = value
        # A full disk or a closed stream must not take the node down.
        with contextlib.suppress(OSError, ValueError):
            self._out.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def close(self) -> None:
        if self._own_file:
            self._out.close()
