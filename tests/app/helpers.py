"""Small helpers shared by the ledger tests: run a batch in one write transaction, decode results."""

from __future__ import annotations

from collections.abc import Sequence

from node.app.codec import decode_result
from node.app.ledger import BatchOutcome, Ledger
from node.app.tx import Code, TxResult
from node.storage.kv import KVStore


class Chain:
    """A ledger over a store that executes consecutive heights, one write transaction each."""

    def __init__(self, ledger: Ledger, store: KVStore, time_ms: int = 1_000) -> None:
        self.ledger = ledger
        self.store = store
        self.time_ms = time_ms
        with store.read() as r:
            self.height = ledger.last_height(r)

    def run(self, envelopes: Sequence[bytes], time_ms: int | None = None) -> BatchOutcome:
        if time_ms is not None:
            self.time_ms = time_ms
        with self.store.write() as w:
            out = self.ledger.execute(w, self.height + 1, self.time_ms, envelopes)
        self.height += 1
        return out

    def results(self, envelopes: Sequence[bytes], time_ms: int | None = None) -> list[TxResult]:
        return [decode_result(r) for r in self.run(envelopes, time_ms).results]

    def one(self, envelope: bytes, time_ms: int | None = None) -> TxResult:
        return self.results([envelope], time_ms)[0]

    def codes(self, envelopes: Sequence[bytes], time_ms: int | None = None) -> list[Code]:
        return [r.code for r in self.results(envelopes, time_ms)]

    def violations(self) -> list[str]:
        with self.store.read() as r:
            return self.ledger.check_invariants(r)

    def balance(self, account_id: str, asset: str) -> tuple[int, int]:
        """(available, held) of account_id in asset; (0, 0) when none."""
        with self.store.read() as r:
            view = self.ledger.account(r, account_id)
        assert view is not None, f"no account {account_id}"
        for b in view.balances:
            if b.asset == asset:
                return b.available, b.held
        return 0, 0
