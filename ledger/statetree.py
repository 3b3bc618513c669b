"""The state tree: a Merkle commitment over the whole ledger state (docs/PROTOCOL.md, section 11).

A 16-ary radix tree over the SHA-256 of each state key, path-compressed (a subtree that holds a
single key is that key's leaf, in its parent's slot). Nodes and clients share this module: the
node builds the tree (node/app/statetree.py), a verifier walks a proof's nodes from a certified
root to a key.

  key_hash(key)      = SHA-256(key)                       its 64 hex nibbles are the key's path
  value_hash(salt, value) = SHA-256(0x00 || salt || value)  salt: 16 bytes per key and write
  record             = u16be(present) || u16be(leaves) || for each present slot s = 0..15 in order:
                         kh(32) || vh(32) when bit s of leaves is set (a leaf), else h(32) (a node)
  node_hash(record)  = SHA-256(0x01 || record)
  root               = node_hash of the record at the empty path (always a node; the empty
                       tree's root is node_hash(00 00 00 00))

Bit s of a u16 is (1 << s). The structure is a function of the set of keys alone, so equal
states have equal roots on every node, whatever order the writes came in.

Why a salt: a proof shows the key and value hashes of the other leaves in the nodes it crosses,
and a balance is a small integer under a guessable key, so an unsalted hash would let a client
find other accounts' balances by trying amounts. The salt is derived from the ids of every
transaction executed so far (node/app/statetree.py), which only members see; a proof reveals
only the salts of the keys it proves.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping

HASH_BYTES = 32
SALT_BYTES = 16
LEAF_BYTES = 64  # kh || vh
NODE_BYTES_MAX = 4 + 16 * LEAF_BYTES
DEPTH_MAX = 64  # nibbles of a SHA-256
_U16 = struct.Struct(">HH")

# A slot: None (empty), 32 bytes (a node's hash) or 64 bytes (a leaf: key hash || value hash).
Slot = bytes | None


class ProofError(Exception):
    """A state proof does not prove what it claims. ``reason`` is a stable short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def key_hash(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def value_hash(salt: bytes, value: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + salt + value).digest()


def node_hash(record: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + record).digest()


def encode_node(slots: list[Slot]) -> bytes:
    present = leaves = 0
    bit = 1
    for slot in slots:
        if slot is not None:
            present |= bit
            if len(slot) == LEAF_BYTES:
                leaves |= bit
        bit <<= 1
    return _U16.pack(present, leaves) + b"".join([s for s in slots if s is not None])


def decode_node(record: bytes) -> list[Slot]:
    """The 16 slots of a node record; ValueError unless it is exactly canonical."""
    if len(record) < 4:
        raise ValueError("node record shorter than its bitmaps")
    present, leaves = _U16.unpack_from(record)
    if leaves & ~present:
        raise ValueError("a leaf bit on an empty slot")
    slots: list[Slot] = [None] * 16
    pos = 4
    for s in range(16):
        if present >> s & 1:
            end = pos + (LEAF_BYTES if leaves >> s & 1 else HASH_BYTES)
            if end > len(record):
                raise ValueError("node record truncated")
            slots[s] = record[pos:end]
            pos = end
    if pos != len(record):
        raise ValueError("trailing bytes after the node record")
    return slots


EMPTY_ROOT = node_hash(encode_node([None] * 16))


def index_nodes(records: Iterable[bytes], count_max: int) -> dict[bytes, list[Slot]]:
    """A proof's node records by their hash, decoded (ProofError ``malformed_proof``)."""
    out: dict[bytes, list[Slot]] = {}
    for i, record in enumerate(records):
        if i >= count_max:
            raise ProofError("malformed_proof", f"more than {count_max} tree nodes")
        if len(record) > NODE_BYTES_MAX:
            raise ProofError("malformed_proof", f"tree node {i} is {len(record)} bytes")
        try:
            out[node_hash(record)] = decode_node(record)
        except ValueError as exc:
            raise ProofError("malformed_proof", f"tree node {i}: {exc}") from exc
    return out


def lookup(root: bytes, key: bytes, nodes: Mapping[bytes, list[Slot]]) -> bytes | None:
    """The value hash the tree with ``root`` holds under ``key``, or None when the key is absent,
    read from ``nodes`` (index_nodes). Walks from the root along the key's nibbles; every node it
    needs must be there (ProofError ``missing_node``). Sound because nodes are found by hash and
    the tree puts a key on its own path: an empty slot, or another key's leaf, on that path
    proves the key absent."""
    kh = key_hash(key)
    path = kh.hex()
    h = root
    for depth in range(DEPTH_MAX):
        slots = nodes.get(h)
        if slots is None:
            raise ProofError("missing_node", f"the proof lacks the tree node at depth {depth} for {key!r}")
        slot = slots[int(path[depth], 16)]
        if slot is None:
            return None
        if len(slot) == LEAF_BYTES:
            return slot[HASH_BYTES:] if slot[:HASH_BYTES] == kh else None
        h = slot
    raise ProofError("malformed_proof", "path longer than a key hash")  # pragma: no cover


# --- the state keys a balance proof covers (node/app/state.py writes them) --------------------

ACCOUNT = b"s/a/"
BALANCE = b"s/b/"
HELD = b"s/h/"
ACCOUNT_RECORD_VERSION = 1


def account_key(account_id: str) -> bytes:
    return ACCOUNT + account_id.encode()


def balance_key(account_id: str, asset: str) -> bytes:
    return BALANCE + f"{account_id}\x00{asset}".encode()


def held_key(account_id: str, asset: str) -> bytes:
    return HELD + f"{account_id}\x00{asset}".encode()


def amount_value(amount: int) -> bytes | None:
    """How the state stores an amount: u64be, and zero as absence."""
    return None if amount == 0 else struct.pack(">Q", amount)


def decode_account(raw: bytes) -> tuple[str, bytes, bool]:
    """(member id, owner key, frozen) of an account record; ValueError unless canonical."""
    if len(raw) < 2 or raw[0] != ACCOUNT_RECORD_VERSION:
        raise ValueError("unknown account record version")
    n = raw[1]
    if len(raw) != 2 + n + 32 + 1 or raw[-1] not in (0, 1):
        raise ValueError("account record of the wrong length")
    return raw[2 : 2 + n].decode(), raw[2 + n : 2 + n + 32], raw[-1] == 1
