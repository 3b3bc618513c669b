"""Crash faults over real processes: kill -9 a backup, the primary, and nodes at random points
under load; the rest keep committing, restarted nodes catch up (also past the checkpoint
window) to the same state root, and no peer ever receives two conflicting votes from one node."""

from __future__ import annotations

import functools
import random
import threading
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

from client.verify import verify_receipt
from ledger.v1 import api_pb2, tx_pb2
from sim.factory import Factory
from tests.node.helpers import (
    Consortium,
    factory_for,
    primary_of,
    read_md,
    running_consortium,
    statuses,
    stub,
    submit_all,
    submit_one,
    tx_id,
    wait_converged,
    wait_for,
)

BANKS = ["BANK-A", "BANK-B", "BANK-C", "BANK-D"]
# Short timers and a small window so view changes are quick and a node down for a while has
# to catch up past the checkpoint window (fetching certified blocks, not replaying the log).
LIMITS = {"view_change_timeout_ms": 1000, "checkpoint_interval": 5, "log_window": 10, "batch_size_max": 50}
CONFLICT_COUNTERS = ("replica_conflicting_vote", "replica_equivocation")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    with running_consortium(tmp_path_factory.mktemp("faults") / "consortium", limits=LIMITS) as c:
        yield c


@pytest.fixture(scope="module")
def fx(net: Consortium) -> Factory:
    fx = factory_for(net)
    submit_all(
        net,
        "BANK-B",
        [
            fx.open_account("BANK-A", "alice", fx.client("alice")),
            fx.open_account("BANK-B", "bob", fx.client("bob")),
        ],
    )
    assert submit_one(net, "BANK-B", fx.mint("USD.BANK-A", "alice", 10**9)).result.code == tx_pb2.OK
    return fx


def pay(fx: Factory, count: int) -> list[bytes]:
    return [fx.transfer([("alice", "bob", "USD.BANK-A", 1)]) for _ in range(count)]


def conflict_counts(net: Consortium, banks: list[str]) -> Counter[str]:
    total: Counter[str] = Counter()
    for st in statuses(net, banks).values():
        for name in CONFLICT_COUNTERS:
            total[name] += st.counters[name]
    return total


def test_kill_backup_keeps_committing(net: Consortium, fx: Factory) -> None:
    primary = primary_of(net, BANKS)
    backup = next(b for b in reversed(BANKS) if b != primary)
    net.kill(backup)
    live = [b for b in BANKS if b != backup]
    receipts = submit_all(net, live[0], pay(fx, 30))
    assert {r.result.code for r in receipts} == {tx_pb2.OK}
    top = max(r.result.height for r in receipts)
    wait_converged(net, live, top)
    net.restart(backup)
    # Traffic after the restart shows it the commits it missed; it fetches and catches up.
    receipts = submit_all(net, live[1], pay(fx, 5))
    wait_converged(net, BANKS, max(r.result.height for r in receipts))


def test_kill_primary_view_change_then_restart_catches_up_past_the_window(
    net: Consortium, fx: Factory
) -> None:
    primary = primary_of(net, BANKS)
    before = statuses(net, [primary])[primary]
    net.kill(primary)
    live = [b for b in BANKS if b != primary]
    receipts = submit_all(net, live[0], pay(fx, 20))
    assert {r.result.code for r in receipts} == {tx_pb2.OK}
    new_primary = primary_of(net, live)
    assert new_primary != primary
    assert sum(s.view > before.view for s in statuses(net, live).values()) >= net.genesis().quorum
    # More than log_window blocks while it is down: one transaction per block.
    missed = pay(fx, 2 * LIMITS["log_window"] + 3)
    for raw in missed:
        assert submit_one(net, live[1], raw).result.code == tx_pb2.OK
    net.restart(primary)
    receipts = submit_all(net, live[2], pay(fx, 5))
    sts = wait_converged(net, BANKS, max(r.result.height for r in receipts))
    # It missed more blocks than the log window holds: replaying peers' logs could not have
    # brought it here, only verified certified blocks could.
    assert sts[primary].last_executed - before.last_executed > LIMITS["log_window"]
    # It serves verifiable receipts for blocks it replayed (attestations from peers).
    receipt = submit_one(net, primary, missed[0])
    verify_receipt(net.genesis(), receipt, tx_id(missed[0]))
    assert sum(conflict_counts(net, BANKS).values()) == 0


class Load:
    """Transfers submitted in a background thread to whichever live node answers."""

    def __init__(self, net: Consortium, fx: Factory) -> None:
        self.net, self.fx = net, fx
        self.stop = threading.Event()
        self.committed = 0
        self.errors = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            bank = BANKS[i % len(BANKS)]
            i += 1
            with self.lock:
                envs = pay(self.fx, 10)
            try:
                receipts = submit_all(self.net, bank, envs, timeout_s=5)
                self.committed += len(receipts)
            except (grpc.RpcError, AssertionError):
                self.errors += 1  # that node is down or slow right now: try the next one

    def progressed(self, since: int) -> bool:
        return self.committed > since

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def test_kill9_at_random_points_never_yields_conflicting_votes(net: Consortium, fx: Factory) -> None:
    rng = random.Random(4)
    conflicts: Counter[str] = Counter()
    with Load(net, fx) as load:
        for _ in range(6):
            victim = rng.choice(BANKS)
            wait_for(
                "load to make progress", functools.partial(load.progressed, load.committed), timeout_s=30
            )
            # A random point in the replica's work: the next kill lands after a random number
            # of our own (blocking) status round trips, while the load thread keeps committing.
            for _ in range(rng.randrange(1, 20)):
                net.node_status(victim)
            conflicts += conflict_counts(net, [b for b in BANKS if b != victim])
            net.kill(victim)
            net.restart(victim)
        wait_for(
            "progress after the last restart",
            functools.partial(load.progressed, load.committed),
            timeout_s=30,
        )
    receipts = submit_all(net, "BANK-C", pay(fx, 5))
    wait_converged(net, BANKS, max(r.result.height for r in receipts), timeout_s=30)
    conflicts += conflict_counts(net, BANKS)
    assert sum(conflicts.values()) == 0, conflicts
    assert load.committed > 0
    balances = {
        b: stub(net, b)
        .GetAccount(
            api_pb2.GetAccountRequest(account_id="bob"),
            timeout=5,
            metadata=read_md(net, "GetAccount", "bob", fx.client("bob")),
        )
        .SerializeToString()
        for b in BANKS
    }
    assert len(set(balances.values())) == 1
