#!/usr/bin/env python3
"""Golden run: a fixed, seeded workload through four nodes' execution paths, one digest.

Four replicas (real Replica, Ed25519, real Ledger) each with the node's action interpreter over
an in-memory store (node/core.py: NodeCore), a FIFO network that records every byte sent, virtual time. The workload:
accounts, mints, transfers (some failing), escrows, retries of executed transactions, and a
replica cut off for a while that catches up from a peer's certified blocks. Printed: one
SHA-256 over every byte on the wire (in order), every store's full contents (blocks, results,
attestations, state, journal, history index), and each block's hash and state root.

    python scripts/golden.py            # prints the digest (and a few counts)

Run it before and after a refactor that must not change results, roots or wire bytes.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from node.app import queries  # noqa: E402
from node.app.ledger import Ledger  # noqa: E402
from node.config import NodeLimits  # noqa: E402
from node.core import CoreConfig, NodeCore  # noqa: E402
from node.log import EventLog  # noqa: E402
from node.pbft import wire  # noqa: E402
from node.pbft.config import ReplicaConfig  # noqa: E402
from node.pbft.crypto import Ed25519Crypto  # noqa: E402
from node.pbft.replica import Replica  # noqa: E402
from node.storage import blocks  # noqa: E402
from node.storage.memory import MemoryStore  # noqa: E402
from sim.factory import Factory  # noqa: E402

N = 4
CHAIN = "golden-chain"
T0_MS = 1_700_000_000_000
TICK_MS = 50
FETCH_MAX = 8


class Net:
    """FIFO delivery; every message is hashed as it is sent."""

    def __init__(self) -> None:
        self.queue: deque[tuple[int, int, str, Any]] = deque()
        self.wire = hashlib.sha256()
        self.sent = 0
        self.down: set[int] = set()
        self.fetches: list[tuple[int, int, int, int]] = []  # (node, from_height, round, peer asked)

    def record(self, src: int, dst: int, kind: str, payload: bytes) -> None:
        self.wire.update(b"%d>%d:%s:%d:" % (src, dst, kind.encode(), len(payload)) + payload)
        self.sent += 1


class NodeNet:
    def __init__(self, net: Net, me: int) -> None:
        self.net = net
        self.me = me

    def send(self, to: int, message: bytes) -> None:
        self.net.record(self.me, to, "msg", message)
        self.net.queue.append((self.me, to, "msg", message))

    def broadcast(self, message: bytes) -> None:
        for to in range(N):
            if to != self.me:
                self.send(to, message)

    def forward(self, to: int, envelopes: Any) -> None:
        for env in envelopes:
            self.net.record(self.me, to, "fwd", env)
        self.net.queue.append((self.me, to, "fwd", list(envelopes)))

    def is_up(self, replica: int) -> bool:
        return replica not in self.net.down


class Clock:
    def __init__(self) -> None:
        self.now_ms = T0_MS

    def time(self) -> float:
        return self.now_ms / 1000

    def monotonic(self) -> float:
        return self.now_ms / 1000


class Fetcher:
    def __init__(self, net: Net, me: int) -> None:
        self.net = net
        self.me = me

    def fetch(self, peer: int, from_height: int, round: int) -> None:
        self.net.fetches.append((self.me, from_height, round, peer))

    def cancel_fetches(self) -> None:
        return None


def make_node(fx: Factory, net: Net, i: int, logdir: Path, clock: Clock) -> NodeCore:
    """Replica i: the node core over an in-memory store."""
    store = MemoryStore()
    genesis_root = queries.genesis_state_root(fx.genesis)
    mid = fx.genesis.members[i].member_id
    crypto = Ed25519Crypto(fx.node_keys[mid], fx.genesis.node_keys(), fx.chain_id)
    replica = Replica(replica_config(i), crypto, {}, 0, genesis_root, now_ms=T0_MS)
    config = CoreConfig(
        tick_ms=TICK_MS, pending_requests_max=10_000, pending_ttl_ms=60_000, relay_delay_ms=400
    )
    log = EventLog(mid, logdir / f"{mid}.log")
    return NodeCore(
        N,
        store,
        Ledger(fx.genesis),
        replica,
        NodeNet(net, i),
        Fetcher(net, i),
        log,
        clock,
        config,
        genesis_root,
        i,
    )


def replica_config(i: int) -> ReplicaConfig:
    return NodeLimits(
        batch_size_max=8,
        batch_delay_ms=0,
        batch_delay_per_tps_us=0,
        checkpoint_interval=4,
        log_window=8,
        view_change_timeout_ms=5_000,
        retransmit_ms=1_000,
        pending_requests_max=10_000,
        peer_message_bytes_max=16 << 20,
    ).replica_config(N, 1, i, CHAIN)


def workload(fx: Factory) -> list[bytes]:
    banks = [m.member_id for m in fx.genesis.members]
    envs: list[bytes] = []
    names = [f"c{i}" for i in range(8)]
    for k, name in enumerate(names):
        envs.append(fx.open_account(banks[k % N], name, fx.client(name)))
    for k, name in enumerate(names):
        envs.append(fx.mint(f"USD.{banks[k % N]}", name, 10_000 + k))
    for j in range(60):
        src, dst = names[j % 8], names[(j * 3 + 1) % 8]
        if src == dst:
            dst = names[(j + 1) % 8]
        asset = f"USD.{banks[(j % 8) % N]}"
        amount = 50_000 if j % 11 == 0 else 1 + j  # some overdraw: failures are results too
        envs.append(fx.transfer([(src, dst, asset, amount)]))
    envs.append(fx.escrow_create("e1", "c0", "c1", f"USD.{banks[0]}", 100, T0_MS + 3_600_000))
    envs.append(fx.escrow_post("e1", 60, "c0"))
    envs.append(fx.escrow_create("e2", "c4", "c5", f"USD.{banks[0]}", 10, T0_MS + 1))  # expires
    envs.append(fx.redeem("c2", f"USD.{banks[2]}", 7))
    envs.append(fx.set_frozen(banks[3], "c3"))
    envs.append(fx.transfer([("c3", "c0", f"USD.{banks[3]}", 1)]))  # frozen: refused
    envs.extend(envs[20:26])  # retries of executed transactions: their first results stand
    return envs


def main() -> int:
    fx = Factory(banks=N, seed=20, chain_id=CHAIN)
    net = Net()
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock()
        nodes = [make_node(fx, net, i, Path(tmp), clock) for i in range(N)]
        now = T0_MS

        def deliver() -> None:
            while net.queue:
                src, dst, kind, payload = net.queue.popleft()
                if src in net.down or dst in net.down:
                    continue
                node = nodes[dst]
                if kind == "msg":
                    node.run(node.replica.on_message(payload))
                else:
                    for env in payload:
                        tx_id, canonical = wire.canonical_envelope(env)
                        node.run(node.replica.on_request(tx_id, canonical))
            while net.fetches:  # catch-up: always served by the lowest live peer, for determinism
                i, from_height, round, asked = net.fetches.pop(0)
                if i in net.down:
                    continue
                peer = min(p for p in range(N) if p != i and p not in net.down)
                nodes[i].on_fetched(round, asked, nodes[peer].fetch_blocks(from_height, FETCH_MAX))
                while nodes[i].run_group():
                    pass
                if net.queue or net.fetches:
                    deliver()

        def tick() -> None:
            nonlocal now
            now += TICK_MS
            clock.now_ms = now
            for i, node in enumerate(nodes):
                if i not in net.down:
                    node.run(node.replica.on_tick(now))
            deliver()

        envs = workload(fx)
        chunk = 6
        for rnd, start in enumerate(range(0, len(envs), chunk)):
            if rnd == 4:
                net.down.add(3)  # replica 3 misses a stretch of blocks ...
            if rnd == 9:
                net.down.discard(3)  # ... and comes back: it catches up from certified blocks
                for i in range(N):
                    if i != 3:
                        nodes[i].run(nodes[i].replica.on_peer_up(3))
                        nodes[3].run(nodes[3].replica.on_peer_up(i))
            to = rnd % 3  # replica 3 never takes client requests
            for env in envs[start : start + chunk]:
                tx_id, canonical = wire.canonical_envelope(env)
                nodes[to].run(nodes[to].replica.on_request(tx_id, canonical))
            deliver()
            for _ in range(4):
                tick()
        for _ in range(200):
            tick()
            heads = {n.head.last_executed for n in nodes}
            if len(heads) == 1 and all(not n.replica.pending for n in nodes):
                break

        digest = hashlib.sha256(net.wire.digest())
        lines: list[str] = []
        for i, node in enumerate(nodes):
            with node.store.read() as r:
                head = blocks.read_head(r, queries.genesis_state_root(fx.genesis))
                for key, value in r.scan(b""):
                    digest.update(b"%d:%d:" % (i, len(key)) + key + b"%d:" % len(value) + value)
                for h in range(1, head.last_executed + 1):
                    raw = blocks.get_block(r, h)
                    assert raw is not None
                    header = wire.decode_certified_block(raw)[0]
                    outcome = blocks.get_outcome(r, h)
                    assert outcome is not None
                    lines.append(f"r{i} {h} {wire.digest_of(header).hex()} {outcome[1].hex()}")
            lines.append(f"r{i} head {head.last_executed} {head.state_root.hex()}")
        for line in lines:
            digest.update(line.encode())
        executed = {n.head.last_executed for n in nodes}
        print(f"heights {sorted(executed)} messages {net.sent} txs {len(envs)}")
        print(f"golden {digest.hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
