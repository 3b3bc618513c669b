"""A bank's node: ``python -m node --config PATH`` (console script ``ledger-node``).

Serves LedgerService (+ gRPC health and reflection) to clients and ReplicaService to peers,
runs the driver loop, and stops cleanly on SIGTERM/SIGINT. Restart after kill -9 needs nothing
but the data dir: the head, the ledger state and the consensus journal are all in LMDB.
Exit codes: 0 clean stop, 2 bad config/genesis/key, 3 cannot listen, 1 internal failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import gc
import os
import resource
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from ledger import tls as ledger_tls
from ledger.crypto import KeyFileError, SigningKey, load_key
from ledger.genesis import Genesis, GenesisError, Member, load_genesis
from ledger.tls import bind
from ledger.v1 import api_pb2, consensus_pb2
from node.api import LedgerApi
from node.app import queries, statetree
from node.app.ledger import Ledger
from node.app.validate import CheckCache
from node.config import ConfigError, NodeConfig, NodeLimits, load_node_config
from node.driver import Driver
from node.log import EventLog
from node.metrics import MetricsTls, NodeMetrics, NodeSources
from node.pbft.crypto import Ed25519Crypto
from node.pbft.journal import restore as restore_journal
from node.pbft.replica import Replica
from node.pbft.verify import Verifier
from node.peerauth import HandshakeRefusals
from node.ports import port_holders
from node.receipts import AttestationBackfill
from node.reflection import enable_reflection
from node.security import NodeSecurity, SecurityError, load_security
from node.snapshot import SnapshotSource
from node.statesync import GrpcSnapshotPeers, StateSync, swap_in
from node.storage import blocks
from node.storage.lmdb_store import LmdbStore
from node.storage.prune import Pruner
from node.transport import PeerLinks, ReplicaServer, grpc_options, server_options
from node.votes import VoteGuard, VoteRecord, VoteRecordError, start_floor

DISK_WATCH_S = 1.0  # how often health follows the disk budget
RESYNC = -1  # serve()'s code for "stop and start over": state sync is needed
RESYNC_CHECK_S = 2.0
RESYNC_CHECKS = 3  # periods in a row in which peers refused pruned blocks
# Open files kept out of the connection caps: LMDB, the logs, outgoing peer channels, gRPC's
# own descriptors (its pollers, wakeup fds, threads). A node needs a few dozen of these.
FD_RESERVE = 512
SERVER_PORTS = 2  # the API port and the replica port each get a share of the rest
CONNECTIONS_MIN = 64  # a per-port cap below this means the open-file limit is unusable


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Loaded:
    config: NodeConfig
    genesis: Genesis
    member: Member


def load(config_path: Path) -> tuple[Loaded, SigningKey]:
    """Config, genesis and own key; the key must be the member's node key in genesis."""
    try:
        config = load_node_config(config_path)
        genesis = load_genesis(config.genesis_path)
        key = load_key(config.key_path)
    except (ConfigError, GenesisError, KeyFileError) as exc:
        raise StartupError(str(exc), 2) from exc
    member = genesis.member(config.member_id)
    if member is None:
        raise StartupError(
            f"{config_path}: member_id {config.member_id!r} is not in {config.genesis_path}", 2
        )
    if key.public_key != member.node_key:
        raise StartupError(f"{config.key_path}: not the node key genesis lists for {member.member_id}", 2)
    return Loaded(config, genesis, member), key.key


class _Inbound:
    """Transport callbacks -> driver / API."""

    def __init__(self, driver: Driver, api: LedgerApi, snapshots: SnapshotSource) -> None:
        self._driver = driver
        self._api = api
        self._snapshots = snapshots

    async def on_peer_messages(self, source: Hashable, messages: Sequence[bytes]) -> bool:
        return await self._driver.on_peer_messages(source, messages)

    def on_forward(self, source: Hashable, envelopes: list[bytes]) -> None:
        self._driver.on_forward(source, envelopes, self._api.admission.admit_forwarded)

    def closed(self, source: Hashable) -> None:
        self._driver.forget_source(source)

    def fetch_blocks(self, from_height: int, max_blocks: int) -> tuple[list[bytes], int]:
        return self._driver.fetch_blocks(from_height, max_blocks)

    async def fetch_snapshot(self, request: consensus_pb2.SnapshotRequest) -> consensus_pb2.SnapshotChunk:
        return await self._snapshots.fetch(request)


