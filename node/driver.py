"""The node's only loop: every event (peer message, client request, tick, fetched blocks) goes
to the Replica through one asyncio queue, and its actions run strictly in list order:

  Persist   journal records: written, with everything else the group persists, in one
            fsync'ed LMDB write transaction before any message of the group goes out
  Send/Broadcast/ForwardRequests   held in an outbox until the group's records are on disk
  Execute   one write transaction: ledger state changes + certified block + results + head
            (+ the journal records held so far); then Replica.on_executed, whose actions run next
  Attested  store the attestations (with the group's records); then wake the clients waiting
            for those receipts
  FetchBlocks   ask peers in the background; the blocks come back as an event (on_blocks)
  Note      one event log line and a counter

One consumer task drains the queue, so the replica is never entered twice at once. It takes
every event already queued (up to GROUP_EVENTS_MAX) as one group: their actions run in order,
the group's journal records and attestations go to disk in one transaction (group commit: one
fsync where there used to be one per step), and only then do the group's messages leave, in
order (persist before send). After kill -9 the node restarts from LMDB alone: the journal and
the last executed block go back to the Replica's constructor; a message whose record was not yet
on disk was never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ledger.genesis import Genesis
from node.fairqueue import FairQueue
from node.log import EventLog
from node.pbft import actions as act
from node.pbft import wire
from node.storage import blocks, history
from node.storage.kv import KVReader, KVStore, KVWriter

# The event queue, per source (node/fairqueue.py): the ticker, the clients, each peer connection.
SOURCE_EVENTS_MAX = 50_000
# A peer stream waits (is not read) past this many queued messages: a member's burst is a few
# hundred votes, and a flood should sit in the sender's buffers, not in this process.
PEER_STREAM_EVENTS_MAX = 2_048
SOURCE_EVENT_BYTES_MAX = 32 << 20
EVENT_BYTES_MAX = 256 << 20  # all sources together (an empty source may still put one)
INTERNAL = "internal"  # ticks, link-ups, fetched blocks
CLIENTS = "clients"  # transactions admitted by the API (already bounded by pending_requests_max)
# A peer connection whose messages the replica rejected this many times is logged (and again at
# each power of ten); its share of the loop was bounded all along by the fair queue.
REJECTED_LOG_AT = 100
REJECTED_SOURCES_MAX = 1_000  # sources whose record is kept (the most recent)
# A peer connection most of whose recent messages the replica rejected (at least this many
# units; relayed batches with invalid envelopes count too) is penalized until its record
# improves: served at PENALTY_UNITS_PER_S, its queue stays full, its stream stops being read, and
# what it sends costs the node little CPU (honest peers see a rejection now and then, around
# view changes, never most of their messages). Halved every SOURCE_RECORD_WINDOW units, so the
# record is of the recent past.
PENALTY_REJECTED_MIN = 100
SOURCE_RECORD_WINDOW = 2_000
SOURCE_RECORD_UNIT_BYTES = 64 << 10
# A penalized connection is served at this many units a second at most (200 votes, or 12.8 MB of
# oversized messages), one event at a time.
PENALTY_UNITS_PER_S = 200
ATTEST_LAG_BLOCKS = 3  # a block this far behind the head with no attestations will not get any
REPLAYED_REMEMBERED_MAX = 100_000  # heights of replayed blocks remembered for the above
GROUP_EVENTS_MAX = 256  # queued events run as one group (one journal fsync, then the sends)
# ... and at most this many from one source: a flooding peer cannot make a group long (the
# group's votes and replies go out only when it ends), whatever it has queued.
GROUP_PER_SOURCE_MAX = 128
YIELD_EVERY_S = 0.002  # the loop runs its other tasks at least this often (see _consume)
EXECUTED_REMEMBERED_MAX = 64  # recent heights whose tx_ids are kept to wake receipt waiters
EXECUTED_QUIET_LOG_MS = 500  # a block executed this long after the previous one is logged
HEIGHT_WAITERS_MAX = 10_000  # reads waiting for a min_height (wait_height); past it, no wait
# A client's transaction goes to the primary at once; its copies for the other peers wait
# relay_delay_ms (the node passes a fifth of its view-change timeout; this is the default),
# and go only if it is still pending here by then (see _client_request).
RELAY_DELAY_MS = 400
RELAY_WAITING_MAX = 20_000  # copies waiting for relay_delay_ms; past it the oldest go at once
FORWARD_BATCH_MAX = 256  # envelopes per Forward RPC (a peer drops one over its submit_batch_max)
# Catch-up asks the next peer too when one has not answered within this long: a paused or slow
# peer (its link still up) would otherwise hold every fetch until the transport's timeout.
FETCH_HEDGE_S = 0.5


def _receipt_heights(r: KVReader, tx_ids: Sequence[bytes]) -> dict[bytes, int | None]:
    """Per tx_id, the height of its receipt if that block is executed and attested here, else
    None. Each block's attestations are looked up once, however many of its txs are asked."""
    attested: dict[int, bool] = {}
    out: dict[bytes, int | None] = {}
    for tx_id in tx_ids:
        found = blocks.find_tx(r, tx_id)
        if found is None:
            out[tx_id] = None
            continue
        ok = attested.get(found.height)
        if ok is None:
            ok = attested[found.height] = bool(blocks.get_attestations(r, found.height))
        out[tx_id] = found.height if ok else None
    return out


