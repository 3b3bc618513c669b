"""State sync at start-up: a node that is new (empty data directory) or far behind fetches the
state as of the newest stable checkpoint from its peers, checks every chunk against the state
tree root that checkpoint's 2f+1 signatures certify, installs it atomically, and then replays
only the blocks after it (docs/ARCHITECTURE.md, "Snapshots and state sync"; the serving side is
node/snapshot.py).

It runs before the replica is built, so the consensus path is untouched: the node then starts
from the synced store as from any other, at the checkpoint's height, and catches up by blocks.

Checks (SnapshotCheck, no I/O):
- the certificate: 2f+1 distinct members' Checkpoints at the sequence, equal roots (the
  replica's own rule, which it asserts again when it loads the certificate from its journal);
- NODES, in path order: each record's hash is the one its parent (already checked, the root
  first) names for that path, and no expected path is skipped;
- LEAVES, in key-hash order: exactly the leaves the checked records name, in that order, each
  key hashing to its slot's key hash and (salt, value) to its value hash, only ledger state keys;
- RESULTS (not leaves: the tree commits to them through a Merkle mountain range whose count and
  root are one leaf): taken from one peer, and checked as a whole when the tree is rebuilt;
  a mismatch rejects that peer's results and they are fetched from the next one.
A chunk that fails is rejected, its peer is dropped for this sync, and the same chunk is asked
of the next peer. Finally the whole tree is rebuilt from the installed state by the node's own
code (node/app/statetree.py) and must give the certified root, and the ledger's invariants must
hold.

Install: everything goes into a new LMDB environment beside the data directory (``data.sync``),
marked complete by a file once it is flushed; two renames then put it in place. A crash before
the mark leaves the old store (the half sync is deleted at the next start); one after it
finishes the swap at the next start. The synced store is marked restored (node/votes.py): a
node that voted before it was wiped abstains until it is past its vote record.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import grpc.aio

from ledger import statetree as lt
from ledger.genesis import Genesis
from ledger.v1 import consensus_pb2, tx_pb2
from node.app import postings, queries
from node.app import state as st
from node.app import statetree as tree
from node.app.postings import Posting
from node.log import EventLog
from node.pbft import journal
from node.pbft.wire import encode_signed_list
from node.storage import blocks, history, prune
from node.storage.kv import KVWriter
from node.storage.lmdb_store import LmdbStore
from node.votes import RESTORED

Part = consensus_pb2.SnapshotRequest.Part
SYNC_SUFFIX = ".sync"
OLD_SUFFIX = ".old"
COMPLETE = "SYNCED"  # the file that marks a sync directory complete
DESCRIBE_TIMEOUT_S = 5.0
CHUNK_TIMEOUT_S = 60.0
PROGRESS_S = 10.0
RESULT_BYTES_MAX = 1 << 16
WRITE_ITEMS_MAX = 20_000  # items per write transaction while installing


class SyncRejected(Exception):
    """A chunk failed its check. ``reason`` is a stable short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class SyncFailed(Exception):
    """State sync could not complete (no usable peer, a deadline); the node starts without it."""


class SnapshotPeers(Protocol):
    """Who to ask: the other members' replica ports (GrpcSnapshotPeers), or a test's fakes."""

    @property
    def peers(self) -> Sequence[int]: ...

    async def ask(
        self, peer: int, request: consensus_pb2.SnapshotRequest, timeout_s: float
    ) -> consensus_pb2.SnapshotChunk: ...


CheckpointProof = Callable[[int, Sequence[bytes]], "tuple[bytes, bytes] | None"]


@dataclass(frozen=True)
class Offer:
    """A peer's DESCRIBE, its certificate checked: (state root, tree root) at ``sequence``."""

    peer: int
    sequence: int
    state_root: bytes
    tree_root: bytes
    certificate: tuple[bytes, ...]
    first_block: int