async def run(loaded: Loaded, key: SigningKey) -> int:
    """The composition root: assemble the node, serve it, run until a signal or a failure. A
    node that finds every peer pruned the blocks it needs stops and starts over in this process,
    which syncs it by snapshot (``follow_catch_up``)."""
    config, genesis, member = loaded.config, loaded.genesis, loaded.member
    # First: LMDB, the log and every socket count against the open-file limit.
    open_files = raise_open_files_limit()
    connections_max = connections_cap(config.limits.connections_max, open_files)
    limits = config.limits
    log = EventLog(member.member_id, config.log_path, limits.log_file_bytes_max, limits.log_files_kept)
    try:
        security: NodeSecurity = load_security(config, genesis, member, log)
    except SecurityError as exc:
        raise StartupError(str(exc), 2) from exc
    while True:
        await sync_state(loaded, key, security, log)
        exit_code = await serve(loaded, key, security, log, open_files, connections_max)
        if exit_code != RESYNC:
            break
        log.event("node_restarting", reason="every peer pruned the blocks this node needs: state sync")
    log.close()
    return exit_code


async def serve(
    loaded: Loaded,
    key: SigningKey,
    security: NodeSecurity,
    log: EventLog,
    open_files: int,
    connections_max: int,
) -> int:
    """Assemble, serve and run the node until a signal (0), a failure (1) or RESYNC."""
    config, genesis, member = loaded.config, loaded.genesis, loaded.member
    node = assemble(loaded, key, security, log)
    metrics = start_metrics(config, genesis, node.driver, node.replica, node.links, node.lmdb_store, log)
    servers = bind_servers(loaded, node, security, connections_max, log)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await servers.start()
    node.start()
    tune_gc()
    serving = asyncio.ensure_future(follow_health(servers.health, node, config.limits, log))
    resync = asyncio.Event()
    catching_up = asyncio.ensure_future(
        follow_catch_up(resync, lambda: node.driver.head.last_executed, log)
        if config.state_sync
        else asyncio.sleep(0)
    )
    # Handshakes gRPC refused, counted from the lines it writes on stderr (node/peerauth.py).
    refusals = HandshakeRefusals.of_stderr(log) if config.tls else None
    watch_refusals = asyncio.ensure_future(refusals.run() if refusals else asyncio.sleep(0))
    log.event(
        "node_started",
        replica=member.replica,
        api=config.api_listen,
        replica_port=config.replica_listen,
        tls=config.tls,
        last_executed=node.driver.head.last_executed,
        journal_records=node.journal_records,
        abstaining=node.vote_floor is not None,
        vote_floor=None
        if node.vote_floor is None
        else f"view {node.vote_floor[0]}, sequence {node.vote_floor[1]}",
        open_files=open_files,
        connections_max=connections_max,
    )
    exit_code = await until_stopped(stop, resync, node.driver, log)
    for task in (serving, catching_up, watch_refusals):
        task.cancel()
    await servers.stop()
    await node.stop()
    if metrics is not None:
        metrics.close()
    node.store.close()
    log.event("node_stopped", exit_code=exit_code, last_executed=node.driver.head.last_executed)
    return exit_code


