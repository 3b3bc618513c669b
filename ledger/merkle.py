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


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


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

    # Recompute the path top-down to learn, at each level, whether we are the left child.
    sides: list[bool] = []  # True = our subtree is on the left
    lo, hi = 0, count
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            sides.append(True)
            hi = lo + k
        else:
            sides.append(False)
            lo = lo + k
    if len(sides) != len(path):
        return False
    h = leaf_hash(leaf)
    for sibling, is_left in zip(path, reversed(sides), strict=True):
        h = node_hash(h, sibling) if is_left else node_hash(sibling, h)
    return h == root_hash
