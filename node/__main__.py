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
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from ledger.crypto import KeyFileError, SigningKey, load_key
from ledger.genesis import Genesis, GenesisError, Member, load_genesis
from ledger.tls import bind
from ledger.v1 import api_pb2
from node.api import LedgerApi
from node.app import queries
from node.app.ledger import Ledger
from node.app.validate import CheckCache
from node.config import ConfigError, NodeConfig, load_node_config
from node.driver import Driver
from node.log import EventLog
from node.metrics import NodeMetrics, NodeSources
from node.pbft.config import ReplicaConfig
from node.pbft.crypto import Ed25519Crypto
from node.pbft.replica import Replica
from node.ports import port_holders
from node.receipts import AttestationBackfill
from node.reflection import enable_reflection
from node.security import NodeSecurity, SecurityError, load_security
from node.storage import blocks
from node.storage.lmdb_store import LmdbStore
from node.transport import PeerLinks, ReplicaServer, server_options

DISK_WATCH_S = 1.0  # how often health follows the disk budget
PENDING_TTL_FACTOR = 30  # forget an admitted request after this many view-change timeouts
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

    def __init__(self, driver: Driver, api: LedgerApi) -> None:
        self._driver = driver
        self._api = api

    async def on_peer_messages(self, source: Hashable, messages: Sequence[bytes]) -> bool:
        return await self._driver.on_peer_messages(source, messages)

    def on_forward(self, source: Hashable, envelopes: list[bytes]) -> None:
        self._driver.on_forward(source, envelopes, self._api.admission.admit_forwarded)

    def closed(self, source: Hashable) -> None:
        self._driver.forget_source(source)

    def fetch_blocks(self, from_height: int, max_blocks: int) -> tuple[list[bytes], int]:
        return self._driver.fetch_blocks(from_height, max_blocks)


