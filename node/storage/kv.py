"""The storage seam: a transactional key-value store with ordered keys.

node/app and the consensus journal see only these protocols; node/storage/lmdb_store.py
implements them on LMDB and node/storage/memory.py in memory for tests and the simulator.
Key spaces (prefixes) are owned: b"s/" ledger state (node/app), b"b/" blocks and certificates,
b"m/" node metadata, b"j/" consensus journal.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol


class KVReader(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Pairs whose key starts with prefix, in ascending key order."""
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