def _ignore(_: float) -> None:
    return None


class ReplicaLike(Protocol):
    """The replica contract of docs/ARCHITECTURE.md, as the driver uses it."""

    @property
    def pending(self) -> Mapping[bytes, bytes]:
        """tx_id -> envelope of the requests it holds until they execute."""
        ...

    @property
    def rejected(self) -> int:
        """How many inputs it has rejected so far (bad signatures, garbage, wrong views...)."""
        ...

    def on_request(self, tx_id: bytes, envelope: bytes) -> list[act.Action]: ...

    def on_message(self, peer_message: bytes) -> list[act.Action]: ...

    def on_tick(self, now_ms: int) -> list[act.Action]: ...

    def on_executed(
        self, sequence: int, state_root: bytes, results_root: bytes, tree_root: bytes = b""
    ) -> list[act.Action]: ...

    def on_blocks(self, blocks: Sequence[bytes]) -> list[act.Action]: ...

    def on_peer_up(self, peer: int) -> list[act.Action]: ...


class LedgerLike(Protocol):
    def execute(self, w: KVWriter, height: int, timestamp_ms: int, envelopes: Sequence[bytes]) -> Any: ...


class Transport(Protocol):
    def send(self, to: int, message: bytes) -> None: ...

    def broadcast(self, message: bytes) -> None: ...

    def forward(self, to: int, envelopes: Sequence[bytes]) -> None: ...

    def is_up(self, replica: int) -> bool: ...

    async def fetch_blocks(self, peer_id: int, from_height: int) -> tuple[list[bytes], int] | None: ...


@dataclass
class _Pending:
    admitted_ms: float
    forwarded: bool = False


@dataclass
class SourceRecord:
    """What one peer connection sent lately (halved every SOURCE_RECORD_WINDOW events)."""

    seen: int = 0
    rejected: int = 0
    rejected_total: int = 0  # since the connection opened: for the log


@dataclass
class DriverStats:
    executed_blocks: int = 0
    executed_txs: int = 0
    fetched_blocks: int = 0
    events: int = 0
    persist_txns: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    results_by_code: Counter[str] = field(default_factory=Counter)  # result code name -> txs


Event = Callable[[], list[act.Action]]


