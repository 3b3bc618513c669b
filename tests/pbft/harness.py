"""A tiny synchronous cluster for replica unit tests: messages are delivered in FIFO order
until the network is quiet; tests decide who is down, what is dropped and when time passes.

Each node is the node's own core (node/core.py: NodeCore) over an in-memory store: every action
list a replica returns goes through NodeCore.run (journal records persisted before the sends,
blocks executed in one write transaction, attestations stored), as in the node. What the tests
inspect is recorded at the replica's boundary (the action lists it returned) or read from the
store (journal, blocks, attestations)."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from node.config import NodeLimits
from node.core import CoreConfig, NodeCore
from node.pbft import wire
from node.pbft.actions import Action, Attested, Execute, FetchBlocks
from node.pbft.config import ReplicaConfig
from node.pbft.replica import Replica
from node.storage import blocks
from node.storage.memory import MemoryStore
from sim.apps import ECHO_GENESIS_ROOT, EchoLedger, echo_envelope
from sim.crypto import KeyedHashCrypto, keyed_hash_cryptos

CHAIN = "unit-chain"
CORE = CoreConfig(tick_ms=10, pending_requests_max=10_000, pending_ttl_ms=60_000, relay_delay_ms=400)


def request(i: int) -> tuple[bytes, bytes]:
    env = echo_envelope(CHAIN, i.to_bytes(16, "big"), f"r{i}")
    return wire.canonical_envelope(env)


def body_of(peer: bytes) -> wire.Body:
    signed, _ = wire.decode_peer(peer)
    body, _, _ = wire.decode_signed(signed)
    return wire.decode_body(body)


class _Log:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()

    def event(self, event: str, /, **detail: Any) -> None:
        return None

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount


class RecordingReplica(Replica):
    """The replica, keeping every action list it returns (and its FetchBlocks) on its node."""

    def __init__(self, node: Node, *args: Any, **kw: Any) -> None:
        self.node = node
        super().__init__(*args, **kw)

    def _record(self, actions: list[Action]) -> list[Action]:
        self.node.batches.append(list(actions))
        self.node.fetches.extend(a for a in actions if isinstance(a, FetchBlocks))
        return actions

    def on_request(self, tx_id: bytes, envelope: bytes) -> list[Action]:
        return self._record(super().on_request(tx_id, envelope))

    def on_message(self, peer_message: bytes) -> list[Action]:
        return self._record(super().on_message(peer_message))

    def on_tick(self, now_ms: int) -> list[Action]:
        return self._record(super().on_tick(now_ms))

    def on_executed(
        self, sequence: int, state_root: bytes, results_root: bytes, tree_root: bytes = b""
    ) -> list[Action]:
        return self._record(super().on_executed(sequence, state_root, results_root, tree_root))

    def on_blocks(self, blocks: Sequence[bytes]) -> list[Action]:
        return self._record(super().on_blocks(blocks))

    def on_peer_up(self, peer: int) -> list[Action]:
        return self._record(super().on_peer_up(peer))


class Node:
    """One replica: its core over an in-memory store (what survives a restart)."""

    def __init__(self, cluster: Cluster, i: int, crypto: KeyedHashCrypto) -> None:
        self.cluster = cluster
        self.id = i
        self.crypto = crypto
        self.store = MemoryStore()
        self.batches: list[list[Action]] = []  # every action list the replica returned
        self.fetches: list[FetchBlocks] = []
        self.core = self._new_core()

    def _new_core(self, vote_floor: tuple[int, int] | None = None) -> NodeCore:
        c = self.cluster
        with self.store.read() as r:
            head = blocks.read_head(r, ECHO_GENESIS_ROOT)
            journal = blocks.read_journal(r)
        replica = RecordingReplica(
            self,
            c.config_for(self.id),
            self.crypto,
            journal,
            head.last_executed,
            head.state_root,
            now_ms=c.now,
            vote_floor=vote_floor,
        )
        return NodeCore(
            c.n, self.store, EchoLedger(), replica, self, self, _Log(), c, CORE, ECHO_GENESIS_ROOT, self.id
        )

    def restore_empty(self, vote_floor: tuple[int, int] | None) -> None:
        """Back from a backup older than everything it stored (an empty store), with a floor."""
        self.store = MemoryStore()
        self.core = self._new_core(vote_floor)

    @property
    def replica(self) -> Replica:
        replica = self.core.replica
        assert isinstance(replica, Replica)
        return replica

    @property
    def journal(self) -> dict[bytes, bytes]:
        with self.store.read() as r:
            return blocks.read_journal(r)

    @property
    def blocks(self) -> dict[int, bytes]:
        """Height -> certified block, as stored."""
        with self.store.read() as r:
            top = blocks.read_head(r, ECHO_GENESIS_ROOT).last_executed
            return {h: raw for h in range(1, top + 1) if (raw := blocks.get_block(r, h)) is not None}

    @property
    def executed(self) -> list[Execute]:
        """The executed blocks, as the Execute actions that stored them."""
        out = []
        for height, raw in self.blocks.items():
            header, envelopes, certificate = wire.decode_certified_block(raw)
            out.append(Execute(height, header, envelopes, certificate, wire.tx_ids_of(envelopes)))
        return out

    @property
    def attested(self) -> list[Attested]:
        with self.store.read() as r:
            top = blocks.read_head(r, ECHO_GENESIS_ROOT).last_executed
            found = ((h, blocks.get_attestations(r, h)) for h in range(1, top + 1))
            return [Attested(h, atts) for h, atts in found if atts]

    # The core's Transport and Fetcher: the cluster's FIFO network.

    def send(self, to: int, message: bytes) -> None:
        self.cluster.queue.append((self.id, to, "msg", message))

    def broadcast(self, message: bytes) -> None:
        for j in range(self.cluster.n):
            if j != self.id:
                self.cluster.queue.append((self.id, j, "msg", message))

    def forward(self, to: int, envelopes: Sequence[bytes]) -> None:
        for env in envelopes:
            self.cluster.queue.append((self.id, to, "req", env))

    def is_up(self, replica: int) -> bool:
        return replica not in self.cluster.down

    def fetch(self, peer: int, from_height: int, round: int) -> None:
        return None  # tests answer a FetchBlocks themselves (node.fetches), with on_blocks

    def cancel_fetches(self) -> None:
        return None


class Cluster:
    def __init__(self, f: int = 1, **config: Any) -> None:
        self.n = 3 * f + 1
        self.f = f
        self.config = dict(config)
        self.now = 0
        self.cryptos = keyed_hash_cryptos(self.n, seed=1)
        self.queue: deque[tuple[int, int, str, bytes]] = deque()  # (from, to, kind, payload)
        self.down: set[int] = set()
        self.drop: Callable[[int, int, bytes], bool] = lambda src, dst, msg: False
        self.nodes = [Node(self, i, self.cryptos[i]) for i in range(self.n)]

    def config_for(self, i: int) -> ReplicaConfig:
        base: dict[str, Any] = {
            # As ReplicaConfig's own defaults were before the node config held them all.
            "batch_delay_per_tps_us": 0,
            "pending_requests_max": 10_000,
            "peer_message_bytes_max": 16 << 20,
            "batch_size_max": 1,
            "batch_delay_ms": 0,
            "checkpoint_interval": 2,
            "log_window": 4,
            "view_change_timeout_ms": 100,
            "retransmit_ms": 50,
        }
        base.update(self.config)
        return NodeLimits(**base).replica_config(self.n, self.f, i, CHAIN)

    # The cores' Clock: the cluster's virtual time.

    def time(self) -> float:
        return (self.now + 0.5) / 1000

    monotonic = time

    # --- driving -------------------------------------------------------------------------

    def handle(self, i: int, actions: list[Action]) -> None:
        """Run a replica's actions through node i's core (persist, execute, then send)."""
        self.nodes[i].core.run(actions)

    def submit(self, to: int, i: int) -> bytes:
        tx_id, env = request(i)
        if to not in self.down:
            self.handle(to, self.nodes[to].replica.on_request(tx_id, env))
        return tx_id

    def deliver(self, steps_max: int = 100_000) -> None:
        for _ in range(steps_max):
            if not self.queue:
                return
            src, dst, kind, payload = self.queue.popleft()
            if src in self.down or dst in self.down or (kind == "msg" and self.drop(src, dst, payload)):
                continue
            r = self.nodes[dst].replica
            if kind == "msg":
                self.handle(dst, r.on_message(payload))
            else:
                tx_id, env = wire.canonical_envelope(payload)
                self.handle(dst, r.on_request(tx_id, env))
        raise AssertionError("network never went quiet")

    def tick(self, ms: int) -> None:
        self.now += ms
        for i, node in enumerate(self.nodes):
            if i not in self.down:
                self.handle(i, node.replica.on_tick(self.now))
        self.deliver()

    def run_for(self, ms: int, step: int = 10) -> None:
        for _ in range(ms // step):
            self.tick(step)

    def restart(self, i: int) -> None:
        """Node i after kill -9: a new core and replica from what its store holds."""
        node = self.nodes[i]
        node.core = node._new_core()

    # --- inspection ------------------------------------------------------------------------

    def executed_digests(self, i: int) -> list[bytes]:
        return [wire.digest_of(e.header) for e in self.nodes[i].executed]

    def sign(self, signer: int, msg: wire.Body) -> bytes:
        body = wire.encode_body(msg)
        return wire.encode_signed(body, signer, self.cryptos[signer].sign(body))
