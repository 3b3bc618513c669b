"""Merkle trees over byte strings (RFC 6962 shape), with inclusion proofs.

Leaves hash as SHA-256(0x00 || data), inner nodes as SHA-256(0x01 || left || right); a tree of
n leaves splits at the largest power of two below n. The empty tree's root is SHA-256(b"").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_BYTES = 32
PROOF_LENGTH_MAX = 64


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _next_level(level: list[bytes]) -> list[bytes]:
    """Pair neighbours; an odd last node moves up as it is. Level by level this builds the same
    tree as splitting at the largest power of two below n, without recursion."""
    up = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        up.append(level[-1])
    return up


def root(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = [leaf_hash(x) for x in leaves]
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def all_proofs(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root and every leaf's inclusion proof (bottom first), in O(n log n)."""
    if not leaves:
        return hashlib.sha256(b"").digest(), []
    level = [leaf_hash(x) for x in leaves]
    paths: list[list[bytes]] = [[] for _ in leaves]
    shift = 0  # leaf i sits at index i >> shift of the current level
    while len(level) > 1:
        width = len(level)
        for i, path in enumerate(paths):
            sibling = (i >> shift) ^ 1
            if sibling < width:  # else it is the odd last node, moving up without a sibling
                path.append(level[sibling])
        level = _next_level(level)
        shift += 1
    return level[0], paths


def proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The sibling hashes from leaf ``index`` up to the root (bottom first)."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} of {len(leaves)}")
    return all_proofs(leaves)[1][index]


def verify(root_hash: bytes, leaf: bytes, index: int, count: int, path: Sequence[bytes]) -> bool:
    """True when ``leaf`` is leaf ``index`` of a ``count``-leaf tree with root ``root_hash``."""
    if not 0 <= index < count or len(path) > PROOF_LENGTH_MAX:
        return False
    if any(len(p) != HASH_BYTES for p in path):
        return False
    # Level by level, as all_proofs builds it: our node is at i of a level `width` wide; it has
    # a sibling (left when i is odd) unless it is the odd last node, which moves up as it is.
    h, i, width, used = leaf_hash(leaf), index, count, 0
    while width > 1:
        if i ^ 1 < width:
            if used == len(path):
                return False
            sibling = path[used]
            used += 1
            h = node_hash(sibling, h) if i & 1 else node_hash(h, sibling)
        i >>= 1
        width = (width + 1) >> 1
    return used == len(path) and h == root_hash
