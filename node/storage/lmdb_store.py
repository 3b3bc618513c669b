"""KVStore on LMDB: one environment per node directory, one named database ("main").

Keys are already prefixed by owner (see kv.py), so one database is enough. map_size, max_dbs
and sync are always set explicitly: py-lmdb's default map is only 10 MiB, and a full map must
surface as our own clear StoreFullError rather than a bare lmdb exception mid-batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from node.storage.kv import KEY_BYTES_MAX, ScanInvalidatedError, check_key

__all__ = ["KEY_BYTES_MAX", "LmdbStore", "StoreError", "StoreFullError"]

DB_NAME = b"main"


class StoreFullError(Exception):
    """The LMDB map is full: the write transaction was aborted, nothing was written.
    Raise map_size_bytes (node config) and restart the node."""


class StoreError(Exception):
    """The store cannot be opened or used (bad path, closed store, nested write)."""


class _Reader:
    def __init__(self, txn: Any) -> None:
        self._txn = txn

    def get(self, key: bytes) -> bytes | None:
        check_key(key)
        value = self._txn.get(key)
        return None if value is None else bytes(value)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self._scan(prefix, lambda: 0)

    def _scan(self, prefix: bytes, mutations: Callable[[], int]) -> Iterator[tuple[bytes, bytes]]:
        """Lazy: one cursor step per pair the caller takes. ``mutations`` counts the writes of
        the transaction; a change between two steps means the cursor may have moved under us."""
        start = mutations()
        cursor = self._txn.cursor()
        found = cursor.set_range(prefix)
        while found:
            key = cursor.key()
            if not key.startswith(prefix):
                return
            yield bytes(key), bytes(cursor.value())
            if mutations() != start:
                raise ScanInvalidatedError("the write transaction changed while a scan of it was iterated")
            found = cursor.next()


class _Writer(_Reader):
    def __init__(self, txn: Any, full_message: str) -> None:
        super().__init__(txn)
        self._full_message = full_message
        self._mutations = 0

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        # Lazy; a put/delete while the caller iterates invalidates the scan (see kv.py).
        return self._scan(prefix, lambda: self._mutations)

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
        self, path: Path, map_size_bytes: int = 1 << 30, max_dbs: int = 4, sync: bool = True
    ) -> None:
        if map_size_bytes <= 0 or max_dbs <= 0:
            raise ValueError("map_size_bytes and max_dbs must be positive")
        self.path = Path(path)
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
        self._full_message = (
            f"{self.path}: LMDB map is full (map_size_bytes={map_size_bytes}); "
            "the transaction was aborted; raise map_size_bytes"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")

    @contextmanager
    def read(self) -> Iterator[_Reader]:
        self._check_open()
        txn = self._env.begin(db=self._db, write=False, buffers=False)
        try:
            yield _Reader(txn)
        finally:
            txn.abort()

    @contextmanager
    def write(self) -> Iterator[_Writer]:
        self._check_open()
        # LMDB allows one writer per environment; a nested write in the same thread would
        # wait on itself forever, so refuse it loudly instead.
        if getattr(self._local, "writing", False):
            raise StoreError(f"{self.path}: a write transaction is already open in this thread")
        self._local.writing = True
        try:
            txn = self._env.begin(db=self._db, write=True, buffers=False)
            try:
                yield _Writer(txn, self._full_message)
            except BaseException:
                txn.abort()
                raise
            try:
                txn.commit()
            except lmdb.MapFullError as exc:
                raise StoreFullError(self._full_message) from exc
        finally:
            self._local.writing = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()

    def __enter__(self) -> LmdbStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