async def sync_state(loaded: Loaded, key: SigningKey, security: NodeSecurity, log: EventLog) -> None:
    """Before the node is assembled: finish (or clean up) a sync a crash interrupted, then sync by
    snapshot if this node is new or far behind (node/statesync.py), unless the config says no."""
    config, genesis, member = loaded.config, loaded.genesis, loaded.member
    limits = config.limits
    if swap_in(config.data_dir):
        log.event("state_sync_swapped_in", data_dir=str(config.data_dir))
    if not config.state_sync:
        return
    with (
        LmdbStore(
            config.data_dir, map_size_bytes=min(limits.lmdb_map_size_bytes, limits.disk_budget_bytes)
        ) as s,
        s.read() as r,
    ):
        head = blocks.read_head(r, b"").last_executed
        empty = head == 0 and not any(True for _ in r.scan(blocks.JOURNAL))
    verifier = Verifier(
        limits.replica_config(genesis.n, genesis.f, member.replica, genesis.chain_id),
        Ed25519Crypto(key, genesis.node_keys(), genesis.chain_id),
    )
    options = grpc_options(limits, limits.peer_message_bytes_max, limits.message_bytes_max)
    peers = GrpcSnapshotPeers(
        {
            m.replica: security.dial(m.replica_address, options)
            for m in genesis.members
            if m.replica != member.replica
        }
    )
    try:
        await StateSync(
            genesis,
            config.data_dir,
            peers,
            verifier.checkpoint_proof,
            log,
            lag_min=limits.state_sync_lag_min,
            timeout_s=limits.state_sync_timeout_ms / 1000,
            map_size_bytes=min(limits.lmdb_map_size_bytes, limits.disk_budget_bytes),
            budget_bytes=limits.disk_budget_bytes,
        ).run(head, empty)
    finally:
        await peers.close()


@dataclass
class Node:
    """The node's parts, wired together (assemble)."""

    lmdb_store: LmdbStore
    store: blocks.ScopedReads  # over lmdb_store: what the node reads and writes through
    replica: Replica
    links: PeerLinks
    driver: Driver
    backfill: AttestationBackfill
    api: LedgerApi
    quorum_links: asyncio.Event  # set once 2f peers (a quorum with this node) are linked
    journal_records: int
    vote_floor: tuple[int, int] | None  # restored or wiped: (view, sequence) it abstains below
    snapshots: SnapshotSource  # serves state sync to peers (FetchSnapshot)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks.append(asyncio.ensure_future(self.snapshots.run()))
        self.links.start()
        self.driver.start()
        # Blocks replayed by catch-up get their f+1 attestations from the peers, in the background.
        self.backfill.start(lambda: self.driver.head.last_executed, self.driver.unlikely_to_be_attested)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.snapshots.close()
        await self.driver.stop()
        await self.links.close()
        await self.backfill.close()


