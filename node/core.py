"""The node core: every decision of the node's loop, synchronous and without I/O. The asyncio
shell (node/driver.py) only moves bytes and time into it; the seeded simulator (sim/) runs this
same core with a virtual clock, an in-memory store and a simulated network.

Injected: the store (LMDB in production, node/storage/memory.py in the simulator), a Clock,
the transport (send, broadcast, forward: what goes out), a Fetcher (asks one peer for
certified blocks; the answer comes back through on_fetched), the event log, and ``wake``
(called when an event is queued: the shell runs run_group soon).

Events are queued per source (node/fairqueue.py: the ticker, the clients, each peer
connection) and run as groups (run_group): every event already queued, up to
GROUP_EVENTS_MAX (GROUP_PER_SOURCE_MAX from one source), goes to the Replica in turn and its
actions run strictly in list order:

  Persist   journal records: written, with everything else the group persists, in one
            fsync'ed write transaction before any message of the group goes out
  Send/Broadcast/ForwardRequests   held in an outbox until the group's records are on disk
  Execute   one write transaction: ledger state changes + certified block + results + head
            (+ the journal records held so far); then Replica.on_executed, whose actions run next
  Attested  store the attestations (with the group's records); then wake the clients waiting
            for those receipts (on_attested)
  FetchBlocks   ask peers, in rotation and hedged; the blocks come back as an event (on_fetched)
  Note      one event log line and a counter

Group commit: the group's journal records and attestations go to disk in one transaction (one
fsync where there used to be one per step), and only then do the group's messages leave, in
order (persist before send). After kill -9 the node restarts from its store alone: the journal
and the last executed block go back to the Replica's constructor; a message whose record was
not yet on disk was never sent. The core is the only writer of the store.

Sans-I/O: no asyncio, grpc, lmdb, time, os, socket or threading here (tests/node/test_core.py).
"""

from __future__ import annotations

import functools
from collections import Counter, deque
from collections.abc import Callable, Container, Hashable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from node.fairqueue import FairQueue
from node.pbft import actions as act
from node.pbft import wire
from node.storage import blocks, history, prune
from node.storage.kv import KVReader, KVStore, KVWriter

# The event queue, per source (node/fairqueue.py): the ticker, the clients, each peer connection.
SOURCE_EVENTS_MAX = 50_000
# A peer stream waits (is not read) past this many queued messages: a member's burst is a few
# hundred votes, and a flood should sit in the sender's buffers, not in this process.
PEER_STREAM_EVENTS_MAX = 2_048
SOURCE_EVENT_BYTES_MAX = 32 << 20
EVENT_BYTES_MAX = 256 << 20  # all sources together (an empty source may still put one)
INTERNAL = "internal"  # ticks, link-ups, fetched blocks, backfilled attestations
CLIENTS = "clients"  # transactions admitted by the API (already bounded by pending_requests_max)
GROUP_EVENTS_MAX = 256  # queued events run as one group (one journal fsync, then the sends)
# ... and at most this many from one source: a flooding peer cannot make a group long (the
# group's votes and replies go out only when it ends), whatever it has queued.
GROUP_PER_SOURCE_MAX = 128
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
EXECUTED_REMEMBERED_MAX = 64  # recent heights whose tx_ids are kept to wake receipt waiters
EXECUTED_QUIET_LOG_MS = 500  # a block executed this long after the previous one is logged
RELAY_WAITING_MAX = 20_000  # copies waiting for relay_delay_ms; past it the oldest go at once
FORWARD_BATCH_MAX = 256  # envelopes per Forward RPC (a peer drops one over its submit_batch_max)
# Catch-up asks the next peer too when one has not answered within this long: a paused or slow
# peer (its link still up) would otherwise hold every fetch until the transport's timeout.
# Checked at each tick.
FETCH_HEDGE_S = 0.5
PRUNE_EVERY_TICKS = 25  # how often (in ticks: 0.5 s by default) the loop looks for blocks to prune
PRUNE_LOG_EVERY_BLOCKS = 1_000  # a "pruned" event each time the first kept height passes a multiple


