"""The state tree in the store: built at checkpoint heights from the keys written since the last
one (the rules of the tree: ledger/statetree.py; docs/PROTOCOL.md, section 11).

Keys (owned here, prefix b"t/"):
  t/n/<hex path>     a tree node's record; the root is t/n/ (the empty path)
  t/w/<height:8>     the state keys block ``height`` wrote (u16be length || key, ...), kept
                     until the next tree update folds them in
  t/v/<state key>    salt(16) || value: the key's value as of the tree (the state itself moves
                     on with every block; proofs and snapshots need the checkpoint's values)
  t/_/root           u64be(height) || root: the tree as of that height
  t/_/secret         SHA-256 chain over every block's tx_ids: the salts' secret (members only
                     see every tx_id, so a client cannot recompute another key's salt)

Each block records its write set (one put); at a checkpoint height the union of the recorded
sets is folded into the tree, in the block's own write transaction. The cost is in the keys
changed since the last checkpoint (a key written in many blocks counts once), about one node
record per changed key: never in the size of the state. Every key the ledger writes under b"s/"
through a block's write set is in the tree (all state but s/_/height and s/_/root, which the
checkpoint itself carries).
"""

from __future__ import annotations

import hashlib
import struct
from itertools import groupby

from ledger.statetree import (
    EMPTY_ROOT,
    LEAF_BYTES,
    SALT_BYTES,
    Slot,
    decode_node,
    encode_node,
    key_hash,
    node_hash,
    value_hash,
)
from node.app import state as st
from node.storage.kv import KVReader, KVWriter

PREFIX = b"t/"
NODE = b"t/n/"
WRITTEN = b"t/w/"
VALUES = b"t/v/"
META = b"t/_/root"
SECRET = b"t/_/secret"
SECRET_TAG = b"consortium-ledger/state-salt/v1\x00"
_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")

# A change: (hex of the key hash, key hash, value hash or None when deleted); sorted by the hex.
_Change = tuple[str, bytes, bytes | None]


def tree_root(r: KVReader) -> tuple[int, bytes]:
    """(height, root) of the tree as last built; (0, EMPTY_ROOT) before the first build."""
    raw = r.get(META)
    if raw is None:
        return 0, EMPTY_ROOT
    return _U64.unpack(raw[:8])[0], raw[8:]


def record_writes(w: KVWriter, height: int, keys: list[bytes], tx_ids: tuple[bytes, ...]) -> None:
    """Remember the state keys block ``height`` wrote, for the next update, and chain its
    transactions' ids into the salts' secret."""
    w.put(WRITTEN + _U64.pack(height), b"".join(_U16.pack(len(k)) + k for k in keys))
    if tx_ids:
        previous = w.get(SECRET) or SECRET_TAG
        w.put(SECRET, hashlib.sha256(previous + b"".join(tx_ids)).digest())


def proven_value(r: KVReader, key: bytes) -> tuple[bytes, bytes] | None:
    """(salt, value) of ``key`` as of the tree, None when absent there."""
    raw = r.get(VALUES + key)
    return None if raw is None else (raw[:SALT_BYTES], raw[SALT_BYTES:])


