"""The narrow port between the client API and the rest of the node.

The API reads the store, hands admitted transactions to the node's loop, waits for receipts and
heights, and reports status; it sees nothing else of the driver, the replica or the transport.
node/driver.py's Driver implements this; tests may pass anything that does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from node.storage.blocks import Head
from node.storage.kv import KVReader
from node.storage.prune import Retention


class NodePort(Protocol):
    @property
    def head(self) -> Head:
        """The last executed block: height, state root, block hash."""
        ...

    def read(self) -> AbstractContextManager[KVReader]:
        """A read transaction on the node's store (one consistent snapshot)."""
        ...

    def submit(self, tx_id: bytes, envelope: bytes) -> bool:
        """Hand a transaction that passed admission to the loop; False when past
        pending_requests_max."""
        ...

    def held_by_replica(self) -> Mapping[bytes, bytes]:
        """tx_id -> envelope of what the replica holds until it executes."""
        ...

    def holds(self, tx_id: bytes) -> bool:
        """Admitted here or held by the replica, not executed yet."""
        ...

    def pending_count(self) -> int: ...

    def receipt_waiters(self, tx_ids: Sequence[bytes]) -> dict[bytes, asyncio.Future[int]]: ...

    def drop_waiters(self, futures: Mapping[bytes, asyncio.Future[int]]) -> None: ...

    def wake_waiters(self, sequence: int) -> None: ...

    def unlikely_to_be_attested(self, height: int) -> bool: ...

    async def wait_height(self, height: int, timeout_s: float) -> bool: ...

    async def wait_attested(self, height: int, timeout_s: float) -> bool:
        """True once the block at ``height`` has its attestations here (the feed)."""
        ...

    async def wait_stable(self, sequence: int, timeout_s: float) -> bool:
        """True once a checkpoint at ``sequence`` or later is stable here (balance proofs)."""
        ...

    def peer_up(self, replica: int) -> bool: ...

    def retention(self) -> Retention:
        """Which old blocks this node prunes (for the messages of reads below the first kept)."""
        ...

    def status_counters(self) -> dict[str, int]:
        """executed_blocks, executed_txs, fetched_blocks, ..."""
        ...
