"""The state tree: incremental updates give the root a fresh build of the same state gives, in
any order of writes; proofs prove presence and absence; the ledger builds it at tree heights."""

from __future__ import annotations

import hashlib
import random

import pytest

from ledger import statetree as lt
from node.app import statetree
from node.app.codec import decode_result
from node.app.ledger import Ledger
from node.storage.memory import MemoryStore
from sim.factory import Factory
from tests.app.helpers import Chain


def _apply(store: MemoryStore, height: int, changes: dict[bytes, bytes | None]) -> bytes:
    with store.write() as w:
        for key, value in changes.items():
            if value is None:
                w.delete(key)
            else:
                w.put(key, value)
        statetree.record_writes(w, height, sorted(changes))
        return statetree.update(w, height)


def _reference_root(store: MemoryStore) -> bytes:
    """The root by the definition (ledger/statetree.py), computed apart from the store's
    incremental code: from every (key hash, value hash) the tree's values hold."""
    with store.read() as r:
        leaves = {
            lt.key_hash(k[len(statetree.VALUES) :]).hex(): lt.value_hash(v[:16], v[16:])
            for k, v in r.scan(statetree.VALUES)
        }

    def subtree(depth: int, khexes: list[str], root: bool = False) -> bytes | None:
        if not root and len(khexes) <= 1:
            return bytes.fromhex(khexes[0]) + leaves[khexes[0]] if khexes else None
        slots: list[bytes | None] = [
            subtree(depth + 1, [k for k in khexes if int(k[depth], 16) == s]) for s in range(16)
        ]
        return lt.node_hash(lt.encode_node(slots))

    root = subtree(0, sorted(leaves), root=True)
    assert root is not None
    return root


def _nodes(store: MemoryStore, keys: list[bytes]) -> dict[bytes, list[lt.Slot]]:
    with store.read() as r:
        return lt.index_nodes(statetree.prove(r, keys), 10_000)


@pytest.mark.parametrize("seed", range(6))
def test_incremental_root_equals_fresh_build_and_proofs_hold(seed: int) -> None:
    rng = random.Random(seed)
    store = MemoryStore()
    state: dict[bytes, bytes] = {}
    universe = [f"s/b/acct-{i}\x00USD".encode() for i in range(rng.choice((3, 40, 400)))]
    for height in range(1, 12):
        changes: dict[bytes, bytes | None] = {}
        for key in rng.sample(universe, rng.randint(1, len(universe))):
            if rng.random() < 0.3:
                changes[key] = None
                state.pop(key, None)
            else:
                changes[key] = value = rng.randbytes(rng.randint(1, 12))
                state[key] = value
        root = _apply(store, height, changes)
        assert root == _reference_root(store)
        assert state or root == lt.EMPTY_ROOT
        nodes = _nodes(store, universe)
        with store.read() as r:
            proven = {key: statetree.proven_value(r, key) for key in universe}
        for key in universe:
            got = proven[key]
            assert (got is not None and got[1] == state[key]) if key in state else got is None
            expected = lt.value_hash(*got) if got is not None else None
            assert lt.lookup(root, key, nodes) == expected
    with store.read() as r:
        assert statetree.tree_root(r) == (11, root)
        assert not list(r.scan(statetree.WRITTEN))  # folded in and dropped


def test_deleting_everything_leaves_only_the_empty_root() -> None:
    store = MemoryStore()
    keys = [f"k{i}".encode() for i in range(300)]
    _apply(store, 1, dict.fromkeys(keys, b"v"))
    assert _apply(store, 2, dict.fromkeys(keys)) == lt.EMPTY_ROOT
    with store.read() as r:
        assert [k for k, _ in r.scan(statetree.NODE)] == [statetree.NODE]
        assert not list(r.scan(statetree.VALUES))


def test_salts_differ_by_key_and_come_from_the_first_recorded_transactions() -> None:
    """Equal values under other keys hash differently (a neighbour's leaf in a proof does not
    tell its amount); the secret is the first recorded block's tx_ids, not a public value."""
    fx = Factory()
    store = MemoryStore()
    chain = Chain(Ledger(fx.genesis, tree_interval=1), store)
    chain.run(
        [fx.open_account("BANK-A", "x", fx.client("x")), fx.open_account("BANK-A", "y", fx.client("y"))]
    )
    chain.run([fx.mint("USD.BANK-A", "x", 5), fx.mint("USD.BANK-A", "y", 5)])
    with store.read() as r:
        secret = r.get(statetree.SECRET)
        x = statetree.proven_value(r, b"s/b/x\x00USD.BANK-A")
        y = statetree.proven_value(r, b"s/b/y\x00USD.BANK-A")
        opened = sorted(k[4:] for k, v in r.scan(b"s/t/") if decode_result(v).height == 1)
    assert x is not None and y is not None and x[1] == y[1] and x[0] != y[0]
    assert len(opened) == 2
    assert secret == hashlib.sha256(statetree.SECRET_TAG + b"".join(opened)).digest()


