"""Certified blocks, their results and attestations, node metadata and the consensus journal,
all over the KVStore seam (node/storage/kv.py).

Key spaces owned here:
  b"b/h/" height(8)      serialized ledger.v1.CertifiedBlock (header, batch, commit certificate)
  b"b/r/" height(8)      the block's serialized TxResults, each 4-byte length prefixed
  b"b/o/" height(8)      results_root(32) || state_root(32) after executing the block
  b"b/a/" height(8)      >= f+1 serialized Attestation SignedMessages, length prefixed
  b"b/t/" tx_id(32)      height(8) || index(4) || 0: where an *unrecorded* result of tx_id is
                         (a forged or malformed copy); a recorded result is found through the
                         ledger's own record of it (s/t/ tx_id, which holds height and index)
  b"m/last_executed"     height(8);  b"m/state_root" 32 bytes;  b"m/last_block_hash" 32 bytes
  b"j/" key              consensus journal record (Persist action), key as the replica chose it
Heights are big-endian so a prefix scan walks them in order.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from ledger.v1 import tx_pb2
from node.storage.kv import RESULT_RECORD, KVReader, KVStore, KVWriter

BLOCK = b"b/h/"
RESULTS = b"b/r/"
OUTCOME = b"b/o/"
ATTESTATIONS = b"b/a/"
TX_INDEX = b"b/t/"
LAST_EXECUTED = b"m/last_executed"
STATE_ROOT = b"m/state_root"
LAST_BLOCK_HASH = b"m/last_block_hash"
JOURNAL = b"j/"

HASH_BYTES = 32


def height_key(prefix: bytes, height: int) -> bytes:
    return prefix + struct.pack(">Q", height)


def pack_list(items: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(x)) + x for x in items)


def unpack_list(raw: bytes) -> tuple[bytes, ...]:
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        # Our own records: a short read means the store is corrupt, which is a bug, not input.
        assert pos + 4 <= len(raw), "truncated length prefix in a stored list"
        (length,) = struct.unpack_from(">I", raw, pos)
        pos += 4
        assert pos + length <= len(raw), "truncated item in a stored list"
        out.append(raw[pos : pos + length])
        pos += length
    return tuple(out)


@dataclass(frozen=True)
class Head:
    """Where execution stands: the last executed height, its state root and block hash."""

    last_executed: int
    state_root: bytes
    last_block_hash: bytes


def read_head(r: KVReader, genesis_root: bytes) -> Head:
    """The head; before block 1 it is (0, genesis_root, b"")."""
    raw = r.get(LAST_EXECUTED)
    if raw is None:
        return Head(0, genesis_root, b"")
    state_root = r.get(STATE_ROOT)
    assert state_root is not None, "head without a state root"
    return Head(struct.unpack(">Q", raw)[0], state_root, r.get(LAST_BLOCK_HASH) or b"")


def put_executed_block(
    w: KVWriter,
    height: int,
    certified_block: bytes,
    block_hash: bytes,
    tx_ids: Sequence[bytes],
    results: Sequence[bytes],
    recorded: Sequence[bool],
    results_root: bytes,
    state_root: bytes,
) -> None:
    """Store an executed block in the caller's write transaction (the one that also holds the
    ledger state changes), and advance the head. ``recorded[i]`` says whether result i is the
    tx_id's recorded (authorized) result: a receipt then always points at it, never at a later
    DUPLICATE or at an earlier forged copy that failed its signature checks."""
    raw_last = w.get(LAST_EXECUTED)
    last = 0 if raw_last is None else struct.unpack(">Q", raw_last)[0]
    assert height == last + 1, f"executing {height} after {last}"
    assert len(tx_ids) == len(results) == len(recorded)
    w.put(height_key(BLOCK, height), certified_block)
    w.put(height_key(RESULTS, height), pack_list(results))
    w.put(height_key(OUTCOME, height), results_root + state_root)
    # A recorded result is found through the ledger's record (find_tx), which names its height
    # and index: one key per transaction, not two (each a random B-tree page to write and
    # fsync). Only unrecorded results (a forged or malformed copy) are indexed here; the latest
    # one wins until a recorded result supersedes them all.
    where = struct.pack(">Q", height)
    for index, (tx_id, is_recorded) in enumerate(zip(tx_ids, recorded, strict=True)):
        if not is_recorded and len(tx_id) == HASH_BYTES:  # no id: did not even parse
            w.put(TX_INDEX + tx_id, where + struct.pack(">I", index) + b"\x00")
    w.put(LAST_EXECUTED, struct.pack(">Q", height))
    w.put(STATE_ROOT, state_root)
    w.put(LAST_BLOCK_HASH, block_hash)


def get_block(r: KVReader, height: int) -> bytes | None:
    return r.get(height_key(BLOCK, height))


def get_results(r: KVReader, height: int) -> tuple[bytes, ...]:
    raw = r.get(height_key(RESULTS, height))
    return () if raw is None else unpack_list(raw)


def get_outcome(r: KVReader, height: int) -> tuple[bytes, bytes] | None:
    """(results_root, state_root) of an executed block."""
    raw = r.get(height_key(OUTCOME, height))
    if raw is None:
        return None
    return raw[:HASH_BYTES], raw[HASH_BYTES:]


def attestations_key(height: int) -> bytes:
    return height_key(ATTESTATIONS, height)


def put_attestations(w: KVWriter, height: int, attestations: Sequence[bytes]) -> None:
    w.put(attestations_key(height), pack_list(attestations))


def get_attestations(r: KVReader, height: int) -> tuple[bytes, ...]:
    raw = r.get(height_key(ATTESTATIONS, height))
    return () if raw is None else unpack_list(raw)


@dataclass(frozen=True)
class TxLocation:
    height: int
    index: int
    recorded: bool  # the result there is the tx_id's final (authorized) result


def find_tx(r: KVReader, tx_id: bytes) -> TxLocation | None:
    """Where tx_id's receipt lives: its recorded result, else its latest unrecorded one."""
    final = r.get(RESULT_RECORD + tx_id)
    if final is not None:  # written by our own ledger (node/app): a serialized TxResult
        result = tx_pb2.TxResult.FromString(final)
        return TxLocation(result.height, result.index, True)
    raw = r.get(TX_INDEX + tx_id)
    if raw is None:
        return None
    height, index = struct.unpack_from(">QI", raw)
    return TxLocation(height, index, raw[12:13] == b"\x01")