class Driver:
    def __init__(
        self,
        genesis: Genesis,
        store: KVStore,
        ledger: LedgerLike,
        replica: ReplicaLike,
        transport: Transport,
        log: EventLog,
        tick_ms: int,
        pending_requests_max: int,
        pending_ttl_ms: int,
        genesis_root: bytes,
        own_replica: int,
        relay_delay_ms: int = RELAY_DELAY_MS,
    ) -> None:
        self.genesis = genesis
        self.store = store
        self.ledger = ledger
        self.replica = replica
        self.transport = transport
        self.log = log
        self.tick_ms = tick_ms
        self.pending_requests_max = pending_requests_max
        self.pending_ttl_ms = pending_ttl_ms
        self.relay_delay_ms = relay_delay_ms
        self.pending: dict[bytes, _Pending] = {}
        self.stats = DriverStats()
        self.genesis_root = genesis_root
        with store.read() as r:
            self.head = blocks.read_head(r, genesis_root)
        self._events: FairQueue[tuple[Hashable, Event, int]] = FairQueue(
            SOURCE_EVENTS_MAX, SOURCE_EVENT_BYTES_MAX, EVENT_BYTES_MAX
        )
        self._wake = asyncio.Event()  # set when an event is queued
        self._room = asyncio.Event()  # set when the loop took events (sources may have room)
        self.sources: dict[Hashable, SourceRecord] = {}  # peer connections: what they sent lately
        self.relays_rejected = 0  # relayed batches with invalid envelopes (judged like rejections)
        self._invalid_relays = 0
        # Penalized peer connections -> when (monotonic s) each may be served its next event.
        self._penalized: dict[Hashable, float] = {}
        self._waiters: dict[bytes, list[asyncio.Future[int]]] = {}
        self._fetching = False
        self._fetch_rounds = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._stopped = False
        # Relay of client requests (see _client_request): to the primary at once; to everyone
        # else after relay_delay_ms if still pending: (admitted ms, the replica it went to first
        # (None: nobody, we are the primary or in a view change), tx_id, envelope), oldest first.
        self._relay_now: dict[int, list[bytes]] = {}
        self._relay_later: deque[tuple[float, int | None, bytes, bytes]] = deque()
        # Group commit: what the current group persists, and what it sends once that is on disk.
        self._journal: list[tuple[bytes, bytes | None]] = []
        self._attestations: list[act.Attested] = []
        self._outbox: list[act.Send | act.Broadcast | act.ForwardRequests] = []
        self._executed_tx_ids: dict[int, tuple[bytes, ...]] = {}
        self._last_executed_ms: float | None = None  # monotonic; the first block is logged
        self._replayed: dict[int, None] = {}  # heights executed from fetched blocks (insertion order)
        self._height_waiters: dict[asyncio.Future[None], int] = {}  # see wait_height
        self._attested_waiters: dict[asyncio.Future[None], int] = {}  # wait_attested
        self._stable_waiters: dict[asyncio.Future[None], int] = {}  # wait_stable
        self._stable_seq = 0  # the highest stable checkpoint the replica noted (persisted by _flush)
        self.own_replica = own_replica
        # Seconds from a block's proposal (its primary's timestamp) to its execution here.
        self.observe_commit_latency_s: Callable[[float], None] = _ignore

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._consume()), loop.create_task(self._ticker())]

    async def wait_failed(self) -> None:
        """Returns (raising the cause) only if the event consumer died: a replica/ledger bug."""
        await self._tasks[0]

    async def stop(self) -> None:
        self._stopped = True
        self._room.set()  # peer streams waiting for room see that the node stops
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()

    # --- events in ----------------------------------------------------------------------

    def _enqueue(self, event: Event, counter: str, source: Hashable = INTERNAL, size: int = 0) -> bool:
        if self._stopped:
            return False
        if not self._events.put(source, (source, event, size), size):
            self.log.count(counter)
            return False
        self._wake.set()
        return True

    async def on_peer_messages(self, source: Hashable, messages: Sequence[bytes]) -> bool:
        """Messages from one peer connection (``source``), in order. Waits while that source's
        queue is full: the stream stops reading and gRPC's flow control holds its sender back,
        at no cost to the other sources. False when the connection should be closed: the node
        is stopping, or the replica rejected too many of its messages."""
        for raw in messages:
            while not self._events.has_room(source, len(raw), PEER_STREAM_EVENTS_MAX):
                if self._stopped:
                    return False
                self._room.clear()
                await self._room.wait()
            event = functools.partial(self.replica.on_message, raw)
            if self._events.put(source, (source, event, len(raw)), len(raw), PEER_STREAM_EVENTS_MAX):
                self._wake.set()
        return not self._stopped

    def queue_depths(self) -> dict[str, int]:
        """Events and bytes waiting in the loop's queue, for status and metrics."""
        return {"events_queued": len(self._events), "event_bytes_queued": self._events.total_bytes}

    def on_peer_up(self, replica: int) -> None:
        """The transport's link to a peer (re)connected: the replica re-sends it its votes."""
        self._enqueue(functools.partial(self.replica.on_peer_up, replica), "peer_ups_dropped_full")

    def submit(self, tx_id: bytes, envelope: bytes) -> bool:
        """Admit a stateless-checked client transaction. False when past pending_requests_max
        (the caller answers RESOURCE_EXHAUSTED)."""
        if tx_id not in self.pending:
            if len(self.pending) >= self.pending_requests_max:
                self.log.count("requests_rejected_full")
                return False
            self.pending[tx_id] = _Pending(time.monotonic() * 1000)
        return self._enqueue(
            functools.partial(self._client_request, tx_id, envelope),
            "requests_dropped_full",
            CLIENTS,
            len(envelope),
        )

    def on_forward(
        self,
        source: Hashable,
        envelopes: list[bytes],
        admit: Callable[[list[bytes]], list[tuple[bytes, bytes]]],
    ) -> None:
        """Envelopes relayed by a peer connection (``source``). ``admit`` (the API's admission
        checks: signatures included) runs in the loop, in the source's turn, so a peer that
        floods relays spends its own share of the loop, not everyone's."""
        if envelopes:
            size = sum(len(e) for e in envelopes)
            event = functools.partial(self._relayed_requests, envelopes, admit)
            self._enqueue(event, "forwards_dropped_full", source, size)

    # Request relay. A request known to one replica only cannot start a view change when the
    # primary is dead or silent (joining one takes f+1 timed-out replicas), so the node that
    # takes a client's transaction relays it to every peer, as a PBFT client would broadcast it.
    # The primary needs it now: the replica's own ForwardRequests goes out with the group,
    # batched with the group's others. The other peers only need it well within a view-change
    # timeout, and only if it has not executed: their copies wait relay_delay_ms (a fifth of the
    # view-change timeout), and those still pending here then go, batched per peer. Under an
    # open load nearly every transaction executes sooner, and about half do in a saturated
    # closed loop, so those copies never go: each one cost its receiver a Forward's share, a
    # parse, a lookup and the replica's bookkeeping (5-6% of the consortium's CPU per
    # transaction in closed loop), and the signature check it saved at execution was only moved
    # there. The cost: when one replica alone holds requests and the primary is gone, the view
    # change starts relay_delay_ms later (the other replicas' timers start when the copies
    # arrive); with f+1 replicas holding requests, as when clients use several banks' nodes,
    # their own timers start it and the others join. A relayed copy's own ForwardRequests is
    # redundant and dropped; re-forwards after a view change come from other steps and still go
    # out.

    def _client_request(self, tx_id: bytes, envelope: bytes) -> list[act.Action]:
        actions = self.replica.on_request(tx_id, envelope)
        if tx_id not in self.replica.pending:  # refused, or a duplicate of something known
            return [a for a in actions if not isinstance(a, act.ForwardRequests)]
        first: int | None = None
        rest: list[act.Action] = []
        for a in actions:
            if isinstance(a, act.ForwardRequests) and first is None:
                first = a.to
                self._relay_now.setdefault(a.to, []).extend(a.envelopes)
            elif not isinstance(a, act.ForwardRequests):
                rest.append(a)
        self._relay_later.append((time.monotonic() * 1000, first, tx_id, envelope))
        return rest

    def _relayed_requests(
        self, envelopes: list[bytes], admit: Callable[[list[bytes]], list[tuple[bytes, bytes]]]
    ) -> list[act.Action]:
        actions: list[act.Action] = []
        checked = admit(envelopes)
        if (
            len(checked) < len(envelopes)
            and self.log.counters["peer_forward_invalid"] != self._invalid_relays
        ):
            self.relays_rejected += 1  # invalid envelopes: charged to the relaying connection
        self._invalid_relays = self.log.counters["peer_forward_invalid"]
        for tx_id, envelope in checked:
            actions += self.replica.on_request(tx_id, envelope)
        return [a for a in actions if not isinstance(a, act.ForwardRequests)]

    def _flush_relay(self) -> None:
        now, self._relay_now = self._relay_now, {}
        for to, envelopes in now.items():
            self._forward(to, envelopes)
        later = self._relay_later
        cutoff = time.monotonic() * 1000 - self.relay_delay_ms
        if not later or (later[0][0] > cutoff and len(later) <= RELAY_WAITING_MAX):
            return
        held = self.replica.pending
        due: dict[int | None, list[bytes]] = {}
        executed = 0
        while later and (later[0][0] <= cutoff or len(later) > RELAY_WAITING_MAX):
            _, first, tx_id, envelope = later.popleft()
            if tx_id in held:
                due.setdefault(first, []).append(envelope)
            else:
                executed += 1
        if executed:
            self.log.count("relay_not_needed", executed)
        for first, envelopes in due.items():
            for replica in range(self.genesis.n):
                if replica not in (self.own_replica, first):
                    self._forward(replica, envelopes)

    def _forward(self, to: int, envelopes: list[bytes]) -> None:
        for i in range(0, len(envelopes), FORWARD_BATCH_MAX):
            self.transport.forward(to, envelopes[i : i + FORWARD_BATCH_MAX])

    # --- the API's port (node/api/port.py) and peers' queries --------------------------

    def read(self) -> AbstractContextManager[KVReader]:
        return self.store.read()

    def held_by_replica(self) -> Mapping[bytes, bytes]:
        return self.replica.pending

    def holds(self, tx_id: bytes) -> bool:
        """Admitted here (until pending_ttl_ms) or held by the replica (from a client or a
        peer's relay) until it executes."""
        return tx_id in self.pending or tx_id in self.replica.pending

    def pending_count(self) -> int:
        return len(self.pending)

    def peer_up(self, replica: int) -> bool:
        return self.transport.is_up(replica)

    def status_counters(self) -> dict[str, int]:
        return {
            "executed_blocks": self.stats.executed_blocks,
            "executed_txs": self.stats.executed_txs,
            "fetched_blocks": self.stats.fetched_blocks,
        }

    def fetch_blocks(self, from_height: int, max_blocks: int) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        with self.store.read() as r:
            last = blocks.read_head(r, self.genesis_root).last_executed
            height = max(from_height, 1)
            while height <= last and len(out) < max_blocks:
                raw = blocks.get_block(r, height)
                assert raw is not None, f"executed block {height} missing from the store"
                out.append(raw)
                height += 1
        return out, last

    def receipt_waiters(self, tx_ids: Sequence[bytes]) -> dict[bytes, asyncio.Future[int]]:
        """A future per tx_id, resolved with its receipt's height once the block is executed
        and attested here (at once for those that already are). Release with drop_waiters."""
        loop = asyncio.get_running_loop()
        futures: dict[bytes, asyncio.Future[int]] = {}
        with self.store.read() as r:
            heights = _receipt_heights(r, tx_ids)
            for tx_id in tx_ids:
                fut: asyncio.Future[int] = loop.create_future()
                height = heights[tx_id]
                if height is not None:
                    fut.set_result(height)
                else:
                    self._waiters.setdefault(tx_id, []).append(fut)
                futures[tx_id] = fut
        return futures

    def drop_waiters(self, futures: Mapping[bytes, asyncio.Future[int]]) -> None:
        for tx_id, fut in futures.items():
            waiting = self._waiters.get(tx_id)
            if waiting is not None:
                with contextlib.suppress(ValueError):
                    waiting.remove(fut)
                if not waiting:
                    del self._waiters[tx_id]

    async def wait_height(self, height: int, timeout_s: float) -> bool:
        """True once this node has executed ``height`` (at once if it has), False if it has not
        within timeout_s (or HEIGHT_WAITERS_MAX reads are waiting already)."""
        if self.head.last_executed >= height:
            return True
        return await self._wait(self._height_waiters, height, timeout_s, "height_waits_full")

    async def wait_attested(self, height: int, timeout_s: float) -> bool:
        """True once ``height`` has its attestations on disk here (at once if it has), False
        if not within timeout_s (or HEIGHT_WAITERS_MAX waits are open already)."""
        with self.store.read() as r:
            if blocks.get_attestations(r, height):
                return True
        return await self._wait(self._attested_waiters, height, timeout_s, "attested_waits_full")

    async def _wait(
        self, waiters: dict[asyncio.Future[None], int], height: int, timeout_s: float, full: str
    ) -> bool:
        """Wait (bounded in number and time) for the loop to resolve a future in ``waiters``."""
        if len(waiters) >= HEIGHT_WAITERS_MAX:
            self.log.count(full)
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters[fut] = height
        try:
            await asyncio.wait_for(fut, timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            waiters.pop(fut, None)

    async def wait_stable(self, sequence: int, timeout_s: float) -> bool:
        """True once a checkpoint at ``sequence`` or later is stable and its certificate on disk
        here, False if not within timeout_s (balance proofs: node/api/proofs.py)."""
        if self._stable_seq >= sequence:
            return True
        return await self._wait(self._stable_waiters, sequence, timeout_s, "stable_waits_full")

    def unlikely_to_be_attested(self, height: int) -> bool:
        """An executed block whose Attested will probably never come here: it was replayed from
        a peer's certified copy (catch-up), or it is well behind the head."""
        return height in self._replayed or height + ATTEST_LAG_BLOCKS <= self.head.last_executed

    # --- the loop -----------------------------------------------------------------------

    async def _ticker(self) -> None:
        period = self.tick_ms / 1000
        while True:
            await asyncio.sleep(period)  # the clock itself: ticks are the replica's time source
            now_ms = int(time.time() * 1000)
            self._enqueue(functools.partial(self.replica.on_tick, now_ms), "ticks_dropped_full")
            self._expire_pending()

    def _expire_pending(self) -> None:
        # A request the replica dropped (duplicate, refused) never executes here; forget it
        # after a bound so it does not hold a pending_requests_max slot forever.
        # Entries are only ever inserted, with the monotonic clock's time, so the dict is in
        # admission order: the stale ones are a prefix (each tick costs O(expired), not
        # O(pending), which under load is thousands of entries 50 times a second).
        cutoff = time.monotonic() * 1000 - self.pending_ttl_ms
        stale: list[bytes] = []
        for tx_id, p in self.pending.items():
            if p.admitted_ms >= cutoff:
                break
            stale.append(tx_id)
        for tx_id in stale:
            del self.pending[tx_id]
        if stale:
            self.log.count("pending_expired", len(stale))

    async def _consume(self) -> None:
        replica = self.replica
        yielded = time.monotonic()
        while True:
            now = time.monotonic()
            caps = {s: 0 if due > now else 1 for s, due in self._penalized.items()}
            group = self._events.take(GROUP_EVENTS_MAX, GROUP_PER_SOURCE_MAX, caps)
            if not group:
                self._wake.clear()
                await self._wake.wait()
                yielded = time.monotonic()
                continue
            # Let the rest of the loop run (gRPC reads and writes, the ticker, the API) at least
            # every YIELD_EVERY_S even while events keep coming: taking a queued event does not
            # suspend, so a source with thousands of events queued (a flood) used to hold the
            # loop for seconds, and the honest peers' streams went unread meanwhile. Not after
            # every group: each pass of the loop costs tens of microseconds.
            if time.monotonic() - yielded >= YIELD_EVERY_S:
                await asyncio.sleep(0)
                yielded = time.monotonic()
            self._room.set()
            for source, event, size in group:
                self.stats.events += 1
                rejected = replica.rejected + self.relays_rejected
                try:
                    actions = event()
                except Exception as exc:  # a replica bug: log it loudly and stop the node
                    self.log.event("replica_crash", error=repr(exc))
                    raise
                if source not in (INTERNAL, CLIENTS):
                    self._judge(source, replica.rejected + self.relays_rejected != rejected, size)
                self._apply(actions)
            self._flush()
            self._flush_relay()

    def _judge(self, source: Hashable, rejected: bool, size: int) -> None:
        """Keep a peer connection's record: what it sent and what the replica rejected, in
        units of an event or SOURCE_RECORD_UNIT_BYTES, whichever is more (one rejected 8 MB
        message weighs as 128 rejected votes)."""
        units = 1 + size // SOURCE_RECORD_UNIT_BYTES
        record = self.sources.pop(source, None) or SourceRecord()
        self.sources[source] = record  # most recent last
        while len(self.sources) > REJECTED_SOURCES_MAX:
            self._penalized.pop(next(iter(self.sources)), None)
            del self.sources[next(iter(self.sources))]
        record.seen += units
        if rejected:
            record.rejected += units
            record.rejected_total += 1
            count = record.rejected_total
            if count >= REJECTED_LOG_AT and str(count).rstrip("0") == "1":  # 100, 1000, 10000, ...
                self.log.event("peer_source_rejected", source=str(source), rejected=count)
        if record.seen >= SOURCE_RECORD_WINDOW:
            record.seen //= 2
            record.rejected //= 2
        penalized = record.rejected >= PENALTY_REJECTED_MIN and 2 * record.rejected > record.seen
        if penalized:
            if source not in self._penalized:
                self.log.count("peer_sources_penalized")
                self.log.event(
                    "peer_source_penalized", source=str(source), rejected=record.rejected, seen=record.seen
                )
            self._penalized[source] = time.monotonic() + units / PENALTY_UNITS_PER_S
        else:
            self._penalized.pop(source, None)

    def forget_source(self, source: Hashable) -> None:
        """A peer connection closed: its record goes (its queued events still run)."""
        self.sources.pop(source, None)
        self._penalized.pop(source, None)

    def run(self, actions: list[act.Action]) -> None:
        """Run actions strictly in order, then persist what they recorded and send what they
        sent (in that order). Execute's follow-up actions run right after it."""
        self._apply(actions)
        self._flush()

    def _apply(self, actions: list[act.Action]) -> None:
        todo: deque[act.Action] = deque(actions)
        while todo:
            action = todo.popleft()
            if isinstance(action, act.Persist):
                self._journal.append((action.key, action.value))
            elif isinstance(action, act.Send | act.Broadcast | act.ForwardRequests):
                self._outbox.append(action)
            elif isinstance(action, act.Execute):
                todo.extendleft(reversed(self._execute(action)))
            elif isinstance(action, act.Attested):
                self._attestations.append(action)
            elif isinstance(action, act.FetchBlocks):
                self._start_fetch(action)
            elif isinstance(action, act.Note):
                if action.kind == "stable_checkpoint":
                    self._stable_seq = max(self._stable_seq, int(action.detail["sequence"]))
                self.log.count(f"note_{action.kind}")
                self.log.event(action.kind, **action.detail)
            else:  # pragma: no cover - the Action union is closed
                raise AssertionError(f"unknown action {action!r}")

    def _flush(self) -> None:
        """Persist the group's journal records and attestations (one fsync), wake the receipt
        waiters they complete, then send the group's messages in order."""
        attested, self._attestations = self._attestations, []
        if self._journal or attested:
            with self.store.write() as w:
                blocks.apply_journal(w, self._journal)
                for a in attested:
                    blocks.put_attestations(w, a.sequence, a.attestations)
            self._journal = []
            self.stats.persist_txns += 1
        for a in attested:
            self.wake_waiters(a.sequence)
        for fut, sequence in self._stable_waiters.items():
            if sequence <= self._stable_seq and not fut.done():
                fut.set_result(None)
        outbox, self._outbox = self._outbox, []
        for action in outbox:
            if isinstance(action, act.Send):
                self.transport.send(action.to, action.message)
            elif isinstance(action, act.Broadcast):
                self.transport.broadcast(action.message)
            else:
                self.transport.forward(action.to, action.envelopes)

    def _execute(self, action: act.Execute) -> list[act.Action]:
        assert action.sequence == self.head.last_executed + 1, (
            f"replica asked to execute {action.sequence} after {self.head.last_executed}"
        )
        header = wire.decode_header(action.header)
        certified = wire.encode_certified_block(action.header, action.envelopes, action.certificate)
        block_hash = wire.digest_of(action.header)
        with self.store.write() as w:
            # The journal records held so far ride along: one fsync less for the group.
            blocks.apply_journal(w, self._journal)
            out = self.ledger.execute(w, action.sequence, header.timestamp_ms, action.envelopes)
            results: tuple[bytes, ...] = tuple(out.results)
            tx_ids: tuple[bytes, ...] = tuple(out.tx_ids)
            # The ledger decides which results consume their tx_id; the index follows it.
            recorded = out.recorded
            blocks.put_executed_block(
                w,
                action.sequence,
                certified,
                block_hash,
                tx_ids,
                results,
                recorded,
                out.results_root,
                out.state_root,
            )
            # The history index rides in the same transaction: always exactly the executed blocks.
            history.put_postings(w, action.sequence, out.consensus_time_ms, out.postings)
        self._journal = []
        self.head = blocks.Head(action.sequence, out.state_root, block_hash)
        self._executed_tx_ids[action.sequence] = tx_ids
        while len(self._executed_tx_ids) > EXECUTED_REMEMBERED_MAX:
            del self._executed_tx_ids[next(iter(self._executed_tx_ids))]
        self.stats.executed_blocks += 1
        self.stats.executed_txs += len(tx_ids)
        self.stats.results_by_code.update(out.codes)
        self.observe_commit_latency_s(time.time() - header.timestamp_ms / 1000)
        for fut, height in self._height_waiters.items():
            if height <= action.sequence and not fut.done():
                fut.set_result(None)
        for tx_id in tx_ids:
            self.pending.pop(tx_id, None)
        # Logged every 100 heights and for large blocks, and for the first block after a quiet
        # spell (after_ms: since the previous one), which is when a stall ended: a timeline of
        # a fault (scripts/timeline.py) shows when commits resumed.
        now_ms = time.monotonic() * 1000
        previous, self._last_executed_ms = self._last_executed_ms, now_ms
        quiet_ms = None if previous is None else round(now_ms - previous)
        if (
            action.sequence % 100 == 0
            or len(tx_ids) >= 100
            or quiet_ms is None
            or quiet_ms >= EXECUTED_QUIET_LOG_MS
        ):
            self.log.event(
                "executed",
                height=action.sequence,
                txs=len(tx_ids),
                state_root=out.state_root.hex()[:16],
                after_ms=quiet_ms,
            )
        # tree_root: the state tree's root at checkpoint heights, which the checkpoint signs.
        return self.replica.on_executed(action.sequence, out.state_root, out.results_root, out.tree_root)

    def wake_waiters(self, sequence: int) -> None:
        """Attestations for ``sequence`` are on disk (from consensus or a backfill): its
        receipts can be served."""
        for attested, at in self._attested_waiters.items():
            if at == sequence and not attested.done():
                attested.set_result(None)
        if not self._waiters:
            return
        tx_ids = self._executed_tx_ids.get(sequence)
        if tx_ids is None:  # executed long ago (or before a restart): read the block
            with self.store.read() as r:
                raw = blocks.get_block(r, sequence)
            if raw is None:
                return
            tx_ids = tuple(wire.tx_ids_of(wire.decode_certified_block(raw)[1]))
        waiting = [t for t in tx_ids if t in self._waiters]
        with self.store.read() as r:
            # A retry of an earlier tx in this block keeps its receipt at the earlier height,
            # served once that height is attested.
            heights = _receipt_heights(r, waiting)
        for tx_id, height in heights.items():
            if height is None:
                continue
            for fut in self._waiters.get(tx_id, []):
                if not fut.done():
                    fut.set_result(height)

    def _replay(self, fetched: list[bytes]) -> list[act.Action]:
        actions = self.replica.on_blocks(fetched)
        for a in actions:
            if isinstance(a, act.Execute):
                self._replayed[a.sequence] = None
        while len(self._replayed) > REPLAYED_REMEMBERED_MAX:
            del self._replayed[next(iter(self._replayed))]
        return actions

    def _start_fetch(self, action: act.FetchBlocks) -> None:
        if self._fetching or self._stopped:
            return
        self._fetching = True
        task = asyncio.get_running_loop().create_task(self._fetch(action))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _fetch(self, action: act.FetchBlocks) -> None:
        asking: set[asyncio.Task[tuple[list[bytes], int] | None]] = set()
        owner: dict[asyncio.Task[tuple[list[bytes], int] | None], int] = {}
        try:
            peers = [p for p in action.peers if self.transport.is_up(p)] or list(action.peers)
            # Start each fetch at the next peer: the replica asks again while it stays behind, and
            # one byzantine peer that always answers first (with junk, stale or slow blocks) must
            # not be the only one ever asked.
            start = self._fetch_rounds % len(peers) if peers else 0
            self._fetch_rounds += 1
            waiting = peers[start:] + peers[:start]
            # Hedged: the next peer is asked too whenever nobody has answered for FETCH_HEDGE_S
            # (regression: chaos seed 7, a paused primary's link stayed up, and the backups'
            # catch-up waited on it for the whole 5 s pause). The first non-empty answer wins.
            while waiting or asking:
                if waiting:
                    peer = waiting.pop(0)
                    task = asyncio.ensure_future(self.transport.fetch_blocks(peer, action.from_sequence))
                    asking.add(task)
                    owner[task] = peer
                done, asking = await asyncio.wait(
                    asking, timeout=FETCH_HEDGE_S if waiting else None, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    got = task.result()
                    if not got or not got[0]:
                        continue
                    fetched, last = got
                    self.stats.fetched_blocks += len(fetched)
                    self.log.event(
                        "catch_up",
                        peer=owner[task],
                        from_height=action.from_sequence,
                        blocks=len(fetched),
                        peer_last=last,
                    )
                    self._enqueue(functools.partial(self._replay, fetched), "fetch_dropped_full")
                    return
        finally:
            for task in asking:
                task.cancel()
            self._fetching = False
