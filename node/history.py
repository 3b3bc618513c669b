"""Account history and escrow lookups over the node-local index (node/storage/history.py).

Pure functions of a KVReader and a serialized request, returning the serialized reply or
raising QueryError (its gRPC code and message: node/api.py aborts the call with them). Every
reply is bounded: at most ENTRIES_MAX entries and about REPLY_BYTES_MAX bytes, and a call scans
at most SCAN_MAX index entries (a kind filter that skips many returns a page, maybe empty, with
a cursor to go on from).

Read authority: as GetAccount's (none yet; issue 17 adds it).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from ledger.genesis import Genesis
from ledger.v1 import api_pb2
from node.app import queries
from node.app import state as st
from node.app.postings import KIND_NAMES
from node.receipts import field_bytes, field_varint
from node.storage import history as index
from node.storage import prune
from node.storage.kv import KVReader

ENTRIES_MAX = 1000
REPLY_BYTES_MAX = 1 << 20
SCAN_MAX = 20_000
KINDS_MAX = len(KIND_NAMES)
ENTRY_BYTES_MAX = 1024  # a serialized HistoryEntry is well under this (ids are bounded)
# GetAccountHistoryResponse and ListEscrowsResponse field numbers
_ENTRIES, _NEXT_CURSOR, _HEIGHT, _OPENING = 1, 2, 3, 4


class QueryError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> QueryError:
    return QueryError(grpc.StatusCode.INVALID_ARGUMENT, message)


M = TypeVar("M", bound=Message)


def parse(cls: type[M], raw: bytes) -> M:
    try:
        return cls.FromString(raw)
    except Exception as exc:  # DecodeError and friends
        raise invalid(f"not a {cls.__name__}") from exc


def check_id(genesis: Genesis, what: str, value: str) -> str:
    size = len(value.encode())
    if not 0 < size <= genesis.limits.id_bytes_max or "\x00" in value or "/" in value:
        raise invalid(f"{what} must be 1..{genesis.limits.id_bytes_max} bytes, without NUL or '/'")
    return value


def known_account(genesis: Genesis, r: KVReader, account_id: str) -> st.AccountRecord:
    acct = st.get_account(r, check_id(genesis, "account_id", account_id))
    if acct is None:
        raise QueryError(grpc.StatusCode.NOT_FOUND, f"no account {account_id!r}")
    return acct


def _limit(limit: int) -> int:
    if limit < 1:
        raise invalid(f"limit must be >= 1 (at most {ENTRIES_MAX} are sent)")
    return min(limit, ENTRIES_MAX)


def account_history(genesis: Genesis, r: KVReader, raw: bytes) -> bytes:
    """GetAccountHistory: the account's entries newest first, from the cursor (or to_time_ms)
    back to from_time_ms, of the given kinds; the first page also gives the opening balances."""
    req = parse(api_pb2.GetAccountHistoryRequest, raw)
    limit = _limit(req.limit)
    kinds = set(req.kinds)
    if len(req.kinds) > KINDS_MAX or not kinds <= KIND_NAMES.keys():
        raise invalid(f"kinds must be PostingKind values 1..{KINDS_MAX}, at most {KINDS_MAX}")
    if req.to_time_ms and req.to_time_ms <= req.from_time_ms:
        raise invalid(f"to_time_ms {req.to_time_ms} is not after from_time_ms {req.from_time_ms}")
    if req.after and len(req.after) != index.POSITION_BYTES:
        raise invalid(f"after must be a next_cursor of this call ({index.POSITION_BYTES} bytes)")
    known_account(genesis, r, req.account_id)
    synced = prune.synced_time_ms(r)
    if synced is not None and req.from_time_ms < synced:
        raise QueryError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"this node's history starts at its snapshot (checkpoint {prune.synced_at(r)}, consensus "
            f"time {synced} ms): ask with from_time_ms >= {synced}, or ask a node that kept it",
        )
    first = index.position(req.to_time_ms - 1) if req.to_time_ms else b""
    if req.after:
        first = max(first, bytes(req.after) + b"\x00")  # just past (older than) the cursor's entry
    # One newest-first scan per asset, merged: positions are unique within a block's entries.
    merged = heapq.merge(
        *(_entries(r, req.account_id, a.asset, first, req.from_time_ms) for a in genesis.assets)
    )
    parts: list[bytes] = []
    size = 0
    cursor = b""
    scanned = 0
    for position, asset, value, held in merged:
        if len(parts) >= limit or size > REPLY_BYTES_MAX - ENTRY_BYTES_MAX or scanned >= SCAN_MAX:
            break  # there is more: the cursor names the last entry taken or skipped
        scanned += 1
        cursor = position
        if kinds and value[index.KIND_OFFSET] not in kinds:
            continue
        entry = field_bytes(_ENTRIES, index.read_entry(asset, position, value, held).SerializeToString())
        parts.append(entry)
        size += len(entry)
    else:
        cursor = b""  # the scans ended: nothing more
    if cursor:
        parts.append(field_bytes(_NEXT_CURSOR, cursor))
    parts.append(field_varint(_HEIGHT, queries.last_height(r)))
    if not req.after:
        parts += [field_bytes(_OPENING, b.SerializeToString()) for b in opening(genesis, r, req)]
    return b"".join(parts)


def _entries(
    r: KVReader, account: str, asset: str, first: bytes, from_time_ms: int
) -> Iterator[tuple[bytes, str, bytes, int]]:
    """(position, asset, value, held after) of one (account, asset)'s entries, newest first,
    from position ``first`` back to from_time_ms (inclusive)."""
    prefix = index.history_prefix(account, asset)
    held = index.held_at(r, account, asset, first)
    for key, value in r.scan(prefix, prefix + first):
        position = key[len(prefix) :]
        if index.time_of(position) < from_time_ms:
            return
        yield position, asset, value, held
        held -= index.delta_held_of(value)  # the held after the next (older) entry


def opening(genesis: Genesis, r: KVReader, req: api_pb2.GetAccountHistoryRequest) -> list[api_pb2.Balance]:
    """The account's balance in each asset just before from_time_ms (after its newest entry
    before then), for the assets it had entries in by then: one seek per genesis asset."""
    out: list[api_pb2.Balance] = []
    if req.from_time_ms <= -index.TIME_OFFSET:
        return out  # nothing is before the first time
    for asset in genesis.assets:
        prefix = index.history_prefix(req.account_id, asset.asset)
        before = index.position(req.from_time_ms - 1)
        for _, value in r.scan(prefix, prefix + before):
            held = index.held_at(r, req.account_id, asset.asset, before)
            out.append(api_pb2.Balance(asset=asset.asset, available=index.available_of(value), held=held))
            break
    return out


def _escrow(rec: st.EscrowRecord) -> api_pb2.Escrow:
    return api_pb2.Escrow(
        escrow_id=rec.escrow_id,
        from_account=rec.from_account,
        to_account=rec.to_account,
        asset=rec.asset,
        amount=rec.amount,
        expires_at_ms=rec.expires_at_ms,
        status=rec.status + 1,  # type: ignore[arg-type]  # ESCROW_PENDING (0) is ESCROW_STATUS_PENDING (1)
    )


def get_escrow(genesis: Genesis, r: KVReader, raw: bytes) -> bytes:
    req = parse(api_pb2.GetEscrowRequest, raw)
    rec = st.get_escrow(r, check_id(genesis, "escrow_id", req.escrow_id))
    if rec is None:
        raise QueryError(grpc.StatusCode.NOT_FOUND, f"no escrow {req.escrow_id!r}")
    return _escrow(rec).SerializeToString()


def list_escrows(genesis: Genesis, r: KVReader, raw: bytes) -> bytes:
    """ListEscrows: the escrows an account pays or is paid by, in escrow_id order, paged."""
    req = parse(api_pb2.ListEscrowsRequest, raw)
    limit = _limit(req.limit)
    if req.after:
        check_id(genesis, "after", req.after)
    known_account(genesis, r, req.account_id)
    prefix = index.escrows_prefix(req.account_id)
    start = prefix + req.after.encode() + b"\x00" if req.after else prefix
    out = api_pb2.ListEscrowsResponse(height=queries.last_height(r))
    for key, _ in r.scan(prefix, start):
        if len(out.escrows) >= limit:
            out.next_after = out.escrows[-1].escrow_id
            break
        escrow_id = key[len(prefix) :].decode()
        rec = st.get_escrow(r, escrow_id)
        assert rec is not None, f"escrow index names {escrow_id}"
        out.escrows.append(_escrow(rec))
    return out.SerializeToString()
