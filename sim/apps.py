"""State machines the simulator runs under consensus, as the node core executes them (in the
block's write transaction, over the node's store): a tiny echo ledger (consensus tested apart
from money rules) and the real ledger (node.app.Ledger)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ledger import merkle
from ledger.crypto import tx_id_of
from ledger.v1 import tx_pb2 as txpb
from node.storage import blocks
from node.storage.kv import KVWriter

ECHO_GENESIS_ROOT = hashlib.sha256(b"echo-genesis").digest()
_SEEN = b"s/e/"  # tx_id -> height it was first executed at


@dataclass(frozen=True)
class EchoOutcome:
    """What node.app.Ledger.execute returns (BatchOutcome), as far as the core reads it."""

    tx_ids: tuple[bytes, ...]
    results: tuple[bytes, ...]
    recorded: tuple[bool, ...]  # the tx_id's first execution
    results_root: bytes
    state_root: bytes
    consensus_time_ms: int
    postings: tuple[Any, ...] = ()
    codes: tuple[str, ...] = ()
    tree_root: bytes = b""  # what a checkpoint at this height signs beside state_root


class EchoLedger:
    """Records each tx_id once; the state root chains over what each block newly recorded."""

    def execute(self, w: KVWriter, height: int, timestamp_ms: int, envelopes: Sequence[bytes]) -> EchoOutcome:
        previous = blocks.read_head(w, ECHO_GENESIS_ROOT)
        assert height == previous.last_executed + 1, "echo ledger executed out of order"
        tx_ids: list[bytes] = []
        results: list[bytes] = []
        recorded: list[bool] = []
        fresh: list[bytes] = []
        for raw in envelopes:
            env = txpb.Envelope()
            env.ParseFromString(raw)
            tx_id = tx_id_of(env.body)
            tx_ids.append(tx_id)
            if w.get(_SEEN + tx_id) is not None:
                results.append(b"dup" + tx_id)
                recorded.append(False)
            else:
                w.put(_SEEN + tx_id, height.to_bytes(8, "big"))
                fresh.append(tx_id)
                results.append(b"ok" + tx_id)
                recorded.append(True)
        h = hashlib.sha256(previous.state_root + height.to_bytes(8, "big"))
        for t in sorted(fresh):
            h.update(t)
        state_root = h.digest()
        return EchoOutcome(
            tuple(tx_ids),
            tuple(results),
            tuple(recorded),
            merkle.root(results),
            state_root,
            timestamp_ms,
            codes=tuple("OK" if r else "DUPLICATE" for r in recorded),
            tree_root=hashlib.sha256(b"echo-tree" + state_root).digest(),
        )


def echo_envelope(chain_id: str, nonce: bytes, memo: str) -> bytes:
    body = txpb.TxBody(chain_id=chain_id, nonce=nonce, memo=memo).SerializeToString()
    return txpb.Envelope(body=body).SerializeToString()