class SnapshotCheck:
    """Checks a snapshot's chunks against the certified tree root, part by part (no I/O)."""

    def __init__(self, sequence: int, tree_root: bytes) -> None:
        self.sequence = sequence
        self._expected_nodes: dict[str, bytes] = {"": tree_root}  # path -> hash, not yet seen
        self._leaf_hashes: dict[bytes, bytes] = {}  # key hash -> value hash, from checked nodes
        self._leaf_order: list[bytes] = []
        self._next_leaf = 0
        self.results_leaf: bytes | None = None  # the tree's leaf value for the recorded results
        self.node_count = 0
        # Where each part goes on: the last path, key hash and tx_id taken (None: from the start).
        self.node_cursor: str | None = None
        self.leaf_cursor: bytes | None = None
        self.result_cursor: bytes | None = None

    def nodes(self, chunk: consensus_pb2.SnapshotChunk) -> None:
        """Check a NODES chunk (the records after ``node_cursor``). A rejected chunk changes
        nothing: the same nodes are then asked of another peer."""
        taken: list[tuple[str, bytes]] = []
        added: list[str | bytes] = []
        count = self.node_count
        try:
            self.node_cursor = self._nodes(chunk, taken, added)
        except SyncRejected:
            for item in added:
                if isinstance(item, str):
                    self._expected_nodes.pop(item, None)
                else:
                    self._leaf_hashes.pop(item, None)
            self._expected_nodes.update(taken)
            self.node_count = count
            raise

    def _nodes(
        self, chunk: consensus_pb2.SnapshotChunk, taken: list[tuple[str, bytes]], added: list[str | bytes]
    ) -> str | None:
        if len(chunk.paths) != len(chunk.nodes):
            raise SyncRejected("malformed_chunk", "paths and nodes differ in number")
        _not_empty(chunk, len(chunk.nodes))
        prev = self.node_cursor
        for raw_path, record in zip(chunk.paths, chunk.nodes, strict=True):
            path = _path(raw_path)
            if prev is not None and path <= prev:
                raise SyncRejected("out_of_order", f"node {path!r} after {prev!r}")
            expected = self._expected_nodes.pop(path, None)
            if expected is None:
                raise SyncRejected("unexpected_node", f"no checked node names a node at {path!r}")
            taken.append((path, expected))
            if lt.node_hash(record) != expected:
                raise SyncRejected("node_hash", f"the record at {path!r} is not the one its parent names")
            try:
                slots = lt.decode_node(record)
            except ValueError as exc:
                raise SyncRejected("malformed_chunk", f"node {path!r}: {exc}") from exc
            for s, slot in enumerate(slots):
                if slot is None:
                    continue
                child = path + "0123456789abcdef"[s]
                if len(slot) == lt.LEAF_BYTES:
                    kh = slot[: lt.HASH_BYTES]
                    if not kh.hex().startswith(child):
                        raise SyncRejected("node_hash", f"a leaf off its path in node {path!r}")
                    self._leaf_hashes[kh] = slot[lt.HASH_BYTES :]
                    added.append(kh)
                elif len(child) >= lt.DEPTH_MAX:
                    raise SyncRejected("malformed_chunk", f"a node below the deepest path at {child!r}")
                else:
                    self._expected_nodes[child] = slot
                    added.append(child)
            prev = path
            self.node_count += 1
        if chunk.done:
            if self._expected_nodes:
                raise SyncRejected("missing_node", f"{len(self._expected_nodes)} nodes never sent")
            self._leaf_order = sorted(self._leaf_hashes)
        elif prev is not None and any(p <= prev for p in self._expected_nodes):
            raise SyncRejected("missing_node", f"a node before {prev!r} was skipped")
        return prev

    @property
    def leaf_count(self) -> int:
        return len(self._leaf_order)

    def leaves(self, chunk: consensus_pb2.SnapshotChunk) -> list[tuple[bytes, bytes]]:
        """Check a LEAVES chunk (the next leaves in key-hash order); the state to install.
        A rejected chunk changes nothing: the same leaves are then asked of another peer."""
        _not_empty(chunk, len(chunk.leaves))
        out: list[tuple[bytes, bytes]] = []
        results_leaf = self.results_leaf
        n = self._next_leaf
        for leaf in chunk.leaves:
            key, salt, value = bytes(leaf.key), bytes(leaf.salt), bytes(leaf.value)
            if n >= len(self._leaf_order):
                raise SyncRejected("unexpected_leaf", "more leaves than the tree holds")
            kh = lt.key_hash(key)
            if kh != self._leaf_order[n]:
                reason = "missing_leaf" if kh in self._leaf_hashes else "unexpected_leaf"
                raise SyncRejected(reason, f"leaf {key!r} is not the next one the tree holds")
            if len(salt) != lt.SALT_BYTES or lt.value_hash(salt, value) != self._leaf_hashes[kh]:
                raise SyncRejected("leaf_value", f"the value of {key!r} is not the one the tree holds")
            if key == tree.RESULTS_KEY:
                results_leaf = value
            elif not _state_key(key):
                raise SyncRejected("foreign_key", f"{key!r} is not a state key a leaf may hold")
            else:
                out.append((key, value))
            n += 1
        if chunk.done and n != len(self._leaf_order):
            raise SyncRejected("missing_leaf", f"{len(self._leaf_order) - n} leaves never sent")
        self._next_leaf, self.results_leaf = n, results_leaf
        if chunk.leaves:
            self.leaf_cursor = self._leaf_order[n - 1]
        return out

    def results(self, chunk: consensus_pb2.SnapshotChunk) -> list[tuple[bytes, bytes]]:
        """Check a RESULTS chunk's form (the results after ``result_cursor``); those at or below
        the checkpoint. Their content is checked as a whole (the tree rebuilt at install)."""
        _not_empty(chunk, len(chunk.results))
        out: list[tuple[bytes, bytes]] = []
        prev = self.result_cursor
        for item in chunk.results:
            tx_id, raw = bytes(item[: lt.HASH_BYTES]), bytes(item[lt.HASH_BYTES :])
            if (
                len(item) <= lt.HASH_BYTES
                or len(raw) > RESULT_BYTES_MAX
                or (prev is not None and tx_id <= prev)
            ):
                raise SyncRejected("malformed_chunk", "a result out of order or of a bad size")
            try:
                result = tx_pb2.TxResult.FromString(raw)
            except Exception as exc:
                raise SyncRejected("malformed_chunk", f"result of {tx_id.hex()}: {exc}") from exc
            if not result.final or result.height < 1:
                raise SyncRejected("malformed_chunk", f"result of {tx_id.hex()} is not a recorded one")
            if result.height <= self.sequence:  # the others were recorded after the checkpoint
                out.append((tx_id, raw))
            prev = tx_id
        self.result_cursor = prev
        return out


