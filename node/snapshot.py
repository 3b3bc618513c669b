"""Serving the state as of a stable checkpoint to a member that syncs (ReplicaService.FetchSnapshot;
docs/ARCHITECTURE.md, "Snapshots and state sync"; the fetching side is node/statesync.py).

A DESCRIBE opens a **session**: one LMDB read transaction held open (LmdbStore.pin) at a moment
when the state tree's height is the stable checkpoint's, so every later chunk of that session
reads the same checkpoint while the node executes on. Chunks are read in the event loop, which
is also the only writer, so the store never releases the transaction under a read. One session
at a time: it ends after ``session_idle_s`` without a request, after ``session_s_max`` in all,
when the store must grow its map (LMDB cannot resize under an open transaction), or when a
DESCRIBE finds a newer stable checkpoint and the session served no chunk for SESSION_BUSY_S
(a sync under way keeps its checkpoint; one that has not started gets the newest).
While a session is open LMDB cannot reuse the pages writes free, so the store grows by what is
written meanwhile; the limits bound that.

Parts, each in key order from just after ``after``, at most ``chunk_bytes_max`` per answer:
NODES the tree's node records (t/n/<path>: a node before its children), LEAVES each leaf's key,
salt and value in key-hash order (t/k/ then t/v/), RESULTS the recorded results (s/t/, all of
them: the fetching side keeps those at or below the checkpoint).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from ledger.v1 import consensus_pb2
from node.api.proofs import STABLE_WAIT_S, stable_checkpoint
from node.app import state as st
from node.app import statetree as tree
from node.log import EventLog
from node.storage import prune
from node.storage.kv import KVReader
from node.storage.lmdb_store import LmdbStore, Pinned

SESSION_BUSY_S = 5.0  # a session that served a chunk this recently is someone's sync: keep it
SESSION_CHECK_S = 5.0  # how often idle and old sessions are ended
HASH_BYTES = 32
PATH_CHARS_MAX = 64  # nibbles of a SHA-256
_HEX = frozenset(b"0123456789abcdef")
Part = consensus_pb2.SnapshotRequest.Part


class SnapshotUnavailable(Exception):
    """FAILED_PRECONDITION: no snapshot here now, or not the one asked for; the text says which."""


class SnapshotBadRequest(Exception):
    """INVALID_ARGUMENT: the request cannot be a snapshot request."""


@dataclass
class _Session:
    sequence: int
    pinned: Pinned
    certificate: tuple[bytes, ...]
    first_block: int
    opened: float
    used: float
    chunk_at: float = float("-inf")  # when it last served a chunk


class SnapshotSource:
    def __init__(
        self,
        store: LmdbStore,
        wait_stable: Callable[[int, float], Awaitable[bool]],
        log: EventLog,
        *,
        chunk_bytes_max: int,
        session_idle_s: float,
        session_s_max: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._wait_stable = wait_stable
        self._log = log
        self.chunk_bytes_max = chunk_bytes_max
        self.session_idle_s = session_idle_s
        self.session_s_max = session_s_max
        self._clock = clock
        self._session: _Session | None = None

    async def fetch(self, request: consensus_pb2.SnapshotRequest) -> consensus_pb2.SnapshotChunk:
        self.expire()
        if request.part == Part.DESCRIBE:
            return await self._describe()
        after = bytes(request.after) if request.HasField("after") else None
        return self._chunk(request.part, request.sequence, after)

    def expire(self) -> None:
        """End the session if it is idle, too old, or its transaction was released."""
        s = self._session
        if s is None:
            return
        now = self._clock()
        if s.pinned.released or now - s.used > self.session_idle_s or now - s.opened > self.session_s_max:
            self._end("released" if s.pinned.released else "expired")

    async def run(self) -> None:
        """End idle sessions even when no request comes (the node's lifetime)."""
        while True:
            await asyncio.sleep(SESSION_CHECK_S)
            self.expire()

    def close(self) -> None:
        if self._session is not None:
            self._end("closed")

    def _end(self, why: str) -> None:
        s = self._session
        assert s is not None
        s.pinned.release()
        self._session = None
        self._log.event(
            "snapshot_session_ended", sequence=s.sequence, why=why, seconds=round(self._clock() - s.opened, 1)
        )

    async def _describe(self) -> consensus_pb2.SnapshotChunk:
        now = self._clock()
        s = self._session
        if s is None or now - s.chunk_at > SESSION_BUSY_S:
            s = await self._open()
        s.used = now
        out = consensus_pb2.SnapshotChunk(sequence=s.sequence, first_block=s.first_block)
        for raw in s.certificate:
            out.checkpoints.add().MergeFromString(raw)
        return out

    async def _open(self) -> _Session:
        """Pin a read where the tree is at the stable checkpoint (the tree is built when the
        checkpoint's block executes and certified a round later: wait for that once)."""
        for attempt in range(2):
            pinned = self._store.pin()
            height, _ = tree.tree_root(pinned.reader)
            sequence, _, certificate = stable_checkpoint(pinned.reader)
            if height and sequence == height:
                if self._session is not None and self._session.sequence == sequence:
                    pinned.release()  # the same checkpoint: keep the session
                    return self._session
                if self._session is not None:
                    self._end("replaced")
                now = self._clock()
                self._session = _Session(
                    sequence, pinned, certificate, prune.first_block(pinned.reader), now, now
                )
                self._log.event("snapshot_session_opened", sequence=sequence)
                return self._session
            pinned.release()
            if not height or attempt or not await self._wait_stable(height, STABLE_WAIT_S):
                break
        if self._session is not None:  # the older one still serves
            return self._session
        raise SnapshotUnavailable(
            "no state tree at a stable checkpoint here yet; ask again later or ask another member"
        )

    def _chunk(
        self, part: consensus_pb2.SnapshotRequest.Part.ValueType, sequence: int, after: bytes | None
    ) -> consensus_pb2.SnapshotChunk:
        s = self._session
        if s is None or s.sequence != sequence:
            serving = "none" if s is None else f"the one at {s.sequence}"
            raise SnapshotUnavailable(
                f"no snapshot session at checkpoint {sequence} here (serving {serving}); describe again"
            )
        s.used = s.chunk_at = self._clock()
        out = consensus_pb2.SnapshotChunk(sequence=s.sequence, done=True)
        r = s.pinned.reader
        used = 0
        if part == Part.NODES:
            if after is not None and (len(after) > PATH_CHARS_MAX or not set(after) <= _HEX):
                raise SnapshotBadRequest("after: a tree path of at most 64 lowercase hex nibbles")
            for key, record in _after(r, tree.NODE, after):
                if used and used + len(record) > self.chunk_bytes_max:
                    out.done = False
                    break
                out.paths.append(key[len(tree.NODE) :])
                out.nodes.append(record)
                used += len(key) + len(record)
        elif part == Part.LEAVES:
            _check_id(after, "a key hash")
            for _, key in _after(r, tree.KEYS, after):
                got = tree.proven_value(r, key)
                assert got is not None, f"state tree key index names {key!r} without a value"
                if used and used + len(key) + len(got[1]) > self.chunk_bytes_max:
                    out.done = False
                    break
                out.leaves.add(key=key, salt=got[0], value=got[1])
                used += len(key) + len(got[0]) + len(got[1])
        elif part == Part.RESULTS:
            _check_id(after, "a tx_id")
            for key, result in _after(r, st.RESULT, after):
                if used and used + len(key) + len(result) > self.chunk_bytes_max:
                    out.done = False
                    break
                out.results.append(key[len(st.RESULT) :] + result)
                used += len(key) + len(result)
        else:
            raise SnapshotBadRequest(f"unknown part {part}")
        self._log.count("snapshot_chunks_served")
        self._log.count("snapshot_bytes_served", used)
        return out


def _check_id(after: bytes | None, what: str) -> None:
    if after is not None and len(after) != HASH_BYTES:
        raise SnapshotBadRequest(f"after: {what} of {HASH_BYTES} bytes, or absent")


def _after(r: KVReader, prefix: bytes, after: bytes | None) -> Iterator[tuple[bytes, bytes]]:
    """The pairs under ``prefix`` whose key follows prefix + after (all of them for None)."""
    start = prefix + (after or b"")
    for key, value in r.scan(prefix, start):
        if after is not None and key == start:
            continue
        yield key, value
