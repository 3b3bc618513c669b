"""Pruning old blocks under a retention policy (node-local, never consensus).

What goes, per pruned height (node/storage/blocks.py's key spaces): the certified block
(b/h/), its results (b/r/), its outcome (b/o/) and attestations (b/a/), and the b/t/ index
entries of its unrecorded results. What stays: the ledger state (s/), including each recorded
transaction's result record (s/t/ tx_id: code, height, index), which the ledger needs anyway
to answer a retry with the first result; the history index (x/, node/storage/history.py),
which statements need and which is only a fraction of a block's bytes (see README, "Retention");
the consensus journal (j/) and the head (m/).

Only the driver's loop writes LMDB: it calls ``Pruner.step`` in its own write transaction,
a bounded amount each time (PRUNE_BLOCKS_MAX blocks, about PRUNE_TXS_MAX transactions), so a
step costs a few milliseconds and never holds a commit back for long.

Key owned here: b"m/first_block" height(8), the lowest height whose block is still stored
(absent: 1, nothing pruned). Blocks are pruned strictly from the bottom, so every height from
there to the head is stored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ledger.v1 import consensus_pb2, tx_pb2
from node.storage import blocks
from node.storage.kv import KVReader, KVWriter

FIRST_BLOCK = b"m/first_block"
SYNCED_AT = b"m/synced"  # height(8) time_ms(8): the snapshot this store was synced to (statesync)
PRUNE_BLOCKS_MAX = 64  # blocks deleted per step at most
PRUNE_TXS_MAX = 4_000  # ... and the step ends once this many transactions' blocks went
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Retention:
    """Keep every block within ``blocks`` of the head or ``hours`` of the head's consensus time
    (either bound alone when only one is set); neither set is archive mode: keep everything.
    Whatever the policy, nothing at or after the last stable checkpoint is pruned."""

    blocks: int | None = None
    hours: int | None = None

    @property
    def archive(self) -> bool:
        return self.blocks is None and self.hours is None

    def describe(self) -> str:
        if self.archive:
            return "archive mode (keeps every block)"
        parts = []
        if self.blocks is not None:
            parts.append(f"the last {self.blocks} blocks")
        if self.hours is not None:
            parts.append(f"the last {self.hours} hours")
        return "retention keeps " + " and ".join(parts)


class BlocksPruned(Exception):
    """A read asked for a block below the first one kept here (the message says which)."""


def first_block(r: KVReader) -> int:
    """The lowest height whose block is stored here (1 when nothing was pruned)."""
    raw = r.get(FIRST_BLOCK)
    return 1 if raw is None else int(struct.unpack(">Q", raw)[0])


def synced_at(r: KVReader) -> int:
    """The checkpoint this store was synced to by snapshot (node/statesync.py), which holds no
    block below it; 0 for a store that executed every block from 1."""
    raw = r.get(SYNCED_AT)
    return 0 if raw is None else int(struct.unpack_from(">Q", raw)[0])


def synced_time_ms(r: KVReader) -> int | None:
    """The consensus time of that snapshot: the history index starts there (None: no snapshot)."""
    raw = r.get(SYNCED_AT)
    return None if raw is None else int(struct.unpack_from(">q", raw, 8)[0])


def pruned_message(what: str, r: KVReader, retention: Retention) -> str:
    """The FAILED_PRECONDITION text for a read of a block this node does not keep: pruned, or
    from before the snapshot it started from."""
    first, synced = first_block(r), synced_at(r)
    if synced and first == synced + 1:
        return (
            f"{what} is not on this node: it started from a snapshot at checkpoint {synced} and keeps "
            f"blocks from height {first} on; ask an archive node"
        )
    return (
        f"{what} was pruned: this node keeps blocks from height {first} on ({retention.describe()}); "
        "ask an archive node"
    )


def block_time_ms(raw_block: bytes) -> int:
    header = consensus_pb2.CertifiedBlock.FromString(raw_block).header
    return int(tx_pb2.BlockHeader.FromString(header).timestamp_ms)


@dataclass(frozen=True)
class Step:
    blocks: int  # pruned by this step
    txs: int
    first: int  # the lowest stored height after it


class Pruner:
    def __init__(self, retention: Retention) -> None:
        self.retention = retention
        self.pruned_blocks = 0  # since start, for status
        self.pruned_txs = 0

    def limit(self, r: KVReader, head: int, stable_checkpoint: int) -> int:
        """Heights below this may be pruned now (by block count and checkpoint; the hours
        bound is checked block by block, since it needs each block's time)."""
        if self.retention.archive:
            return 1
        limit = stable_checkpoint  # the checkpoint's own block stays: state sync replays after it
        if self.retention.blocks is not None:
            limit = min(limit, head - self.retention.blocks + 1)
        return limit

    def due(self, r: KVReader, head: int, stable_checkpoint: int) -> bool:
        """Whether a step would prune something (read-only: the caller opens no write for nothing)."""
        first = first_block(r)
        if first >= self.limit(r, head, stable_checkpoint):
            return False
        return self._old_enough(r, first, self._cutoff_ms(r, head))

    def _cutoff_ms(self, r: KVReader, head: int) -> int | None:
        if self.retention.hours is None:
            return None
        raw = blocks.get_block(r, head)
        return None if raw is None else block_time_ms(raw) - self.retention.hours * HOUR_MS

    def _old_enough(self, r: KVReader, height: int, cutoff_ms: int | None) -> bool:
        if self.retention.hours is None:
            return True
        raw = blocks.get_block(r, height)
        return cutoff_ms is not None and raw is not None and block_time_ms(raw) < cutoff_ms

    def step(self, w: KVWriter, head: int, stable_checkpoint: int) -> Step:
        """Prune from the bottom, in the caller's write transaction, at most PRUNE_BLOCKS_MAX
        blocks and about PRUNE_TXS_MAX transactions."""
        first = first_block(w)
        limit = self.limit(w, head, stable_checkpoint)
        cutoff_ms = self._cutoff_ms(w, head)
        pruned = txs = 0
        height = first
        while height < limit and pruned < PRUNE_BLOCKS_MAX and txs < PRUNE_TXS_MAX:
            if not self._old_enough(w, height, cutoff_ms):
                break
            txs += self._prune_height(w, height)
            pruned += 1
            height += 1
        if pruned:
            w.put(FIRST_BLOCK, struct.pack(">Q", height))
            self.pruned_blocks += pruned
            self.pruned_txs += txs
        return Step(pruned, txs, height)

    @staticmethod
    def _prune_height(w: KVWriter, height: int) -> int:
        results = blocks.get_results(w, height)
        for raw in results:
            result = tx_pb2.TxResult.FromString(raw)  # storage reads bytes, not node.app
            if result.final or not result.tx_id:
                continue  # a recorded result is found through s/t/, which stays
            key = blocks.TX_INDEX + result.tx_id
            where = w.get(key)
            if where is not None and struct.unpack_from(">Q", where)[0] == height:
                w.delete(key)  # a later unrecorded copy of the same tx_id keeps its entry
        for prefix in (blocks.BLOCK, blocks.RESULTS, blocks.OUTCOME, blocks.ATTESTATIONS):
            if w.get(blocks.height_key(prefix, height)) is not None:
                w.delete(blocks.height_key(prefix, height))
        return len(results)