def assemble(loaded: Loaded, key: SigningKey, security: NodeSecurity, log: EventLog) -> Node:
    """Store, ledger, replica (from the store's journal and head), peer links, the driver
    around the node core, the attestation backfill and the client API."""
    config, genesis, member = loaded.config, loaded.genesis, loaded.member
    limits = config.limits
    lmdb_store = LmdbStore(
        config.data_dir,
        map_size_bytes=min(limits.lmdb_map_size_bytes, limits.disk_budget_bytes),
        budget_bytes=limits.disk_budget_bytes,
        sync=True,
    )
    store = blocks.ScopedReads(lmdb_store)
    # Admission and execution share it: each envelope parsed and verified once.
    checks = CheckCache(genesis, entries_max=2 * limits.pending_requests_max)
    # The state tree is built at checkpoint heights, for the checkpoint to sign (balance proofs).
    # LEDGER_NODE_NO_HISTORY=1: no history index (the history calls then find no entries);
    # LEDGER_NODE_NO_TREE=1: no state tree (checkpoints then sign an empty tree_root; balance
    # proofs and snapshots are unavailable; every member must run the same). Measuring aids
    # only, to price each on the closed-loop benchmark; never in production.
    ledger = Ledger(
        genesis,
        checks=checks,
        tree_interval=0 if os.environ.get("LEDGER_NODE_NO_TREE") == "1" else limits.checkpoint_interval,
        history=os.environ.get("LEDGER_NODE_NO_HISTORY") != "1",
    )
    genesis_root = queries.genesis_state_root(genesis)
    with store.write() as w:  # a store from before the tree's key index gets it now, once
        indexed = statetree.index_keys(w)
    if indexed:
        log.event("state_tree_keys_indexed", keys=indexed)
    with store.read() as r:
        head = blocks.read_head(r, genesis_root)
        journal = blocks.read_journal(r)
        # Both are written in the one transaction per block; disagreement is a corrupt store.
        assert ledger.last_height(r) == head.last_executed, "ledger height and block head disagree"
    try:
        record = VoteRecord.load(config.votes_path)
    except VoteRecordError as exc:
        raise StartupError(str(exc), 2) from exc
    with store.read() as r:
        floor = start_floor(record, r, not journal, restore_journal(journal).view)
    crypto = Ed25519Crypto(key, genesis.node_keys(), genesis.chain_id)
    replica = Replica(
        limits.replica_config(genesis.n, genesis.f, member.replica, genesis.chain_id),
        crypto,
        journal,
        head.last_executed,
        head.state_root,
        now_ms=int(time.time() * 1000),  # the clock the driver's ticks carry on
        vote_floor=floor,
    )
    votes = VoteGuard(config.votes_path, record, replica, limits.log_window, store)
    # SERVING only once this node can reach a quorum (2f peers + itself): a client told it is
    # healthy can then expect its transaction to reach enough replicas to commit.
    quorum_links = asyncio.Event()

    def on_peer_up(peer: int) -> None:
        if links.up_count() >= 2 * genesis.f:
            quorum_links.set()
        driver.on_peer_up(peer)

    links = PeerLinks(genesis, member.replica, limits, log, on_peer_up=on_peer_up, dial=security.dial)
    driver = Driver(
        genesis,
        store,
        ledger,
        replica,
        links,
        log,
        limits.core_config(),
        genesis_root,
        member.replica,
        pruner=None if config.retention.archive else Pruner(config.retention),
        before_send=votes.before_send,
    )
    backfill = AttestationBackfill(
        genesis,
        member.replica,
        crypto,
        store,
        log,
        reply_bytes_max=limits.peer_message_bytes_max,
        reader=key,
        dial=security.dial,
        put=driver.put_attestations,
    )
    api = LedgerApi(
        genesis,
        member.member_id,
        member.replica,
        limits,
        driver,
        ledger,
        replica_status(replica),
        log,
        backfill,
        checks,
        space_left=functools.partial(lmdb_store.space_left, limits.disk_reserve_bytes),
        space=lmdb_store.space,
    )
    snapshots = SnapshotSource(
        lmdb_store,
        driver.wait_stable,
        log,
        chunk_bytes_max=min(limits.snapshot_chunk_bytes_max, limits.peer_message_bytes_max // 2),
        session_idle_s=limits.snapshot_session_idle_ms / 1000,
        session_s_max=limits.snapshot_session_ms_max / 1000,
    )
    return Node(
        lmdb_store, store, replica, links, driver, backfill, api, quorum_links, len(journal), floor, snapshots
    )


@dataclass
class Servers:
    replica: grpc.aio.Server
    api: grpc.aio.Server
    health: HealthServicer

    async def start(self) -> None:
        await self.replica.start()
        await self.api.start()
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set("ledger.v1.LedgerService", health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        await self.api.stop(grace=1.0)
        await self.replica.stop(grace=0.5)


def bind_servers(
    loaded: Loaded, node: Node, security: NodeSecurity, connections_max: int, log: EventLog
) -> Servers:
    """The replica port (ReplicaService, mutual TLS) and the API port (LedgerService, health,
    reflection), bound; StartupError (exit 3) when an address is taken."""
    config, genesis = loaded.config, loaded.genesis
    limits = config.limits
    peer_bytes = limits.peer_message_bytes_max
    replica_server = grpc.aio.server(
        options=server_options(
            limits, peer_bytes, peer_bytes, connections_max, limits.peer_streams_per_connection_max
        )
    )
    inbound = _Inbound(node.driver, node.api, node.snapshots)
    replica_server.add_generic_rpc_handlers(
        (ReplicaServer(genesis, limits, inbound, log, security.peer_auth(log)).handler(),)
    )
    # Client requests are bounded tightly; replies (a whole block) may be as large as a peer's.
    api_server = grpc.aio.server(
        options=server_options(
            limits, limits.message_bytes_max, peer_bytes, connections_max, limits.streams_per_connection_max
        )
    )
    api_server.add_generic_rpc_handlers((node.api.handler(),))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, api_server)
    enable_reflection(
        api_server,
        (
            api_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        ),
    )
    for server, address, what, credentials in (
        (replica_server, config.replica_listen, "replica port", security.credentials(replica_port=True)),
        (api_server, config.api_listen, "api port", security.credentials(replica_port=False)),
    ):
        try:
            bound = bind(server, address, credentials)
        except RuntimeError:  # grpc raises this when the address is in use
            bound = 0
        if bound == 0:
            port = int(address.rsplit(":", 1)[1])
            raise StartupError(
                f"cannot listen on {address} ({what} {port}); held by: {port_holders(port)}", 3
            )
    return Servers(replica_server, api_server, health)


async def follow_health(health: HealthServicer, node: Node, limits: NodeLimits, log: EventLog) -> None:
    """SERVING once a quorum is reachable; then LedgerService follows the disk budget: NOT_SERVING
    (no new work; reads still answered) while the store is within its reserve."""
    await node.quorum_links.wait()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    log.event("serving", peers_up=node.links.up_count())
    taking_work: bool | None = None
    store = node.lmdb_store
    while True:
        full = store.space_left(limits.disk_reserve_bytes)
        if (full is None) != taking_work:
            first, taking_work = taking_work is None, full is None
            await health.set(
                "ledger.v1.LedgerService",
                health_pb2.HealthCheckResponse.SERVING
                if taking_work
                else health_pb2.HealthCheckResponse.NOT_SERVING,
            )
            if not taking_work:
                log.event("disk_budget_reached", reason=full, **store.space())
            elif not first:
                log.event("taking_work", **store.space())
        await asyncio.sleep(DISK_WATCH_S)  # a poll of two counters, not a wait for an event


class CatchUpWatch:
    """Whether this node needs a snapshot: catch-up refused as pruned (FetchBlocks
    FAILED_PRECONDITION, the ``fetch_pruned`` counter) while the head did not move, in each of
    RESYNC_CHECKS periods in a row. (A refusal by one pruned peer while another serves the
    blocks moves the head.)"""

    def __init__(self, fetch_pruned: int, head: int) -> None:
        self._seen, self._at, self._stuck = fetch_pruned, head, 0

    def period(self, fetch_pruned: int, head: int) -> bool:
        """One period's end, with the counter and the head now: True once a snapshot is needed."""
        stuck = fetch_pruned > self._seen and head == self._at
        self._stuck = self._stuck + 1 if stuck else 0
        self._seen, self._at = fetch_pruned, head
        return self._stuck >= RESYNC_CHECKS


async def follow_catch_up(resync: asyncio.Event, head: Callable[[], int], log: EventLog) -> None:
    """Set ``resync`` when the blocks this node needs are gone from its peers (CatchUpWatch)."""
    watch = CatchUpWatch(log.counters["fetch_pruned"], head())
    while True:
        await asyncio.sleep(RESYNC_CHECK_S)  # a poll of a counter and the head, not an event
        if watch.period(log.counters["fetch_pruned"], head()):
            resync.set()
            return


async def until_stopped(stop: asyncio.Event, resync: asyncio.Event, driver: Driver, log: EventLog) -> int:
    """Wait for a stop signal (exit 0), the driver's loop failing (a bug: exit 1) or the need
    to sync by snapshot (RESYNC)."""
    stopper = asyncio.ensure_future(stop.wait())
    failed = asyncio.ensure_future(driver.wait_failed())
    resyncer = asyncio.ensure_future(resync.wait())
    done, _ = await asyncio.wait([stopper, failed, resyncer], return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if failed in done:
        log.event("node_failed", error=repr(failed.exception()))
        exit_code = 1
    elif resyncer in done and stopper not in done:
        exit_code = RESYNC
    for task in (stopper, failed, resyncer):
        task.cancel()
    return exit_code


def raise_open_files_limit() -> int:
    """Raise the open-file soft limit to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux refuses an infinite RLIMIT_NOFILE soft limit; 2^20 is its default fs.nr_open.
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return target
    with contextlib.suppress(ValueError, OSError):  # refused (past fs.nr_open): keep the soft limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def connections_cap(configured: int, open_files: int) -> int:
    """The per-port connection cap: the configured one, lowered so that both ports full still
    leave FD_RESERVE descriptors free (a node at its open-file limit cannot accept, open LMDB
    or dial a peer). StartupError when the limit leaves less than CONNECTIONS_MIN per port."""
    budget = (open_files - FD_RESERVE) // SERVER_PORTS
    if budget < CONNECTIONS_MIN:
        raise StartupError(
            f"open-file limit {open_files} is too low: need {FD_RESERVE + SERVER_PORTS * CONNECTIONS_MIN}"
            " (raise the hard limit, e.g. ulimit -Hn)",
            2,
        )
    return min(configured, budget)


# Collector thresholds for a node under load. It allocates fast (messages, parsed transactions)
# and holds a large long-lived heap (pending requests, checked transactions, block views):
# with Python's defaults (700, 10, 10) it spent 5% of the entry node's CPU collecting, mostly
# in full collections that walk that heap; with these, 1% (4 banks, closed loop, 40 s,
# measured with gc.callbacks; anonymous RSS the same, 66 MB). Cycles are still collected.
GC_THRESHOLDS = (10_000, 50, 100)


def tune_gc() -> None:
    """Freeze what start-up allocated (it lives as long as the process) and collect rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def start_metrics(
    config: NodeConfig,
    genesis: Genesis,
    driver: Driver,
    replica: Replica,
    links: PeerLinks,
    store: LmdbStore,
    log: EventLog,
) -> NodeMetrics | None:
    """Prometheus metrics on config.metrics_listen (node/metrics.py), or None when not set."""
    if config.metrics_listen is None:
        return None
    metrics = NodeMetrics(
        NodeSources(
            height=lambda: driver.head.last_executed,
            replica=replica_status(replica),
            blocks=lambda: driver.stats.executed_blocks,
            results=lambda: dict(driver.stats.results_by_code),
            peers_up=links.up_count,
            peers=genesis.n - 1,
            pending=lambda: len(driver.pending),
            queue=driver.queue_depths,
            store=store.space,
            counters=lambda: dict(log.counters),
        )
    )
    tls = None
    if config.tls:
        assert config.tls_cert_path is not None and config.tls_key_path is not None  # load_node_config
        member = genesis.member(config.member_id)
        assert member is not None
        # Scrapers: client certificates of this node's own bank CA (ssl wants it in a file).
        client_ca = config.data_dir / "metrics-client-ca.pem"
        client_ca.write_bytes(ledger_tls.member_ca(member))
        tls = MetricsTls(config.tls_cert_path, config.tls_key_path, client_ca)
    lock = threading.Lock()

    def refused(reason: str) -> None:  # the metrics server's threads: counted under a lock
        with lock:
            log.count(f"metrics_refused_{reason}")

    try:
        metrics.serve(config.metrics_listen, tls, refused)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot serve metrics on {config.metrics_listen}: {exc}", 3) from exc
    driver.core.observe_commit_latency_s = metrics.commit_latency.observe
    store.on_commit_s = metrics.store_commit.observe
    log.event("metrics_serving", listen=config.metrics_listen, https=tls is not None)
    return metrics


def replica_status(replica: Replica) -> Callable[[], dict[str, int]]:
    def read() -> dict[str, int]:
        out = {f"replica_{k}": int(v) for k, v in replica.counters.items()}
        out["view"] = int(replica.view)
        out["in_view_change"] = int(replica.in_view_change)
        out["stable_checkpoint"] = int(replica.stable_seq)
        out["replica_abstaining"] = int(replica.abstaining)  # restored: not voting until caught up
        out["replica_pending"] = len(replica.pending)
        return out

    return read


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node", description="Run one bank's ledger node.")
    parser.add_argument("--config", type=Path, required=True, help="node config JSON (node/config.py)")
    args = parser.parse_args(argv)
    try:
        loaded, key = load(args.config)
        profile_path = os.environ.get("LEDGER_NODE_CPROFILE")
        if not profile_path:
            return asyncio.run(run(loaded, key))
        # Profiling aid: CPU time (process_time, not wall time, so time spent waiting for the
        # CPU or the disk is not charged to whatever was on the stack), dumped at exit to
        # <LEDGER_NODE_CPROFILE>.<member id> for pstats. Slows the node down; never in production.
        profiler = cProfile.Profile(time.process_time)
        try:
            return profiler.runcall(asyncio.run, run(loaded, key))
        finally:
            profiler.dump_stats(f"{profile_path}.{loaded.member.member_id}")
    except StartupError as exc:
        print(f"node: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
