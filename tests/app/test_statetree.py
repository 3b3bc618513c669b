"""The state tree: incremental updates give the root a fresh build of the same state gives, in
any order of writes; proofs prove presence and absence; the ledger builds it at tree heights."""

from __future__ import annotations

import random

import pytest

from ledger import statetree as lt
from node.app import statetree
from node.app.ledger import Ledger
from node.storage.memory import MemoryStore
from tests.app.factory import Factory
from tests.app.helpers import Chain


def _apply(store: MemoryStore, height: int, changes: dict[bytes, bytes | None]) -> bytes:
    with store.write() as w:
        for key, value in changes.items():
            if value is None:
                w.delete(key)
            else:
                w.put(key, value)
        statetree.record_writes(w, height, sorted(changes), (height.to_bytes(32, "big"),))
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


def test_salts_hide_values_and_differ_by_history() -> None:
    """Equal values under other keys, or after other transactions, hash differently: a
    neighbour's leaf in a proof does not tell its amount."""
    a, b = MemoryStore(), MemoryStore()
    keys = [b"s/b/x\x00USD", b"s/b/y\x00USD"]
    root_a = _apply(a, 1, dict.fromkeys(keys, b"\x00" * 7 + b"\x05"))
    with b.write() as w:
        statetree.record_writes(w, 0, [], (b"\x01" * 32,))  # another transaction history
    with b.read() as r:
        assert r.get(statetree.SECRET) is not None
    with a.read() as r:
        salts = {statetree.proven_value(r, k) for k in keys}
    assert len(salts) == 2
    with b.write() as w:
        for key in keys:
            w.put(key, b"\x00" * 7 + b"\x05")
        statetree.record_writes(w, 1, keys, (b"\x02" * 32,))
        root_b = statetree.update(w, 1)
    assert root_a != root_b


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
    with store.read() as r:
        state = {k: v for k, v in r.scan(b"s/") if k not in (b"s/_/height", b"s/_/root")}
    assert second.tree_root == _reference_root(store)
    with store.read() as r:
        assert {k[4:]: v[16:] for k, v in r.scan(statetree.VALUES)} == state
    # A store without the tree's records (one from before it) is rebuilt from the whole state.
    with store.write() as w:
        for k in [k for k, _ in w.scan(statetree.PREFIX)]:
            w.delete(k)
    chain.run([fx.mint("USD.BANK-A", "alice", 1, "dep-2")])
    fourth = chain.run([])
    with store.read() as r:
        state = {k: v for k, v in r.scan(b"s/") if k not in (b"s/_/height", b"s/_/root")}
    assert fourth.tree_root == _reference_root(store)
    with store.read() as r:
        assert {k[4:]: v[16:] for k, v in r.scan(statetree.VALUES)} == state