@dataclass(frozen=True)
class CoreConfig:
    """The core's own settings, derived from the node's limits (node/config.py)."""

    tick_ms: int  # the ticker's period: the replica's timers and batching
    pending_requests_max: int  # admitted client transactions not yet executed here
    pending_ttl_ms: int  # an admitted transaction that never executes here is forgotten after this
    # A client's transaction goes to the primary at once; its copies for the other peers wait
    # this long, and go only if it is still pending here by then (see _client_request).
    relay_delay_ms: int


class Clock(Protocol):
    """Seconds: ``time`` since the epoch (the replica's clock, commit latency), ``monotonic``
    for everything measured here. Production passes the time module's functions."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class ReplicaLike(Protocol):
    """The replica contract of docs/ARCHITECTURE.md, as the core uses it."""

    @property
    def pending(self) -> Mapping[bytes, bytes]:
        """tx_id -> envelope of the requests it holds until they execute."""
        ...

    @property
    def rejected(self) -> int:
        """How many inputs it has rejected so far (bad signatures, garbage, wrong views...)."""
        ...

    @property
    def stable_seq(self) -> int:
        """Its last stable checkpoint: nothing after it is pruned."""
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
    """What goes out to the peers (node/transport.py: PeerLinks)."""

    def send(self, to: int, message: bytes) -> None: ...

    def broadcast(self, message: bytes) -> None: ...

    def forward(self, to: int, envelopes: Sequence[bytes]) -> None: ...

    def is_up(self, replica: int) -> bool: ...


class Fetcher(Protocol):
    """Catch-up's requests: ask ``peer`` for certified blocks from ``from_height``; the answer
    ((blocks, the peer's last height), or None when it cannot answer) comes back through
    NodeCore.on_fetched(round, peer, answer)."""

    def fetch(self, peer: int, from_height: int, round: int) -> None: ...

    def cancel_fetches(self) -> None:
        """The round ended: answers still coming are not needed."""
        ...


class Log(Protocol):
    """node/log.py: EventLog."""

    counters: Counter[str]

    def event(self, event: str, /, **detail: Any) -> None: ...

    def count(self, name: str, amount: int = 1) -> None: ...


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


def _ignore(*_: Any) -> None:
    return None


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
class CoreStats:
    executed_blocks: int = 0
    executed_txs: int = 0
    fetched_blocks: int = 0
    events: int = 0
    persist_txns: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    results_by_code: Counter[str] = field(default_factory=Counter)  # result code name -> txs


@dataclass
class _Fetch:
    """One catch-up round: the peers still to ask (in order), those asked and not answered."""

    round: int
    from_sequence: int
    waiting: deque[int]
    asking: set[int]
    asked_at: float = 0.0  # monotonic s of the last ask


Event = Callable[[], list[act.Action]]


class NodeCore:
    def __init__(
        self,
        n: int,
        store: KVStore,
        ledger: LedgerLike,
        replica: ReplicaLike,
        transport: Transport,
        fetcher: Fetcher,
        log: Log,
        clock: Clock,
        config: CoreConfig,
        genesis_root: bytes,
        own_replica: int,
        wake: Callable[[], None] = _ignore,
        pruner: prune.Pruner | None = None,
        before_send: Callable[[], None] | None = None,
    ) -> None:
        self.n = n  # replicas (genesis)
        self.store = store
        self.ledger = ledger
        self.replica = replica
        self.transport = transport
        self.fetcher = fetcher
        self.log = log
        self.clock = clock
        self._monotonic = clock.monotonic  # bound once: the hot path calls it per transaction
        self.config = config
        self.tick_ms = config.tick_ms
        self.pending_requests_max = config.pending_requests_max
        self.pending_ttl_ms = config.pending_ttl_ms
        self.relay_delay_ms = config.relay_delay_ms
        self.genesis_root = genesis_root
        self.own_replica = own_replica
        self.wake = wake
        self.pending: dict[bytes, _Pending] = {}
        self.stats = CoreStats()
        with store.read() as r:
            self.head = blocks.read_head(r, genesis_root)
        self._events: FairQueue[tuple[Hashable, Event, int]] = FairQueue(
            SOURCE_EVENTS_MAX, SOURCE_EVENT_BYTES_MAX, EVENT_BYTES_MAX
        )
        self.sources: dict[Hashable, SourceRecord] = {}  # peer connections: what they sent lately
        self.relays_rejected = 0  # relayed batches with invalid envelopes (judged like rejections)
        self._invalid_relays = 0
        # Penalized peer connections -> when (monotonic s) each may be served its next event.
        self._penalized: dict[Hashable, float] = {}
        self._fetch: _Fetch | None = None  # the catch-up round under way
        self._fetch_rounds = 0
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
        # Seconds from a block's proposal (its primary's timestamp) to its execution here.
        self.observe_commit_latency_s: Callable[[float], None] = _ignore
        # The shell's hooks: a height executed (its readers may go on), a height's attestations
        # are on disk (its receipts may be served).
        self.on_executed: Callable[[int], None] = _ignore
        self.on_attested: Callable[[int], None] = _ignore
        # ... and a stable checkpoint's certificate is on disk (balance proofs may use it).
        self.on_stable: Callable[[int], None] = _ignore
        self.stable_seq = replica.stable_seq  # the highest stable checkpoint (its certificate on disk)
        self._stable_told = self.stable_seq
        self.pruner = pruner
        self._ticks = 0
        # Called after a group's records are on disk and before its messages leave: the vote
        # record (node/votes.py) is raised there, outside the data directory.
        self.before_send = before_send

    # --- events in ----------------------------------------------------------------------

    def enqueue(self, event: Event, counter: str, source: Hashable = INTERNAL, size: int = 0) -> bool:
        """Queue an event for the next group; False (and ``counter`` counted) when its source's
        queue is full."""
        if not self._events.put(source, (source, event, size), size):
            self.log.count(counter)
            return False
        self.wake()
        return True

    def on_peer_message(self, source: Hashable, raw: bytes) -> bool:
        """A message from one peer connection, queued; False (not queued) while its queue is
        full (the shell's stream then waits for room: backpressure)."""
        if not self._events.put(
            source,
            (source, functools.partial(self.replica.on_message, raw), len(raw)),
            len(raw),
            PEER_STREAM_EVENTS_MAX,
        ):
            return False
        self.wake()
        return True

    @property
    def queued(self) -> int:
        """Events waiting for a group."""
        return self._events.total_items

    def queue_depths(self) -> dict[str, int]:
        """Events and bytes waiting in the loop's queue, for status and metrics."""
        return {"events_queued": len(self._events), "event_bytes_queued": self._events.total_bytes}

    def on_peer_up(self, replica: int) -> None:
        """The transport's link to a peer (re)connected: the replica re-sends it its votes."""
        self.enqueue(functools.partial(self.replica.on_peer_up, replica), "peer_ups_dropped_full")

    def submit(self, tx_id: bytes, envelope: bytes) -> bool:
        """Admit a stateless-checked client transaction. False when past pending_requests_max
        (the caller answers RESOURCE_EXHAUSTED)."""
        if tx_id not in self.pending:
            if len(self.pending) >= self.pending_requests_max:
                self.log.count("requests_rejected_full")
                return False
            self.pending[tx_id] = _Pending(self._monotonic() * 1000)
        return self.enqueue(
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
            self.enqueue(event, "forwards_dropped_full", source, size)

    def tick(self) -> None:
        """The ticker's beat: the replica's timers (with the wall clock), expiry of admitted
        requests, and catch-up's hedge."""
        now_ms = int(self.clock.time() * 1000)
        self.enqueue(functools.partial(self.replica.on_tick, now_ms), "ticks_dropped_full")
        self._expire_pending()
        self._hedge_fetch()
        self._ticks += 1
        if self.pruner is not None and self._ticks % PRUNE_EVERY_TICKS == 0:
            self.enqueue(self._prune, "prunes_dropped_full")

    # --- pruning (node/storage/prune.py) --------------------------------------------------
    # A bounded step in the loop's turn, in a write transaction of its own (only this loop
    # writes the store): at most prune.PRUNE_BLOCKS_MAX blocks, so it delays the next event by
    # a few milliseconds at most, and only when there is something to prune.

    def _prune(self) -> list[act.Action]:
        assert self.pruner is not None
        head, stable = self.head.last_executed, self.replica.stable_seq
        with self.store.read() as r:
            if not self.pruner.due(r, head, stable):
                return []
        with self.store.write() as w:
            step = self.pruner.step(w, head, stable)
        self.log.count("pruned_blocks", step.blocks)
        self.log.count("pruned_txs", step.txs)
        if step.first // PRUNE_LOG_EVERY_BLOCKS != (step.first - step.blocks) // PRUNE_LOG_EVERY_BLOCKS:
            self.log.event("pruned", first_block=step.first, total_blocks=self.pruner.pruned_blocks)
        return []

    def retention(self) -> prune.Retention:
        return prune.Retention() if self.pruner is None else self.pruner.retention

    def on_backfilled(self, height: int, attestations: Sequence[bytes]) -> None:
        """f+1 matching attestations of an executed block, fetched from the peers
        (node/receipts.py: AttestationBackfill): stored by the loop with its group, like the
        replica's own (only the loop writes the store)."""
        self.enqueue(
            functools.partial(self._backfilled, height, tuple(attestations)), "backfill_dropped_full"
        )

    def _backfilled(self, height: int, attestations: tuple[bytes, ...]) -> list[act.Action]:
        with self.store.read() as r:
            if blocks.get_attestations(r, height):  # came the usual way meanwhile
                return []
            if blocks.get_outcome(r, height) is None:  # pruned meanwhile
                return []
        self.log.count("attestations_backfilled")
        return [act.Attested(height, attestations)]

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
        self._relay_later.append((self._monotonic() * 1000, first, tx_id, envelope))
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
        if self._relay_now:
            now, self._relay_now = self._relay_now, {}
            for to, envelopes in now.items():
                self._forward(to, envelopes)
        later = self._relay_later
        if not later:
            return
        cutoff = self._monotonic() * 1000 - self.relay_delay_ms
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
            for replica in range(self.n):
                if replica not in (self.own_replica, first):
                    self._forward(replica, envelopes)

    def _forward(self, to: int, envelopes: list[bytes]) -> None:
        for i in range(0, len(envelopes), FORWARD_BATCH_MAX):
            self.transport.forward(to, envelopes[i : i + FORWARD_BATCH_MAX])

    # --- what the API and the peers read ------------------------------------------------

    def read(self) -> AbstractContextManager[KVReader]:
        return self.store.read()

    def holds(self, tx_id: bytes) -> bool:
        """Admitted here (until pending_ttl_ms) or held by the replica (from a client or a
        peer's relay) until it executes."""
        return tx_id in self.pending or tx_id in self.replica.pending

    def status_counters(self) -> dict[str, int]:
        with self.store.read() as r:
            first, synced = prune.first_block(r), prune.synced_at(r)
        return {
            "executed_blocks": self.stats.executed_blocks,
            "executed_txs": self.stats.executed_txs,
            "fetched_blocks": self.stats.fetched_blocks,
            "first_block": first,  # the lowest height still stored (pruning)
            "synced_at": synced,  # the snapshot this store started from (state sync), or 0
        }

    def fetch_blocks(self, from_height: int, max_blocks: int) -> tuple[list[bytes], int]:
        """A peer's catch-up request: certified blocks from ``from_height``, and our last;
        prune.BlocksPruned below the first kept one."""
        out: list[bytes] = []
        with self.store.read() as r:
            last = blocks.read_head(r, self.genesis_root).last_executed
            height = max(from_height, 1)
            first = prune.first_block(r)
            if height < first:
                raise prune.BlocksPruned(prune.pruned_message(f"block {height}", r, self.retention()))
            while height <= last and len(out) < max_blocks:
                raw = blocks.get_block(r, height)
                assert raw is not None, f"executed block {height} missing from the store"
                out.append(raw)
                height += 1
        return out, last

    def receipt_heights(self, tx_ids: Sequence[bytes]) -> dict[bytes, int | None]:
        """Per tx_id, the height of its receipt if that block is executed and attested here."""
        with self.store.read() as r:
            return _receipt_heights(r, tx_ids)

    def attested_tx_ids(self, sequence: int, waiting: Container[bytes]) -> dict[bytes, int]:
        """The attestations of ``sequence`` are on disk: tx_id -> receipt height for those of
        its transactions that ``waiting`` asks for and whose receipt can now be served (a retry
        of an earlier tx in this block keeps its receipt at the earlier height)."""
        tx_ids = self._executed_tx_ids.get(sequence)
        if tx_ids is None:  # executed long ago (or before a restart): read the block
            with self.store.read() as r:
                raw = blocks.get_block(r, sequence)
            if raw is None:
                return {}
            tx_ids = tuple(wire.tx_ids_of(wire.decode_certified_block(raw)[1]))
        heights = self.receipt_heights([t for t in tx_ids if t in waiting])
        return {tx_id: h for tx_id, h in heights.items() if h is not None}

    def unlikely_to_be_attested(self, height: int) -> bool:
        """An executed block whose Attested will probably never come here: it was replayed from
        a peer's certified copy (catch-up), or it is well behind the head."""
        return height in self._replayed or height + ATTEST_LAG_BLOCKS <= self.head.last_executed

    # --- the loop -----------------------------------------------------------------------

    def _expire_pending(self) -> None:
        # A request the replica dropped (duplicate, refused) never executes here; forget it
        # after a bound so it does not hold a pending_requests_max slot forever.
        # Entries are only ever inserted, with the monotonic clock's time, so the dict is in
        # admission order: the stale ones are a prefix (each tick costs O(expired), not
        # O(pending), which under load is thousands of entries 50 times a second).
        cutoff = self._monotonic() * 1000 - self.pending_ttl_ms
        stale: list[bytes] = []
        for tx_id, p in self.pending.items():
            if p.admitted_ms >= cutoff:
                break
            stale.append(tx_id)
        for tx_id in stale:
            del self.pending[tx_id]
        if stale:
            self.log.count("pending_expired", len(stale))

    def run_group(self) -> bool:
        """Run the events queued now as one group (see the module docstring); False when there
        was none to run (nothing queued, or only penalized sources not due yet)."""
        if not self._events.total_items:
            return False
        caps: dict[Hashable, int] | None = None
        if self._penalized:
            now = self._monotonic()
            caps = {s: 0 if due > now else 1 for s, due in self._penalized.items()}
        group = self._events.take(GROUP_EVENTS_MAX, GROUP_PER_SOURCE_MAX, caps)
        if not group:
            return False
        replica = self.replica
        self.stats.events += len(group)
        for source, event, size in group:
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
        return True

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
            self._penalized[source] = self._monotonic() + units / PENALTY_UNITS_PER_S
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
                    self.stable_seq = max(self.stable_seq, int(action.detail["sequence"]))
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
            self.on_attested(a.sequence)
        if self.stable_seq > self._stable_told:  # its records went to disk just now
            self._stable_told = self.stable_seq
            self.on_stable(self.stable_seq)
        outbox, self._outbox = self._outbox, []
        if outbox and self.before_send is not None:
            self.before_send()
        transport = self.transport
        for action in outbox:
            if isinstance(action, act.Send):
                transport.send(action.to, action.message)
            elif isinstance(action, act.Broadcast):
                transport.broadcast(action.message)
            else:
                transport.forward(action.to, action.envelopes)

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
        self.observe_commit_latency_s(self.clock.time() - header.timestamp_ms / 1000)
        self.on_executed(action.sequence)
        for tx_id in tx_ids:
            self.pending.pop(tx_id, None)
        # Logged every 100 heights and for large blocks, and for the first block after a quiet
        # spell (after_ms: since the previous one), which is when a stall ended: a timeline of
        # a fault (scripts/timeline.py) shows when commits resumed.
        now_ms = self._monotonic() * 1000
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

    # --- catch-up -----------------------------------------------------------------------

    def _replay(self, fetched: list[bytes]) -> list[act.Action]:
        actions = self.replica.on_blocks(fetched)
        for a in actions:
            if isinstance(a, act.Execute):
                self._replayed[a.sequence] = None
        while len(self._replayed) > REPLAYED_REMEMBERED_MAX:
            del self._replayed[next(iter(self._replayed))]
        return actions

    @property
    def fetching(self) -> bool:
        return self._fetch is not None

    def _start_fetch(self, action: act.FetchBlocks) -> None:
        if self._fetch is not None:
            return
        peers = [p for p in action.peers if self.transport.is_up(p)] or list(action.peers)
        # Start each fetch at the next peer: the replica asks again while it stays behind, and
        # one byzantine peer that always answers first (with junk, stale or slow blocks) must
        # not be the only one ever asked.
        start = self._fetch_rounds % len(peers) if peers else 0
        self._fetch_rounds += 1
        waiting = deque(peers[start:] + peers[:start])
        self._fetch = _Fetch(self._fetch_rounds, action.from_sequence, waiting, set())
        self._ask_next()

    def _ask_next(self) -> None:
        f = self._fetch
        assert f is not None
        if not f.waiting:
            if not f.asking:  # everyone asked has failed to answer: the replica will ask again
                self._end_fetch()
            return
        peer = f.waiting.popleft()
        f.asking.add(peer)
        f.asked_at = self._monotonic()
        self.fetcher.fetch(peer, f.from_sequence, f.round)

    def _hedge_fetch(self) -> None:
        # Hedged: the next peer is asked too whenever nobody has answered for FETCH_HEDGE_S
        # (regression: chaos seed 7, a paused primary's link stayed up, and the backups'
        # catch-up waited on it for the whole 5 s pause). The first non-empty answer wins.
        f = self._fetch
        if f is not None and f.waiting and self._monotonic() - f.asked_at >= FETCH_HEDGE_S:
            self._ask_next()

    def _end_fetch(self) -> None:
        self._fetch = None
        self.fetcher.cancel_fetches()

    def on_fetched(self, round: int, peer: int, answer: tuple[list[bytes], int] | None) -> None:
        """A peer's answer to catch-up's fetch of ``round`` (None: it could not answer). The
        first non-empty one is replayed, in the loop's next group."""
        f = self._fetch
        if f is None or f.round != round or peer not in f.asking:
            return  # a round that ended (another peer answered first)
        f.asking.discard(peer)
        if not answer or not answer[0]:
            self._ask_next()
            return
        fetched, last = answer
        self.stats.fetched_blocks += len(fetched)
        self.log.event(
            "catch_up", peer=peer, from_height=f.from_sequence, blocks=len(fetched), peer_last=last
        )
        self._end_fetch()
        self.enqueue(functools.partial(self._replay, fetched), "fetch_dropped_full")
