"""The storage seam: a transactional key-value store with ordered keys.

node/app and the consensus journal see only these protocols; node/storage/lmdb_store.py
implements them on LMDB and node/storage/memory.py in memory for tests and the simulator.
Key spaces (prefixes) are owned: b"s/" ledger state (node/app), b"b/" blocks and certificates,
b"m/" node metadata (m/first_block: node/storage/prune.py; m/restored: node/votes.py),
b"j/" consensus journal, b"x/" node-local
indexes that are not ledger state (node/storage/history.py: account history, escrows by account).

Keys are 1..KEY_BYTES_MAX bytes in both stores: get, put and delete of any other key raise
InvalidKeyError (``check_key``), so the in-memory twin refuses exactly what LMDB refuses.

Scans are lazy: a scan reads a key only when the caller asks for the next pair, so stopping
early (``break``) costs only what was consumed. Mutating the write transaction (put or
delete) while one of its scans is still being iterated is NOT allowed: the next step of that
scan raises ScanInvalidatedError, in both stores. Collect what you need first (read loop,
``list(...)``), then write; a scan abandoned before the write is never resumed and is fine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

KEY_BYTES_MAX = 511  # LMDB's default compile-time maximum key size
# In node/app's space: tx_id's recorded (final) result, a serialized ledger.v1.TxResult. The
# block store reads it to find a receipt (node/storage/blocks.py find_tx), so it is defined here,
# below both, and node/app/state.py takes it from here.
RESULT_RECORD = b"s/t/"


class InvalidKeyError(ValueError):
    """A key that is not 1..KEY_BYTES_MAX bytes: refused by every store, before any I/O."""


class ScanInvalidatedError(RuntimeError):
    """A write transaction was modified while one of its scans was still being iterated."""


def check_key(key: bytes) -> None:
    """The key check shared by LmdbStore and MemoryStore (get, put, delete)."""
    if not isinstance(key, bytes):
        raise TypeError(f"store keys are bytes, got {type(key).__name__}")
    if not 0 < len(key) <= KEY_BYTES_MAX:
        raise InvalidKeyError(f"store key must be 1..{KEY_BYTES_MAX} bytes, got {len(key)}")


class KVReader(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Pairs whose key starts with prefix (and is >= start, when given), in ascending key
        order, read lazily. In a write
        transaction, a put/delete before the scan is exhausted makes its next step raise
        ScanInvalidatedError (see the module docstring)."""
        ...


class KVWriter(KVReader, Protocol):
    """Reads see this transaction's own writes."""

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...


class KVStore(Protocol):
    def read(self) -> AbstractContextManager[KVReader]: ...

    def write(self) -> AbstractContextManager[KVWriter]:
        """One atomic, durable transaction: committed when the block exits normally, aborted
        (nothing written) when it raises."""
        ...

    def close(self) -> None: ...
