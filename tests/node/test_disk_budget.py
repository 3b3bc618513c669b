"""Issue 16, item 5: near its disk budget a node refuses new work with RESOURCE_EXHAUSTED, keeps
executing what was ordered, says so (health, status, event), and restarts with the same config.
(Before: a full map made every node exit with StoreFullError at the same height, and a restart
with the same config failed again.)"""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger.v1 import api_pb2, tx_pb2
from tests.node.helpers import (
    Consortium,
    envelope,
    factory_for,
    read_md,
    running_consortium,
    stub,
    submit_all,
    wait_converged,
    wait_for,
)

# The map starts at 1 MiB and may grow to 6 MiB; new work stops with 4 MiB left, so after
# about 2 MiB of blocks (a few thousand transfers).
LIMITS = {"lmdb_map_size_bytes": 1 << 20, "disk_budget_bytes": 6 << 20, "disk_reserve_bytes": 4 << 20}
BATCH = 400
BATCHES_MAX = 40


def _service_health(c: Consortium, bank: str) -> int:
    with c.channel(c.member(bank).api_address) as channel:
        request = health_pb2.HealthCheckRequest(service="ledger.v1.LedgerService")
        status: int = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status
        return status


def test_a_node_near_its_disk_budget_refuses_new_work_keeps_executing_and_restarts(tmp_path: Path) -> None:
    with running_consortium(tmp_path / "consortium", limits=LIMITS) as c:
        fx = factory_for(c)
        alice, bob = fx.client("alice"), fx.client("bob")
        submit_all(
            c, "BANK-A", [fx.open_account("BANK-A", "alice", alice), fx.open_account("BANK-B", "bob", bob)]
        )
        submit_all(c, "BANK-A", [fx.mint("USD.BANK-A", "alice", 10**9)])
        s = stub(c, "BANK-A")
        accepted: list[bytes] = []
        refusal: api_pb2.SubmitItem | None = None
        for _ in range(BATCHES_MAX):
            envs = [fx.transfer([("alice", "bob", "USD.BANK-A", 1)]) for _ in range(BATCH)]
            resp = s.SubmitBatch(
                api_pb2.SubmitBatchRequest(envelopes=[envelope(e) for e in envs]), timeout=30
            )
            ok = [i.tx_id for i in resp.items if i.accepted]
            accepted += ok
            refused = [i for i in resp.items if not i.accepted]
            if ok:  # what it took executes: every receipt comes back
                receipts = list(
                    s.WaitReceipts(api_pb2.WaitReceiptsRequest(tx_ids=ok, timeout_ms=30_000), timeout=35)
                )
                assert {r.result.tx_id for r in receipts} == set(ok)
                assert {r.result.code for r in receipts} == {tx_pb2.OK}
            if refused:
                refusal = refused[0]
                break
        assert refusal is not None, f"no refusal after {len(accepted)} transfers"
        assert refusal.status_code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "disk budget" in refusal.error
        counters = s.GetStatus(api_pb2.GetStatusRequest(), timeout=5).counters
        assert counters["disk_budget_bytes"] == LIMITS["disk_budget_bytes"]
        assert counters["disk_used_bytes"] + LIMITS["disk_reserve_bytes"] >= LIMITS["disk_budget_bytes"]
        assert counters["rejected_disk_budget"] >= 1
        wait_for(
            "LedgerService health to say NOT_SERVING",
            lambda: _service_health(c, "BANK-A") == health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        events = (c.node_dir("BANK-A") / "events.log").read_text()
        assert '"event":"disk_budget_reached"' in events
        # Nobody died: every node holds every accepted transfer, at one state root.
        height = s.GetStatus(api_pb2.GetStatusRequest(), timeout=5).last_executed
        wait_converged(c, c.banks(), height)
        # Restart with the same config: it comes back, serves reads, still takes no new work.
        c.restart("BANK-A")
        s = stub(c, "BANK-A")
        account = s.GetAccount(
            api_pb2.GetAccountRequest(account_id="bob"),
            timeout=5,
            metadata=read_md(c, "GetAccount", "bob", bob),
        )
        assert account.balances[0].available == len(accepted)
        more = fx.transfer([("alice", "bob", "USD.BANK-A", 1)])
        resp = s.SubmitBatch(api_pb2.SubmitBatchRequest(envelopes=[envelope(more)]), timeout=10)
        assert not resp.items[0].accepted and "disk budget" in resp.items[0].error
