"""KVStore on LMDB: one environment per node directory, one named database ("main").

Keys are already prefixed by owner (see kv.py), so one database is enough. map_size, max_dbs
and sync are always set explicitly: py-lmdb's default map is only 10 MiB, and a full map must
surface as our own clear StoreFullError rather than a bare lmdb exception mid-batch.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from node.storage.kv import KEY_BYTES_MAX, ScanInvalidatedError, check_key

__all__ = ["KEY_BYTES_MAX", "LmdbStore", "Pinned", "StoreError", "StoreFullError"]

DB_NAME = b"main"


class StoreFullError(Exception):
    """The LMDB map is full and may not grow (the disk budget): the write transaction was
    aborted, nothing was written. Raise disk_budget_bytes (node config) and restart the node."""


# The map grows (doubling, capped by the budget) whenever less than this is left before a write
# transaction: far more than one block and its journal records need.
WRITE_HEADROOM_BYTES = 64 << 20
DISK_FREE_CHECK_S = 1.0  # how often the filesystem's free space is read (statvfs)


class StoreError(Exception):
    """The store cannot be opened or used (bad path, closed store, nested write)."""


class _Reader:
    def __init__(self, txn: Any) -> None:
        self._txn = txn

    def get(self, key: bytes) -> bytes | None:
        check_key(key)
        value = self._txn.get(key)
        return None if value is None else bytes(value)

    def scan(self, prefix: bytes, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return self._scan(prefix, lambda: 0, start)

    def _scan(
        self, prefix: bytes, mutations: Callable[[], int], start: bytes = b""
    ) -> Iterator[tuple[bytes, bytes]]:
        """Lazy: one cursor step per pair the caller takes. ``mutations`` counts the writes of
        the transaction; a change between two steps means the cursor may have moved under us."""
        before = mutations()
        cursor = self._txn.cursor()
        found = cursor.set_range(max(prefix, start))
        while found:
            key = cursor.key()
            if not key.startswith(prefix):
                return
            yield bytes(key), bytes(cursor.value())
            if mutations() != before:
                raise ScanInvalidatedError("the write transaction changed while a scan of it was iterated")
            found = cursor.next()


class Pinned:
    """A read transaction kept open across calls: one consistent view of the store for as long
    as a peer fetches a snapshot from it (node/snapshot.py). While it is open LMDB cannot reuse
    the pages later writes free, and the map cannot grow, so the store ends it (``released``
    becomes True) before it grows the map; its holder then stops serving from it."""

    def __init__(self, txn: Any, forget: Callable[[Pinned], None]) -> None:
        self._txn: Any = txn
        self._forget = forget
        self.reader = _Reader(txn)

    @property
    def released(self) -> bool:
        return self._txn is None

    def release(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
            self._forget(self)


class _Writer(_Reader):
    def __init__(self, txn: Any, full_message: str) -> None:
        super().__init__(txn)
        self._full_message = full_message
        self._mutations = 0

    def scan(self, prefix: bytes, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        # Lazy; a put/delete while the caller iterates invalidates the scan (see kv.py).
        return self._scan(prefix, lambda: self._mutations, start)

    def put(self, key: bytes, value: bytes) -> None:
        check_key(key)
        self._mutations += 1
        try:
            self._txn.put(key, value)
        except lmdb.MapFullError as exc:
            raise StoreFullError(self._full_message) from exc

    def delete(self, key: bytes) -> None:
        check_key(key)
        self._mutations += 1
        self._txn.delete(key)


class LmdbStore:
    """KVStore on an LMDB environment in directory ``path`` (created if missing).

    ``sync=True`` fsyncs every commit (durable); ``sync=False`` trades durability of the last
    transactions for speed and is for benchmarks and tests only.
    """

    def __init__(
        self,
        path: Path,
        map_size_bytes: int = 1 << 30,
        max_dbs: int = 4,
        sync: bool = True,
        budget_bytes: int | None = None,
        headroom_bytes: int = WRITE_HEADROOM_BYTES,
    ) -> None:
        if map_size_bytes <= 0 or max_dbs <= 0:
            raise ValueError("map_size_bytes and max_dbs must be positive")
        self.path = Path(path)
        # The map starts at map_size_bytes and grows up to budget_bytes (default: no growth).
        self.budget_bytes = max(budget_bytes or map_size_bytes, map_size_bytes)
        self.headroom_bytes = headroom_bytes
        self.map_size_bytes = map_size_bytes
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._env = lmdb.open(
                str(self.path),
                map_size=map_size_bytes,
                max_dbs=max_dbs,
                sync=sync,
                metasync=sync,
                subdir=True,
                lock=True,
                readahead=False,
            )
            self._db = self._env.open_db(DB_NAME)
        except (OSError, lmdb.Error) as exc:
            raise StoreError(f"{self.path}: cannot open LMDB environment: {exc}") from exc
        self._local = threading.local()
        self._closed = False
        self._readers = 0  # read transactions open now (the map can only be resized without)
        self._pins: set[Pinned] = set()  # long reads, released before the map grows
        self.on_commit_s: Callable[[float], None] | None = None  # told each write commit's seconds
        self._full_message = (
            f"{self.path}: LMDB map is full and at its budget of {self.budget_bytes} bytes "
            "(disk_budget_bytes); the transaction was aborted; raise the disk budget"
        )
        # The map may be larger than asked already (it grew before a restart): LMDB keeps it.
        self.map_size_bytes = int(self._env.info()["map_size"])
        self.used_bytes = self._used()
        self.disk_free_bytes = self._disk_free()
        self._disk_checked = time.monotonic()
        self._grow()

    def _used(self) -> int:
        """Bytes of the map in use: its highest page (free pages inside are reused first)."""
        return (int(self._env.info()["last_pgno"]) + 1) * int(self._env.stat()["psize"])

    def _disk_free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def _grow(self) -> None:
        """Grow the map before it gets tight, up to the budget. Only with no transaction open
        in this process (LMDB's rule for mdb_env_set_mapsize); else at the next write."""
        if self._readers or self.used_bytes + self.headroom_bytes <= self.map_size_bytes:
            return
        target = min(
            max(2 * self.map_size_bytes, self.used_bytes + 2 * self.headroom_bytes), self.budget_bytes
        )
        if target > self.map_size_bytes:
            for pinned in list(self._pins):
                pinned.release()
            self._env.set_mapsize(target)
            self.map_size_bytes = target

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")

    @contextmanager
    def read(self) -> Iterator[_Reader]:
        self._check_open()
        txn = self._env.begin(db=self._db, write=False, buffers=False)
        self._readers += 1
        try:
            yield _Reader(txn)
        finally:
            self._readers -= 1
            txn.abort()

    def pin(self) -> Pinned:
        """A read transaction that stays open until released (or the map grows, or the store
        closes). Use it from the thread that writes, which is the one that may release it."""
        self._check_open()
        pinned = Pinned(self._env.begin(db=self._db, write=False, buffers=False), self._pins.discard)
        self._pins.add(pinned)
        return pinned

    @contextmanager
    def write(self) -> Iterator[_Writer]:
        self._check_open()
        # LMDB allows one writer per environment; a nested write in the same thread would
        # wait on itself forever, so refuse it loudly instead.
        if getattr(self._local, "writing", False):
            raise StoreError(f"{self.path}: a write transaction is already open in this thread")
        self._local.writing = True
        try:
            self._grow()
            txn = self._env.begin(db=self._db, write=True, buffers=False)
            try:
                yield _Writer(txn, self._full_message)
            except BaseException:
                txn.abort()
                raise
            started = time.perf_counter()
            try:
                txn.commit()
            except lmdb.MapFullError as exc:
                raise StoreFullError(self._full_message) from exc
            if self.on_commit_s is not None:
                self.on_commit_s(time.perf_counter() - started)
            self.used_bytes = self._used()
            now = time.monotonic()
            if now - self._disk_checked >= DISK_FREE_CHECK_S:
                self._disk_checked = now
                self.disk_free_bytes = self._disk_free()
        finally:
            self._local.writing = False

    def space(self) -> dict[str, int]:
        """Bytes used, mapped, allowed (the budget) and free on the filesystem, as last read."""
        return {
            "disk_used_bytes": self.used_bytes,
            "disk_map_bytes": self.map_size_bytes,
            "disk_budget_bytes": self.budget_bytes,
            "disk_free_bytes": self.disk_free_bytes,
        }

    def space_left(self, reserve_bytes: int) -> str | None:
        """Why new work should be refused now (within ``reserve_bytes`` of the budget, or of a
        full filesystem), or None. What was already ordered still fits in the reserve."""
        if self.used_bytes + reserve_bytes >= self.budget_bytes:
            return f"the store uses {self.used_bytes} of its {self.budget_bytes}-byte budget"
        if self.disk_free_bytes < reserve_bytes:
            return f"the disk has {self.disk_free_bytes} bytes free"
        return None

    def flush(self) -> None:
        """Write what the commits of a ``sync=False`` store left to the OS down to the disk."""
        self._check_open()
        self._env.sync(True)

    def close(self) -> None:
        if not self._closed:
            for pinned in list(self._pins):
                pinned.release()
            self._closed = True
            self._env.close()

    def __enter__(self) -> LmdbStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
