#!/usr/bin/env python3
"""Chaos run: kill nodes under load, then prove nothing acknowledged was lost and all agree.

Starts a local consortium, opens accounts at every bank, mints every asset into them, and runs
a continuous load of transfers, payment-versus-payment and escrows from several client
processes through the SDK. Each client records every transaction it submitted and what it was
told. Meanwhile, fault rounds chosen by --seed: SIGKILL of a backup, of the primary, of f nodes
at once, of a node during a view change, of every node during a view change, SIGSTOP/SIGCONT,
and one node restarted many times in a row. Apart from the kill of every node, never more than
f nodes are down or paused at once; each is brought back after a random delay. Then the load
stops, the nodes settle, and scripts/audit.py checks them without trusting their own claims:
every acknowledged transaction present everywhere with its result (lost), no id executed twice
(duplicated), identical chains (divergent_nodes), conservation per asset.

Throughout the rounds every node's view is sampled: isolated_s_max is the longest any live node
spent in another view (or view-change state) than most live nodes, and past ISOLATED_S_MAX the
run fails (issue 21: a node back alone in the view it had asked for stayed there for minutes).

With --netns every node runs in its own network namespace with its own IP on a bridge
(scripts/netns.py), over mutual TLS, and the rounds also draw network faults: isolate one node
(its link down), partition the members into two groups (blackhole routes between them; the load
clients, in the root namespace, reach both), and a slow link (tc netem delay and loss where the
kernel has sch_netem, else tc tbf rate limiting; the JSON says which). During a fault that leaves
2f+1 members connected the others must go on committing (recovery_s, as for crashes); after the
heal, recovery_s_by_kind times how long until every node is back at the height the cluster had
reached and commits resume.

    scripts/chaos.py --rounds 20 --banks 4 --netns --json

Every fault is also written, as it happens, to faults.log in the work dir: one JSON line per
kill, start, SIGSTOP and SIGCONT, with ts_ms on the same wall clock as the nodes' events.log
lines, so a slow round can be read as one timeline: scripts/timeline.py --dir D --round N.

    scripts/chaos.py --rounds 30 --banks 4 --seed 7 --json

Exit status 0 when every check passes, 1 when one fails, 2 when the run could not be made.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from audit import audit  # noqa: E402
from consortium import Consortium, ConsortiumError, bank_name, exit_cleanly_on_sigterm  # noqa: E402
from netns import Netns, NetnsError  # noqa: E402

from client.models import Committed, Indefinite  # noqa: E402
from client.sdk import LedgerClient  # noqa: E402
from client.tx import LegSpec  # noqa: E402
from ledger.crypto import SigningKey, load_key  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.v1 import api_pb2, api_pb2_grpc  # noqa: E402

PROGRESS_TIMEOUT_S = 30.0  # a fault after which nothing commits for this long fails the run
VIEW_CHANGE_START_WAIT_S = 10.0  # several view-change timeouts
SETTLE_TIMEOUT_S = 60.0
ISOLATED_S_MAX = 10.0  # a live node longer than this in another view than most fails the run
VIEW_SAMPLE_EVERY_S = 0.25
START_ATTEMPTS_MAX = 5
INITIAL_MINOR = 1_000_000_00


def log(msg: str) -> None:
    print(msg, flush=True)


# --- load: client processes -----------------------------------------------------------------


@dataclass(frozen=True)
class ClientPlan:
    index: int
    genesis_path: str
    insecure: bool  # plaintext nodes (--insecure)
    seed: int
    own: tuple[tuple[str, str], ...]  # (account_id, owner seed hex) this client signs for
    everyone: tuple[str, ...]  # every account id (transfer targets)
    assets: tuple[str, ...]
    out_path: str


def client_main(plan: ClientPlan, stop: EventType) -> None:
    """One load client: random transfers, PvPs and escrows until stop is set; one JSON line
    per submitted transaction: {"tx", "kind", "outcome", "code"}."""
    rng = random.Random(plan.seed)
    keys = {acct: SigningKey(bytes.fromhex(seed)) for acct, seed in plan.own}
    own = sorted(keys)
    client = LedgerClient(
        plan.genesis_path, timeout_s=15.0, call_timeout_s=2.0, receipt_wait_s=3.0, insecure=plan.insecure
    )
    escrow_n = 0
    with open(plan.out_path, "w") as out:

        def record(kind: str, tx_id: bytes, outcome: object) -> None:
            if isinstance(outcome, Committed):
                row: dict[str, Any] = {"outcome": "committed", "code": outcome.result.code}
            elif isinstance(outcome, Indefinite):
                row = {"outcome": "indefinite", "code": None}
            else:
                row = {"outcome": "rejected", "code": None}
            out.write(json.dumps({"tx": tx_id.hex(), "kind": kind, **row}) + "\n")
            out.flush()

        while not stop.is_set():
            roll = rng.random()
            src = rng.choice(own)
            asset = rng.choice(plan.assets)
            amount = rng.randint(1, 500_00)
            if roll < 0.6 or len(own) < 2:
                dst = rng.choice([a for a in plan.everyone if a != src])
                tx = client.tx.transfer([LegSpec(src, dst, asset, amount)]).signed_by(keys[src])
                record("transfer", tx.tx_id, client.submit(tx))
            elif roll < 0.8:
                other = rng.choice([a for a in own if a != src])
                asset2 = rng.choice([a for a in plan.assets if a != asset] or [asset])
                legs = [
                    LegSpec(src, other, asset, amount),
                    LegSpec(other, src, asset2, rng.randint(1, 500_00)),
                ]
                tx = client.tx.transfer(legs).signed_by(keys[src], keys[other])
                record("pvp", tx.tx_id, client.submit(tx))
            else:
                escrow_n += 1
                escrow_id = f"c{plan.index}-e{escrow_n}-{rng.getrandbits(32):08x}"
                dst = rng.choice([a for a in plan.everyone if a != src])
                expires = int(time.time() * 1000) + rng.randint(500, 5000)
                tx = client.tx.escrow_create(escrow_id, LegSpec(src, dst, asset, amount), expires).signed_by(
                    keys[src]
                )
                outcome = client.submit(tx)
                record("escrow_create", tx.tx_id, outcome)
                if isinstance(outcome, Committed) and outcome.ok and rng.random() < 0.7:
                    if rng.random() < 0.6:
                        follow = client.tx.escrow_post(escrow_id, rng.randint(1, amount))
                    else:
                        follow = client.tx.escrow_void(escrow_id)
                    follow = follow.signed_by(keys[src])
                    record("escrow_settle", follow.tx_id, client.submit(follow))
    client.close()


# --- views ---------------------------------------------------------------------------------


ViewState = tuple[int, bool]  # (view, in view change)


class IsolationWatch:
    """Samples every node's view in a thread: worst_s is the longest any live node (one that
    answers GetStatus) spent in another view state than most live nodes (none when two states
    tie: a view change in flight)."""

    def __init__(self, addresses: Mapping[str, str], dial: Callable[[str], grpc.Channel]) -> None:
        self.addresses = dict(addresses)
        self._dial = dial  # Consortium.channel: TLS unless the consortium runs plaintext
        self.worst_s = 0.0
        self.worst = ""
        self._since: dict[str, float] = {}
        # banks under a network fault, not counted until healed (replaced, never mutated: the
        # sampling thread reads it)
        self.exempt: frozenset[str] = frozenset()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="isolation-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def sample(self, states: Mapping[str, ViewState], now: float) -> None:
        top = Counter(states.values()).most_common(2)
        tie = len(top) == 2 and top[0][1] == top[1][1]
        most = top[0][0] if top and not tie else None
        exempt = self.exempt
        for bank in self.addresses:
            state = states.get(bank)
            if state is None or most is None or state == most or bank in exempt:
                self._since.pop(bank, None)
                continue
            took = now - self._since.setdefault(bank, now)
            if took > self.worst_s:
                self.worst_s = took
                self.worst = f"{bank} in (view, changing) {state} while most were in {most}"

    def _state(self, address: str) -> ViewState | None:
        with self._dial(address) as channel:
            try:
                st = api_pb2_grpc.LedgerServiceStub(channel).GetStatus(
                    api_pb2.GetStatusRequest(), timeout=0.5
                )
            except grpc.RpcError:
                return None  # down or paused: not live
        return int(st.view), bool(st.in_view_change)

    def _run(self) -> None:
        while not self._stop.wait(VIEW_SAMPLE_EVERY_S):  # the sampling period
            states = {b: st for b, a in self.addresses.items() if (st := self._state(a)) is not None}
            self.sample(states, time.monotonic())


# --- faults -------------------------------------------------------------------------------


@dataclass
class Stats:
    recovery_s: list[float] = field(default_factory=list)
    catchup_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    healed_s: dict[str, list[float]] = field(default_factory=dict)  # network fault kind -> heal to caught up


class Chaos:
    def __init__(
        self,
        c: Consortium,
        genesis: Genesis,
        rng: random.Random,
        stats: Stats,
        faults_log: Path,
        net: Netns | None = None,
        watch: IsolationWatch | None = None,
    ) -> None:
        self.c = c
        self.g = genesis
        self.rng = rng
        self.stats = stats
        self.banks = [m.member_id for m in genesis.members]
        self.faults_log = faults_log
        self.round_no = 0
        self.net = net
        self.watch = watch

    def fault(self, action: str, bank: str) -> None:
        """Do one fault action to a node ("kill", "start", "stop", "cont") and journal it;
        "exited" only journals that a node we started died during its start-up."""
        if action == "kill":
            self.c.kill(bank)
        elif action == "start":
            self.c.start(bank)
        elif action != "exited":
            pid = self.c.pid(bank)
            assert pid is not None, f"{bank} should be running"
            os.kill(pid, signal.SIGSTOP if action == "stop" else signal.SIGCONT)
        self.journal(action, bank)

    def journal(self, action: str, bank: str) -> None:
        line = {"ts_ms": int(time.time() * 1000), "round": self.round_no, "action": action, "bank": bank}
        with self.faults_log.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def heights(self) -> dict[str, int]:
        return {b: int(st.last_executed) for b, st in self.statuses().items()}

    def statuses(self) -> dict[str, api_pb2.NodeStatus]:
        """Status of every running node that answers (a paused one does not)."""
        out = {}
        for b in self.banks:
            st = self.c.node_status(b, timeout_s=0.5) if self.c.pid(b) is not None else None
            if st is not None:
                out[b] = st
        return out

    @staticmethod
    def active_view(statuses: Mapping[str, api_pb2.NodeStatus]) -> int:
        """The view the consortium commits in: the one most nodes not changing views report (a
        node can sit alone in a higher view change for a while)."""
        settled = Counter(int(s.view) for s in statuses.values() if not s.in_view_change)
        every = Counter(int(s.view) for s in statuses.values())
        votes = settled or every
        return votes.most_common(1)[0][0] if votes else 0

    def primary(self) -> str:
        return self.banks[self.active_view(self.statuses()) % self.g.n]

    def wait_progress(self, above: int, what: str) -> float | None:
        """Seconds until some live node executes past height `above`; None on timeout."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < PROGRESS_TIMEOUT_S:
            if max(self.heights().values(), default=0) > above:
                return time.monotonic() - t0
            time.sleep(0.05)
        self.stats.failures.append(f"no commit for {PROGRESS_TIMEOUT_S:.0f}s after {what}")
        return None

    def view_and_height(self) -> tuple[int, int]:
        """The active view and the highest height any live node reports."""
        st = self.statuses()
        return self.active_view(st), max((int(s.last_executed) for s in st.values()), default=0)

    def wait_new_view_commit(self, above_view: int, what: str) -> float | None:
        """Seconds until a block commits in a view above `above_view`. Blocks the old primary
        had already got prepared may still commit right after it dies; they prove nothing
        about recovery, so progress counts only once the active view has moved on."""
        t0 = time.monotonic()
        seen_height: int | None = None
        while time.monotonic() - t0 < PROGRESS_TIMEOUT_S:
            view, height = self.view_and_height()
            if seen_height is None and view > above_view:
                seen_height = height
            elif seen_height is not None and height > seen_height:
                return time.monotonic() - t0
            time.sleep(0.05)
        self.stats.failures.append(f"no commit in a new view for {PROGRESS_TIMEOUT_S:.0f}s after {what}")
        return None

    def start_all(self) -> None:
        """Start every node (all are down) and wait until each serves. One whose port another
        process holds exits at start-up (node ports come from the ephemeral range: issue 21,
        item 3), most likely when every port is free at once: it is started again."""
        for b in self.banks:
            self.fault("start", b)
        for _ in range(START_ATTEMPTS_MAX):
            try:
                self.c.wait_healthy(self.banks)
                return
            except ConsortiumError as exc:
                log(f"  note: {str(exc).splitlines()[0]}; starting it again")
                for b in self.banks:
                    if self.c.pid(b) is None:
                        self.fault("exited", b)
                        self.fault("start", b)
        self.stats.failures.append(f"not every node started after {START_ATTEMPTS_MAX} attempts")

    def wait_one_view(self, timeout_s: float) -> bool:
        """Whether every node came to report one view, not changing views, within timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = self.statuses()
            views = {s.view for s in st.values()}
            if (
                len(st) == len(self.banks)
                and len(views) == 1
                and not any(s.in_view_change for s in st.values())
            ):
                return True
            time.sleep(0.1)
        return False

    def wait_view_change_start(self) -> dict[str, int] | None:
        """The live nodes changing views and the view each is changing to, as soon as one is
        (None if none starts within VIEW_CHANGE_START_WAIT_S)."""
        deadline = time.monotonic() + VIEW_CHANGE_START_WAIT_S
        while time.monotonic() < deadline:
            changing = {b: int(s.view) for b, s in self.statuses().items() if s.in_view_change}
            if changing:
                return changing
            time.sleep(0.02)
        return None

    def bring_back(self, bank: str) -> None:
        """Restart a killed node and time its catch-up to the others' height at restart."""
        target = max(self.heights().values(), default=0)
        t0 = time.monotonic()
        self.fault("start", bank)
        while time.monotonic() - t0 < PROGRESS_TIMEOUT_S:
            st = self.c.node_status(bank, timeout_s=0.5)
            if st is not None and st.last_executed >= target:
                self.stats.catchup_s.append(time.monotonic() - t0)
                return
            time.sleep(0.05)
        self.stats.failures.append(f"{bank} did not catch up to {target} within {PROGRESS_TIMEOUT_S:.0f}s")

    def kill_then_recover(self, victims: list[str], what: str) -> None:
        primary = self.primary()
        v0, h0 = self.view_and_height()
        t_fault = time.monotonic()
        for v in victims:
            self.fault("kill", v)
        took = self.wait_new_view_commit(v0, what) if primary in victims else self.wait_progress(h0, what)
        if took is not None:
            self.stats.recovery_s.append(time.monotonic() - t_fault)
        time.sleep(self.rng.uniform(0.2, 1.5))  # the random outage length is the point here
        for v in victims:
            self.bring_back(v)

    def network_round(self, kind: str) -> str:
        """One network fault (scripts/netns.py), held a random while, then healed. While it
        lasts, if 2f+1 members can still reach each other they must go on committing (a new
        view first, if the primary is cut off); after the heal every node must be back at the
        height the cluster had reached, with commits going on."""
        net = self.net
        assert net is not None
        index = {b: i for i, b in enumerate(self.banks)}
        primary = self.primary()
        v0, h0 = self.view_and_height()
        quorum = 2 * self.g.f + 1
        if kind == "partition":
            a = sorted(self.rng.sample(self.banks, self.rng.randint(1, self.g.n // 2)), key=index.__getitem__)
            b = [x for x in self.banks if x not in a]
            net.partition([index[x] for x in a], [index[x] for x in b])
            target = f"{','.join(a)}|{','.join(b)}"
            connected = b if len(b) >= quorum else []
        else:
            victim = self.rng.choice(self.banks)
            (net.isolate if kind == "isolate" else net.slow)(index[victim])
            target = victim
            a = [victim]
            connected = [x for x in self.banks if x != victim]
        cut_off = [x for x in self.banks if x not in connected] if kind != "slow_link" else a
        self.journal(kind, target)
        t_fault = time.monotonic()
        if self.watch is not None:
            self.watch.exempt = frozenset(cut_off)
        hold_s = self.rng.uniform(2.0, 5.0)
        try:
            if connected:
                what = f"{kind} {target}"
                if primary in cut_off and kind != "slow_link":
                    took = self.wait_new_view_commit(v0, what)
                else:
                    took = self.wait_progress(h0, what)
                if took is not None:
                    self.stats.recovery_s.append(took)
            time.sleep(max(0.0, t_fault + hold_s - time.monotonic()))  # the outage length is the point
        finally:
            _, h_heal = self.view_and_height()
            net.heal()
            self.journal("heal", target)
            t_heal = time.monotonic()
            if self.watch is not None:
                self.watch.exempt = frozenset()  # alone in a view from now on counts
        while time.monotonic() - t_heal < PROGRESS_TIMEOUT_S:
            h = self.heights()
            if len(h) == len(self.banks) and min(h.values()) >= h_heal and max(h.values()) > h_heal:
                self.stats.healed_s.setdefault(kind, []).append(time.monotonic() - t_heal)
                return target
            time.sleep(0.05)
        self.stats.failures.append(
            f"{kind} {target}: not every node back at height {h_heal} with commits going on "
            f"{PROGRESS_TIMEOUT_S:.0f}s after the heal"
        )
        return target

    def round(self, kind: str) -> str:
        if kind in NETWORK_FAULTS:
            return self.network_round(kind)
        primary = self.primary()
        backups = [b for b in self.banks if b != primary]
        if kind == "kill_backup":
            victim = self.rng.choice(backups)
            self.kill_then_recover([victim], f"killing backup {victim}")
            return victim
        if kind == "kill_primary":
            self.kill_then_recover([primary], f"killing primary {primary}")
            return primary
        if kind == "kill_f":
            victims = self.rng.sample(self.banks, self.g.f)
            self.kill_then_recover(victims, f"killing {victims}")
            return ",".join(victims)
        if kind == "kill_in_view_change":
            # Kill the primary; once a node is changing views, bring the old primary back and kill
            # the replica that would lead the view being changed to, so the view change itself is
            # interrupted.
            v0, h_kill = self.view_and_height()
            self.fault("kill", primary)
            changing = self.wait_view_change_start()
            if changing is None:
                # The cluster went on committing: the node most peers named was not (or no
                # longer) the primary. Not a failure of the ledger; say so and go on.
                log(f"  note: no view change within {VIEW_CHANGE_START_WAIT_S:.0f}s of killing {primary}")
                if max(self.heights().values(), default=0) <= h_kill:
                    self.stats.failures.append(f"no view change and no commit after killing {primary}")
                self.bring_back(primary)
                return f"{primary} (no view change)"
            designate = self.banks[max(changing.values()) % self.g.n]
            self.bring_back(primary)
            # Recovery here is the plain measure, fault to next committed batch: which view
            # the cluster settles in depends on races (the restarted old primary may simply resume
            # its view if the others had not yet moved), so no view is assumed.
            _, h_now = self.view_and_height()
            t_fault = time.monotonic()
            if designate != primary:
                self.fault("kill", designate)
            took = self.wait_progress(h_now, "a kill during a view change")
            if took is not None:
                self.stats.recovery_s.append(time.monotonic() - t_fault)
            if designate != primary:
                time.sleep(self.rng.uniform(0.2, 1.0))
                self.bring_back(designate)
            return f"{primary}->{designate}"
        if kind == "kill_all_in_view_change":
            # Issue 21: kill the primary, then every other node as soon as one reports a view
            # change, then start them all. The one that had asked for the next view comes back
            # there from its journal, maybe alone; the others may go on under the old primary.
            self.fault("kill", primary)
            changing = self.wait_view_change_start()
            if changing is None:
                log(f"  note: no view change within {VIEW_CHANGE_START_WAIT_S:.0f}s of killing {primary}")
                self.bring_back(primary)
                return f"{primary} (no view change)"
            for b in backups:
                self.fault("kill", b)
            self.start_all()
            _, h_now = self.view_and_height()
            t_restart = time.monotonic()
            if self.wait_progress(h_now, "killing every node during a view change") is not None:
                self.stats.recovery_s.append(time.monotonic() - t_restart)
            # No fault until every node is back in one view (bounded): the next one would end a
            # node's time alone and hide it (a lone node in view v+1 joins when the others leave
            # view v), which is how the chaos runs missed it.
            if not self.wait_one_view(ISOLATED_S_MAX + 5):
                log(f"  note: not in one view {ISOLATED_S_MAX + 5:.0f}s after restarting every node")
            return f"all; changing {','.join(sorted(changing))}"
        if kind == "pause":
            victim = self.rng.choice(self.banks)
            v0, h0 = self.view_and_height()
            t_fault = time.monotonic()
            self.fault("stop", victim)
            try:
                if victim == primary:
                    took = self.wait_new_view_commit(v0, f"pausing primary {victim}")
                else:
                    took = self.wait_progress(h0, f"pausing {victim}")
                if took is not None:
                    self.stats.recovery_s.append(time.monotonic() - t_fault)
                time.sleep(self.rng.uniform(0.5, 2.0))
            finally:
                self.fault("cont", victim)
            return victim
        if kind == "restart_loop":
            victim = self.rng.choice(self.banks)
            for _ in range(5):
                self.fault("kill", victim)
                self.fault("start", victim)
                self.c.wait_healthy([victim])
            self.fault("kill", victim)
            self.bring_back(victim)
            return victim
        raise ValueError(kind)


FAULTS = (
    "kill_backup",
    "kill_primary",
    "kill_f",
    "kill_in_view_change",
    "pause",
    "restart_loop",
    "kill_all_in_view_change",
)
NETWORK_FAULTS = ("isolate", "partition", "slow_link")  # with --netns only


# --- the run ------------------------------------------------------------------------------


def setup_accounts(
    c: Consortium, genesis: Genesis, per_bank: int, tag: str = "acct"
) -> list[tuple[str, str]]:
    """Open per_bank accounts at every bank and mint every asset into each; (id, seed hex).
    Account ids are <bank>-<tag>-<i>: a run on an existing consortium passes a fresh tag."""
    client = LedgerClient(genesis, timeout_s=30.0, insecure=c.insecure)
    accounts: list[tuple[str, str]] = []
    operators = {m.member_id: load_key(c.operator_key_path(m.member_id)).key for m in genesis.members}
    try:
        for m in genesis.members:
            for i in range(per_bank):
                owner = SigningKey.generate()
                account_id = f"{m.member_id.lower()}-{tag}-{i}"
                tx = client.tx.open_account(m.member_id, account_id, owner.public_key)
                _expect_ok(client.submit(tx.signed_by(operators[m.member_id])), f"open {account_id}")
                accounts.append((account_id, owner.seed.hex()))
        for asset in genesis.assets:
            for account_id, _ in accounts:
                tx = client.tx.mint(asset.asset, account_id, INITIAL_MINOR, f"dep-{account_id}-{asset.asset}")
                _expect_ok(client.submit(tx.signed_by(operators[asset.issuer])), f"mint {asset.asset}")
    finally:
        client.close()
    return accounts


def _expect_ok(outcome: object, what: str) -> None:
    if not (isinstance(outcome, Committed) and outcome.ok):
        raise RuntimeError(f"setup step failed: {what}: {outcome}")


def settle(chaos: Chaos) -> bool:
    """Wait until every node reports the same height, unchanged for a second."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last: dict[str, int] = {}
    since = time.monotonic()
    while time.monotonic() < deadline:
        h = chaos.heights()
        if h != last:
            last, since = h, time.monotonic()
        elif len(h) == len(chaos.banks) and len(set(h.values())) == 1 and time.monotonic() - since > 1.0:
            return True
        time.sleep(0.1)
    return False


def fault_kinds(args: argparse.Namespace, net: Netns | None) -> tuple[list[str], str | None]:
    """The kinds the rounds draw from (--faults, else every kind this run can do), and what was
    left out for want of a kernel feature."""
    kinds = list(FAULTS) + (list(NETWORK_FAULTS) if net is not None else [])
    skipped = None
    if net is not None and net.slow_link_mechanism is None:
        kinds.remove("slow_link")
        skipped = f"slow_link skipped: {net.netem_missing} and no sch_tbf either"
    if args.faults:
        kinds = [k for k in args.faults.split(",") if k in kinds]  # checked by main()
    if not kinds:
        raise NetnsError(f"no fault kind left to draw from ({skipped})")
    return kinds, skipped


def summary(values: list[float]) -> dict[str, float | int]:
    return {"n": len(values), "p50": round(statistics.median(values), 2), "max": round(max(values), 2)}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with Netns(args.banks) if args.netns else contextlib.nullcontext() as net:  # removed on any exit
        return run_on(args, workdir, net)


def run_on(args: argparse.Namespace, workdir: Path, net: Netns | None) -> dict[str, Any]:
    rng = random.Random(args.seed)
    hosts = None if net is None else [net.address(i) for i in range(args.banks)]
    launcher = None
    if net is not None:
        spaces = {bank_name(i): net.exec_prefix(i) for i in range(args.banks)}
        launcher = spaces.__getitem__
    c = Consortium(workdir / "consortium", launcher=launcher)
    procs: list[SpawnProcess] = []
    stop = mp.get_context("spawn").Event()
    stats = Stats()
    started = time.monotonic()
    watch: IsolationWatch | None = None
    kinds, skipped = fault_kinds(args, net)
    try:
        c.up(banks=args.banks, insecure=args.insecure, hosts=hosts)
        genesis = c.genesis()
        where = "127.0.0.1" if net is None else f"namespaces {net.tag}-*, {net.subnet}"
        log(f"chaos: {args.banks} banks up in {c.dir} ({where}); seed {args.seed}; faults {','.join(kinds)}")
        if skipped:
            log(f"chaos: {skipped}")
        accounts = setup_accounts(c, genesis, args.accounts_per_bank)
        log(f"chaos: {len(accounts)} accounts open and funded")
        everyone = tuple(a for a, _ in accounts)
        ctx = mp.get_context("spawn")
        for k in range(args.clients):
            plan = ClientPlan(
                index=k,
                genesis_path=str(c.genesis_path),
                insecure=c.insecure,
                seed=rng.getrandbits(32),
                own=tuple(accounts[k :: args.clients]),
                everyone=everyone,
                assets=tuple(a.asset for a in genesis.assets),
                out_path=str(workdir / f"client-{k}.jsonl"),
            )
            proc = ctx.Process(target=client_main, args=(plan, stop), daemon=True)
            proc.start()
            procs.append(proc)
        watch = IsolationWatch({m.member_id: m.api_address for m in genesis.members}, c.channel)
        chaos = Chaos(c, genesis, rng, stats, workdir / "faults.log", net, watch)
        watch.start()
        by_kind: dict[str, list[float]] = {}
        by_round: dict[str, list[int]] = {}
        for r in range(1, args.rounds + 1):
            kind = rng.choice(kinds)
            chaos.round_no = r
            t0 = time.monotonic()
            seen = len(stats.recovery_s), len(stats.catchup_s)
            target = chaos.round(kind)
            by_round.setdefault(kind, []).append(r)
            h = chaos.heights()
            new_recoveries = stats.recovery_s[seen[0] :]
            by_kind.setdefault(kind, []).extend(new_recoveries)
            rec_text = " ".join(f"{x:.1f}" for x in new_recoveries) or "-"
            cat = " ".join(f"{x:.1f}" for x in stats.catchup_s[seen[1] :]) or "-"
            log(
                f"round {r}/{args.rounds}: {kind:<20} {target:<16} {time.monotonic() - t0:5.1f}s  "
                f"recovery {rec_text:<5} catch-up {cat:<9} heights {min(h.values(), default=0)}..{max(h.values(), default=0)}"
            )
        stop.set()
        for proc in procs:
            proc.join(timeout=30)
        settled = settle(chaos)
        watch.stop()
        if not settled:
            stats.failures.append(f"nodes did not settle to one height within {SETTLE_TIMEOUT_S:.0f}s")
        if watch.worst_s > ISOLATED_S_MAX:
            log(f"  ! isolated for {watch.worst_s:.1f}s (over {ISOLATED_S_MAX:.0f}s): {watch.worst}")
        elif watch.worst:
            log(f"chaos: longest isolation {watch.worst_s:.1f}s: {watch.worst}")
        acknowledged: dict[bytes, int] = {}
        counts = {"committed": 0, "indefinite": 0, "rejected": 0}
        for k in range(args.clients):
            path = workdir / f"client-{k}.jsonl"
            for line in path.read_text().splitlines() if path.exists() else []:
                row = json.loads(line)
                counts[row["outcome"]] += 1
                if row["outcome"] == "committed":
                    acknowledged[bytes.fromhex(row["tx"])] = int(row["code"])
        auditor = load_key(c.operator_key_path(genesis.members[0].member_id)).key
        endpoints = {m.member_id: m.api_address for m in genesis.members}
        report = audit(genesis, endpoints, auditor, acknowledged, insecure=c.insecure)
        for problem in report.problems + stats.failures:
            log(f"  ! {problem}")
        rec = stats.recovery_s
        network = {}
        if net is not None:
            network = {
                "network_faults": sum(len(v) for k, v in by_round.items() if k in NETWORK_FAULTS),
                "recovery_s_by_kind": {k: summary(v) for k, v in sorted(stats.healed_s.items())},
                "slow_link": net.slow_link_mechanism or skipped,
                "netem": "available" if net.netem_missing is None else f"unavailable: {net.netem_missing}",
            }
        return {
            "rounds": args.rounds,
            "banks": args.banks,
            "seed": args.seed,
            "acknowledged": len(acknowledged),
            "indefinite": counts["indefinite"],
            "lost": report.lost,
            "duplicated": report.duplicated,
            "divergent_nodes": report.divergent_nodes,
            "conservation_violations": report.conservation_violations,
            "replay_mismatches": report.replay_mismatches + report.certificate_failures,
            "height": report.audited_height,
            "recovery_s_p50": round(statistics.median(rec), 2) if rec else None,
            "recovery_s_max": round(max(rec), 2) if rec else None,
            "catchup_s_max": round(max(stats.catchup_s), 2) if stats.catchup_s else None,
            "recovery_s_max_by_fault": {k: round(max(v), 2) for k, v in sorted(by_kind.items()) if v},
            "isolated_s_max": round(watch.worst_s, 1),
            "netns": net is not None,
            **network,
            "failures": len(stats.failures) + len(report.unreachable),
            "seconds": round(time.monotonic() - started, 1),
        }
    finally:
        stop.set()
        if watch is not None:
            watch.stop()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for b in c.banks() if c.exists() else []:
            pid = c.pid(b)
            if pid is not None:
                os.kill(pid, signal.SIGCONT)  # a paused node must be able to take SIGTERM
        if net is not None:
            net.heal()  # a round cut short leaves no fault behind (closing the harness removes all)
        for line in c.down():
            log(f"chaos: {line}")


def passed(result: dict[str, Any]) -> bool:
    zero = (
        "lost",
        "duplicated",
        "divergent_nodes",
        "conservation_violations",
        "replay_mismatches",
        "failures",
    )
    return all(result[k] == 0 for k in zero) and result["isolated_s_max"] <= ISOLATED_S_MAX


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30, help="fault rounds (default 30)")
    parser.add_argument("--banks", type=int, default=4, help="banks: 4 (f=1), 7 (f=2), ...")
    parser.add_argument(
        "--seed", type=int, default=None, help="fixes the faults and the load (default: random)"
    )
    parser.add_argument("--clients", type=int, default=3, help="load client processes (default 3)")
    parser.add_argument("--accounts-per-bank", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a fresh temp dir)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of results")
    parser.add_argument(
        "--insecure", action="store_true", help="plaintext nodes (debugging only; default TLS)"
    )
    parser.add_argument(
        "--netns",
        action="store_true",
        help="each node in its own network namespace (root); adds network faults to the rounds",
    )
    parser.add_argument(
        "--faults",
        default=None,
        help=f"comma-separated kinds the rounds draw from (default all): {','.join(FAULTS + NETWORK_FAULTS)}",
    )
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if args.rounds < 1 or args.clients < 1 or args.accounts_per_bank < 1:
        parser.error("--rounds, --clients and --accounts-per-bank must be >= 1")
    if args.faults:
        wanted = args.faults.split(",")
        unknown = [k for k in wanted if k not in FAULTS + NETWORK_FAULTS]
        if unknown:
            parser.error(f"--faults: unknown kind(s) {', '.join(unknown)}")
        if not args.netns and any(k in NETWORK_FAULTS for k in wanted):
            parser.error(f"--faults: {', '.join(NETWORK_FAULTS)} need --netns")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    try:
        if args.dir is not None:
            args.dir.mkdir(parents=True, exist_ok=True)
            workdir = args.dir
            result = run(args, workdir)
        else:
            with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
                result = run(args, Path(tmp))
    except NetnsError as exc:
        print(f"chaos: --netns: {exc}", file=sys.stderr)
        return 2
    ok = passed(result)
    summary = " ".join(f"{k}={v}" for k, v in result.items())
    log(f"chaos {'PASSED' if ok else 'FAILED'}: {summary}")
    if args.json:
        print(json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