# --- consensus journal ---------------------------------------------------------------------


def apply_journal(w: KVWriter, records: Iterable[tuple[bytes, bytes | None]]) -> None:
    for key, value in records:
        if value is None:
            w.delete(JOURNAL + key)
        else:
            w.put(JOURNAL + key, value)


def read_journal(r: KVReader) -> dict[bytes, bytes]:
    """The whole journal, keys as the replica wrote them (prefix stripped)."""
    return {key[len(JOURNAL) :]: value for key, value in r.scan(JOURNAL)}


# --- read scoping --------------------------------------------------------------------------


class _ScopedReader:
    def __init__(self, inner: KVReader) -> None:
        self._inner: KVReader | None = inner

    def _reader(self) -> KVReader:
        assert self._inner is not None, "a read used after its `with` block ended"
        return self._inner

    def get(self, key: bytes) -> bytes | None:
        return self._reader().get(key)

    def scan(self, prefix: bytes, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return self._reader().scan(prefix, start)


class ScopedReads:
    """A KVStore whose readers let go of their transaction when their ``with`` block ends.

    py-lmdb frees a read transaction's reader slot when the Transaction object is freed, not
    when it is aborted. In the node's coroutines a reader variable outlives its ``with`` block
    while the frame waits at an ``await`` (a WaitReceipt waiting for its block), so hundreds of
    waiters would hold LMDB's 126 reader slots and the next read fails with READERS_FULL."""

    def __init__(self, store: KVStore) -> None:
        self.inner = store

    @contextmanager
    def read(self) -> Iterator[KVReader]:
        with self.inner.read() as r:
            scoped = _ScopedReader(r)
            try:
                yield scoped
            finally:
                scoped._inner = None
                del r

    def write(self) -> AbstractContextManager[KVWriter]:
        return self.inner.write()

    def close(self) -> None:
        self.inner.close()
