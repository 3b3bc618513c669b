"""A tiny synchronous cluster for replica unit tests: messages are delivered in FIFO order
until the network is quiet; tests decide who is down, what is dropped and when time passes."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ledger import merkle
from node.config import NodeLimits
from node.pbft import wire
from node.pbft.actions import (
    Action,
    Attested,
    Broadcast,
    Execute,
    FetchBlocks,
    ForwardRequests,
    Persist,
    Send,
)
from node.pbft.config import ReplicaConfig
from node.pbft.replica import Replica
from sim.apps import echo_envelope
from sim.crypto import KeyedHashCrypto, keyed_hash_cryptos

CHAIN = "unit-chain"
GENESIS_ROOT = hashlib.sha256(b"genesis").digest()


def request(i: int) -> tuple[bytes, bytes]:
    env = echo_envelope(CHAIN, i.to_bytes(16, "big"), f"r{i}")
    return wire.canonical_envelope(env)


def body_of(peer: bytes) -> wire.Body:
    signed, _ = wire.decode_peer(peer)
    body, _, _ = wire.decode_signed(signed)
    return wire.decode_body(body)


@dataclass
class Node:
    replica: Replica
    crypto: KeyedHashCrypto
    journal: dict[bytes, bytes] = field(default_factory=dict)
    executed: list[Execute] = field(default_factory=list)
    attested: list[Attested] = field(default_factory=list)
    fetches: list[FetchBlocks] = field(default_factory=list)
    blocks: dict[int, bytes] = field(default_factory=dict)
    batches: list[list[Action]] = field(default_factory=list)  # every action list returned
    state_root: bytes = GENESIS_ROOT


class Cluster:
    def __init__(self, f: int = 1, **config: Any) -> None:
        self.n = 3 * f + 1
        self.f = f
        self.config = dict(config)
        self.cryptos = keyed_hash_cryptos(self.n, seed=1)
        self.nodes = [
            Node(Replica(self.config_for(i), self.cryptos[i], {}, 0, GENESIS_ROOT, now_ms=0), self.cryptos[i])
            for i in range(self.n)
        ]
        self.queue: deque[tuple[int, int, str, bytes]] = deque()  # (from, to, kind, payload)
        self.down: set[int] = set()
        self.drop: Callable[[int, int, bytes], bool] = lambda src, dst, msg: False
        self.now = 0

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

    # --- driving -------------------------------------------------------------------------

    def handle(self, i: int, actions: list[Action]) -> None:
        node = self.nodes[i]
        node.batches.append(list(actions))
        for a in actions:
            if isinstance(a, Persist):
                if a.value is None:
                    node.journal.pop(a.key, None)
                else:
                    node.journal[a.key] = a.value
            elif isinstance(a, Broadcast):
                for j in range(self.n):
                    if j != i:
                        self.queue.append((i, j, "msg", a.message))
            elif isinstance(a, Send):
                self.queue.append((i, a.to, "msg", a.message))
            elif isinstance(a, ForwardRequests):
                for env in a.envelopes:
                    self.queue.append((i, a.to, "req", env))
            elif isinstance(a, Execute):
                node.executed.append(a)
                node.blocks[a.sequence] = wire.encode_certified_block(a.header, a.envelopes, a.certificate)
                node.state_root = hashlib.sha256(node.state_root + wire.digest_of(a.header)).digest()
                results_root = merkle.root(list(a.tx_ids))
                self.handle(i, node.replica.on_executed(a.sequence, node.state_root, results_root))
            elif isinstance(a, Attested):
                node.attested.append(a)
            elif isinstance(a, FetchBlocks):
                node.fetches.append(a)

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
        node = self.nodes[i]
        last = node.executed[-1].sequence if node.executed else 0
        node.replica = Replica(
            self.config_for(i), node.crypto, dict(node.journal), last, node.state_root, now_ms=self.now
        )

    # --- inspection ------------------------------------------------------------------------

    def executed_digests(self, i: int) -> list[bytes]:
        return [wire.digest_of(e.header) for e in self.nodes[i].executed]

    def sign(self, signer: int, msg: wire.Body) -> bytes:
        body = wire.encode_body(msg)
        return wire.encode_signed(body, signer, self.cryptos[signer].sign(body))
