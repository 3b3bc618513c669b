"""Over real processes (issue 18 item 4): a wiped node whose peers pruned the blocks it would
replay rejoins by snapshot (`consortium.py wipe` then `start`), checked against the certified
root, and then follows and votes like the others; with state sync switched off it stays behind
and says why."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from ledger.v1 import api_pb2, tx_pb2
from node.storage.prune import Retention
from tests.node.helpers import (
    Consortium,
    factory_for,
    primary_of,
    read_md,
    running_consortium,
    statuses,
    stub,
    submit_one,
    wait_converged,
    wait_for,
)

BANKS = ["BANK-A", "BANK-B", "BANK-C", "BANK-D"]
LIMITS = {"checkpoint_interval": 5, "log_window": 10, "view_change_timeout_ms": 1000}
KEEP_BLOCKS = 8


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    directory = tmp_path_factory.mktemp("statesync") / "consortium"
    with running_consortium(directory, limits=LIMITS, retention=Retention(blocks=KEEP_BLOCKS)) as c:
        fx = factory_for(c)
        for i in range(30):  # about one block each: far more than the peers keep
            raw = fx.open_account("BANK-A", f"acct-{i}", fx.client(f"acct-{i}"))
            assert submit_one(c, BANKS[i % 4], raw).result.code == tx_pb2.OK
        wait_for("pruning", lambda: min(s.counters["first_block"] for s in statuses(c, BANKS).values()) > 2)
        yield c


def _events(c: Consortium, bank: str, name: str) -> list[dict[str, Any]]:
    lines = (c.node_dir(bank) / "events.log").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == name]


def _set_state_sync(c: Consortium, bank: str, on: bool) -> None:
    path = c.config_path(bank)
    doc = json.loads(path.read_text())
    doc.pop("state_sync", None)
    if not on:
        doc["state_sync"] = False
    path.write_text(json.dumps(doc))


def test_a_wiped_node_rejoins_by_snapshot_and_votes_again(pruned: Consortium) -> None:
    c = pruned
    wiped = next(b for b in reversed(BANKS) if b != primary_of(c, BANKS))
    live = [b for b in BANKS if b != wiped]
    before = len(_events(c, wiped, "state_synced"))
    c.wipe(wiped)
    c.start(wiped)
    c.wait_healthy([wiped])
    synced = _events(c, wiped, "state_synced")
    assert len(synced) == before + 1, "the wiped node did not sync by snapshot"
    event = synced[-1]
    assert event["sequence"] >= 5 and event["sequence"] % 5 == 0 and event["from_height"] == 0
    assert event["leaves"] > 30 and event["results"] >= 30 and event["rejected_chunks"] == 0
    st = statuses(c, [wiped])[wiped]
    assert st.last_executed >= event["sequence"] and st.stable_checkpoint >= event["sequence"]
    # It follows the others from there: new blocks, equal state roots.
    fx = factory_for(c)
    for i in range(12):
        raw = fx.open_account("BANK-B", f"after-{i}", fx.client(f"after-{i}"))
        assert submit_one(c, live[i % 3], raw).result.code == tx_pb2.OK
    head = max(s.last_executed for s in statuses(c, live).values())
    wait_converged(c, BANKS, head)
    # And it votes again once past its vote record (it voted before it was wiped).
    for i in range(40):
        if statuses(c, [wiped])[wiped].counters["replica_abstaining"] == 0:
            break
        submit_one(c, live[i % 3], fx.open_account("BANK-C", f"more-{i}", fx.client(f"more-{i}")))
    assert statuses(c, [wiped])[wiped].counters["replica_abstaining"] == 0
    # Blocks before the snapshot are not on this node: a read says so.
    with pytest.raises(grpc.RpcError) as exc:
        stub(c, wiped).GetBlock(api_pb2.GetBlockRequest(height=1), timeout=5, metadata=read_md(c, "GetBlock"))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The account opened before the wipe is there, read from the synced state.
    acct = stub(c, wiped).GetAccount(
        api_pb2.GetAccountRequest(account_id="acct-0"), timeout=5, metadata=read_md(c, "GetAccount", "acct-0")
    )
    assert acct.account_id == "acct-0" and acct.member_id == "BANK-A"


def test_with_state_sync_off_a_wiped_node_cannot_replay_pruned_blocks_and_says_so(pruned: Consortium) -> None:
    c = pruned
    wiped = next(b for b in BANKS if b != primary_of(c, BANKS))
    c.wipe(wiped)
    _set_state_sync(c, wiped, False)
    try:
        c.start(wiped)
        c.wait_healthy([wiped])
        fx = factory_for(c)
        live = [b for b in BANKS if b != wiped]
        submit_one(c, live[0], fx.open_account("BANK-A", "later", fx.client("later")))

        def refused() -> dict[str, object] | None:
            record = next(r for r in c.status_records() if r["bank"] == wiped)
            fetch_pruned = record["fetch_pruned"]
            return record if isinstance(fetch_pruned, int) and fetch_pruned > 0 else None

        record = wait_for(f"{wiped} to be refused pruned blocks", refused)
        assert record["height"] == 0 and record["abstaining"] is True, record
        refusal = _events(c, wiped, "catch_up_pruned")[-1]
        assert "was pruned" in refusal["reason"] and "ask an archive node" in refusal["reason"]
    finally:
        _set_state_sync(c, wiped, True)
    # Switched back on, the next start syncs it.
    c.stop(wiped)
    c.start(wiped)
    c.wait_healthy([wiped])
    assert _events(c, wiped, "state_synced")
    head = max(s.last_executed for s in statuses(c, [b for b in BANKS if b != wiped]).values())
    wait_converged(c, BANKS, head)


def test_a_node_left_behind_while_running_syncs_by_snapshot_on_its_own(pruned: Consortium) -> None:
    """Paused (SIGSTOP) while the others go past what they keep, then resumed: catch-up is
    refused as pruned, so the node stops and starts over in its own process, syncing first."""
    c = pruned
    behind = next(b for b in BANKS if b != primary_of(c, BANKS))
    live = [b for b in BANKS if b != behind]
    pid = c.pid(behind)
    assert pid is not None
    restarts = len(_events(c, behind, "node_restarting"))
    synced = len(_events(c, behind, "state_synced"))
    fx = factory_for(c)
    os.kill(pid, signal.SIGSTOP)
    try:
        start = max(s.last_executed for s in statuses(c, live).values())
        for i in range(25):
            raw = fx.open_account("BANK-D", f"paused-{i}", fx.client(f"paused-{i}"))
            assert submit_one(c, live[i % 3], raw).result.code == tx_pb2.OK
        wait_for(
            "the others to prune past the paused node's head",
            lambda: min(s.counters["first_block"] for s in statuses(c, live).values()) > start + 1,
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(
        "the node to restart for state sync",
        lambda: len(_events(c, behind, "node_restarting")) > restarts,
        60,
    )
    wait_for("the node to sync by snapshot", lambda: len(_events(c, behind, "state_synced")) > synced, 60)
    assert c.pid(behind) == pid  # the same process started over
    c.wait_healthy([behind])
    head = max(s.last_executed for s in statuses(c, live).values())
    wait_converged(c, BANKS, head)
