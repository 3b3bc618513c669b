"""Over real processes: a node that catches up on blocks whose Attestation messages it never
received (its peers' queues for it overflowed while it was down) gets their f+1 attestations
from its peers in the background, without any client asking for a receipt (issue 21)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger.v1 import api_pb2, tx_pb2
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
# A short peer queue: what the peers send a down node past 16 messages is dropped, as a long
# outage drops it with the default bound; catch-up then replays blocks whose attestations it
# never got.
LIMITS = {"peer_queue_max": 16, "checkpoint_interval": 5, "log_window": 10, "view_change_timeout_ms": 1000}
MISSED_BLOCKS = 30


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    with running_consortium(tmp_path_factory.mktemp("backfill") / "consortium", limits=LIMITS) as c:
        yield c


def test_blocks_replayed_without_their_attestations_are_backfilled_in_the_background(net: Consortium) -> None:
    fx = factory_for(net)
    primary = primary_of(net, BANKS)
    backup = next(b for b in reversed(BANKS) if b != primary)
    live = [b for b in BANKS if b != backup]
    opened = submit_one(net, live[0], fx.open_account("BANK-A", "alice", fx.client("alice")))
    assert opened.result.code == tx_pb2.OK
    net.kill(backup)
    for i in range(MISSED_BLOCKS):  # one block each
        raw = fx.open_account("BANK-A", f"acct-{i}", fx.client(f"acct-{i}"))
        assert submit_one(net, live[i % len(live)], raw).result.code == tx_pb2.OK
    net.restart(backup)
    last = submit_one(net, live[0], fx.open_account("BANK-A", "after", fx.client("after")))
    top = wait_converged(net, BANKS, last.result.height)[backup].last_executed

    def incomplete() -> list[int]:
        reply = stub(net, backup).GetBlocks(
            api_pb2.GetBlocksRequest(from_height=1, max_blocks=1000),
            timeout=5,
            metadata=read_md(net, "GetBlocks"),
        )
        assert reply.next_height > top, "the range call served fewer blocks than the node has"
        return [h for h, b in enumerate(reply.blocks[:top], start=1) if not b.attestations_complete]

    wait_for(f"{backup}'s blocks to all have f+1 attestations", lambda: not incomplete())
    # Nobody asked this node for a receipt: the background backfill fetched them.
    assert statuses(net, [backup])[backup].counters["attestations_backfilled"] > 0
