"""The deterministic cluster simulator: virtual time, a faulty network, crashes, liars, and the
checkers (agreement, validity, ledger agreement, liveness). One seed fixes everything.

Every replica is the node's own core (node/core.py: NodeCore) over an in-memory store, the way
TigerBeetle's simulator runs the production replica: the events a node receives at one virtual
millisecond run as one group (group commit, then the sends: persist before send), blocks execute
in the core's one write transaction, client transactions are relayed as the node relays them,
and catch-up fetches rotate and hedge as the node's do. A crash loses everything but the store;
a restart builds the replica from the journal and head in it, as the node does after kill -9."""

from __future__ import annotations

import heapq
import random
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from node.app import queries
from node.config import NodeLimits
from node.core import CoreConfig, LedgerLike, NodeCore
from node.pbft import wire
from node.pbft.actions import ConsensusCrypto
from node.pbft.config import ReplicaConfig
from node.pbft.replica import Replica
from node.storage import blocks
from node.storage.kv import KVWriter
from node.storage.memory import MemoryStore
from sim import byzantine
from sim.apps import ECHO_GENESIS_ROOT, EchoLedger, echo_envelope
from sim.crypto import ed25519_cryptos, keyed_hash_cryptos
from sim.scenario import Scenario

TICK_MS = 10
CHAIN_ID = "sim-chain"
FETCH_BLOCKS_MAX = 16
FETCH_TIMEOUT_MS = 2_000  # a fetch nobody answers (silent, crashed, cut off) fails after this
CLIENT_RETRY_MS = 1_500


@dataclass
class Result:
    seed: int
    safety_violations: list[str] = field(default_factory=list)
    liveness_failure: str | None = None
    sequences_executed: int = 0
    view_changes: int = 0
    messages: int = 0
    # The longest an honest replica that was up spent, after faults stopped, in another view
    # (or view-change state) than most honest replicas: a replica left behind or alone ahead.
    isolated_ms_max: int = 0
    end_ms: int = 0
    trace: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


class _Clock:
    """The simulation's virtual clock, in the core's units (seconds). Half a millisecond in, so
    that the core's int(time * 1000) is exactly the virtual millisecond."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def time(self) -> float:
        return (self.sim.now + 0.5) / 1000

    monotonic = time


class _SimLog:
    """The core's event log: counters, and the replica's notes to the simulation's trace."""

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.counters: Counter[str] = Counter()

    def event(self, event: str, /, **detail: Any) -> None:
        self.node.sim.on_note(self.node, event, detail)

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount


class _CheckedLedger:
    """The node's ledger, with its last outcome kept for the checkers."""

    def __init__(self, inner: LedgerLike) -> None:
        self.inner = inner
        self.last: Any = None

    def execute(self, w: KVWriter, height: int, timestamp_ms: int, envelopes: Sequence[bytes]) -> Any:
        self.last = self.inner.execute(w, height, timestamp_ms, envelopes)
        return self.last


