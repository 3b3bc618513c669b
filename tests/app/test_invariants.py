"""check_invariants must find real violations (otherwise every test that expects [] from it is
vacuous), and execution must keep to its key space."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from node.app import state as st
from node.app.ledger import Ledger
from node.app.tx import Code
from node.storage.kv import KVWriter
from node.storage.memory import MemoryStore
from sim.factory import Factory
from tests.app.helpers import Chain

USD_A = "USD.BANK-A"


def funded_chain() -> tuple[Factory, Chain]:
    fx = Factory()
    chain = Chain(Ledger(fx.genesis), MemoryStore())
    envs = [
        fx.open_account("BANK-A", "alice", fx.client("alice")),
        fx.open_account("BANK-B", "bob", fx.client("bob")),
        fx.mint(USD_A, "alice", 100),
        fx.escrow_create("e1", "alice", "bob", USD_A, 30, 9_000),
    ]
    assert chain.codes(envs) == [Code.OK] * 4
    assert chain.violations() == []
    return fx, chain


CORRUPTIONS: dict[str, tuple[Callable[[KVWriter], None], str]] = {
    "balance out of thin air": (lambda w: st.put_balance(w, "bob", USD_A, 5), "minted - redeemed"),
    "held without an escrow": (lambda w: st.put_held(w, "bob", USD_A, 5), "held amounts"),
    "supply drift": (lambda w: st.put_supply(w, USD_A, 101, 0), "minted - redeemed"),
    "unknown asset": (lambda w: st.put_balance(w, "bob", "XXX.BANK-A", 1), "unknown asset"),
    "balance of no account": (lambda w: st.put_balance(w, "ghost", USD_A, 1), "no such account"),
    "amount past amount_max": (
        lambda w: w.put(st.BALANCE + b"alice\x00" + USD_A.encode(), st.u64(10**16)),
        "amount",
    ),
    "lost expiry entry": (lambda w: w.delete(st.expiry_key(9_000, "e1")), "expiry index"),
    "stray expiry entry": (lambda w: w.put(st.expiry_key(5, "e9"), b""), "expiry index"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_check_invariants_reports_each_corruption(name: str) -> None:
    _, chain = funded_chain()
    corrupt, expected = CORRUPTIONS[name]
    with chain.store.write() as w:
        corrupt(w)
    violations = chain.violations()
    assert violations, f"{name} went unnoticed"
    assert any(expected in v for v in violations), violations


def test_execution_writes_only_its_own_key_space() -> None:
    fx = Factory()
    store = MemoryStore()
    with store.write() as w:
        w.put(b"b/block-1", b"block")
        w.put(b"j/journal", b"entry")
    chain = Chain(Ledger(fx.genesis), store)
    chain.run([fx.open_account("BANK-A", "alice", fx.client("alice")), fx.mint(USD_A, "alice", 5), b"junk"])
    with store.read() as r:
        keys = [k for k, _ in r.scan(b"")]
        assert r.get(b"b/block-1") == b"block" and r.get(b"j/journal") == b"entry"
    assert [k for k in keys if not k.startswith(b"s/")] == [b"b/block-1", b"j/journal"]


def test_same_batches_same_root_and_any_difference_shows() -> None:
    fx = Factory()
    batch = [fx.open_account("BANK-A", "alice", fx.client("alice")), fx.mint(USD_A, "alice", 5)]
    roots = []
    for time_ms in (1_000, 1_000, 1_001):
        chain = Chain(Ledger(fx.genesis), MemoryStore())
        roots.append(chain.run(batch, time_ms=time_ms).state_root)
    assert roots[0] == roots[1] != roots[2]
    chain = Chain(Ledger(fx.genesis), MemoryStore())
    assert chain.run(batch[:1], time_ms=1_000).state_root != roots[0]
