"""Property tests over random sequences of valid and invalid transactions.

Each example builds a few blocks of random operations (several banks, assets and accounts;
transfers incl. multi-leg PvP, mint, redeem, escrow create/post/void/expire, freeze, retries,
forged signatures and garbage) and runs them on a MemoryStore and on an LmdbStore. It checks:
- per asset: sum of available + held over all accounts == minted - redeemed, and minted -
  redeemed equals an independent model summed from the OK mint/redeem results;
- no balance is negative (and the ledger's own check_invariants finds nothing);
- a tx_id executes at most once: it is OK in at most one fresh execution, and every later
  appearance of a recorded tx_id returns the first result's exact bytes;
- the two stores give identical results and state roots after every block;
- every account's (available, held) equals a naive model that applies only the OK results
  and the reported expiries (so rejections changed nothing and expiry happened on time).
"""

from __future__ import annotations

import random
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.v1 import tx_pb2
from node.app.codec import decode_result
from node.app.ledger import Ledger
from node.app.tx import Code
from node.storage.lmdb_store import LmdbStore
from node.storage.memory import MemoryStore
from tests.app.helpers import Chain
from tests.app.histories import (
    ACCOUNTS,
    BANKS,
    ESCROWS,
    FX,
    SEED_ESCROWS,
    Builder,
    Model,
    account_totals,
    ledger_view,
    new_factory,
)

# Weighted by repetition: mostly known accounts, assets and small amounts, so that most
# operations can succeed; the odd ghost account, unknown asset and out-of-range amount remain.
acct = st.sampled_from([a for a, _ in ACCOUNTS] * 6 + ["ghost"])
asset = st.sampled_from(FX.assets[:4] * 3 + FX.assets[4:] + ["JPY.BANK-A"])
amount = st.one_of(*[st.integers(1, 300)] * 8, st.integers(1, 5_000), st.sampled_from([0, -1, 5_001, 2**62]))
ref = st.sampled_from(["r1", "r2", "r3", "r4", "r5", "r6"])
signing = st.sampled_from(["ok"] * 8 + ["none", "stranger", "forged"])
bank_for = st.sampled_from(["own"] * 4 + BANKS)
leg = st.tuples(acct, acct, asset, amount).filter(lambda g: g[0] != g[1] or g[0] == "a1")  # a1->a1: MALFORMED

ops = st.one_of(
    st.tuples(st.just("open"), st.sampled_from(ACCOUNTS)),
    st.tuples(st.just("freeze"), acct, st.sampled_from([True, False, False]), bank_for),
    st.tuples(st.just("mint"), asset, acct, amount, ref, signing),
    st.tuples(st.just("transfer"), st.lists(leg, min_size=1, max_size=4), signing),
    st.tuples(st.just("transfer"), st.lists(leg, min_size=1, max_size=2), signing),
    st.tuples(st.just("transfer"), st.lists(leg, min_size=1, max_size=1), signing),
    st.tuples(st.just("redeem"), acct, asset, amount, ref, signing),
    st.tuples(
        st.just("escrow"), st.sampled_from(ESCROWS), acct, acct, asset, amount, st.integers(-1_000, 25_000)
    ),
    st.tuples(st.just("escrow"), st.sampled_from(ESCROWS), acct, acct, asset, amount, st.integers(1, 9_000)),
    st.tuples(
        st.just("post"), st.sampled_from(ESCROWS), st.integers(1, 300), st.sampled_from([True, True, False])
    ),
    st.tuples(st.just("void"), st.sampled_from(ESCROWS), st.sampled_from(["payer", "payee", "stranger"])),
    st.tuples(st.just("retry"), st.integers(0, 1_000)),
    st.tuples(st.just("garbage"), st.binary(max_size=40)),
)
blocks = st.lists(
    st.tuples(st.integers(0, 6_000), st.lists(ops, min_size=2, max_size=12)), min_size=2, max_size=5
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=blocks)
def test_random_histories_keep_the_invariants(blocks: list[tuple[int, list[tuple[Any, ...]]]]) -> None:
    check_history(blocks)


