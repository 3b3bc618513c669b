"""Pruning under a retention policy (node/storage/prune.py), on the in-memory store."""

from __future__ import annotations

import hashlib
import struct

import pytest

from ledger.v1 import consensus_pb2, tx_pb2
from node.app.state import result_key
from node.storage import blocks, prune
from node.storage.memory import MemoryStore
from node.storage.prune import PRUNE_BLOCKS_MAX, Pruner, Retention

HOUR_MS = 3_600_000


def _tx_id(height: int, index: int) -> bytes:
    return hashlib.sha256(f"{height}/{index}".encode()).digest()


def _fill(store: MemoryStore, heights: int, txs: int = 2, step_ms: int = HOUR_MS) -> None:
    """``heights`` executed blocks, one every ``step_ms`` of consensus time; in each, the first
    transaction is recorded (s/t/) and the others are unrecorded copies (b/t/)."""
    for height in range(1, heights + 1):
        header = tx_pb2.BlockHeader(height=height, timestamp_ms=height * step_ms).SerializeToString()
        block = consensus_pb2.CertifiedBlock(header=header).SerializeToString()
        tx_ids = [_tx_id(height, i) for i in range(txs)]
        results = [
            tx_pb2.TxResult(tx_id=t, height=height, index=i, final=i == 0).SerializeToString()
            for i, t in enumerate(tx_ids)
        ]
        with store.write() as w:
            w.put(result_key(tx_ids[0]), results[0])  # what the ledger records
            blocks.put_executed_block(
                w,
                height,
                block,
                b"h" * 32,
                tx_ids,
                results,
                [i == 0 for i in range(txs)],
                b"r" * 32,
                b"s" * 32,
            )
            blocks.put_attestations(w, height, [b"att"])


def _prune_all(store: MemoryStore, pruner: Pruner, head: int, stable: int) -> int:
    steps = 0
    while True:
        with store.read() as r:
            if not pruner.due(r, head, stable):
                return steps
        with store.write() as w:
            pruner.step(w, head, stable)
        steps += 1


def test_blocks_retention_prunes_below_the_head_window_and_never_at_or_after_the_checkpoint() -> None:
    store = MemoryStore()
    _fill(store, 30)
    pruner = Pruner(Retention(blocks=10))
    _prune_all(store, pruner, head=30, stable=15)
    with store.read() as r:
        assert prune.first_block(r) == 15  # the checkpoint bounds it, not the 10 blocks
        assert blocks.get_block(r, 14) is None and blocks.get_block(r, 15) is not None
    _prune_all(store, pruner, head=30, stable=30)
    with store.read() as r:
        first = prune.first_block(r)
        assert first == 21  # the last 10 blocks stay
        for h in range(1, first):
            assert blocks.get_block(r, h) is None
            assert blocks.get_results(r, h) == ()
            assert blocks.get_outcome(r, h) is None
            assert blocks.get_attestations(r, h) == ()
            assert r.get(blocks.TX_INDEX + _tx_id(h, 1)) is None  # unrecorded copies' index
            # The recorded result stays (the ledger needs it, and GetTransaction names it).
            found = blocks.find_tx(r, _tx_id(h, 0))
            assert found is not None and found.recorded and found.height == h
        for h in range(first, 31):
            assert blocks.get_block(r, h) is not None
            assert blocks.find_tx(r, _tx_id(h, 1)) is not None
    assert pruner.pruned_blocks == 20 and pruner.pruned_txs == 40


def test_hours_retention_follows_consensus_time_and_both_bounds_must_allow() -> None:
    store = MemoryStore()
    _fill(store, 30)  # block h at h hours
    _prune_all(store, Pruner(Retention(hours=5)), head=30, stable=30)
    with store.read() as r:
        assert prune.first_block(r) == 25  # 25h is not older than 30h - 5h
    _prune_all(store, Pruner(Retention(blocks=3, hours=2)), head=30, stable=30)
    with store.read() as r:
        assert prune.first_block(r) == 28  # both would go further: 3 blocks and 2 hours
    _prune_all(store, Pruner(Retention(blocks=1, hours=10)), head=30, stable=30)
    with store.read() as r:
        assert prune.first_block(r) == 28  # 10 hours keeps more than 1 block


def test_archive_mode_prunes_nothing() -> None:
    store = MemoryStore()
    _fill(store, 10)
    assert _prune_all(store, Pruner(Retention()), head=10, stable=10) == 0
    with store.read() as r:
        assert prune.first_block(r) == 1 and blocks.get_block(r, 1) is not None


def test_a_step_is_bounded() -> None:
    store = MemoryStore()
    _fill(store, PRUNE_BLOCKS_MAX + 20, txs=1)
    pruner = Pruner(Retention(blocks=1))
    with store.write() as w:
        step = pruner.step(w, PRUNE_BLOCKS_MAX + 20, PRUNE_BLOCKS_MAX + 20)
    assert step.blocks == PRUNE_BLOCKS_MAX and step.first == PRUNE_BLOCKS_MAX + 1


def test_a_later_unrecorded_copy_keeps_its_index_entry() -> None:
    store = MemoryStore()
    _fill(store, 5)
    copy = _tx_id(1, 1)  # an unrecorded copy at height 1, seen again at height 4
    with store.write() as w:
        w.put(blocks.TX_INDEX + copy, struct.pack(">QI", 4, 0) + b"\x00")
    _prune_all(store, Pruner(Retention(blocks=1)), head=5, stable=3)
    with store.read() as r:
        assert prune.first_block(r) == 3
        assert r.get(blocks.TX_INDEX + copy) is not None


@pytest.mark.parametrize(
    ("retention", "text"),
    [
        (Retention(), "archive mode"),
        (Retention(blocks=5), "the last 5 blocks"),
        (Retention(blocks=5, hours=2), "the last 5 blocks and the last 2 hours"),
    ],
)
def test_the_message_names_the_retention_and_the_first_kept_height(retention: Retention, text: str) -> None:
    store = MemoryStore()
    with store.write() as w:
        w.put(prune.FIRST_BLOCK, (17).to_bytes(8, "big"))
    with store.read() as r:
        message = prune.pruned_message("block 3", r, retention)
    assert "block 3 was pruned" in message and "from height 17" in message and text in message


def test_below_a_snapshot_the_message_says_so_until_pruning_passes_it() -> None:
    store = MemoryStore()
    with store.write() as w:
        w.put(prune.FIRST_BLOCK, (11).to_bytes(8, "big"))
        w.put(prune.SYNCED_AT, (10).to_bytes(8, "big"))
    with store.read() as r:
        message = prune.pruned_message("block 3", r, Retention(blocks=5))
    assert "started from a snapshot at checkpoint 10" in message and "from height 11" in message
    with store.write() as w:
        w.put(prune.FIRST_BLOCK, (30).to_bytes(8, "big"))
    with store.read() as r:
        assert "was pruned" in prune.pruned_message("block 3", r, Retention(blocks=5))