def update(w: KVWriter, height: int) -> bytes:
    """Fold the keys written since the last update into the tree (their values as of now, after
    block ``height``) and return the root. A gap in the recorded heights (a store from before
    the tree, or one whose records were lost) rebuilds the tree from the whole state."""
    built, _ = tree_root(w)
    recorded = list(w.scan(WRITTEN))
    heights = [_U64.unpack(k[len(WRITTEN) :])[0] for k, _ in recorded]
    keys: set[bytes] = set()
    if heights != list(range(built + 1, height + 1)):
        keys.update(k for k, _ in w.scan(st.PREFIX))
        for k in [k for k, _ in w.scan(NODE)] + [k for k, _ in w.scan(VALUES)]:
            w.delete(k)
    else:
        for _, raw in recorded:
            pos = 0
            while pos < len(raw):
                (n,) = _U16.unpack_from(raw, pos)
                keys.add(raw[pos + 2 : pos + 2 + n])
                pos += 2 + n
    for k, _ in recorded:
        w.delete(k)
    keys.discard(st.META_HEIGHT)
    keys.discard(st.META_ROOT)
    secret = w.get(SECRET) or SECRET_TAG
    changes: list[_Change] = []
    for key in keys:
        kh = key_hash(key)
        value = w.get(key)
        if value is None:
            w.delete(VALUES + key)
            changes.append((kh.hex(), kh, None))
        else:
            salt = hashlib.sha256(secret + key).digest()[:SALT_BYTES]
            w.put(VALUES + key, salt + value)
            changes.append((kh.hex(), kh, value_hash(salt, value)))
    changes.sort()
    root = _update_node(w, "", changes) if changes else tree_root(w)[1]
    assert root is not None and len(root) == 32, "the root is always a node"
    w.put(META, _U64.pack(height) + root)
    return root


def _node(r: KVReader, path: str) -> list[Slot]:
    raw = r.get(NODE + path.encode())
    return [None] * 16 if raw is None else decode_node(raw)


def _update_node(w: KVWriter, path: str, changes: list[_Change]) -> Slot:
    """Apply ``changes`` (all under ``path``) to the node stored at ``path``."""
    slots = _node(w, path)
    depth = len(path)
    for nibble, group in groupby(changes, key=lambda c: c[0][depth]):
        s = int(nibble, 16)
        slots[s] = _update_slot(w, path + nibble, slots[s], list(group))
    return _store(w, path, slots)


def _update_slot(w: KVWriter, path: str, slot: Slot, changes: list[_Change]) -> Slot:
    if slot is not None and len(slot) != LEAF_BYTES:
        return _update_node(w, path, changes)
    # An empty slot or one leaf: the subtree holds at most one key, rebuild it from the changes.
    leaves: dict[str, tuple[bytes, bytes]] = {}
    if slot is not None:
        leaves[slot[:32].hex()] = (slot[:32], slot[32:])
    for khex, kh, vh in changes:
        if vh is None:
            leaves.pop(khex, None)
        else:
            leaves[khex] = (kh, vh)
    return _build(w, path, sorted(leaves.items()))


def _build(w: KVWriter, path: str, leaves: list[tuple[str, tuple[bytes, bytes]]]) -> Slot:
    """The subtree at ``path`` (where no node is stored yet) holding ``leaves``, sorted."""
    if not leaves:
        return None
    if len(leaves) == 1:
        kh, vh = leaves[0][1]
        return kh + vh
    depth = len(path)
    slots: list[Slot] = [None] * 16
    for nibble, group in groupby(leaves, key=lambda item: item[0][depth]):
        slots[int(nibble, 16)] = _build(w, path + nibble, list(group))
    return _store(w, path, slots)


def _store(w: KVWriter, path: str, slots: list[Slot]) -> Slot:
    """Write the node at ``path`` and return its slot in the parent: below the root a node that
    holds nothing is an empty slot, and one that holds a single leaf is that leaf."""
    key = NODE + path.encode()
    if path:
        filled = [s for s in slots if s is not None]
        if not filled or (len(filled) == 1 and len(filled[0]) == LEAF_BYTES):
            if w.get(key) is not None:
                w.delete(key)
            return filled[0] if filled else None
    record = encode_node(slots)
    w.put(key, record)
    return node_hash(record)


def prove(r: KVReader, keys: list[bytes]) -> list[bytes]:
    """The node records on the paths of ``keys`` from the root, each once (root first)."""
    out: dict[bytes, None] = {}
    for key in keys:
        path = key_hash(key).hex()
        depth = 0
        while True:
            raw = r.get(NODE + path[:depth].encode())
            assert raw is not None, f"state tree node at {path[:depth]!r} missing"
            out.setdefault(raw)
            slot = decode_node(raw)[int(path[depth], 16)]
            if slot is None or len(slot) == LEAF_BYTES:
                break
            depth += 1
    return list(out)
