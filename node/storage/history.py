"""The node-local history index: account entries (postings) and escrows by account.

Written in the block's own write transaction (node/driver.py, beside put_executed_block), so
the index is always exactly the executed blocks' postings; never part of the state root.

Key spaces owned here (see node/storage/kv.py):
  b"x/h/" <account> 0x00 <time(8)> <height(8)> <seq(4)>   serialized ledger.v1.HistoryEntry
        time: consensus time ms + 2^63 (an unsigned big-endian sort of a signed time); it never
        decreases with height, so the keys of one account are in time and execution order at
        once and a time range is a key range. seq: the entry's position in its block.
  b"x/a/" <account> 0x00 <asset> 0x00 <~time(8)> <~height(8)> <~seq(4)>
        available_after(8) held_after(8), signed: the balance points of one (account, asset),
        newest first (~: bitwise complement), so the balance just before a time is the first
        key at or after that time's complement (a forward scan, no reverse seek)
  b"x/e/" <account> 0x00 <escrow_id>                      b"\\x01": the account pays or is
        paid by the escrow (its record is the ledger's s/e/ one)
Ids never contain 0x00 (node/app/state.py), so an account's keys are exactly those under
``<prefix><account> 0x00``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ledger.v1 import api_pb2
from node.app.postings import ESCROW_CREATE, Posting
from node.storage.kv import KVWriter

HISTORY = b"x/h/"
BALANCES = b"x/a/"
ESCROWS = b"x/e/"
TIME_OFFSET = 1 << 63
POSITION_BYTES = 20  # time(8) height(8) seq(4): what follows an account's history prefix
_POSITION = struct.Struct(">QQI")
_AMOUNTS = struct.Struct(">qq")
_U64_MAX, _U32_MAX = (1 << 64) - 1, (1 << 32) - 1


def history_prefix(account: str) -> bytes:
    return HISTORY + account.encode() + b"\x00"


def escrows_prefix(account: str) -> bytes:
    return ESCROWS + account.encode() + b"\x00"


def balances_prefix(account: str, asset: str) -> bytes:
    return BALANCES + f"{account}\x00{asset}\x00".encode()


def balance_position(time_ms: int, height: int = _U64_MAX, seq: int = _U32_MAX) -> bytes:
    """A balance point's key suffix; with the defaults, the first key at or before time_ms."""
    return _POSITION.pack(_U64_MAX - (time_ms + TIME_OFFSET), _U64_MAX - height, _U32_MAX - seq)


def balance_of(value: bytes) -> tuple[int, int]:
    """(available, held) of a balance point."""
    available, held = _AMOUNTS.unpack(value)
    return int(available), int(held)


def position(time_ms: int, height: int, seq: int) -> bytes:
    return _POSITION.pack(time_ms + TIME_OFFSET, height, seq)


def time_position(time_ms: int) -> bytes:
    """The first position at time_ms (a key range start)."""
    return struct.pack(">Q", time_ms + TIME_OFFSET)


def put_postings(w: KVWriter, height: int, time_ms: int, postings: Sequence[Posting]) -> None:
    """Index a block's postings (in the block's write transaction)."""
    for seq, p in enumerate(postings):
        entry = api_pb2.HistoryEntry(
            height=height,
            index=p.index,
            time_ms=time_ms,
            kind=p.kind,  # type: ignore[arg-type]  # node/app/postings.py uses the enum's values
            asset=p.asset,
            delta_available=p.delta_available,
            delta_held=p.delta_held,
            available_after=p.available_after,
            held_after=p.held_after,
            tx_id=p.tx_id,
            escrow_id=p.escrow_id,
            counterparty=p.counterparty,
            seq=seq,
        )
        w.put(history_prefix(p.account) + position(time_ms, height, seq), entry.SerializeToString())
        w.put(
            balances_prefix(p.account, p.asset) + balance_position(time_ms, height, seq),
            _AMOUNTS.pack(p.available_after, p.held_after),
        )
        if p.kind == ESCROW_CREATE:
            w.put(escrows_prefix(p.account) + p.escrow_id.encode(), b"\x01")
            w.put(escrows_prefix(p.counterparty) + p.escrow_id.encode(), b"\x01")
