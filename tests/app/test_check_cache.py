"""CheckCache: a node parses and verifies each admitted envelope once, and execution agrees
with an uncached check byte for byte."""

from __future__ import annotations

import pytest

from ledger.crypto import SigningKey
from node.app.codec import decode_result
from node.app.ledger import Ledger
from node.app.tx import CheckedTx, Code, InvalidTransaction
from node.app.validate import CheckCache, decode_and_verify
from node.storage.memory import MemoryStore
from sim.factory import Factory
from tests.app.helpers import Chain


class CountingVerify:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(
        self, public_key: bytes, signature: bytes, domain: bytes, chain_id: str, body: bytes
    ) -> bool:
        from ledger.crypto import verify

        self.calls += 1
        return verify(public_key, signature, domain, chain_id, body)


def admit(cache: CheckCache, raw: bytes) -> CheckedTx:
    checked = cache.check(raw)
    cache.keep(checked)
    return checked


def test_check_keep_then_take_verifies_once_and_forgets() -> None:
    fx = Factory()
    raw = fx.mint(fx.assets[0], "acct-1", 5)
    verify = CountingVerify()
    cache = CheckCache(fx.genesis, verify)
    unkept = cache.check(raw)
    assert len(cache) == 0 and verify.calls == 1  # checked, not kept: the node may refuse it
    admitted = admit(cache, raw)
    assert admitted == unkept and verify.calls == 2
    assert admit(cache, bytes(bytearray(raw))) is admitted  # equal bytes, another object
    assert verify.calls == 2 and len(cache) == 1 and cache.kept_bytes == len(raw)
    assert cache.take(raw) is admitted and cache.hits == 1 and len(cache) == 0
    again = cache.take(raw)  # forgotten: checked afresh, not kept
    assert again == decode_and_verify(fx.genesis, raw) and verify.calls == 3 and len(cache) == 0
    assert cache.kept_bytes == 0


def test_failures_are_never_kept() -> None:
    fx = Factory()
    forged = fx.mint(fx.assets[0], "acct-1", 5, signers=[SigningKey(b"\x09" * 32)])
    good = fx.mint(fx.assets[0], "acct-1", 5)
    tampered = good[:-1] + bytes([good[-1] ^ 1])  # the last signature byte flipped
    over = fx.mint(fx.assets[0], "acct-1", fx.genesis.limits.amount_max + 1)
    cache = CheckCache(fx.genesis)
    with pytest.raises(InvalidTransaction) as bad_sig:
        admit(cache, tampered)
    assert bad_sig.value.code == Code.BAD_SIGNATURE
    with pytest.raises(InvalidTransaction) as too_much:
        admit(cache, over)  # decodes and verifies, but admission refuses its amount
    assert too_much.value.code == Code.AMOUNT_OUT_OF_RANGE
    admit(cache, forged)  # a valid signature by a stranger passes the stateless check
    assert len(cache) == 1
    with pytest.raises(InvalidTransaction):
        cache.take(tampered)


def test_oldest_entries_leave_past_the_bound() -> None:
    fx = Factory()
    raws = [fx.mint(fx.assets[0], "acct-1", n) for n in range(1, 5)]
    cache = CheckCache(fx.genesis, entries_max=2)
    for raw in raws:
        admit(cache, raw)
    assert len(cache) == 2
    cache.take(raws[0])
    cache.take(raws[3])
    assert cache.hits == 1  # raws[0] had left; raws[3] was still kept


def test_oldest_entries_leave_past_the_byte_bound() -> None:
    fx = Factory()
    raws = [fx.mint(fx.assets[0], "acct-1", n, memo="m" * 10 * n) for n in range(1, 5)]
    cache = CheckCache(fx.genesis, bytes_max=len(raws[2]) + len(raws[3]))
    for raw in raws:
        admit(cache, raw)
    assert len(cache) == 2 and cache.kept_bytes == len(raws[2]) + len(raws[3])
    assert cache.take(raws[1]) is not None and cache.hits == 0  # had left, checked afresh
    cache.take(raws[2])
    assert cache.hits == 1 and cache.kept_bytes == len(raws[3])


def test_execution_through_a_shared_cache_matches_a_plain_ledger() -> None:
    fx = Factory()
    alice, bob = fx.client("alice"), fx.client("bob")
    member = fx.genesis.members[0].member_id
    asset = fx.assets[0]
    setup = [
        fx.open_account(member, "alice", alice),
        fx.open_account(member, "bob", bob),
        fx.mint(asset, "alice", 100),
    ]
    txs = [fx.transfer([("alice", "bob", asset, n)]) for n in (10, 20, 200)]
    txs.append(fx.transfer([("alice", "bob", asset, 1)], signers=[bob]))  # not the owner
    cache = CheckCache(fx.genesis)
    for raw in txs:
        admit(cache, raw)
    outcomes = []
    for ledger in (Ledger(fx.genesis, checks=cache), Ledger(fx.genesis)):
        chain = Chain(ledger, MemoryStore())
        chain.run(setup)
        outcomes.append(chain.run(txs))
    assert cache.hits == len(txs) and len(cache) == 0
    shared, plain = outcomes
    assert shared.results == plain.results and shared.state_root == plain.state_root
    codes = [decode_result(r).code for r in shared.results]
    assert codes == [Code.OK, Code.OK, Code.INSUFFICIENT_FUNDS, Code.MISSING_SIGNATURE]
