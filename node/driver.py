"""The node's only loop, the asyncio shell around the node core (node/core.py, where every
decision is: group commit, persist before send, the execute transaction, relay timing, catch-up's
rotation and hedging, peer penalties). The shell only moves bytes and time:

  - one consumer task runs the core's queued events as groups (NodeCore.run_group), so the
    replica is never entered twice at once, yielding to the rest of the loop every
    YIELD_EVERY_S even while events keep coming;
  - a ticker task gives the core its beat (NodeCore.tick) every tick_ms;
  - peer streams wait (are not read) while their source's queue is full (backpressure);
  - catch-up's fetches run as tasks; each answer goes back to the core (NodeCore.on_fetched);
  - clients wait on futures the core's hooks resolve: a height executed, a height attested.

After kill -9 the node restarts from LMDB alone (see node/core.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ledger.genesis import Genesis
from node import core
from node.core import CoreConfig, CoreStats, LedgerLike, NodeCore, ReplicaLike, _Pending
from node.log import EventLog
from node.pbft import actions as act
from node.storage import blocks, prune
from node.storage.kv import KVReader, KVStore

YIELD_EVERY_S = 0.002  # the loop runs its other tasks at least this often (see _consume)
HEIGHT_WAITERS_MAX = 10_000  # reads waiting for a min_height (wait_height); past it, no wait


class Transport(core.Transport, Protocol):
    """node/transport.py: PeerLinks (what the core sends through, and catch-up's fetches)."""

    async def fetch_blocks(self, peer_id: int, from_height: int) -> tuple[list[bytes], int] | None: ...


class _SystemClock:
    """The core's Clock: the time module's own functions (no wrapper on the hot path)."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)  # last: the name shadows the module in the class body


class Driver:
    def __init__(
        self,
        genesis: Genesis,
        store: KVStore,
        ledger: LedgerLike,
        replica: ReplicaLike,
        transport: Transport,
        log: EventLog,
        config: CoreConfig,
        genesis_root: bytes,
        own_replica: int,
        pruner: prune.Pruner | None = None,
        before_send: Callable[[], None] | None = None,
    ) -> None:
        self.transport = transport
        self._wake = asyncio.Event()  # set when an event is queued
        self._room = asyncio.Event()  # set when the loop took events (sources may have room)
        self.core = NodeCore(
            genesis.n,
            store,
            ledger,
            replica,
            transport,
            self,
            log,
            _SystemClock(),
            config,
            genesis_root,
            own_replica,
            wake=self._wake.set,
            pruner=pruner,
            before_send=before_send,
        )
        self.core.on_executed = self._executed
        self.core.on_attested = self.wake_waiters
        self.core.on_stable = self._stable
        self._waiters: dict[bytes, list[asyncio.Future[int]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._fetches: set[asyncio.Task[None]] = set()
        self._stopped = False
        self._height_waiters: dict[asyncio.Future[None], int] = {}  # see wait_height
        self._attested_waiters: dict[asyncio.Future[None], int] = {}  # wait_attested
        self._stable_waiters: dict[asyncio.Future[None], int] = {}  # wait_stable

    # What the API, the metrics and the tests read of the core.

    @property
    def head(self) -> blocks.Head:
        return self.core.head

    @property
    def store(self) -> KVStore:
        return self.core.store

    @property
    def replica(self) -> ReplicaLike:
        return self.core.replica

    @property
    def log(self) -> EventLog:
        assert isinstance(self.core.log, EventLog)
        return self.core.log

    @property
    def stats(self) -> CoreStats:
        return self.core.stats

    @property
    def pending(self) -> dict[bytes, _Pending]:
        return self.core.pending

    def run(self, actions: list[act.Action]) -> None:
        self.core.run(actions)

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
        for task in [*self._tasks, *self._background, *self._fetches]:
            task.cancel()
        for task in [*self._tasks, *self._background, *self._fetches]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()

    # --- events in ----------------------------------------------------------------------

    async def on_peer_messages(self, source: Hashable, messages: Sequence[bytes]) -> bool:
        """Messages from one peer connection (``source``), in order. Waits while that source's
        queue is full: the stream stops reading and gRPC's flow control holds its sender back,
        at no cost to the other sources. False when the connection should be closed: the node
        is stopping, or the replica rejected too many of its messages."""
        core = self.core
        for raw in messages:
            while not core.on_peer_message(source, raw):
                if self._stopped:
                    return False
                self._room.clear()
                await self._room.wait()
        return not self._stopped

    def queue_depths(self) -> dict[str, int]:
        return self.core.queue_depths()

    def on_peer_up(self, replica: int) -> None:
        if not self._stopped:
            self.core.on_peer_up(replica)

    def submit(self, tx_id: bytes, envelope: bytes) -> bool:
        """Admit a stateless-checked client transaction. False when past pending_requests_max
        (the caller answers RESOURCE_EXHAUSTED) or the node is stopping."""
        return not self._stopped and self.core.submit(tx_id, envelope)

    def on_forward(
        self,
        source: Hashable,
        envelopes: list[bytes],
        admit: Callable[[list[bytes]], list[tuple[bytes, bytes]]],
    ) -> None:
        if not self._stopped:
            self.core.on_forward(source, envelopes, admit)

    def forget_source(self, source: Hashable) -> None:
        self.core.forget_source(source)

    async def put_attestations(self, height: int, attestations: Sequence[bytes], timeout_s: float) -> bool:
        """Backfilled attestations (node/receipts.py): the loop stores them (only it writes the
        store); True once they are on disk."""
        if self._stopped:
            return False
        self.core.on_backfilled(height, attestations)
        return await self.wait_attested(height, timeout_s)

    # --- catch-up's fetches (the core's Fetcher) ----------------------------------------

    def fetch(self, peer: int, from_height: int, round: int) -> None:
        if self._stopped:
            return
        task = asyncio.get_running_loop().create_task(self._fetch(peer, from_height, round))
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _fetch(self, peer: int, from_height: int, round: int) -> None:
        answer = await self.transport.fetch_blocks(peer, from_height)
        self.core.on_fetched(round, peer, answer)

    def cancel_fetches(self) -> None:
        for task in self._fetches:
            if task is not asyncio.current_task():
                task.cancel()

    # --- the API's port (node/api/port.py) and peers' queries --------------------------

    def read(self) -> AbstractContextManager[KVReader]:
        return self.core.store.read()

    def held_by_replica(self) -> Mapping[bytes, bytes]:
        return self.core.replica.pending

    def holds(self, tx_id: bytes) -> bool:
        return self.core.holds(tx_id)

    def pending_count(self) -> int:
        return len(self.core.pending)

    def peer_up(self, replica: int) -> bool:
        return self.transport.is_up(replica)

    def status_counters(self) -> dict[str, int]:
        return self.core.status_counters()

    def fetch_blocks(self, from_height: int, max_blocks: int) -> tuple[list[bytes], int]:
        return self.core.fetch_blocks(from_height, max_blocks)

    def unlikely_to_be_attested(self, height: int) -> bool:
        return self.core.unlikely_to_be_attested(height)

    def retention(self) -> prune.Retention:
        return self.core.retention()

    def receipt_waiters(self, tx_ids: Sequence[bytes]) -> dict[bytes, asyncio.Future[int]]:
        """A future per tx_id, resolved with its receipt's height once the block is executed
        and attested here (at once for those that already are). Release with drop_waiters."""
        loop = asyncio.get_running_loop()
        futures: dict[bytes, asyncio.Future[int]] = {}
        heights = self.core.receipt_heights(tx_ids)
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

    def _executed(self, height: int) -> None:
        for fut, at in self._height_waiters.items():
            if at <= height and not fut.done():
                fut.set_result(None)

    def wake_waiters(self, sequence: int) -> None:
        """Attestations for ``sequence`` are on disk: its receipts can be served."""
        for attested, at in self._attested_waiters.items():
            if at == sequence and not attested.done():
                attested.set_result(None)
        if not self._waiters:
            return
        for tx_id, height in self.core.attested_tx_ids(sequence, self._waiters).items():
            for fut in self._waiters.get(tx_id, []):
                if not fut.done():
                    fut.set_result(height)

    async def wait_height(self, height: int, timeout_s: float) -> bool:
        """True once this node has executed ``height`` (at once if it has), False if it has not
        within timeout_s (or HEIGHT_WAITERS_MAX reads are waiting already)."""
        if self.core.head.last_executed >= height:
            return True
        return await self._wait(self._height_waiters, height, timeout_s, "height_waits_full")

    async def wait_attested(self, height: int, timeout_s: float) -> bool:
        """True once ``height`` has its attestations on disk here (at once if it has), False
        if not within timeout_s (or HEIGHT_WAITERS_MAX waits are open already)."""
        with self.core.store.read() as r:
            if blocks.get_attestations(r, height):
                return True
        return await self._wait(self._attested_waiters, height, timeout_s, "attested_waits_full")

    async def wait_stable(self, sequence: int, timeout_s: float) -> bool:
        """True once a checkpoint at ``sequence`` or later is stable and its certificate on disk
        here, False if not within timeout_s (balance proofs: node/api/proofs.py)."""
        if self.core.stable_seq >= sequence:
            return True
        return await self._wait(self._stable_waiters, sequence, timeout_s, "stable_waits_full")

    def _stable(self, sequence: int) -> None:
        for fut, at in self._stable_waiters.items():
            if at <= sequence and not fut.done():
                fut.set_result(None)

    async def _wait(
        self, waiters: dict[asyncio.Future[None], int], height: int, timeout_s: float, full: str
    ) -> bool:
        """Wait (bounded in number and time) for the loop to resolve a future in ``waiters``."""
        if len(waiters) >= HEIGHT_WAITERS_MAX:
            self.core.log.count(full)
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

    # --- the loop -----------------------------------------------------------------------

    async def _ticker(self) -> None:
        period = self.core.tick_ms / 1000
        while True:
            await asyncio.sleep(period)  # the clock itself: ticks are the replica's time source
            if not self._stopped:
                self.core.tick()

    async def _consume(self) -> None:
        core = self.core
        yielded = time.monotonic()
        while True:
            # Let the rest of the loop run (gRPC reads and writes, the ticker, the API) at least
            # every YIELD_EVERY_S even while events keep coming: running a queued group does
            # not suspend, so a source with thousands of events queued (a flood) used to hold
            # the loop for seconds, and the honest peers' streams went unread meanwhile. Not
            # after every group: each pass of the loop costs tens of microseconds.
            if time.monotonic() - yielded >= YIELD_EVERY_S:
                await asyncio.sleep(0)
                yielded = time.monotonic()
            if not core.run_group():
                self._wake.clear()
                await self._wake.wait()
                yielded = time.monotonic()
                continue
            self._room.set()