async def run(loaded: Loaded, key: SigningKey) -> int:
    config, genesis, member = loaded.config, loaded.genesis, loaded.member
    limits = config.limits
    # First: LMDB, the log and every socket count against the open-file limit.
    open_files = raise_open_files_limit()
    connections_max = connections_cap(limits.connections_max, open_files)
    log = EventLog(member.member_id, config.log_path)
    try:
        security: NodeSecurity = load_security(config, genesis, member, log)
    except SecurityError as exc:
        raise StartupError(str(exc), 2) from exc
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
    ledger = Ledger(genesis, checks=checks, tree_interval=limits.checkpoint_interval)
    genesis_root = queries.genesis_state_root(genesis)
    with store.read() as r:
        head = blocks.read_head(r, genesis_root)
        journal = blocks.read_journal(r)
        # Both are written in the one transaction per block; disagreement is a corrupt store.
        assert ledger.last_height(r) == head.last_executed, "ledger height and block head disagree"
    crypto = Ed25519Crypto(key, genesis.node_keys(), genesis.chain_id)
    replica = Replica(
        ReplicaConfig(
            n=genesis.n,
            f=genesis.f,
            replica_id=member.replica,
            chain_id=genesis.chain_id,
            batch_size_max=limits.batch_size_max,
            batch_delay_ms=limits.batch_delay_ms,
            batch_delay_max_ms=limits.batch_delay_max_ms,
            batch_delay_per_tps_us=limits.batch_delay_per_tps_us,
            checkpoint_interval=limits.checkpoint_interval,
            log_window=limits.log_window,
            view_change_timeout_ms=limits.view_change_timeout_ms,
            pending_requests_max=limits.pending_requests_max,
            message_bytes_max=limits.peer_message_bytes_max,
        ),
        crypto,
        journal,
        head.last_executed,
        head.state_root,
        now_ms=int(time.time() * 1000),  # the clock the driver's ticks carry on
    )
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
        tick_ms=limits.tick_ms,
        pending_requests_max=limits.pending_requests_max,
        pending_ttl_ms=limits.view_change_timeout_ms * PENDING_TTL_FACTOR,
        genesis_root=genesis_root,
        own_replica=member.replica,
        # Half the timeout saved another ~4% CPU in closed loop, but chaos seed 303 then took
        # 1.4-4.4 s to commit again after a backup was killed or paused, against 0.5 s at most
        # with a fifth (both after the restart-clock fix): the node takes the copies it has not
        # relayed yet with it, and they commit only once clients resubmit elsewhere (the likely
        # cause, not traced message by message).
        relay_delay_ms=limits.view_change_timeout_ms // 5,
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
    metrics = start_metrics(config, genesis, driver, replica, links, lmdb_store, log)

    peer_bytes = limits.peer_message_bytes_max
    replica_server = grpc.aio.server(
        options=server_options(
            limits, peer_bytes, peer_bytes, connections_max, limits.peer_streams_per_connection_max
        )
    )
    replica_server.add_generic_rpc_handlers(
        (ReplicaServer(genesis, limits, _Inbound(driver, api), log, security.peer_auth(log)).handler(),)
    )
    # Client requests are bounded tightly; replies (a whole block) may be as large as a peer's.
    api_server = grpc.aio.server(
        options=server_options(
            limits, limits.message_bytes_max, peer_bytes, connections_max, limits.streams_per_connection_max
        )
    )
    api_server.add_generic_rpc_handlers((api.handler(),))
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

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    await replica_server.start()
    await api_server.start()
    links.start()
    driver.start()
    # Blocks replayed by catch-up get their f+1 attestations from the peers, in the background.
    backfill.start(lambda: driver.head.last_executed, driver.unlikely_to_be_attested, driver.wake_waiters)
    tune_gc()
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await health.set("ledger.v1.LedgerService", health_pb2.HealthCheckResponse.NOT_SERVING)

    async def serving_when_connected() -> None:
        """SERVING once a quorum is reachable; then LedgerService follows the disk budget: NOT_SERVING
        (no new work; reads still answered) while the store is within its reserve."""
        await quorum_links.wait()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.event("serving", peers_up=links.up_count())
        taking_work: bool | None = None
        while True:
            full = lmdb_store.space_left(limits.disk_reserve_bytes)
            if (full is None) != taking_work:
                first, taking_work = taking_work is None, full is None
                await health.set(
                    "ledger.v1.LedgerService",
                    health_pb2.HealthCheckResponse.SERVING
                    if taking_work
                    else health_pb2.HealthCheckResponse.NOT_SERVING,
                )
                if not taking_work:
                    log.event("disk_budget_reached", reason=full, **lmdb_store.space())
                elif not first:
                    log.event("taking_work", **lmdb_store.space())
            await asyncio.sleep(DISK_WATCH_S)  # a poll of two counters, not a wait for an event

    serving = asyncio.ensure_future(serving_when_connected())
    log.event(
        "node_started",
        replica=member.replica,
        api=config.api_listen,
        replica_port=config.replica_listen,
        tls=config.tls,
        last_executed=head.last_executed,
        journal_records=len(journal),
        open_files=open_files,
        connections_max=connections_max,
    )
    stopper = asyncio.ensure_future(stop.wait())
    failed = asyncio.ensure_future(driver.wait_failed())
    done, _ = await asyncio.wait([stopper, failed], return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if failed in done:
        log.event("node_failed", error=repr(failed.exception()))
        exit_code = 1
    for task in (stopper, failed, serving):
        task.cancel()

    await health.enter_graceful_shutdown()
    await api_server.stop(grace=1.0)
    await replica_server.stop(grace=0.5)
    await driver.stop()
    await links.close()
    await backfill.close()
    if metrics is not None:
        metrics.close()
    store.close()
    log.event("node_stopped", exit_code=exit_code, last_executed=driver.head.last_executed)
    log.close()
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
    try:
        metrics.serve(config.metrics_listen)
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.metrics_listen} (metrics port): {exc}", 3) from exc
    driver.observe_commit_latency_s = metrics.commit_latency.observe
    store.on_commit_s = metrics.store_commit.observe
    log.event("metrics_serving", listen=config.metrics_listen)
    return metrics


def replica_status(replica: Replica) -> Callable[[], dict[str, int]]:
    def read() -> dict[str, int]:
        out = {f"replica_{k}": int(v) for k, v in replica.counters.items()}
        out["view"] = int(replica.view)
        out["in_view_change"] = int(replica.in_view_change)
        out["stable_checkpoint"] = int(replica.stable_seq)
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
