"""KVStore on LMDB: one environment per node directory, one named database ("main").

Keys are already prefixed by owner (see kv.py), so one database is enough. map_size, max_dbs
and sync are always set explicitly: py-lmdb's default map is only 10 MiB, and a full map must
surface as our own clear StoreFullError rather than a bare lmdb exception mid-batch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

DB_NAME = b"main"
KEY_BYTES_MAX = 511  # LMDB's default compile-time maximum key size


class StoreFullError(Exception):
    """The LMDB map is full: the write transaction was aborted, nothing was written.
    Raise map_size_bytes (node config) and restart the node."""


class StoreError(Exception):
    """The store cannot be opened or used (bad path, closed store, nested write)."""


class _Reader:
    def __init__(self, txn: Any) -> None:
        self._txn = txn

    def get(self, key: bytes) -> bytes | None:
        value = self._txn.get(key)
        return None if value is None else bytes(value)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        cursor = self._txn.cursor()
        if not cursor.set_range(prefix):
            return
        for key, value in cursor:
            if not key.startswith(prefix):
                break
            yield bytes(key), bytes(value)


class _Writer(_Reader):
    def __init__(self, txn: Any, full_message: str) -> None:
        super().__init__(txn)
        self._full_message = full_message

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        # Materialized: puts/deletes while the caller iterates would otherwise move the cursor.
        return iter(list(super().scan(prefix)))

    def put(self, key: bytes, value: bytes) -> None:
        if not 0 < len(key) <= KEY_BYTES_MAX:
            raise ValueError(f"LMDB key must be 1..{KEY_BYTES_MAX} bytes, got {len(key)}")
        try:
            self._txn.put(key, value)
        except lmdb.MapFullError as exc:
            raise StoreFullError(self._full_message) from exc

    def delete(self, key: bytes) -> None:
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
