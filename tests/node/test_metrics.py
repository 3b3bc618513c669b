from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledger import pki
from node.metrics import CONNECTION_TIMEOUT_S, MetricsTls, NodeMetrics, NodeSources


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_are_read_at_scrape_time_under_prometheus_names() -> None:
    state = {"height": 7, "blocks": 3}
    results = {"OK": 10}
    metrics = NodeMetrics(
        NodeSources(
            height=lambda: state["height"],
            replica=lambda: {"view": 2, "in_view_change": 0, "stable_checkpoint": 50},
            blocks=lambda: state["blocks"],
            results=lambda: dict(results),
            peers_up=lambda: 3,
            peers=3,
            pending=lambda: 4,
            queue=lambda: {"events_queued": 5, "event_bytes_queued": 600},
            store=lambda: {"disk_used_bytes": 1000, "disk_budget_bytes": 9000},
            counters=lambda: {"note_view_change": 1, "rejected_MISSING_SIGNATURE": 2},
        )
    )
    port = metrics.serve("127.0.0.1:0")
    try:
        before = _scrape(port)
        assert before[("ledger_height", ())] == 7
        assert before[("ledger_view", ())] == 2
        assert before[("ledger_transactions_total", (("result", "OK"),))] == 10
        assert before[("ledger_view_changes_total", ())] == 1
        assert before[("ledger_store_used_bytes", ())] == 1000
        assert before[("ledger_store_budget_bytes", ())] == 9000
        assert before[("ledger_node_events_total", (("name", "rejected_MISSING_SIGNATURE"),))] == 2
        state["height"], state["blocks"] = 8, 4
        results["OK"], results["UNKNOWN_ACCOUNT"] = 12, 1
        metrics.commit_latency.observe(0.03)
        after = _scrape(port)
        assert after[("ledger_height", ())] == 8 and after[("ledger_blocks_total", ())] == 4
        assert after[("ledger_transactions_total", (("result", "UNKNOWN_ACCOUNT"),))] == 1
        assert after[("ledger_commit_latency_seconds_count", ())] == 1
        assert after[("ledger_commit_latency_seconds_bucket", (("le", "0.05"),))] == 1
    finally:
        metrics.close()


def _sources() -> NodeSources:
    return NodeSources(
        height=lambda: 1,
        replica=lambda: {},
        blocks=lambda: 1,
        results=lambda: {},
        peers_up=lambda: 0,
        peers=3,
        pending=lambda: 0,
        queue=lambda: {},
        store=lambda: {},
        counters=lambda: {},
    )


def test_https_metrics_need_the_banks_client_certificate_and_a_stalled_handshake_blocks_nobody(
    tmp_path: Path,
) -> None:
    ca, other_ca = pki.make_ca("BANK-A"), pki.make_ca("BANK-B")
    node = pki.issue_node_cert(ca, "BANK-A", ("127.0.0.1",))
    for name, data in (("ca.pem", ca.cert_pem), ("node.pem", node.cert_pem), ("node-key.pem", node.key_pem)):
        (tmp_path / name).write_bytes(data)
    refused: list[str] = []
    metrics = NodeMetrics(_sources())
    port = metrics.serve(
        "127.0.0.1:0",
        MetricsTls(tmp_path / "node.pem", tmp_path / "node-key.pem", tmp_path / "ca.pem"),
        refused.append,
    )
    url = f"https://127.0.0.1:{port}/metrics"

    def context(issuer: pki.Issued | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        if issuer is not None:
            client = pki.issue_client_cert(issuer, "monitoring")
            (tmp_path / "c.pem").write_bytes(client.cert_pem)
            (tmp_path / "c-key.pem").write_bytes(client.key_pem)
            ctx.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "c-key.pem"))
        return ctx

    try:
        # A client that connects and never shakes hands holds one connection thread, not the
        # server: a real scrape right after it is served at once.
        stalled = socket.create_connection(("127.0.0.1", port))
        started = time.monotonic()
        with urllib.request.urlopen(url, timeout=5, context=context(ca)) as resp:
            assert b"ledger_height 1.0" in resp.read()
        assert time.monotonic() - started < CONNECTION_TIMEOUT_S / 2
        for issuer in (None, other_ca):
            with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
                urllib.request.urlopen(url, timeout=5, context=context(issuer)).read()
        stalled.close()
        deadline = time.monotonic() + 10
        while len(refused) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(refused) == [  # the stalled client's close ends its handshake: an EOF
            "tls_certificate_verify_failed",
            "tls_peer_did_not_return_a_certificate",
            "tls_unexpected_eof_while_reading",
        ]
    finally:
        metrics.close()
