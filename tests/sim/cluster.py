"""The deterministic cluster simulator: virtual time, a faulty network, crashes, liars, and the
checkers (agreement, validity, ledger agreement, liveness). One seed fixes everything."""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from node.pbft import wire
from node.pbft.actions import (
    Action,
    Attested,
    Broadcast,
    ConsensusCrypto,
    Execute,
    FetchBlocks,
    ForwardRequests,
    Note,
    Persist,
    Send,
)
from node.pbft.config import ReplicaConfig
from node.pbft.replica import Replica
from tests.sim import byzantine
from tests.sim.apps import App, EchoApp, LedgerApp, echo_envelope
from tests.sim.crypto import ed25519_cryptos, keyed_hash_cryptos
from tests.sim.scenario import Scenario

TICK_MS = 10
CHAIN_ID = "sim-chain"
FETCH_BLOCKS_MAX = 16
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


class SimNode:
    def __init__(self, sim: Simulation, rid: int, crypto: ConsensusCrypto, behaviour: str) -> None:
        self.sim = sim
        self.id = rid
        self.crypto = crypto
        self.behaviour = behaviour  # "" for honest
        self.journal: dict[bytes, bytes] = {}
        self.app: App = sim.make_app()
        self.blocks: dict[int, bytes] = {}
        self.executed_ids: set[bytes] = set()
        self.first_ids: set[bytes] = set()
        self.up = True
        self.heard: list[bytes] = []
        self.attested = 0
        self.replica = self._new_replica()

    @property
    def honest(self) -> bool:
        return self.behaviour in ("", "crash")

    def _new_replica(self) -> Replica:
        return Replica(
            self.sim.config_for(self.id),
            self.crypto,
            dict(self.journal),
            self.app.last_executed,
            self.app.state_root,
            now_ms=self.sim.now,
        )

    def restart(self) -> None:
        self.up = True
        self.replica = self._new_replica()


