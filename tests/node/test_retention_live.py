"""Over real processes (issue 18 items 5 and 6): blocks pruned under a retention policy, reads of
pruned blocks refused with FAILED_PRECONDITION naming the first kept height and the retention
(a wiped node among pruned peers: tests/node/test_state_sync_live.py); an online backup restored into a running
consortium, the restored node abstaining until caught up past its vote record, then voting."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ledger.v1 import api_pb2, tx_pb2
from node.storage.prune import Retention
from tests.node.helpers import (
    Consortium,
    factory_for,
    primary_of,
    read_md,
    rpc_code,
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
    directory = tmp_path_factory.mktemp("retention") / "consortium"
    with running_consortium(directory, limits=LIMITS, retention=Retention(blocks=KEEP_BLOCKS)) as c:
        yield c


def _first_named(details: str) -> int:
    """The first kept height a refusal names (pruning goes on between two reads)."""
    found = re.search(r"keeps blocks from height (\d+) on", details)
    assert found is not None, details
    return int(found.group(1))


def _details(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("call succeeded; expected an error status")


def test_old_blocks_are_pruned_and_their_reads_say_so(pruned: Consortium) -> None:
    c = pruned
    fx = factory_for(c)
    first = submit_one(c, "BANK-A", fx.open_account("BANK-A", "alice", fx.client("alice")))
    assert first.result.code == tx_pb2.OK
    tx0 = first.result.tx_id
    for i in range(30):  # one block each
        raw = fx.open_account("BANK-A", f"acct-{i}", fx.client(f"acct-{i}"))
        assert submit_one(c, BANKS[i % 4], raw).result.code == tx_pb2.OK
    head = wait_converged(c, BANKS, 31)["BANK-A"].last_executed

    def all_pruned() -> dict[str, int] | None:
        firsts = {b: s.counters["first_block"] for b, s in statuses(c, BANKS).items()}
        return firsts if len(firsts) == 4 and min(firsts.values()) > first.result.height else None

    firsts = wait_for("every node to prune the first blocks", all_pruned)
    assert all(f <= head - KEEP_BLOCKS + 1 for f in firsts.values()), firsts  # the last 8 stay
    s = stub(c, "BANK-A")
    kept = firsts["BANK-A"]
    code, details = _details(
        lambda: s.GetBlock(api_pb2.GetBlockRequest(height=1), timeout=5, metadata=read_md(c, "GetBlock"))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert kept <= _first_named(details) <= head - KEEP_BLOCKS + 1 and "the last 8 blocks" in details, details
    code, details = _details(
        lambda: s.GetBlocks(
            api_pb2.GetBlocksRequest(from_height=1, max_blocks=10),
            timeout=5,
            metadata=read_md(c, "GetBlocks"),
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and _first_named(details) >= kept
    # GetTransaction: the ledger keeps the recorded result and the message gives it.
    md = read_md(c, "GetTransaction", tx0.hex())
    code, details = _details(
        lambda: s.GetTransaction(api_pb2.GetTransactionRequest(tx_id=tx0), timeout=5, metadata=md)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "recorded result: OK" in details and "the last 8 blocks" in details, details
    # ... and still only for a caller who may read it.
    assert (
        rpc_code(lambda: s.GetTransaction(api_pb2.GetTransactionRequest(tx_id=tx0), timeout=5))
        == grpc.StatusCode.UNAUTHENTICATED
    )
    feed = s.Feed(api_pb2.FeedRequest(from_height=1), timeout=5, metadata=read_md(c, "Feed"))
    code, details = _details(lambda: next(iter(feed)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and _first_named(details) >= kept
    # What is kept is served as before.
    reply = s.GetBlock(api_pb2.GetBlockRequest(height=head), timeout=5, metadata=read_md(c, "GetBlock"))
    assert reply.block.header


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    with running_consortium(tmp_path_factory.mktemp("backup") / "consortium", limits=LIMITS) as c:
        yield c


def test_a_node_restored_from_an_old_backup_abstains_until_caught_up_then_votes(
    archive: Consortium, tmp_path: Path
) -> None:
    c = archive
    fx = factory_for(c)
    primary = primary_of(c, BANKS)
    restored = next(b for b in reversed(BANKS) if b != primary)
    for i in range(5):
        submit_one(c, BANKS[i % 4], fx.open_account("BANK-A", f"before-{i}", fx.client(f"before-{i}")))
    info = c.backup(restored, tmp_path / "backup")  # online: the node keeps running
    assert info.height >= 1 and (tmp_path / "backup" / "backup.json").exists()
    for i in range(15):  # the restored node votes on these, after its backup
        submit_one(c, BANKS[i % 4], fx.open_account("BANK-A", f"after-{i}", fx.client(f"after-{i}")))
    c.stop(restored)
    c.restore(restored, tmp_path / "backup")
    c.start(restored)
    c.wait_healthy([restored])
    assert statuses(c, [restored])[restored].counters["replica_abstaining"] == 1
    # The others go on; it follows by certified blocks and votes again once their stable
    # checkpoint passed its vote record (its stable checkpoint + 2 windows: 20 sequences).
    i = 0

    def voting() -> bool:
        nonlocal i
        i += 1
        submit_one(c, BANKS[i % 4], fx.open_account("BANK-A", f"more-{i}", fx.client(f"more-{i}")))
        return statuses(c, [restored])[restored].counters["replica_abstaining"] == 0

    wait_for(f"{restored} to vote again", voting, timeout_s=60)
    # It votes: with another backup down, nothing commits without it.
    other = next(b for b in BANKS if b not in (primary, restored))
    c.kill(other)
    live = [b for b in BANKS if b != other]
    last = submit_one(c, primary, fx.open_account("BANK-A", "needs-it", fx.client("needs-it")), timeout_s=40)
    assert last.result.code == tx_pb2.OK
    wait_converged(c, live, last.result.height)
    c.start(other)