class SimNode:
    """One replica: the node core, its store (what survives a crash), and its links."""

    def __init__(self, sim: Simulation, rid: int, crypto: ConsensusCrypto, behaviour: str) -> None:
        self.sim = sim
        self.id = rid
        self.crypto = crypto
        self.behaviour = behaviour  # "" for honest
        self.store = MemoryStore()
        self.ledger = _CheckedLedger(sim.make_ledger())
        self.executed_ids: set[bytes] = set()
        self.first_ids: set[bytes] = set()
        self.up = True
        self.heard: list[bytes] = []
        self.group_due = False  # a "group" event is queued for this node
        self.crash_after_sends: int | None = None  # a crash due after this many more messages
        self.source = ("peer", rid)  # how the other nodes' cores name their link from us
        # The vote record (node/votes.py), kept apart from the store: (view, sequence) this
        # replica may have voted up to, raised before a group's messages leave (before_send).
        self.record = (0, 0)
        self.backup: tuple[MemoryStore, set[bytes], set[bytes]] | None = None
        self.core = self._new_core()

    @property
    def honest(self) -> bool:
        return self.behaviour in ("", "crash")

    @property
    def replica(self) -> Replica:
        replica = self.core.replica
        assert isinstance(replica, Replica)
        return replica

    @property
    def last_executed(self) -> int:
        return self.core.head.last_executed

    def _new_core(self, vote_floor: tuple[int, int] | None = None) -> NodeCore:
        sim = self.sim
        with self.store.read() as r:
            head = blocks.read_head(r, sim.genesis_root)
            journal = blocks.read_journal(r)
        replica = Replica(
            sim.config_for(self.id),
            self.crypto,
            journal,
            head.last_executed,
            head.state_root,
            now_ms=sim.now,
            vote_floor=vote_floor,
        )
        core = NodeCore(
            sim.sc.n,
            self.store,
            self.ledger,
            replica,
            self,
            self,
            _SimLog(self),
            sim.clock,
            sim.core_config,
            sim.genesis_root,
            self.id,
            wake=self._wake,
            before_send=self._raise_record,
        )
        core.on_executed = self._executed
        return core

    def restart(self) -> None:
        self.up = True
        self.crash_after_sends = None
        self.core = self._new_core()

    def _raise_record(self) -> None:
        """As node/votes.py's VoteGuard: before a group's messages leave."""
        r = self.replica
        self.record = (max(self.record[0], r.view), max(self.record[1], r.stable_seq + r.cfg.log_window))

    def take_backup(self) -> None:
        """What an online backup holds: the store (journal, state, blocks), as of now."""
        self.backup = (_copy_store(self.store), set(self.executed_ids), set(self.first_ids))

    def restore(self, floor: bool) -> None:
        """Back from the backup (kept since take_backup), with the vote record as its floor
        (``floor``: the rule of node/votes.py; without it, to show the checks catch amnesia)."""
        assert self.backup is not None
        store, executed, first = self.backup
        self.store = _copy_store(store)
        self.executed_ids, self.first_ids = set(executed), set(first)
        self.up = True
        self.crash_after_sends = None
        self.core = self._new_core(self.record if floor else None)

    def _wake(self) -> None:
        if not self.group_due:
            self.group_due = True
            self.sim._push(self.sim.now, "group", self.id)

    def _executed(self, height: int) -> None:
        self.sim.on_executed(self, height)

    # The core's Transport and Fetcher.

    def _may_send(self) -> bool:
        """False once crashed; a crash due (crash_after_sends) lands between two messages."""
        if not self.up:
            return False
        left = self.crash_after_sends
        if left is None:
            return True
        if left == 0:
            self.sim.crash(self)
            return False
        self.crash_after_sends = left - 1
        return True

    def send(self, to: int, message: bytes) -> None:
        if self._may_send():
            self.sim.send_peer(self, to, message)

    def broadcast(self, message: bytes) -> None:
        for dst in range(self.sim.sc.n):
            if dst != self.id and self._may_send():
                self.sim.send_peer(self, dst, message)

    def forward(self, to: int, envelopes: Sequence[bytes]) -> None:
        if self._may_send():
            self.sim.send(self.id, to, "forward", list(envelopes))

    def is_up(self, replica: int) -> bool:
        return not self.sim.cut(self.id, replica)

    def fetch(self, peer: int, from_height: int, round: int) -> None:
        self.sim.send(self.id, peer, "fetch", (from_height, round))
        self.sim._push(self.sim.now + FETCH_TIMEOUT_MS, "fetch_timeout", self.id, peer, round, self.core)

    def cancel_fetches(self) -> None:
        return None