def _state_key(key: bytes) -> bool:
    """A key a leaf may hold: ledger state, but not a recorded result (those are not leaves) nor
    the height and chain root (the checkpoint carries those)."""
    return (
        key.startswith(st.PREFIX)
        and not key.startswith(st.RESULT)
        and key not in (st.META_HEIGHT, st.META_ROOT)
    )


def _not_empty(chunk: consensus_pb2.SnapshotChunk, items: int) -> None:
    if not items and not chunk.done:
        raise SyncRejected("malformed_chunk", "an empty chunk that is not the last")


def _path(raw: bytes) -> str:
    if len(raw) > lt.DEPTH_MAX or any(c not in b"0123456789abcdef" for c in raw):
        raise SyncRejected("malformed_chunk", "a path that is not lowercase hex nibbles")
    return raw.decode()


# --- the fetching side ------------------------------------------------------------------------


@dataclass
class SyncReport:
    sequence: int
    from_height: int
    nodes: int = 0
    leaves: int = 0
    results: int = 0
    chunks: int = 0
    bytes: int = 0
    rejected: int = 0
    peers: list[int] = field(default_factory=list)
    seconds: float = 0.0


class StateSync:
    def __init__(
        self,
        genesis: Genesis,
        data_dir: Path,
        peers: SnapshotPeers,
        checkpoint_proof: CheckpointProof,
        log: EventLog,
        *,
        lag_min: int,
        timeout_s: float,
        map_size_bytes: int,
        budget_bytes: int,
    ) -> None:
        self.genesis = genesis
        self.data_dir = data_dir
        self.sync_dir = data_dir.with_name(data_dir.name + SYNC_SUFFIX)
        self._peers = peers
        self._checkpoint_proof = checkpoint_proof
        self._log = log
        self.lag_min = lag_min
        self.timeout_s = timeout_s
        self._map_size = map_size_bytes
        self._budget = budget_bytes
        self._usable: list[int] = []
        self._turn = 0
        self._report = SyncReport(0, 0)
        self._progress_at = 0.0

    # -- deciding ------------------------------------------------------------------------------

    async def offers(self) -> list[Offer]:
        """Every peer's DESCRIBE whose certificate holds, newest first."""

        async def one(peer: int) -> Offer | None:
            try:
                chunk = await self._peers.ask(
                    peer, consensus_pb2.SnapshotRequest(part=Part.DESCRIBE), DESCRIBE_TIMEOUT_S
                )
            except (TimeoutError, grpc.aio.AioRpcError, OSError):
                return None
            certificate = tuple(c.SerializeToString() for c in chunk.checkpoints)
            roots = self._checkpoint_proof(chunk.sequence, certificate) if chunk.sequence else None
            if roots is None or not roots[1]:
                self._log.count("state_sync_bad_offer")
                return None
            return Offer(peer, chunk.sequence, roots[0], roots[1], certificate, chunk.first_block)

        answers = await asyncio.gather(*(one(p) for p in self._peers.peers))
        return sorted((a for a in answers if a is not None), key=lambda o: -o.sequence)

    def needed(self, head: int, offers: Sequence[Offer], empty: bool = False) -> bool:
        """Sync when the store is ``empty`` (no block and no journal: a new node, or a wiped
        one), when the newest certified checkpoint is ``lag_min`` or more past our head, or when
        no peer keeps the blocks after our head (they pruned them: catch-up cannot work)."""
        if not offers or offers[0].sequence <= head:
            return False
        return (
            empty
            or offers[0].sequence - head >= self.lag_min
            or all(o.first_block > head + 1 for o in offers)
        )

    async def run(self, head: int, empty: bool = False) -> SyncReport | None:
        """Sync if needed (see ``needed``); the report, or None when the node starts as it is."""
        offers = await self.offers()
        if not self.needed(head, offers, empty):
            return None
        started = time.monotonic()
        best = offers[0]
        self._usable = [o.peer for o in offers if o.sequence == best.sequence]
        self._report = SyncReport(best.sequence, head, peers=list(self._usable))
        self._log.event(
            "state_sync_started",
            sequence=best.sequence,
            head=head,
            peers=",".join(map(str, self._usable)),
            offers=len(offers),
        )
        try:
            await asyncio.wait_for(self._sync(best), self.timeout_s)
        except (TimeoutError, SyncFailed) as exc:
            shutil.rmtree(self.sync_dir, ignore_errors=True)
            why = str(exc) or f"not done within {self.timeout_s:.0f} s"
            self._log.event("state_sync_failed", level="warning", sequence=best.sequence, reason=why)
            return None
        self._report.seconds = round(time.monotonic() - started, 2)
        r = self._report
        self._log.event(
            "state_synced",
            sequence=r.sequence,
            from_height=r.from_height,
            nodes=r.nodes,
            leaves=r.leaves,
            results=r.results,
            chunks=r.chunks,
            bytes=r.bytes,
            rejected_chunks=r.rejected,
            peers=",".join(map(str, r.peers)),
            seconds=r.seconds,
        )
        return r

    # -- fetching ------------------------------------------------------------------------------

    async def _ask(
        self,
        part: consensus_pb2.SnapshotRequest.Part.ValueType,
        after: bytes | None,
        sticky: int | None = None,
    ) -> tuple[int, consensus_pb2.SnapshotChunk]:
        """One chunk from the next usable peer (``sticky``: that one only)."""
        request = consensus_pb2.SnapshotRequest(part=part, sequence=self._report.sequence)
        if after is not None:
            request.after = after
        while self._usable:
            peer = sticky if sticky is not None else self._usable[self._turn % len(self._usable)]
            self._turn += 1
            try:
                chunk = await self._peers.ask(peer, request, CHUNK_TIMEOUT_S)
            except (TimeoutError, grpc.aio.AioRpcError, OSError) as exc:
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
                self._drop(peer, "unavailable", str(detail))
                if sticky is not None:
                    raise SyncFailed(f"peer {peer} stopped serving: {detail}") from exc
                continue
            if chunk.sequence != self._report.sequence:
                self._drop(peer, "other_sequence", f"answered for checkpoint {chunk.sequence}")
                continue
            self._report.chunks += 1
            self._report.bytes += chunk.ByteSize()
            self._progress(part)
            return peer, chunk
        raise SyncFailed("no peer left that serves the snapshot")

    def _drop(self, peer: int, reason: str, detail: str) -> None:
        if peer in self._usable:
            self._usable.remove(peer)
        self._log.event(
            "state_sync_peer_dropped", level="warning", peer=peer, reason=reason, detail=detail[:300]
        )

    def _rejected(
        self, peer: int, part: consensus_pb2.SnapshotRequest.Part.ValueType, exc: SyncRejected
    ) -> None:
        self._report.rejected += 1
        self._log.count("state_sync_chunks_rejected")
        self._drop(peer, exc.reason, f"{Part.Name(part)}: {exc}")

    def _progress(self, part: consensus_pb2.SnapshotRequest.Part.ValueType) -> None:
        now = time.monotonic()
        if now - self._progress_at >= PROGRESS_S:
            self._progress_at = now
            r = self._report
            self._log.event(
                "state_sync_progress",
                part=Part.Name(part),
                nodes=r.nodes,
                leaves=r.leaves,
                results=r.results,
                bytes=r.bytes,
            )

    async def _sync(self, offer: Offer) -> None:
        shutil.rmtree(self.sync_dir, ignore_errors=True)
        check = SnapshotCheck(offer.sequence, offer.tree_root)
        store = LmdbStore(self.sync_dir, map_size_bytes=self._map_size, budget_bytes=self._budget, sync=False)
        try:
            await self._nodes(check)
            await self._leaves(check, store)
            while True:
                if not self._usable:
                    raise SyncFailed("no peer left that serves the snapshot")
                source = self._usable[0]
                await self._results(check, store, source)
                r = self._report
                self._log.event(
                    "state_sync_progress",
                    part="INSTALL",
                    nodes=r.nodes,
                    leaves=r.leaves,
                    results=r.results,
                    bytes=r.bytes,
                )
                problem = self._install(check, store, offer)
                if problem is None:
                    break
                self._rejected(source, Part.RESULTS, SyncRejected("results", problem))
                with store.write() as w:
                    for key in [k for k, _ in w.scan(st.RESULT)]:
                        w.delete(key)
                self._report.results = 0
            store.flush()
        finally:
            store.close()
        (self.sync_dir / COMPLETE).write_bytes(b"")
        swap_in(self.data_dir)

    async def _nodes(self, check: SnapshotCheck) -> None:
        while True:
            cursor = check.node_cursor
            peer, chunk = await self._ask(Part.NODES, None if cursor is None else cursor.encode())
            try:
                check.nodes(chunk)
            except SyncRejected as exc:
                self._rejected(peer, Part.NODES, exc)
                continue
            self._report.nodes = check.node_count
            if chunk.done:
                return

    async def _leaves(self, check: SnapshotCheck, store: LmdbStore) -> None:
        while True:
            peer, chunk = await self._ask(Part.LEAVES, check.leaf_cursor)
            try:
                items = check.leaves(chunk)
            except SyncRejected as exc:
                self._rejected(peer, Part.LEAVES, exc)
                continue
            _put(store, items)
            self._report.leaves += len(chunk.leaves)
            if chunk.done:
                return

    async def _results(self, check: SnapshotCheck, store: LmdbStore, peer: int) -> None:
        check.result_cursor = None
        while True:
            _, chunk = await self._ask(Part.RESULTS, check.result_cursor, sticky=peer)
            try:
                items = check.results(chunk)
            except SyncRejected as exc:
                self._rejected(peer, Part.RESULTS, exc)
                raise SyncFailed(f"peer {peer}'s results: {exc}") from exc
            _put(store, [(st.RESULT + tx_id, raw) for tx_id, raw in items])
            self._report.results += len(items)
            if chunk.done:
                return

    def _install(self, check: SnapshotCheck, store: LmdbStore, offer: Offer) -> str | None:
        """Rebuild the tree from the installed state, check it, and make the store a node's
        store at the checkpoint: None, or what did not match (the results: nothing else can,
        every leaf was checked). Aborts the write transaction on a mismatch."""

        class _Mismatch(Exception):
            pass

        try:
            with store.write() as w:
                root = tree.update(w, offer.sequence)
                mmr = tree.proven_value(w, tree.RESULTS_KEY)  # None while no result is recorded
                if (None if mmr is None else mmr[1]) != check.results_leaf:
                    raise _Mismatch("the results do not give the count and root the tree certifies")
                if root != offer.tree_root:
                    raise _Mismatch("the rebuilt tree's root is not the certified one")
                w.put(st.META_HEIGHT, st.u64(offer.sequence))
                w.put(st.META_ROOT, offer.state_root)
                w.put(blocks.LAST_EXECUTED, offer.sequence.to_bytes(8, "big"))
                w.put(blocks.STATE_ROOT, offer.state_root)
                w.put(blocks.JOURNAL + journal.STABLE, encode_signed_list(offer.certificate))
                w.put(prune.FIRST_BLOCK, (offer.sequence + 1).to_bytes(8, "big"))
                time_ms = queries.consensus_time(w)
                w.put(
                    prune.SYNCED_AT,
                    offer.sequence.to_bytes(8, "big") + time_ms.to_bytes(8, "big", signed=True),
                )
                anchor_history(w, offer.sequence, time_ms)
                w.put(RESTORED, b"\x01")
                problems = queries.check_invariants(w, self.genesis)
                assert not problems, f"the certified state breaks the ledger's invariants: {problems}"
        except _Mismatch as exc:
            return str(exc)
        return None