def test_a_proof_without_a_node_or_with_a_forged_value_fails() -> None:
    store = MemoryStore()
    keys = [f"k{i}".encode() for i in range(50)]
    root = _apply(store, 1, dict.fromkeys(keys, b"v"))
    with store.read() as r:
        records = statetree.prove(r, [keys[0]])
        got = statetree.proven_value(r, keys[0])
    assert got is not None
    salt, value = got
    with pytest.raises(lt.ProofError) as exc:
        lt.lookup(root, keys[0], lt.index_nodes(records[:-1], 100))
    assert exc.value.reason == "missing_node"
    assert lt.lookup(root, keys[0], lt.index_nodes(records, 100)) == lt.value_hash(salt, value)
    assert lt.lookup(root, keys[0], lt.index_nodes(records, 100)) != lt.value_hash(salt, b"w")
    with pytest.raises(lt.ProofError) as exc:
        lt.index_nodes([records[0] + b"\x00"], 100)
    assert exc.value.reason == "malformed_proof"


def test_ledger_builds_the_tree_at_tree_heights_over_the_whole_state() -> None:
    fx = Factory()
    store = MemoryStore()
    chain = Chain(Ledger(fx.genesis, tree_interval=2), store)
    first = chain.run([fx.open_account("BANK-A", "alice", fx.client("alice"))])
    assert first.tree_root == b""
    second = chain.run([fx.mint("USD.BANK-A", "alice", 500, "dep-1")])
    assert second.tree_root == _reference_root(store)
    _assert_leaves_are_the_state(store)
    # A store without the tree's records (one from before it) is rebuilt from the whole state.
    with store.write() as w:
        for k in [k for k, _ in w.scan(statetree.PREFIX)]:
            w.delete(k)
    chain.run([fx.mint("USD.BANK-A", "alice", 1, "dep-2")])
    fourth = chain.run([])
    assert fourth.tree_root == _reference_root(store)
    _assert_leaves_are_the_state(store)


def _assert_leaves_are_the_state(store: MemoryStore) -> None:
    """Every state key but the results is a leaf with its value; the results are the range."""
    with store.read() as r:
        state = {k: v for k, v in r.scan(b"s/") if k not in (b"s/_/height", b"s/_/root")}
        leaves = {k[4:]: v[16:] for k, v in r.scan(statetree.VALUES)}
    results = sorted((decode_result(v).height, k[4:], v) for k, v in state.items() if k.startswith(b"s/t/"))
    mmr = leaves.pop(statetree.RESULTS_KEY)
    assert leaves == {k: v for k, v in state.items() if not k.startswith(b"s/t/")}
    assert mmr == _reference_mmr([hashlib.sha256(b"\x00" + t + v).digest() for _, t, v in results])


def _reference_mmr(leaves: list[bytes]) -> bytes:
    """u64be(count) || root: perfect subtrees, largest first, bagged from the right."""
    peaks: list[bytes] = []
    rest = leaves
    while rest:
        size = 1 << (len(rest).bit_length() - 1)
        level, rest = rest[:size], rest[size:]
        while len(level) > 1:
            level = [
                hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)
            ]
        peaks.append(level[0])
    root = peaks[-1]
    for peak in reversed(peaks[:-1]):
        root = hashlib.sha256(b"\x01" + peak + root).digest()
    return len(leaves).to_bytes(8, "big") + root


def test_a_rebuilt_tree_equals_the_one_built_step_by_step() -> None:
    """A node that starts keeping the tree late (a store from before it) computes the root the
    others built checkpoint by checkpoint: the root is a function of the state alone."""
    fx = Factory()
    steady, late = MemoryStore(), MemoryStore()
    a = Chain(Ledger(fx.genesis, tree_interval=2), steady)
    b = Chain(Ledger(fx.genesis), late)  # no tree at first
    blocks = [[fx.open_account("BANK-A", f"acct-{i}", fx.client(f"c{i}"))] for i in range(5)]
    blocks += [[fx.mint("USD.BANK-A", f"acct-{i}", 10 + i) for i in range(5)]]
    blocks += [[fx.transfer([("acct-0", "acct-1", "USD.BANK-A", 3)])], []]
    roots = [a.run(block).tree_root for block in blocks]
    for block in blocks[:5]:
        b.run(block)
    b.ledger = Ledger(fx.genesis, tree_interval=2)
    late_roots = [b.run(block).tree_root for block in blocks[5:]]
    # Heights 6 (rebuilt from the whole state) and 8 (step by step after that).
    assert late_roots[0] == roots[5] != b"" and late_roots[2] == roots[7] != roots[5]
    assert roots[5] != roots[3] != b""


def test_a_tree_from_before_the_key_index_gets_it_once() -> None:
    store = MemoryStore()
    keys = [f"s/b/k{i}".encode() for i in range(30)]
    _apply(store, 1, dict.fromkeys(keys, b"v"))
    with store.write() as w:  # as a store written before t/k/ existed
        for k, _ in list(w.scan(statetree.KEYS)):
            w.delete(k)
        w.delete(statetree.KEYS_BUILT)
    with store.write() as w:
        assert statetree.index_keys(w) == 30
    with store.write() as w:
        assert statetree.index_keys(w) == 0
    with store.read() as r:
        assert {v for _, v in r.scan(statetree.KEYS)} == set(keys)
        assert all(k == statetree.KEYS + lt.key_hash(v) for k, v in r.scan(statetree.KEYS))