def seeded_history(
    seed: int, block_count: int, ops_per_block: int
) -> list[tuple[int, list[tuple[Any, ...]]]]:
    """Longer histories than hypothesis likes to build, from a fixed seed (so they replay)."""
    rnd = random.Random(seed)
    accts = [a for a, _ in ACCOUNTS]

    def amt() -> int:
        return rnd.choice([rnd.randint(1, 300)] * 8 + [rnd.randint(1, 5_000), 0, -1, 5_001])

    def one(t: int) -> tuple[Any, ...]:
        a, b = rnd.sample(accts, 2)
        asset = rnd.choice(FX.assets[:4] * 3 + FX.assets[4:])
        eid = rnd.choice(ESCROWS[:3] + [f"s{i}" for i in range(24)])  # e1..e3 exist; ids are single-use
        kind = rnd.choice(
            ["mint", "transfer", "transfer", "pvp", "redeem", "escrow", "post", "void", "freeze", "retry"]
        )
        if kind == "mint":
            return ("mint", asset, a, amt(), f"r{rnd.randint(1, 30)}", rnd.choice(["ok"] * 9 + ["forged"]))
        if kind == "transfer":
            return ("transfer", [(a, b, asset, amt())], rnd.choice(["ok"] * 9 + ["none"]))
        if kind == "pvp":
            return ("transfer", [(a, b, asset, amt()), (b, a, rnd.choice(FX.assets[:4]), amt())], "ok")
        if kind == "redeem":
            return ("redeem", a, asset, amt(), f"p{rnd.randint(1, 30)}", "ok")
        if kind == "escrow":
            # Round amounts and times, so that posts hit "exactly the held amount (+1)" and
            # expiries land exactly on a block's time.
            amount = rnd.choice([50, 100, 150, amt()])
            return (
                "escrow",
                eid,
                a,
                b,
                asset,
                amount,
                t + rnd.choice([-500, 0, 0, 500, 20_000, 20_500, *range(1_000, 12_001, 500)]),
            )
        if kind == "post":
            return (
                "post",
                eid,
                rnd.choice([50, 51, 100, 101, 150, 151, rnd.randint(1, 300)]),
                rnd.random() < 0.9,
            )
        if kind == "void":
            return ("void", eid, rnd.choice(["payer", "payee", "stranger"]))
        if kind == "freeze":
            return ("freeze", a, rnd.random() < 0.3, "own")
        return ("retry", rnd.randint(0, 1_000))

    out, t = [], 0
    for _ in range(block_count):
        advance_ms = rnd.choice([0, 500, 1_000, 1_500, 3_000])
        t += advance_ms
        out.append((advance_ms, [one(t) for _ in range(ops_per_block)]))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_seeded_long_histories_keep_the_invariants(seed: int) -> None:
    check_history(seeded_history(seed, block_count=10, ops_per_block=30))


def check_history(blocks: list[tuple[int, list[tuple[Any, ...]]]]) -> None:
    fx = new_factory()
    builder = Builder(fx)
    with tempfile.TemporaryDirectory() as tmp:
        lmdb_store = LmdbStore(Path(tmp) / "db", map_size_bytes=1 << 24, sync=False)
        try:
            mem = Chain(Ledger(fx.genesis), MemoryStore(), time_ms=0)
            disk = Chain(Ledger(fx.genesis), lmdb_store, time_ms=0)
            model_outstanding: dict[str, int] = defaultdict(int)
            first_result: dict[bytes, bytes] = {}
            ok_fresh: set[bytes] = set()
            model = Model(fx)

            def run_block(envelopes: list[bytes], time_ms: int) -> None:
                out_mem = mem.run(envelopes, time_ms)
                out_disk = disk.run(envelopes, time_ms)
                assert out_mem == out_disk  # results, roots, expiries: identical on both stores
                model.expire(out_mem.expired_escrows, out_mem.consensus_time_ms)
                for env, raw in zip(envelopes, out_mem.results, strict=True):
                    res = decode_result(raw)
                    if res.tx_id in first_result:
                        assert raw == first_result[res.tx_id], "a retry did not return the first result"
                        continue
                    assert res.height == out_mem.height, "an unrecorded tx_id answered with an old result"
                    with mem.store.read() as r:
                        stored = mem.ledger.tx_result(r, res.tx_id)
                    assert res.final == (stored is not None), "TxResult.final disagrees with the state"
                    if not model.records(env, res.code):
                        assert stored is None, f"{res.code.name} consumed the tx_id"
                    else:
                        assert stored == raw, f"{res.code.name} was not recorded under the tx_id"
                        first_result[res.tx_id] = raw
                    if res.code == Code.OK:
                        assert res.tx_id not in ok_fresh, "a tx_id executed twice"
                        ok_fresh.add(res.tx_id)
                        model.apply(env, out_mem.consensus_time_ms)
                        body = tx_pb2.TxBody.FromString(tx_pb2.Envelope.FromString(env).body)
                        if body.HasField("mint"):
                            model_outstanding[body.mint.asset] += body.mint.amount
                        elif body.HasField("redeem"):
                            model_outstanding[body.redeem.asset] -= body.redeem.amount

            # Open every account first so that most random operations have something to act on.
            run_block([builder.build(("open", a)) for a in ACCOUNTS], 0)
            # ... and some money in the four EUR assets (2,500 of 5,000 possible each).
            seed = [
                fx.mint(a, account, 500, f"seed-{account}") for a in FX.assets[:4] for account, _ in ACCOUNTS
            ]
            run_block(seed, 0)
            escrows = [("escrow", eid, src, dst, FX.assets[0], 100, 15_000) for eid, src, dst in SEED_ESCROWS]
            run_block([builder.build(op) for op in escrows], 0)
            time_ms = 0
            for advance_ms, block_ops in blocks:
                time_ms += advance_ms
                run_block([builder.build(op) for op in block_ops], time_ms)
                # Conservation, from three independent angles.
                with mem.store.read() as r:
                    supply = {s.asset: s.outstanding for s in mem.ledger.supply(r)}
                    assert mem.ledger.check_invariants(r) == []
                assert {a: n for a, n in supply.items() if n} == {
                    a: n for a, n in model_outstanding.items() if n
                }
                assert {a: n for a, n in account_totals(mem).items() if n} == {
                    a: n for a, n in supply.items() if n
                }
                with lmdb_store.read() as r:
                    assert disk.ledger.check_invariants(r) == []
                assert ledger_view(mem) == model.view()
            with mem.store.read() as r1, lmdb_store.read() as r2:
                assert list(r1.scan(b"")) == list(r2.scan(b""))
        finally:
            lmdb_store.close()
