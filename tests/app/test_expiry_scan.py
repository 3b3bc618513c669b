"""The escrow-expiry pre-pass reads only the due escrows, not every pending one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.app.ledger import Ledger
from node.app.tx import Code
from node.storage.kv import KVStore
from node.storage.lmdb_store import LmdbStore
from node.storage.memory import MemoryStore
from sim.factory import Factory
from tests.app.helpers import Chain
from tests.storage.test_stores import count_reads

USD_A = "USD.BANK-A"
PENDING = 300


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KVStore]:
    s: KVStore = (
        MemoryStore() if request.param == "memory" else LmdbStore(tmp_path / "db", map_size_bytes=1 << 26)
    )
    try:
        yield s
    finally:
        s.close()


def test_expiry_pre_pass_does_not_read_all_pending_escrows(store: KVStore) -> None:
    """Regression: the pre-pass scanned b"s/x/" through a materializing write-txn scan, so every
    block read every pending escrow's index entry although it stops at the first one not due."""
    fx = Factory(banks=4, currencies=("USD",))
    ledger = Ledger(fx.genesis)
    chain = Chain(ledger, store)
    setup = [
        fx.open_account("BANK-A", "alice", fx.client("alice")),
        fx.open_account("BANK-A", "carol", fx.client("carol")),
        fx.mint(USD_A, "alice", 10_000, "d-1"),
    ]
    assert chain.codes(setup, time_ms=1_000) == [Code.OK] * 3
    escrows = [
        fx.escrow_create(f"far-{i:04d}", "alice", "carol", USD_A, 1, 1_000_000) for i in range(PENDING)
    ]
    escrows += [fx.escrow_create(f"soon-{i}", "alice", "carol", USD_A, 1, 2_000) for i in range(2)]
    assert chain.codes(escrows, time_ms=1_500) == [Code.OK] * (PENDING + 2)

    with store.write() as w:
        reads = count_reads(store, w)
        out = ledger.execute(w, chain.height + 1, 3_000, [])
    assert out.expired_escrows == ("soon-0", "soon-1")
    assert reads[0] < 50, f"the pre-pass read {reads[0]} records for {PENDING} pending escrows"
    with store.read() as r:
        assert ledger.check_invariants(r) == []