def anchor_history(w: KVWriter, height: int, time_ms: int) -> None:
    """Start the history index at the snapshot: an entry of kind SNAPSHOT (deltas 0) per
    (account, asset) with a balance, giving its available and held amounts then, so that an
    opening balance at or after the snapshot reads right; and each escrow under its accounts."""
    amounts: dict[tuple[str, str], list[int]] = {}
    for column, prefix in enumerate((st.BALANCE, st.HELD)):
        for key, value in w.scan(prefix):
            account, asset = key[len(prefix) :].decode().split("\x00")
            amounts.setdefault((account, asset), [0, 0])[column] = int.from_bytes(value, "big")
    history.put_postings(
        w,
        height,
        time_ms,
        [
            Posting(account, asset, 0, 0, postings.SNAPSHOT, "", 0, available_after=a, held_after=h or None)
            for (account, asset), (a, h) in sorted(amounts.items())
        ],
    )
    for key, _ in w.scan(st.ESCROW):
        rec = st.get_escrow(w, key[len(st.ESCROW) :].decode())
        assert rec is not None
        for account in (rec.from_account, rec.to_account):
            w.put(history.escrows_prefix(account) + rec.escrow_id.encode(), b"\x01")


def _put(store: LmdbStore, items: Sequence[tuple[bytes, bytes]]) -> None:
    for start in range(0, len(items), WRITE_ITEMS_MAX):
        with store.write() as w:
            for key, value in items[start : start + WRITE_ITEMS_MAX]:
                w.put(key, value)


