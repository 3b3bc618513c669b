from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from node.metrics import NodeMetrics, NodeSources


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