class Simulation:
    def __init__(self, sc: Scenario, trace_max: int = 300) -> None:
        self.sc = sc
        self.rng = random.Random(sc.seed * 7919 + 17)
        self.now = 0
        self._queue: list[tuple[int, int, str, tuple[Any, ...]]] = []
        self._counter = 0
        self.result = Result(sc.seed)
        self.trace: deque[str] = deque(maxlen=trace_max)
        self.genesis: Any = None
        self.factory: Any = None
        if sc.app == "ledger":
            from tests.app.factory import Factory

            self.factory = Factory(banks=sc.n, seed=sc.seed, chain_id=CHAIN_ID)
            self.genesis = self.factory.genesis
        if sc.crypto == "ed25519":
            cryptos: list[Any] = ed25519_cryptos(sc.n, sc.seed, CHAIN_ID)
        else:
            cryptos = keyed_hash_cryptos(sc.n, sc.seed)
        self.nodes = [SimNode(self, r, cryptos[r], sc.faulty.get(r, "")) for r in range(sc.n)]
        self.submitted: dict[bytes, bytes] = {}  # tx_id -> envelope
        self.done_ids: set[bytes] = set()
        self.digest_at: dict[int, bytes] = {}
        self.root_at: dict[int, tuple[bytes, bytes]] = {}
        self.requests = self._make_requests()
        self._crashed_all = False
        self._isolated_since: dict[int, int] = {}

    # --- setup -------------------------------------------------------------------------------

    def config_for(self, rid: int) -> ReplicaConfig:
        sc = self.sc
        return ReplicaConfig(
            n=sc.n,
            f=sc.f,
            replica_id=rid,
            chain_id=CHAIN_ID,
            batch_size_max=sc.batch_size_max,
            batch_delay_ms=20,
            checkpoint_interval=sc.checkpoint_interval,
            log_window=sc.log_window,
            view_change_timeout_ms=sc.view_change_timeout_ms,
            view_change_backoff_max=4,
            retransmit_ms=200,
        )

    def make_app(self) -> App:
        return LedgerApp(self.genesis, self.sc.checkpoint_interval) if self.sc.app == "ledger" else EchoApp()

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

    def _cut(self, a: int, b: int) -> bool:
        if not self._faulty_net():
            return False
        return any(s <= self.now < e and ((a in g) != (b in g)) for s, e, g in self.sc.partitions)

    def _delay(self) -> int:
        top = self.sc.delay_max_ms if self._faulty_net() else min(self.sc.delay_max_ms, 10)
        return self.rng.randint(1, top)

    def send(self, src: int, dst: int, kind: str, payload: Any) -> None:
        if src == dst or self._cut(src, dst):
            return
        if self._faulty_net() and self.rng.random() < self.sc.drop:
            return
        self.result.messages += 1
        self._push(self.now + self._delay(), kind, dst, src, payload)
        if self._faulty_net() and self.rng.random() < self.sc.duplicate:
            self._push(self.now + self._delay(), kind, dst, src, payload)

    def _send_peer(self, node: SimNode, dst: int, message: bytes) -> None:
        if node.behaviour:
            for m in byzantine.rewrite(node.behaviour, node.replica, node.crypto, dst, message, self.rng):
                self.send(node.id, dst, "msg", m)
        else:
            self.send(node.id, dst, "msg", message)

    # --- the driver: actions in order ----------------------------------------------------------

    def apply(self, node: SimNode, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Persist):
                if a.value is None:
                    node.journal.pop(a.key, None)
                else:
                    node.journal[a.key] = a.value
            elif isinstance(a, Broadcast):
                for dst in range(self.sc.n):
                    if dst != node.id:
                        self._send_peer(node, dst, a.message)
            elif isinstance(a, Send):
                self._send_peer(node, a.to, a.message)
            elif isinstance(a, ForwardRequests):
                for env in a.envelopes:
                    self.send(node.id, a.to, "request", env)
            elif isinstance(a, Execute):
                self._execute(node, a)
            elif isinstance(a, FetchBlocks):
                peer = self.rng.choice(a.peers)
                self.send(node.id, peer, "fetch", a.from_sequence)
            elif isinstance(a, Attested):
                node.attested += 1
            elif isinstance(a, Note):
                if a.kind in ("view_change", "new_view", "equivocation", "state_diverged"):
                    self.trace.append(f"{self.now:>6} r{node.id} {a.kind} {a.detail}")
                if a.kind == "view_change" and node.honest:
                    self.result.view_changes += 1
                    self._maybe_crash_all()
                if a.kind == "stable_checkpoint" and node.honest:
                    self._check_stable(node)

    def _execute(self, node: SimNode, a: Execute) -> None:
        header = wire.decode_header(a.header)
        out = node.app.execute(a.sequence, header.timestamp_ms, a.envelopes)
        node.blocks[a.sequence] = wire.encode_certified_block(a.header, a.envelopes, a.certificate)
        digest = wire.digest_of(a.header)
        self.trace.append(
            f"{self.now:>6} r{node.id} execute {a.sequence} {digest.hex()[:8]} txs={len(a.envelopes)}"
        )
        if node.honest:
            self._check_execution(node, a, digest, (out.state_root, out.tree_root), out.first_executions)
        self.apply(
            node, node.replica.on_executed(a.sequence, out.state_root, out.results_root, out.tree_root)
        )

    # --- checkers ----------------------------------------------------------------------------

    def _violation(self, what: str) -> None:
        self.trace.append(f"{self.now:>6} VIOLATION {what}")
        self.result.safety_violations.append(what)

    def _check_execution(
        self,
        node: SimNode,
        a: Execute,
        digest: bytes,
        roots: tuple[bytes, bytes],
        first: tuple[bytes, ...],
    ) -> None:
        """``roots``: the state root and the state tree's root (empty off tree heights)."""
        seq = a.sequence
        known = self.digest_at.setdefault(seq, digest)
        if known != digest:
            self._violation(
                f"agreement: r{node.id} executed {digest.hex()[:8]} at {seq}, others {known.hex()[:8]}"
            )
        known_roots = self.root_at.setdefault(seq, roots)
        if known_roots != roots:
            self._violation(f"ledger agreement: r{node.id} state or tree root differs at {seq}")
        for tx_id in a.tx_ids:
            if tx_id not in self.submitted:
                self._violation(f"validity: r{node.id} executed unsubmitted tx at {seq}")
            node.executed_ids.add(tx_id)
        for tx_id in first:
            if tx_id in node.first_ids:
                self._violation(f"validity: r{node.id} applied a tx twice (at {seq})")
            node.first_ids.add(tx_id)

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
        if len({n.app.last_executed for n in honest}) != 1:
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
            lasts = {n.id: n.app.last_executed for n in self.nodes if n.honest}
            views = {n.id: _view_state(n) for n in self.nodes if n.honest and n.up}
            res.liveness_failure = (
                f"not done by {deadline} ms: replicas missing requests {missing}, last executed {lasts}, "
                f"(view, in view change) {views}"
            )
        res.sequences_executed = max((n.app.last_executed for n in self.nodes if n.honest), default=0)
        for n in self.nodes:
            for k, v in n.replica.counters.items():
                res.counters[k] = res.counters.get(k, 0) + v
        res.trace = list(self.trace)
        return res

    def _event(self, kind: str, args: tuple[Any, ...]) -> None:
        if kind == "tick":
            for node in self.nodes:
                if node.up:
                    self.apply(node, node.replica.on_tick(self.now))
                    if node.behaviour in ("forge", "replay", "pusher"):
                        for dst, m in byzantine.extra(
                            node.behaviour, node.replica, node.crypto, self.rng, node.heard
                        ):
                            for d in range(self.sc.n) if dst is None else (dst,):
                                self.send(node.id, d, "msg", m)
            self._track_isolation()
            self._push(self.now + TICK_MS, "tick")
        elif kind == "msg":
            dst, _src, message = args
            node = self.nodes[dst]
            if node.up:
                if node.behaviour == "replay":
                    byzantine.remember(node.heard, message, self.rng)
                self.apply(node, node.replica.on_message(message))
        elif kind == "request":
            dst, _src, env = args
            self._deliver_request(self.nodes[dst], env)
        elif kind == "submit":
            (i,) = args
            env = self.requests[i]
            tx_id = wire.canonical_envelope(env)[0]
            self.submitted[tx_id] = env
            self.trace.append(f"{self.now:>6} submit {tx_id.hex()[:8]}")
            for r in self.rng.sample(range(self.sc.n), self.rng.randint(1, 2)):
                self._deliver_request(self.nodes[r], env)
        elif kind == "retry":
            # The client SDK re-sends what it has no receipt for (f+1 executions) to everyone.
            for tx_id, env in self.submitted.items():
                if sum(1 for n in self.nodes if n.honest and tx_id in n.executed_ids) <= self.sc.f:
                    for node in self.nodes:
                        self._deliver_request(node, env)
            self._push(self.now + CLIENT_RETRY_MS, "retry")
        elif kind == "fetch":
            dst, src, from_seq = args
            node = self.nodes[dst]
            if node.up and node.behaviour != "silent":
                top = min(node.app.last_executed, from_seq + FETCH_BLOCKS_MAX - 1)
                blocks = [node.blocks[s] for s in range(from_seq, top + 1)]
                if node.behaviour == "forge":
                    blocks = byzantine.tamper_blocks(blocks, self.rng)
                self.send(dst, src, "blocks", blocks)
        elif kind == "blocks":
            dst, _src, blocks = args
            node = self.nodes[dst]
            if node.up:
                self.apply(node, node.replica.on_blocks(blocks))
        elif kind == "crash":
            (r,) = args
            self.nodes[r].up = False
            self.trace.append(f"{self.now:>6} r{r} crash")
        elif kind == "crash_all":
            for node in self.nodes:
                node.up = False
            views = {n.id: (n.replica.view, n.replica.in_view_change) for n in self.nodes}
            self.trace.append(f"{self.now:>6} crash all (view, in view change): {views}")
        elif kind == "restart":
            (r,) = args
            self.nodes[r].restart()
            self.trace.append(f"{self.now:>6} r{r} restart (view {self.nodes[r].replica.view})")
            # As the node's transport does: links to and from the restarted replica come up.
            for other in self.nodes:
                if other.up and other.id != r:
                    self.apply(other, other.replica.on_peer_up(r))
                    self.apply(self.nodes[r], self.nodes[r].replica.on_peer_up(other.id))

    def _deliver_request(self, node: SimNode, env: bytes) -> None:
        if node.up:
            tx_id = hashlib.sha256(wire_body(env)).digest()
            self.apply(node, node.replica.on_request(tx_id, env))


def _view_state(node: SimNode) -> tuple[int, bool]:
    return node.replica.view, node.replica.in_view_change


def wire_body(env: bytes) -> bytes:
    from ledger.v1 import tx_pb2

    e = tx_pb2.Envelope()
    e.ParseFromString(env)
    return e.body


def run_seed(seed: int, app: str = "echo") -> Result:
    from tests.sim.scenario import random_scenario

    return Simulation(random_scenario(seed, app)).run()
