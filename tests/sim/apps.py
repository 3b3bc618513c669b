"""State machines the simulator runs under consensus: a tiny echo app (consensus tested apart
from money rules) and the real ledger (node.app.Ledger on node.storage.memory.MemoryStore)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ledger import merkle
from ledger.v1 import tx_pb2 as txpb


@dataclass(frozen=True)
class Outcome:
    state_root: bytes
    results_root: bytes
    first_executions: tuple[bytes, ...]  # tx_ids whose effect applied in this block
    tree_root: bytes = b""  # what a checkpoint at this height signs beside state_root


class App(Protocol):
    last_executed: int
    state_root: bytes

    def execute(self, height: int, timestamp_ms: int, envelopes: Sequence[bytes]) -> Outcome: ...


class EchoApp:
    """Records each tx_id once; the state root chains over what each block newly recorded."""

    def __init__(self) -> None:
        self.last_executed = 0
        self.state_root = hashlib.sha256(b"echo-genesis").digest()
        self.seen: set[bytes] = set()

    def execute(self, height: int, timestamp_ms: int, envelopes: Sequence[bytes]) -> Outcome:
        assert height == self.last_executed + 1, "echo app executed out of order"
        results: list[bytes] = []
        fresh: list[bytes] = []
        for raw in envelopes:
            env = txpb.Envelope()
            env.ParseFromString(raw)
            tx_id = hashlib.sha256(env.body).digest()
            if tx_id in self.seen:
                results.append(b"dup" + tx_id)
            else:
                self.seen.add(tx_id)
                fresh.append(tx_id)
                results.append(b"ok" + tx_id)
        h = hashlib.sha256(self.state_root + height.to_bytes(8, "big"))
        for t in sorted(fresh):
            h.update(t)
        self.state_root = h.digest()
        self.last_executed = height
        tree_root = hashlib.sha256(b"echo-tree" + self.state_root).digest()
        return Outcome(self.state_root, merkle.root(results), tuple(fresh), tree_root)


def echo_envelope(chain_id: str, nonce: bytes, memo: str) -> bytes:
    body = txpb.TxBody(chain_id=chain_id, nonce=nonce, memo=memo).SerializeToString()
    return txpb.Envelope(body=body).SerializeToString()


class LedgerApp:
    """node.app.Ledger over an in-memory store: one write transaction per block, as the node."""

    def __init__(self, genesis: object, tree_interval: int) -> None:
        from node.app.ledger import Ledger
        from node.storage.memory import MemoryStore

        self.ledger = Ledger(genesis, tree_interval=tree_interval)  # type: ignore[arg-type]
        self.store = MemoryStore()
        self.last_executed = 0
        self.state_root = b""

    def execute(self, height: int, timestamp_ms: int, envelopes: Sequence[bytes]) -> Outcome:
        from node.app.tx import Code

        with self.store.write() as w:
            out = self.ledger.execute(w, height, timestamp_ms, envelopes)
        first: list[bytes] = []
        for tx_id, raw in zip(out.tx_ids, out.results, strict=True):
            r = txpb.TxResult()
            r.ParseFromString(raw)
            if r.height == height and int(r.code) != int(Code.DUPLICATE):
                first.append(tx_id)
        self.last_executed = height
        self.state_root = out.state_root
        return Outcome(out.state_root, out.results_root, tuple(first), out.tree_root)
