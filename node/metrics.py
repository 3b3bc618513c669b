"""Prometheus metrics of a node (prometheus-client), served over HTTP on ``metrics_listen``.

Most figures are read from the node's own state when Prometheus scrapes (a custom collector),
so the hot path pays nothing for them; only two histograms are observed as things happen: the
commit latency (a block's primary timestamp to its execution here) and the LMDB commit time
(which includes the fsync). The HTTP server is prometheus-client's, on its own daemon thread;
the collector reads plain ints and copies of dicts, which the GIL keeps consistent enough for
monitoring. Names follow Prometheus conventions (base units, ``_total`` for counters);
README.md lists them.

Who may read: with TLS on (the node's default) the port speaks HTTPS with the node's own
certificate and asks for a client certificate issued by the node's own bank CA (the one genesis
lists for it): the bank's monitoring holds one (``scripts/members.py`` issues
``<BANK>.monitor.pem``), other banks and strangers are refused at the handshake. The server is
ours, not prometheus-client's ``start_http_server``, because that one shakes hands inside
``accept()`` on its only serving thread, so one client that never finishes a handshake stalls
every scrape; here each connection shakes hands on its own thread, under a deadline, and
connections beyond a cap are closed at once. Plaintext HTTP only with the node's ``tls`` off.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

# Commit latency from the primary's proposal to execution here: tens of ms to seconds.
COMMIT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# An LMDB commit with fsync: well under a millisecond on a fast disk, tens of ms on a slow one.
STORE_COMMIT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# A scrape connection: its TLS handshake and request must arrive within this, and at most this
# many are served at once (Prometheus uses one; the rest are closed on accept).
CONNECTION_TIMEOUT_S = 5.0
CONNECTIONS_MAX = 16


@dataclass(frozen=True)
class MetricsTls:
    """HTTPS for /metrics: the node's certificate and key, and the CA whose client
    certificates may scrape (the node's own bank CA)."""

    cert_path: Path
    key_path: Path
    client_ca_path: Path

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        ctx.load_verify_locations(cafile=str(self.client_ca_path))
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: Prometheus scrapes every few seconds."""


class _Server(ThreadingWSGIServer):
    """A thread per connection, at most CONNECTIONS_MAX; the TLS handshake (when ``tls``) runs on
    the connection's own thread under CONNECTION_TIMEOUT_S."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tls: ssl.SSLContext | None = None
        self.refused: Callable[[str], None] = lambda reason: None
        self._slots = threading.BoundedSemaphore(CONNECTIONS_MAX)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if not self._slots.acquire(blocking=False):
            self.refused("connections_max")
            return False
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        sock: socket.socket = request
        sock.settimeout(CONNECTION_TIMEOUT_S)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                self.refused(_handshake_reason(exc))
                return
        super().finish_request(sock, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke mid-request: nothing to report beyond the count."""
        self.refused("broken_request")


def _handshake_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "handshake_timeout"
    if isinstance(exc, ssl.SSLError):
        return f"tls_{(exc.reason or 'error').lower()}"
    return "handshake_error"


@dataclass(frozen=True)
class NodeSources:
    """Where the collector reads each figure (callables: read at scrape time)."""

    height: Callable[[], int]
    replica: Callable[[], dict[str, int]]  # view, in_view_change, stable_checkpoint, replica_*
    blocks: Callable[[], int]
    results: Callable[[], dict[str, int]]  # result code name -> transactions executed
    peers_up: Callable[[], int]
    peers: int
    pending: Callable[[], int]
    queue: Callable[[], dict[str, int]]  # events_queued, event_bytes_queued
    store: Callable[[], dict[str, int]]  # disk_used_bytes, disk_map_bytes, ...
    counters: Callable[[], dict[str, int]]  # the event log's named counters


class _Collector(Collector):
    def __init__(self, src: NodeSources) -> None:
        self.src = src

    def collect(self) -> Iterator[Any]:
        src = self.src
        replica = src.replica()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("ledger_height", "Last executed block height.", src.height())
        yield gauge("ledger_view", "PBFT view this replica is in.", replica.get("view", 0))
        yield gauge(
            "ledger_in_view_change",
            "1 while this replica is changing views.",
            replica.get("in_view_change", 0),
        )
        yield gauge(
            "ledger_stable_checkpoint",
            "Sequence of the last stable checkpoint.",
            replica.get("stable_checkpoint", 0),
        )
        counters = src.counters()
        yield CounterMetricFamily(
            "ledger_view_changes",
            "View changes this replica started.",
            value=counters.get("note_view_change", 0),
        )
        yield CounterMetricFamily(
            "ledger_blocks", "Blocks executed since the node started.", value=src.blocks()
        )
        txs = CounterMetricFamily(
            "ledger_transactions", "Transactions executed since start, by result code.", labels=["result"]
        )
        for code, count in sorted(src.results().items()):
            txs.add_metric([code], count)
        yield txs
        yield gauge("ledger_peers_up", "Peers whose outbound link is up.", src.peers_up())
        yield gauge("ledger_peers", "Peers in genesis (members but this one).", src.peers)
        yield gauge(
            "ledger_pending_requests", "Client transactions admitted, not executed yet.", src.pending()
        )
        queue = src.queue()
        yield gauge(
            "ledger_event_queue_events", "Events waiting in the node's loop.", queue.get("events_queued", 0)
        )
        yield gauge(
            "ledger_event_queue_bytes",
            "Bytes of events waiting in the node's loop.",
            queue.get("event_bytes_queued", 0),
        )
        store = src.store()
        for key, doc in (
            ("disk_used_bytes", "Bytes of the LMDB map in use."),
            ("disk_map_bytes", "Size of the LMDB map (it grows up to the budget)."),
            ("disk_budget_bytes", "The most the store may use (disk_budget_bytes)."),
            ("disk_free_bytes", "Free bytes on the store's filesystem."),
        ):
            if key in store:
                yield gauge(f"ledger_store_{key.removeprefix('disk_')}", doc, store[key])
        events = CounterMetricFamily(
            "ledger_node_events",
            "Named node counters: rejected client input (rejected_*), dropped peer input (peer_*), ...",
            labels=["name"],
        )
        for name, count in sorted(counters.items()):
            events.add_metric([name], count)
        yield events


class NodeMetrics:
    def __init__(self, sources: NodeSources) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(sources))
        self.commit_latency = Histogram(
            "ledger_commit_latency_seconds",
            "From a block's proposal (the primary's timestamp) to its execution on this node.",
            buckets=COMMIT_BUCKETS_S,
            registry=self.registry,
        )
        self.store_commit = Histogram(
            "ledger_store_commit_seconds",
            "One LMDB write transaction's commit, fsync included.",
            buckets=STORE_COMMIT_BUCKETS_S,
            registry=self.registry,
        )
        self._server: Any = None

    def serve(
        self, listen: str, tls: MetricsTls | None = None, refused: Callable[[str], None] | None = None
    ) -> int:
        """Serve /metrics on host:port (HTTPS when ``tls``; a daemon thread) and return the port
        (the one the kernel chose for port 0). ``refused(reason)``: a connection refused or
        broken (a bad or missing client certificate, a stalled handshake, too many)."""
        host, _, port = listen.rpartition(":")
        context = None if tls is None else tls.context()  # errors here: before binding
        server = make_server(host, int(port), make_wsgi_app(self.registry), _Server, _QuietHandler)
        assert isinstance(server, _Server)
        server.tls = context
        if refused is not None:
            server.refused = refused
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