def swap_in(data_dir: Path) -> bool:
    """Finish or clean up a sync beside ``data_dir``: a complete one replaces the data directory
    (two renames), a partial one is deleted. True when a synced store was put in place. Called
    after a sync and at every start (a crash may have come between the steps)."""
    sync_dir = data_dir.with_name(data_dir.name + SYNC_SUFFIX)
    old_dir = data_dir.with_name(data_dir.name + OLD_SUFFIX)
    swapped = False
    if sync_dir.exists():
        if (sync_dir / COMPLETE).exists():
            if data_dir.exists():
                shutil.rmtree(old_dir, ignore_errors=True)
                data_dir.rename(old_dir)
            sync_dir.rename(data_dir)
            (data_dir / COMPLETE).unlink()
            swapped = True
        else:
            shutil.rmtree(sync_dir)
    shutil.rmtree(old_dir, ignore_errors=True)
    return swapped


# --- the replica ports -------------------------------------------------------------------------


class GrpcSnapshotPeers:
    """The other members' replica ports, dialed with the node's own TLS identity."""

    def __init__(self, channels: dict[int, grpc.aio.Channel]) -> None:
        self._channels = channels

    @property
    def peers(self) -> Sequence[int]:
        return list(self._channels)

    async def ask(
        self, peer: int, request: consensus_pb2.SnapshotRequest, timeout_s: float
    ) -> consensus_pb2.SnapshotChunk:
        call = self._channels[peer].unary_unary(
            "/ledger.v1.ReplicaService/FetchSnapshot",
            request_serializer=consensus_pb2.SnapshotRequest.SerializeToString,
            response_deserializer=consensus_pb2.SnapshotChunk.FromString,
        )
        chunk: consensus_pb2.SnapshotChunk = await call(request, timeout=timeout_s)
        return chunk

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
