"""The state tree in the store: built at checkpoint heights from the keys written since the last
one (the rules of the tree: ledger/statetree.py; docs/PROTOCOL.md, section 11).

Keys (owned here, prefix b"t/"):
  t/n/<hex path>     a tree node's record; the root is t/n/ (the empty path)
  t/w/<height:8>     the state keys block ``height`` wrote (u16be length || key, ...), kept
                     until the next tree update folds them in
  t/v/<state key>    salt(16) || value: the key's value as of the tree (the state itself moves
                     on with every block; proofs and snapshots need the checkpoint's values)
  t/k/<key hash:32>  the state key of each leaf: a snapshot serves leaves in key-hash order
                     (node/snapshot.py), the order a syncing node checks them in
  t/_/root           u64be(height) || root: the tree as of that height
  t/_/secret         the salts' secret (see _secret)
  t/_/results        u64be(count) || peaks: the recorded results' Merkle mountain range

Each block records its write set (one put); at a checkpoint height the union of the recorded
sets is folded in, in the block's own write transaction. The cost is in the keys changed since
the last checkpoint (a key written in many blocks counts once), never in the size of the state.
Recorded results (s/t/, one new key per transaction, never changed) are not leaves of the radix
tree: they are appended, in (height, tx_id) order, to a Merkle mountain range (two hashes each,
no node rewritten), whose count and root are one leaf of the tree (RESULTS_KEY). Every other key
the ledger writes under b"s/" through a block's write set is a leaf (all state but s/_/height and
s/_/root, which the checkpoint itself carries). The root is a function of the state alone (not of
when a key was written or when this node started keeping the tree), so a store rebuilt from the
whole state has the root the others built step by step.
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
from node.app.codec import decode_result
from node.storage.kv import KVReader, KVWriter

PREFIX = b"t/"
NODE = b"t/n/"
WRITTEN = b"t/w/"
VALUES = b"t/v/"
KEYS = b"t/k/"
META = b"t/_/root"
KEYS_BUILT = b"t/_/keys"  # present once t/k/ covers every leaf (a tree built before it lacks it)
SECRET = b"t/_/secret"
RESULTS_KEY = b"t/_/results"  # also the tree leaf that commits to the results (value: count || root)
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


def index_keys(w: KVWriter) -> int:
    """Give a tree built before the key index (t/k/) existed its index, from the values it
    holds (t/v/): once, at start; the number of keys indexed (0 when there was nothing to do)."""
    if w.get(KEYS_BUILT) is not None or tree_root(w)[0] == 0:
        return 0
    keys = [k[len(VALUES) :] for k, _ in w.scan(VALUES)]
    for key in keys:
        w.put(KEYS + key_hash(key), key)
    w.put(KEYS_BUILT, b"\x01")
    return len(keys)


def record_writes(w: KVWriter, height: int, keys: list[bytes]) -> None:
    """Remember the state keys block ``height`` wrote, for the next update."""
    w.put(WRITTEN + _U64.pack(height), b"".join(_U16.pack(len(k)) + k for k in keys))


def proven_value(r: KVReader, key: bytes) -> tuple[bytes, bytes] | None:
    """(salt, value) of ``key`` as of the tree, None when absent there."""
    raw = r.get(VALUES + key)
    return None if raw is None else (raw[:SALT_BYTES], raw[SALT_BYTES:])


def _secret(w: KVWriter, results: list[tuple[int, bytes, bytes]]) -> bytes:
    """SHA-256(SECRET_TAG || the sorted tx_ids of the recorded results of the lowest height that
    has any): fixed once the first transaction is recorded, and known only to who knows all of
    those transactions (members; a client knows its own). Before that, the public tag (the state
    then holds only consensus time, which every checkpoint salts anew). ``results``: the
    (height, key, value) of the results this update folds in, sorted, which hold the first
    recorded ones whenever the secret is not stored yet (an update that starts the tree after
    results were recorded is a rebuild, which folds in every result)."""
    stored = w.get(SECRET)
    if stored is not None:
        return stored
    if not results:
        return SECRET_TAG
    first = results[0][0]
    ids = sorted(key[len(st.RESULT) :] for at, key, _ in results if at == first)
    secret = hashlib.sha256(SECRET_TAG + b"".join(ids)).digest()
    w.put(SECRET, secret)
    return secret


def update(w: KVWriter, height: int) -> bytes:
    """Fold the keys written since the last update into the tree (their values as of now, after
    block ``height``) and return the root. A gap in the recorded heights (a store from before
    the tree, or one whose records were lost) rebuilds the tree from the whole state."""
    built, _ = tree_root(w)
    recorded = list(w.scan(WRITTEN))
    heights = [_U64.unpack(k[len(WRITTEN) :])[0] for k, _ in recorded]
    keys: set[bytes] = set()
    # (height, key, value) of the recorded results to append, in (height, key) order
    results: list[tuple[int, bytes, bytes]] = []
    if heights != list(range(built + 1, height + 1)):
        for key, stored in w.scan(st.PREFIX):
            if key.startswith(st.RESULT):
                results.append((decode_result(stored).height, key, stored))
            else:
                keys.add(key)
        for prefix in (NODE, VALUES, KEYS):
            for k in [k for k, _ in w.scan(prefix)]:
                w.delete(k)
        w.delete(RESULTS_KEY)
    else:
        for (_, raw), at in zip(recorded, heights, strict=True):
            pos = 0
            while pos < len(raw):
                (n,) = _U16.unpack_from(raw, pos)
                key = raw[pos + 2 : pos + 2 + n]
                if key.startswith(st.RESULT):
                    results.append((at, key, b""))  # written once, at its height; read below
                else:
                    keys.add(key)
                pos += 2 + n
    for k, _ in recorded:
        w.delete(k)
    if built == 0:
        w.put(KEYS_BUILT, b"\x01")
    keys.discard(st.META_HEIGHT)
    keys.discard(st.META_ROOT)
    results.sort()
    secret = _secret(w, results)
    if results:
        keys.add(RESULTS_KEY)
        _append_results(
            w, [value or w.get(key) or b"" for _, key, value in results], [k for _, k, _ in results]
        )
    changes: list[_Change] = []
    for key in keys:
        kh = key_hash(key)
        value = _mmr_leaf_value(w) if key == RESULTS_KEY else w.get(key)
        if value is None:
            if w.get(VALUES + key) is not None:
                w.delete(VALUES + key)
                w.delete(KEYS + kh)
            changes.append((kh.hex(), kh, None))
        else:
            salt = hashlib.sha256(secret + key).digest()[:SALT_BYTES]
            if w.get(VALUES + key) is None:
                w.put(KEYS + kh, key)
            w.put(VALUES + key, salt + value)
            changes.append((kh.hex(), kh, value_hash(salt, value)))
    changes.sort()
    root = _update_node(w, "", changes) if changes else tree_root(w)[1]
    assert root is not None and len(root) == 32, "the root is always a node"
    w.put(META, _U64.pack(height) + root)
    return root


# --- the recorded results' Merkle mountain range -----------------------------------------------


def _peaks(r: KVReader) -> tuple[int, list[bytes]]:
    raw = r.get(RESULTS_KEY)
    if raw is None:
        return 0, []
    return _U64.unpack(raw[:8])[0], [raw[i : i + 32] for i in range(8, len(raw), 32)]


def _append_results(w: KVWriter, values: list[bytes], keys: list[bytes]) -> None:
    """Append each result (leaf SHA-256(0x00 || tx_id || result)) to the range: a peak per set
    bit of the count, the largest first; two equal peaks merge as SHA-256(0x01 || left || right)."""
    count, peaks = _peaks(w)
    for key, value in zip(keys, values, strict=True):
        assert value, f"recorded result {key!r} missing"
        peak = hashlib.sha256(b"\x00" + key[len(st.RESULT) :] + value).digest()
        merged = count
        while merged & 1:
            peak = hashlib.sha256(b"\x01" + peaks.pop() + peak).digest()
            merged >>= 1
        peaks.append(peak)
        count += 1
    w.put(RESULTS_KEY, _U64.pack(count) + b"".join(peaks))


def _mmr_leaf_value(r: KVReader) -> bytes:
    """The tree leaf's value: u64be(count) || root, the peaks bagged from the right
    (root = SHA-256(0x01 || peak || root so far)); SHA-256("") with no result."""
    count, peaks = _peaks(r)
    root = peaks[-1] if peaks else hashlib.sha256(b"").digest()
    for peak in reversed(peaks[:-1]):
        root = hashlib.sha256(b"\x01" + peak + root).digest()
    return _U64.pack(count) + root


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
