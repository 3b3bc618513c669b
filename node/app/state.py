"""Typed access to the ledger state under b"s/", with canonical fixed encodings.

Keys (ids are validated to exclude b"\\x00" and b"/", so the separators are unambiguous):
  s/a/<account>                  account: member, owner key, frozen
  s/b/<account>\\x00<asset>       available balance        (absent = 0)
  s/h/<account>\\x00<asset>       held in pending escrows  (absent = 0)
  s/e/<escrow>                   escrow record
  s/x/<expires_ms:8><escrow>     index of pending escrows by expiry (consensus time)
  s/q/<asset>                    supply: cumulative minted, redeemed (u128 each)
  s/d/<issuer>\\x00<deposit_ref>  used deposit reference -> tx_id
  s/p/<issuer>\\x00<account>\\x00<payout_ref>  used payout reference of one redeeming
                                 account -> tx_id (one holder cannot consume another's ref)
  s/t/<tx_id>                    serialized TxResult of the first authorized execution
  s/k/<owner_key:32>             how many accounts the key owns that are not frozen (absent
                                 = 0): the keys admission knows (node/api/admission.py)
  s/_/height, s/_/time, s/_/root last executed height, consensus time, state root
Values: unsigned/signed 64-bit (supply counters: unsigned 128-bit) big-endian integers and length-prefixed UTF-8 strings; never
JSON, never floats, so every node writes the same bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from node.storage.kv import RESULT_RECORD

PREFIX = b"s/"
ACCOUNT = b"s/a/"
BALANCE = b"s/b/"
HELD = b"s/h/"
ESCROW = b"s/e/"
EXPIRY = b"s/x/"
SUPPLY = b"s/q/"
DEPOSIT_REF = b"s/d/"
PAYOUT_REF = b"s/p/"
RESULT = RESULT_RECORD  # node/storage/kv.py: the block store reads it too
KEY_ACCOUNTS = b"s/k/"
META_HEIGHT = b"s/_/height"
META_TIME = b"s/_/time"
META_ROOT = b"s/_/root"

_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
U128_MAX = (1 << 128) - 1
_VERSION = 1


class Reader(Protocol):
    def get(self, key: bytes) -> bytes | None: ...


class Writer(Reader, Protocol):
    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...


# --- encodings --------------------------------------------------------------------------------


def u64(value: int) -> bytes:
    return _U64.pack(value)


def read_u64(raw: bytes) -> int:
    assert len(raw) == 8, f"corrupt u64 of {len(raw)} bytes"
    return int(_U64.unpack(raw)[0])


def _str(value: str) -> bytes:
    data = value.encode()
    assert len(data) < 256, "state strings are bounded ids"
    return bytes([len(data)]) + data


class _Cursor:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        assert end <= len(self.raw), "corrupt state record: truncated"
        out = self.raw[self.pos : end]
        self.pos = end
        return out

    def string(self) -> str:
        return self.take(self.take(1)[0]).decode()

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])

    def i64(self) -> int:
        return int(_I64.unpack(self.take(8))[0])

    def done(self) -> None:
        assert self.pos == len(self.raw), "corrupt state record: trailing bytes"


def _pair(a: str, b: str) -> bytes:
    return f"{a}\x00{b}".encode()  # one encode: "\x00" is the byte 0 in UTF-8


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountRecord:
    account_id: str
    member_id: str
    owner_key: bytes
    frozen: bool


ESCROW_PENDING = 0
ESCROW_POSTED = 1
ESCROW_VOIDED = 2
ESCROW_EXPIRED = 3
ESCROW_STATUS_NAMES = {
    ESCROW_PENDING: "pending",
    ESCROW_POSTED: "posted",
    ESCROW_VOIDED: "voided",
    ESCROW_EXPIRED: "expired",
}


@dataclass(frozen=True)
class EscrowRecord:
    escrow_id: str
    from_account: str
    to_account: str
    asset: str
    amount: int  # held while pending; the amount originally held once closed
    expires_at_ms: int
    status: int


# Parsed account records by (id, stored bytes): a pure memo (the same bytes always parse to
# the same record), since every transfer reads its payer's and payee's records.
_ACCOUNTS_PARSED: dict[tuple[str, bytes], AccountRecord] = {}
_ACCOUNTS_PARSED_MAX = 50_000


def get_account(r: Reader, account_id: str) -> AccountRecord | None:
    raw = r.get(ACCOUNT + account_id.encode())
    if raw is None:
        return None
    acct = _ACCOUNTS_PARSED.get((account_id, raw))
    if acct is None:
        if len(_ACCOUNTS_PARSED) >= _ACCOUNTS_PARSED_MAX:
            _ACCOUNTS_PARSED.clear()
        acct = _ACCOUNTS_PARSED[(account_id, raw)] = _parse_account(account_id, raw)
    return acct


def _parse_account(account_id: str, raw: bytes) -> AccountRecord:
    c = _Cursor(raw)
    assert c.take(1)[0] == _VERSION, "unknown account record version"
    member_id = c.string()
    owner_key = c.take(32)
    frozen = c.take(1) == b"\x01"
    c.done()
    return AccountRecord(account_id, member_id, owner_key, frozen)


def put_account(w: Writer, acct: AccountRecord) -> None:
    assert len(acct.owner_key) == 32
    value = bytes([_VERSION]) + _str(acct.member_id) + acct.owner_key + (b"\x01" if acct.frozen else b"\x00")
    w.put(ACCOUNT + acct.account_id.encode(), value)


def active_accounts_of_key(r: Reader, owner_key: bytes) -> int:
    """How many accounts ``owner_key`` owns that are not frozen."""
    return get_amount(r, KEY_ACCOUNTS + owner_key)


def count_active_account(w: Writer, owner_key: bytes, delta: int) -> None:
    """An account of ``owner_key`` was opened or unfrozen (+1), or frozen (-1)."""
    key = KEY_ACCOUNTS + owner_key
    count = get_amount(w, key) + delta
    assert count >= 0, "an owner key's active account count went below zero"
    put_amount(w, key, count)


def get_amount(r: Reader, key: bytes) -> int:
    """The amount under a balance_key or held_key (absent = 0)."""
    raw = r.get(key)
    return 0 if raw is None else read_u64(raw)


def put_amount(w: Writer, key: bytes, value: int) -> None:
    assert type(value) is int and value >= 0
    # Zero is stored as absence so that equal states have equal key sets.
    if value == 0:
        w.delete(key)
    else:
        w.put(key, u64(value))


def balance_key(account_id: str, asset: str) -> bytes:
    return BALANCE + _pair(account_id, asset)


def held_key(account_id: str, asset: str) -> bytes:
    return HELD + _pair(account_id, asset)


def get_balance(r: Reader, account_id: str, asset: str) -> int:
    return get_amount(r, balance_key(account_id, asset))


def put_balance(w: Writer, account_id: str, asset: str, value: int) -> None:
    put_amount(w, balance_key(account_id, asset), value)


def get_held(r: Reader, account_id: str, asset: str) -> int:
    return get_amount(r, held_key(account_id, asset))


def put_held(w: Writer, account_id: str, asset: str, value: int) -> None:
    put_amount(w, held_key(account_id, asset), value)


def split_pair_key(prefix: bytes, key: bytes) -> tuple[str, str]:
    a, _, b = key[len(prefix) :].partition(b"\x00")
    return a.decode(), b.decode()


def _u128(value: int) -> bytes:
    assert type(value) is int and 0 <= value <= U128_MAX, f"{value} does not fit a u128"
    return value.to_bytes(16, "big")


def get_supply(r: Reader, asset: str) -> tuple[int, int]:
    """(minted, redeemed) of an asset: cumulative counters (outstanding = minted - redeemed)."""
    raw = r.get(SUPPLY + asset.encode())
    if raw is None:
        return 0, 0
    c = _Cursor(raw)
    minted, redeemed = int.from_bytes(c.take(16), "big"), int.from_bytes(c.take(16), "big")
    c.done()
    return minted, redeemed


def put_supply(w: Writer, asset: str, minted: int, redeemed: int) -> None:
    assert 0 <= redeemed <= minted <= U128_MAX, f"supply of {asset} out of order or past u128"
    w.put(SUPPLY + asset.encode(), _u128(minted) + _u128(redeemed))


def get_escrow(r: Reader, escrow_id: str) -> EscrowRecord | None:
    raw = r.get(ESCROW + escrow_id.encode())
    if raw is None:
        return None
    c = _Cursor(raw)
    assert c.take(1)[0] == _VERSION, "unknown escrow record version"
    rec = EscrowRecord(escrow_id, c.string(), c.string(), c.string(), c.u64(), c.i64(), c.take(1)[0])
    c.done()
    return rec


def expiry_key(expires_at_ms: int, escrow_id: str) -> bytes:
    # Biased so that the byte order of the key is the numeric order of a signed time.
    return EXPIRY + u64(expires_at_ms + (1 << 63)) + escrow_id.encode()


def expiry_of_key(key: bytes) -> tuple[int, str]:
    stamp = read_u64(key[len(EXPIRY) : len(EXPIRY) + 8]) - (1 << 63)
    return stamp, key[len(EXPIRY) + 8 :].decode()


def put_escrow(w: Writer, rec: EscrowRecord) -> None:
    value = (
        bytes([_VERSION])
        + _str(rec.from_account)
        + _str(rec.to_account)
        + _str(rec.asset)
        + u64(rec.amount)
        + _I64.pack(rec.expires_at_ms)
        + bytes([rec.status])
    )
    w.put(ESCROW + rec.escrow_id.encode(), value)
    # The expiry index holds exactly the pending escrows.
    if rec.status == ESCROW_PENDING:
        w.put(expiry_key(rec.expires_at_ms, rec.escrow_id), b"")
    else:
        w.delete(expiry_key(rec.expires_at_ms, rec.escrow_id))


def deposit_ref_key(issuer: str, ref: str) -> bytes:
    return DEPOSIT_REF + _pair(issuer, ref)


def payout_ref_key(issuer: str, account_id: str, ref: str) -> bytes:
    return PAYOUT_REF + _pair(issuer, account_id) + b"\x00" + ref.encode()


def result_key(tx_id: bytes) -> bytes:
    return RESULT + tx_id
