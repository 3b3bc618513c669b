"""Prometheus metrics of a node (prometheus-client), served over HTTP on ``metrics_listen``.

Most figures are read from the node's own state when Prometheus scrapes (a custom collector),
so the hot path pays nothing for them; only two histograms are observed as things happen: the
commit latency (a block's primary timestamp to its execution here) and the LMDB commit time
(which includes the fsync). The HTTP server is prometheus-client's, on its own daemon thread;
the collector reads plain ints and copies of dicts, which the GIL keeps consistent enough for
monitoring. Names follow Prometheus conventions (base units, ``_total`` for counters);
README.md lists them. Who may read: whoever reaches the port, so bind it to the bank's
monitoring network (the default config binds 127.0.0.1), or put TLS in front.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Commit latency from the primary's proposal to execution here: tens of ms to seconds.
COMMIT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# An LMDB commit with fsync: well under a millisecond on a fast disk, tens of ms on a slow one.
STORE_COMMIT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


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

    def serve(self, listen: str) -> int:
        """Serve /metrics on host:port (prometheus-client's HTTP server, a daemon thread);
        returns the port (the one the kernel chose for port 0)."""
        host, _, port = listen.rpartition(":")
        self._server, _ = start_http_server(int(port), addr=host, registry=self.registry)
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
