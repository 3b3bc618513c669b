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


FILE_BYTES_MAX = 64 << 20  # rotate past this (node config: limits.log_file_bytes_max)
FILES_KEPT = 5  # old files kept besides the current one (limits.log_files_kept)


class EventLog:
    """To stderr, or appended to ``path``, which rotates by size: past ``file_bytes_max`` it
    becomes path.1 (path.1 becomes path.2, ...; path.<files_kept> is deleted) and a new path
    is started, so the log takes at most about (files_kept + 1) x file_bytes_max on disk."""

    def __init__(
        self,
        node: str,
        path: Path | None = None,
        file_bytes_max: int = FILE_BYTES_MAX,
        files_kept: int = FILES_KEPT,
    ) -> None:
        self.node = node
        self.counters: Counter[str] = Counter()
        self._path = path
        self._file_bytes_max = file_bytes_max
        self._files_kept = files_kept
        self._size = 0
        self._out: TextIO
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._out = self._open(path)
        else:
            self._out = sys.stderr

    def _open(self, path: Path) -> TextIO:
        out = path.open("a", buffering=1, encoding="utf-8")  # line-buffered
        self._size = out.tell()
        return out

    def _rotate(self, path: Path) -> None:
        self._out.close()
        for i in range(self._files_kept, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if i == self._files_kept:
                older.unlink(missing_ok=True)
            else:
                newer = path.with_name(f"{path.name}.{i + 1}")
                if older.exists():
                    older.replace(newer)
        path.replace(path.with_name(f"{path.name}.1"))
        self._out = self._open(path)
        self.counters["log_rotations"] += 1

    def event(self, event: str, /, **detail: LogValue) -> None:
        record: dict[str, LogValue] = {"ts_ms": int(time.time() * 1000), "node": self.node, "event": event}
        for key, value in detail.items():  # a detail never overwrites the fixed fields
            record[f"detail_{key}" if key in ("ts_ms", "node", "event") else key] = value
        # A full disk or a closed stream must not take the node down.
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with contextlib.suppress(OSError, ValueError):
            if self._path is not None and self._size + len(line) > self._file_bytes_max and self._size:
                self._rotate(self._path)
            self._out.write(line)
            self._size += len(line)  # characters, near enough bytes for a size bound

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def close(self) -> None:
        if self._path is not None:
            self._out.close()