class Simulation:
    def __init__(self, sc: Scenario, trace_max: int = 300) -> None:
        self.sc = sc
        self.rng = random.Random(sc.seed * 7919 + 17)
        self.crash_rng = random.Random(sc.seed * 7919 + 18)  # where in its sends a crash lands
        self.now = 0
        self.clock = _Clock(self)
        self._queue: list[tuple[int, int, str, tuple[Any, ...]]] = []
        self._counter = 0
        self.result = Result(sc.seed)
        self.trace: deque[str] = deque(maxlen=trace_max)
        self.genesis: Any = None
        self.factory: Any = None
        self.genesis_root = ECHO_GENESIS_ROOT
        if sc.app == "ledger":
            from sim.factory import Factory

            self.factory = Factory(banks=sc.n, seed=sc.seed, chain_id=CHAIN_ID)
            self.genesis = self.factory.genesis
            self.genesis_root = queries.genesis_state_root(self.genesis)
        limits = self.limits()
        self.replica_configs = [limits.replica_config(sc.n, sc.f, r, CHAIN_ID) for r in range(sc.n)]
        self.core_config = CoreConfig(
            tick_ms=TICK_MS,
            pending_requests_max=limits.pending_requests_max,
            pending_ttl_ms=limits.core_config().pending_ttl_ms,
            relay_delay_ms=limits.core_config().relay_delay_ms,
        )
        if sc.crypto == "ed25519":
            cryptos: list[Any] = ed25519_cryptos(sc.n, sc.seed, CHAIN_ID)
        else:
            cryptos = keyed_hash_cryptos(sc.n, sc.seed)
        self.nodes = [SimNode(self, r, cryptos[r], sc.faulty.get(r, "")) for r in range(sc.n)]
        self.submitted: dict[bytes, bytes] = {}  # tx_id -> envelope
        self.digest_at: dict[int, bytes] = {}
        self.root_at: dict[int, tuple[bytes, bytes]] = {}
        self.requests = self._make_requests()
        self._crashed_all = False
        self._isolated_since: dict[int, int] = {}

    # --- setup -------------------------------------------------------------------------------

    def limits(self) -> NodeLimits:
        """The node config of every replica: the scenario's limits, the rest as the node's."""
        sc = self.sc
        return NodeLimits(
            batch_size_max=sc.batch_size_max,
            batch_delay_ms=20,
            batch_delay_per_tps_us=0,
            checkpoint_interval=sc.checkpoint_interval,
            log_window=sc.log_window,
            view_change_timeout_ms=sc.view_change_timeout_ms,
            view_change_backoff_max=4,
            retransmit_ms=200,
            pending_requests_max=10_000,
            peer_message_bytes_max=16 << 20,
        )

    def config_for(self, rid: int) -> ReplicaConfig:
        return self.replica_configs[rid]

    def make_ledger(self) -> LedgerLike:
        if self.sc.app == "ledger":
            from node.app.ledger import Ledger

            return Ledger(self.genesis, tree_interval=self.sc.checkpoint_interval)
        return EchoLedger()

    def _make_requests(self) -> list[bytes]:
        sc = self.sc
        if sc.app != "ledger":
            return [echo_envelope(CHAIN_ID, self.rng.randbytes(16), f"req-{i}") for i in range(sc.requests)]
        fx = self.factory
        bank = fx.genesis.members[0].member_id
        asset = f"USD.{bank}"
        envs = [
            fx.open_account(bank, "acct-a", fx.client("a")),
            fx.open_account(bank, "acct-b", fx.client("b")),
        ]
        envs.append(fx.mint(asset, "acct-a", 1_000_000))
        for i in range(max(0, sc.requests - 3)):
            src, dst = ("acct-a", "acct-b") if i % 3 else ("acct-b", "acct-a")
            envs.append(fx.transfer([(src, dst, asset, 1 + self.rng.randrange(1000))]))
        return envs

    def _push(self, at: int, kind: str, *args: Any) -> None:
        self._counter += 1
        heapq.heappush(self._queue, (at, self._counter, kind, args))

    # --- network -----------------------------------------------------------------------------

    def _faulty_net(self) -> bool:
        return self.now < self.sc.faults_until_ms

    def cut(self, a: int, b: int) -> bool:
        if not self._faulty_net():
            return False
        return any(s <= self.now < e and ((a in g) != (b in g)) for s, e, g in self.sc.partitions)

    def _delay(self) -> int:
        top = self.sc.delay_max_ms if self._faulty_net() else min(self.sc.delay_max_ms, 10)
        return self.rng.randint(1, top)

    def send(self, src: int, dst: int, kind: str, payload: Any) -> None:
        if src == dst or self.cut(src, dst):
            return
        if self._faulty_net() and self.rng.random() < self.sc.drop:
            return
        self.result.messages += 1
        self._push(self.now + self._delay(), kind, dst, src, payload)
        if self._faulty_net() and self.rng.random() < self.sc.duplicate:
            self._push(self.now + self._delay(), kind, dst, src, payload)

    def send_peer(self, node: SimNode, dst: int, message: bytes) -> None:
        if node.behaviour:
            for m in byzantine.rewrite(node.behaviour, node.replica, node.crypto, dst, message, self.rng):
                self.send(node.id, dst, "msg", m)
        else:
            self.send(node.id, dst, "msg", message)

    # --- what the cores report ----------------------------------------------------------------

    def on_note(self, node: SimNode, kind: str, detail: dict[str, Any]) -> None:
        if kind in ("view_change", "new_view", "equivocation", "state_diverged"):
            self.trace.append(f"{self.now:>6} r{node.id} {kind} {detail}")
        if kind == "view_change" and node.honest:
            self.result.view_changes += 1
            self._maybe_crash_all()
        if kind == "stable_checkpoint" and node.honest:
            self._check_stable(node)

    def on_executed(self, node: SimNode, height: int) -> None:
        out = node.ledger.last
        digest = node.core.head.last_block_hash
        self.trace.append(
            f"{self.now:>6} r{node.id} execute {height} {digest.hex()[:8]} txs={len(out.tx_ids)}"
        )
        if not node.honest:
            return
        known = self.digest_at.setdefault(height, digest)
        if known != digest:
            self._violation(
                f"agreement: r{node.id} executed {digest.hex()[:8]} at {height}, others {known.hex()[:8]}"
            )
        roots = (out.state_root, out.tree_root)  # the tree root: empty off tree heights
        known_roots = self.root_at.setdefault(height, roots)
        if known_roots != roots:
            self._violation(f"ledger agreement: r{node.id} state or tree root differs at {height}")
        for tx_id, recorded in zip(out.tx_ids, out.recorded, strict=True):
            if tx_id not in self.submitted:
                self._violation(f"validity: r{node.id} executed unsubmitted tx at {height}")
            node.executed_ids.add(tx_id)
            if recorded:
                if tx_id in node.first_ids:
                    self._violation(f"validity: r{node.id} applied a tx twice (at {height})")
                node.first_ids.add(tx_id)

    # --- checkers ----------------------------------------------------------------------------

    def _violation(self, what: str) -> None:
        self.trace.append(f"{self.now:>6} VIOLATION {what}")
        self.result.safety_violations.append(what)

    def _check_stable(self, node: SimNode) -> None:
        """A checkpoint certificate (2f+1 signatures) certifies the roots honest replicas
        computed: a balance proof or a snapshot checked against it is true."""
        r = node.replica
        roots = r.verifier.checkpoint_proof(r.stable_seq, r.stable_proof)
        if roots is None:
            self._violation(f"checkpoint: r{node.id} holds an invalid stable proof at {r.stable_seq}")
            return
        computed = self.root_at.get(r.stable_seq)
        if computed is not None and computed != roots:
            self._violation(
                f"checkpoint: r{node.id} stable at {r.stable_seq} with roots honest ones did not compute"
            )

    def _live_done(self) -> bool:
        honest = [n for n in self.nodes if n.honest]
        if len(self.submitted) < len(self.requests):
            return False
        if any(len(n.executed_ids) < len(self.submitted) for n in honest):
            return False
        if len({n.last_executed for n in honest}) != 1:
            return False
        # Every honest replica votes in one view again: executing by catch-up alone while stuck
        # in a view nobody else is in leaves the consortium without its fault margin (issue 21).
        states = {_view_state(n) for n in honest if n.up}
        return len(states) == 1 and not next(iter(states))[1]

    def _track_isolation(self) -> None:
        honest = [n for n in self.nodes if n.honest and n.up]
        counts = Counter(_view_state(n) for n in honest).most_common(2)
        tie = len(counts) == 2 and counts[0][1] == counts[1][1]  # a view change in flight
        majority = counts[0][0] if counts and not tie else None
        for n in self.nodes:
            if not (n.honest and n.up) or majority is None or _view_state(n) == majority:
                self._isolated_since.pop(n.id, None)
                continue
            since = self._isolated_since.setdefault(n.id, self.now)
            if self.now > self.sc.faults_until_ms:
                isolated = self.now - max(since, self.sc.faults_until_ms)
                self.result.isolated_ms_max = max(self.result.isolated_ms_max, isolated)

    def _maybe_crash_all(self) -> None:
        plan = self.sc.crash_all_on_view_change
        if plan is None or self._crashed_all or self.now < plan[0]:
            return
        self._crashed_all = True
        self._push(self.now, "crash_all")
        for r in range(self.sc.n):
            self._push(self.now + plan[1], "restart", r)

    # --- events ------------------------------------------------------------------------------

    def run(self) -> Result:
        sc = self.sc
        for i in range(len(self.requests)):
            at = (
                self.rng.randint(0, sc.submit_until_ms)
                if sc.app != "ledger"
                else 1 + i * sc.submit_until_ms // len(self.requests)
            )
            self._push(at, "submit", i)
        for r, down, up in sc.crashes:
            self._push(down, "crash", r)
            self._push(up, "restart", r)
        for r, backup_at, down, up in sc.restores:
            self._push(backup_at, "backup", r)
            self._push(down, "crash", r)
            self._push(up, "restore", r)
        self._push(0, "tick")
        self._push(CLIENT_RETRY_MS, "retry")
        deadline = sc.faults_until_ms + sc.liveness_bound_ms
        while self._queue:
            at, _, kind, args = heapq.heappop(self._queue)
            self.now = at
            if at > deadline:
                break
            self._event(kind, args)
            if kind == "tick" and at >= sc.faults_until_ms and at % 100 == 0 and self._live_done():
                break
        else:
            raise AssertionError("event queue ran dry")
        res = self.result
        res.end_ms = self.now
        if not self._live_done():
            missing = [n.id for n in self.nodes if n.honest and len(n.executed_ids) < len(self.submitted)]
            lasts = {n.id: n.last_executed for n in self.nodes if n.honest}
            views = {n.id: _view_state(n) for n in self.nodes if n.honest and n.up}
            res.liveness_failure = (
                f"not done by {deadline} ms: replicas missing requests {missing}, last executed {lasts}, "
                f"(view, in view change) {views}"
            )
        res.sequences_executed = max((n.last_executed for n in self.nodes if n.honest), default=0)
        for n in self.nodes:
            for k, v in n.replica.counters.items():
                res.counters[k] = res.counters.get(k, 0) + v
        res.trace = list(self.trace)
        return res

    def _event(self, kind: str, args: tuple[Any, ...]) -> None:
        if kind == "group":  # the events a node received at this millisecond, as one group
            node = self.nodes[args[0]]
            node.group_due = False
            if node.up:
                _run_groups(node)
        elif kind == "tick":
            for node in self.nodes:
                if node.up:
                    node.core.tick()
                    _run_groups(node)  # with what else came this millisecond
                    if node.behaviour in ("forge", "replay", "pusher"):
                        for dst, m in byzantine.extra(
                            node.behaviour, node.replica, node.crypto, self.rng, node.heard
                        ):
                            for d in range(self.sc.n) if dst is None else (dst,):
                                self.send(node.id, d, "msg", m)
            self._track_isolation()
            self._push(self.now + TICK_MS, "tick")
        elif kind == "msg":
            dst, src, message = args
            node = self.nodes[dst]
            if node.up:
                if node.behaviour == "replay":
                    byzantine.remember(node.heard, message, self.rng)
                node.core.on_peer_message(self.nodes[src].source, message)
        elif kind == "forward":
            dst, src, envelopes = args
            node = self.nodes[dst]
            if node.up:
                node.core.on_forward(self.nodes[src].source, envelopes, _admit)
        elif kind == "submit":
            (i,) = args
            env = self.requests[i]
            tx_id = wire.canonical_envelope(env)[0]
            self.submitted[tx_id] = env
            self.trace.append(f"{self.now:>6} submit {tx_id.hex()[:8]}")
            for r in self.rng.sample(range(self.sc.n), self.rng.randint(1, 2)):
                self._client_submit(self.nodes[r], env)
        elif kind == "retry":
            # The client SDK re-sends what it has no receipt for (f+1 executions) to everyone.
            for tx_id, env in self.submitted.items():
                if sum(1 for n in self.nodes if n.honest and tx_id in n.executed_ids) <= self.sc.f:
                    for node in self.nodes:
                        self._client_submit(node, env)
            self._push(self.now + CLIENT_RETRY_MS, "retry")
        elif kind == "fetch":
            dst, src, (from_seq, round) = args
            node = self.nodes[dst]
            if node.up and node.behaviour != "silent":
                blocks_, last = node.core.fetch_blocks(from_seq, FETCH_BLOCKS_MAX)
                if node.behaviour == "forge":
                    blocks_ = byzantine.tamper_blocks(blocks_, self.rng)
                self.send(dst, src, "blocks", (round, blocks_, last))
        elif kind == "blocks":
            dst, src, (round, blocks_, last) = args
            node = self.nodes[dst]
            if node.up:
                node.core.on_fetched(round, src, (blocks_, last))
        elif kind == "fetch_timeout":
            r, peer, round, core = args
            node = self.nodes[r]
            if node.up and node.core is core:
                core.on_fetched(round, peer, None)
        elif kind == "crash":
            # kill -9 lands anywhere, also between a group's sends: after this many more
            # messages (its journal records are on disk by then: persist before send), or at
            # the next millisecond if it sends no more.
            (r,) = args
            node = self.nodes[r]
            if node.up:
                node.crash_after_sends = self.crash_rng.randint(0, 3)
                self._push(self.now + 1, "crash_now", r)
        elif kind == "crash_now":
            (r,) = args
            if self.nodes[r].crash_after_sends is not None:
                self.crash(self.nodes[r])
        elif kind == "crash_all":
            for node in self.nodes:
                node.up = False
            views = {n.id: (n.replica.view, n.replica.in_view_change) for n in self.nodes}
            self.trace.append(f"{self.now:>6} crash all (view, in view change): {views}")
        elif kind == "backup":
            (r,) = args
            self.nodes[r].take_backup()
            self.trace.append(f"{self.now:>6} r{r} backup at {self.nodes[r].last_executed}")
        elif kind in ("restart", "restore"):
            (r,) = args
            if kind == "restart":
                self.nodes[r].restart()
            else:
                self.nodes[r].restore(self.sc.restore_floor)
                self.trace.append(f"{self.now:>6} r{r} restore to {self.nodes[r].last_executed}")
            self.trace.append(f"{self.now:>6} r{r} restart (view {self.nodes[r].replica.view})")
            # As the node's transport does: links to and from the restarted replica come up.
            for other in self.nodes:
                if other.up and other.id != r:
                    other.core.on_peer_up(r)
                    self.nodes[r].core.on_peer_up(other.id)

    def crash(self, node: SimNode) -> None:
        node.up = False
        node.crash_after_sends = None
        self.trace.append(f"{self.now:>6} r{node.id} crash")

    def _client_submit(self, node: SimNode, env: bytes) -> None:
        """A client's transaction at a node's API: admitted (stateless checks pass here)."""
        if node.up:
            tx_id, canonical = wire.canonical_envelope(env)
            node.core.submit(tx_id, canonical)


def _copy_store(src: MemoryStore) -> MemoryStore:
    out = MemoryStore()
    with src.read() as r, out.write() as w:
        for key, value in r.scan(b""):
            w.put(key, value)
    return out


def _run_groups(node: SimNode) -> None:
    while node.up and node.core.run_group() and node.core.queued:
        pass


def _admit(envelopes: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The API's admission of a peer's relay (node/api/admission.py), as far as the sim needs."""
    return [wire.canonical_envelope(e) for e in envelopes]


def _view_state(node: SimNode) -> tuple[int, bool]:
    return node.replica.view, node.replica.in_view_change


def run_seed(seed: int, app: str = "echo") -> Result:
    from sim.scenario import random_scenario

    return Simulation(random_scenario(seed, app)).run()
