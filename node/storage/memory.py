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

from node.storage.kv import KEY_BYTES_MAX, ScanInvalidatedError, check_key

__all__ = ["KEY_BYTES_MAX", "MemoryStore"]

_DELETED = None


class _Snapshot:
    """Committed data: a dict for lookups plus a sorted key list for ordered prefix scans."""

    __slots__ = ("data", "keys")

    def __init__(self, data: dict[bytes, bytes], keys: list[bytes]) -> None:
        self.data = data
        self.keys = keys

    def range_keys(self, prefix: bytes, start: bytes = b"") -> Iterator[bytes]:
        """Lazily, the keys starting with prefix (the key list is not copied). A write
        transaction never changes the snapshot it reads; commit installs or copies it."""
        keys = self.keys
        i = bisect.bisect_left(keys, max(prefix, start))
        while i < len(keys) and keys[i].startswith(prefix):
            yield keys[i]
            i += 1


class _Reader:
    def __init__(self, snapshot: _Snapshot) -> None:
        self._snap = snapshot

    def get(self, key: bytes) -> bytes | None:
        check_key(key)
        return self._snap.data.get(key)

    def scan(self, prefix: bytes, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        data = self._snap.data
        for key in self._snap.range_keys(prefix, start):
            yield key, data[key]


class _Writer:
    """Reads see this transaction's own writes; nothing reaches the store before commit."""

    def __init__(self, snapshot: _Snapshot) -> None:
        self._snap = snapshot
        self.overlay: dict[bytes, bytes | None] = {}
        self._mutations = 0

    def get(self, key: bytes) -> bytes | None:
        check_key(key)
        if key in self.overlay:
            return self.overlay[key]
        return self._snap.data.get(key)

    def scan(self, prefix: bytes, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Lazy merge of the committed keys and this transaction's own writes. A put/delete
        while the caller iterates invalidates the scan, as in LmdbStore (see kv.py)."""
        before = self._mutations
        # This transaction's writes under prefix (bounded by the transaction, not the store).
        low = max(prefix, start)
        mine = sorted(k for k in self.overlay if k.startswith(prefix) and k >= low)
        committed = self._snap.range_keys(prefix, start)
        data, overlay = self._snap.data, self.overlay
        nxt = next(committed, None)
        j = 0
        value: bytes | None
        while nxt is not None or j < len(mine):
            if nxt is not None and (j == len(mine) or nxt < mine[j]):
                key, value = nxt, data[nxt]
                nxt = next(committed, None)
            else:
                key = mine[j]
                j += 1
                if nxt == key:
                    nxt = next(committed, None)
                value = overlay[key]
            if value is None:
                continue
            yield key, value
            if self._mutations != before:
                raise ScanInvalidatedError("the write transaction changed while a scan of it was iterated")

    def put(self, key: bytes, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError("MemoryStore keys and values are bytes")
        check_key(key)
        self._mutations += 1
        self.overlay[key] = bytes(value)

    def delete(self, key: bytes) -> None:
        check_key(key)
        self._mutations += 1
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
