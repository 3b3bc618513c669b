"""An in-memory KVStore with the same semantics as LmdbStore, for tests and the simulator.

A write transaction works on an overlay that is applied only when the ``with`` block exits
normally; an exception discards it, so a failed batch leaves the store exactly as before.
Readers see a snapshot: when a write commits while readers are open, the committed maps are
copied first (copy-on-write), as LMDB's MVCC readers would not see the new data either.
Not thread-safe: it serves single-threaded users (tests, the seeded simulator).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from contextlib import contextmanager

_DELETED = None
KEY_BYTES_MAX = 511  # LMDB's maximum key size: the twin refuses what LmdbStore would refuse


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with prefix (None: no upper bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class _Snapshot:
    """Committed data: a dict for lookups plus a sorted key list for ordered prefix scans."""

    __slots__ = ("data", "keys")

    def __init__(self, data: dict[bytes, bytes], keys: list[bytes]) -> None:
        self.data = data
        self.keys = keys

    def range_keys(self, prefix: bytes) -> list[bytes]:
        lo = bisect.bisect_left(self.keys, prefix)
        end = _prefix_end(prefix)
        hi = len(self.keys) if end is None else bisect.bisect_left(self.keys, end)
        return self.keys[lo:hi]


class _Reader:
    def __init__(self, snapshot: _Snapshot) -> None:
        self._snap = snapshot

    def get(self, key: bytes) -> bytes | None:
        return self._snap.data.get(key)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        data = self._snap.data
        for key in self._snap.range_keys(prefix):
            yield key, data[key]


class _Writer:
    """Reads see this transaction's own writes; nothing reaches the store before commit."""

    def __init__(self, snapshot: _Snapshot) -> None:
        self._snap = snapshot
        self.overlay: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.overlay:
            return self.overlay[key]
        return self._snap.data.get(key)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        # Materialized so that puts made while the caller iterates cannot disturb the order.
        keys = set(self._snap.range_keys(prefix))
        keys.update(k for k in self.overlay if k.startswith(prefix))
        pairs: list[tuple[bytes, bytes]] = []
        for key in sorted(keys):
            value = self.get(key)
            if value is not None:
                pairs.append((key, value))
        return iter(pairs)

    def put(self, key: bytes, value: bytes) -> None:
        if not isinstance(key, bytes) or not isinstance(value, bytes):
            raise TypeError("MemoryStore keys and values are bytes")
        if not 0 < len(key) <= KEY_BYTES_MAX:
            raise ValueError(f"key must be 1..{KEY_BYTES_MAX} bytes, got {len(key)}")
        self.overlay[key] = bytes(value)

    def delete(self, key: bytes) -> None:
        self.overlay[key] = _DELETED


class MemoryStore:
    """KVStore in memory. One writer at a time; a nested write() is a caller bug and raises."""

    def __init__(self) -> None:
        self._snap = _Snapshot({}, [])
        self._readers_open = 0
        self._writing = False
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("MemoryStore is closed")

    @contextmanager
    def read(self) -> Iterator[_Reader]:
        self._check_open()
        self._readers_open += 1
        try:
            yield _Reader(self._snap)
        finally:
            self._readers_open -= 1

    @contextmanager
    def write(self) -> Iterator[_Writer]:
        self._check_open()
        if self._writing:
            raise RuntimeError("MemoryStore: a write transaction is already open")
        self._writing = True
        try:
            writer = _Writer(self._snap)
            yield writer
            self._commit(writer.overlay)
        finally:
            self._writing = False

    def _commit(self, overlay: dict[bytes, bytes | None]) -> None:
        snap = self._snap
        if self._readers_open:
            snap = _Snapshot(dict(snap.data), list(snap.keys))
        data, keys = snap.data, snap.keys
        for key, value in overlay.items():
            if value is None:
                if key in data:
                    del data[key]
                    del keys[bisect.bisect_left(keys, key)]
            else:
                if key not in data:
                    bisect.insort(keys, key)
                data[key] = value
        self._snap = snap

    def close(self) -> None:
        self._closed = True

    def __len__(self) -> int:
        return len(self._snap.data)
