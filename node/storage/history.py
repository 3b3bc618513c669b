"""The node-local history index: account entries (postings) and escrows by account.

Written in the block's own write transaction (node/driver.py, beside put_executed_block), so
the index is always exactly the executed blocks' postings; never part of the state root.

Key spaces owned here (see node/storage/kv.py):
  b"x/h/" <account> 0x00 <asset> 0x00 <~time(8)> <~height(8)> <~seq(4)>   one entry
        ~x is the bitwise complement (2^bits - 1 - x) and time is consensus time ms + 2^63, so
        one (account, asset)'s entries run newest first: the entry just before a time (an
        opening balance) and the newest entries of a range are each one seek, with forward
        scans only. Consensus time never decreases with height, so this order is the reverse
        of execution order. seq: the entry's position among its block's entries.
        Value: index(4) kind(1), delta available, delta held, available after (8 each, signed),
        then counterparty, escrow id, tx_id, each 1-byte length prefixed. Packed by hand: a
        protobuf message per entry cost more than the rest of the index write.
  b"x/k/" <account> 0x00 <asset> 0x00 <position as x/h/'s>   held after (8, signed): written
        only by the entries that change held (escrows), so that execution reads no held amount
        it did not change; the held after any entry is that of the newest x/k/ point at or
        before it (one seek, then walking older entries subtracts their delta held).
  b"x/e/" <account> 0x00 <escrow_id>                      b"\\x01": the account pays or is
        paid by the escrow (its record is the ledger's s/e/ one)
Ids never contain 0x00 (node/app/state.py), so the separators are unambiguous.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Protocol

from ledger.v1 import api_pb2
from node.storage.kv import KVReader, KVWriter

HISTORY = b"x/h/"
HELD = b"x/k/"
ESCROWS = b"x/e/"
TIME_OFFSET = 1 << 63
POSITION_BYTES = 20  # ~time(8) ~height(8) ~seq(4): what follows an (account, asset) prefix
KIND_OFFSET = 4  # where an entry value's kind byte is
_POSITION = struct.Struct(">QQI")
_ENTRY = struct.Struct(">IBqqq")
_HELD = struct.Struct(">q")
_U64_MAX, _U32_MAX = (1 << 64) - 1, (1 << 32) - 1


def history_prefix(account: str, asset: str) -> bytes:
    return HISTORY + f"{account}\x00{asset}\x00".encode()


def held_prefix(account: str, asset: str) -> bytes:
    return HELD + f"{account}\x00{asset}\x00".encode()


def escrows_prefix(account: str) -> bytes:
    return ESCROWS + account.encode() + b"\x00"


def position(time_ms: int, height: int = _U64_MAX, seq: int = _U32_MAX) -> bytes:
    """An entry's key suffix. With the defaults: the first position at or before time_ms
    (the newest entry of time_ms sorts first)."""
    return _POSITION.pack(_U64_MAX - (time_ms + TIME_OFFSET), _U64_MAX - height, _U32_MAX - seq)


def _short(data: bytes) -> bytes:
    return bytes((len(data),)) + data  # ids are bounded well under 256 bytes (genesis limits)


class Posting(Protocol):
    """What the index stores of one posting (node/app/postings.py builds them)."""

    account: str
    asset: str
    index: int
    kind: int  # a ledger.v1.PostingKind value
    delta_available: int
    delta_held: int
    available_after: int
    held_after: int | None  # None: the entry does not change held
    counterparty: str
    escrow_id: str
    tx_id: bytes


def put_postings(w: KVWriter, height: int, time_ms: int, postings: Sequence[Posting]) -> None:
    """Index a block's postings (in the block's write transaction): one put per posting, and
    one more per entry that changes held (x/k/), two more per escrow created (x/e/)."""
    time_key = _U64_MAX - (time_ms + TIME_OFFSET)
    height_key = _U64_MAX - height
    for seq, p in enumerate(postings):
        entry = b"".join(
            (
                _ENTRY.pack(p.index, p.kind, p.delta_available, p.delta_held, p.available_after),
                _short(p.counterparty.encode()),
                _short(p.escrow_id.encode()),
                _short(p.tx_id),
            )
        )
        pair = f"{p.account}\x00{p.asset}\x00".encode()
        where = _POSITION.pack(time_key, height_key, _U32_MAX - seq)
        w.put(HISTORY + pair + where, entry)
        if p.held_after is not None:
            w.put(HELD + pair + where, _HELD.pack(p.held_after))
        if p.kind == api_pb2.POSTING_KIND_ESCROW_CREATE:
            w.put(escrows_prefix(p.account) + p.escrow_id.encode(), b"\x01")
            w.put(escrows_prefix(p.counterparty) + p.escrow_id.encode(), b"\x01")


def time_of(position_bytes: bytes) -> int:
    return _U64_MAX - int.from_bytes(position_bytes[:8], "big") - TIME_OFFSET


def available_of(value: bytes) -> int:
    """The available balance right after an entry."""
    return int(_ENTRY.unpack_from(value)[4])


def delta_held_of(value: bytes) -> int:
    return int(_ENTRY.unpack_from(value)[3])


def held_at(r: KVReader, account: str, asset: str, first: bytes) -> int:
    """The held amount after the newest entry at or older than position ``first``."""
    prefix = held_prefix(account, asset)
    for _, value in r.scan(prefix, prefix + first):
        return int(_HELD.unpack(value)[0])
    return 0


def read_entry(asset: str, position_bytes: bytes, value: bytes, held_after: int) -> api_pb2.HistoryEntry:
    """The ledger.v1.HistoryEntry of an index entry (its asset, key position and value, and
    the held amount after it, from held_at)."""
    time_key, height_key, seq_key = _POSITION.unpack(position_bytes)
    index, kind, delta_available, delta_held, available_after = _ENTRY.unpack_from(value)
    strings: list[bytes] = []
    pos = _ENTRY.size
    for _ in range(3):
        size = value[pos]
        strings.append(value[pos + 1 : pos + 1 + size])
        pos += 1 + size
    assert pos == len(value), "corrupt history entry"
    counterparty, escrow_id, tx_id = strings
    return api_pb2.HistoryEntry(
        height=_U64_MAX - height_key,
        index=index,
        time_ms=_U64_MAX - time_key - TIME_OFFSET,
        kind=kind,  # node/app/postings.py uses PostingKind's values
        asset=asset,
        delta_available=delta_available,
        delta_held=delta_held,
        available_after=available_after,
        held_after=held_after,
        tx_id=tx_id,
        escrow_id=escrow_id.decode(),
        counterparty=counterparty.decode(),
        seq=_U32_MAX - seq_key,
    )
