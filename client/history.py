"""Account history, statements, escrows and the verified feed: the SDK's typed results and the
pure checks that LedgerClient and AsyncLedgerClient share (no I/O here).

History and escrows are node-local reads (not certified, like balances): ask several nodes when
it matters. A statement reconciles itself: for each asset, the opening balance plus the sum of
the entries' deltas must equal the balance after the last entry (StatementMismatch otherwise).

Feed blocks are verified like GetBlock's (certificate, batch, f+1 attestations over the
results): a node can withhold a block from a filtered feed (skip it as "no match"), but it
cannot change one; reconciling the consumer's totals with GetSupply catches withholding.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from client.models import LedgerError, NotFound, Unreachable, Unverified
from client.policy import describe, status_code
from client.verify import ReceiptError, VerifiedBlock, verify_block
from ledger.genesis import Genesis
from ledger.v1 import api_pb2, tx_pb2

KINDS = ("MINT", "REDEEM", "TRANSFER", "ESCROW_CREATE", "ESCROW_POST", "ESCROW_VOID", "ESCROW_EXPIRE")
PAGE_MAX = 1000  # what nodes send at most per GetAccountHistory reply
CURSOR_BYTES = 20


class StatementMismatch(LedgerError):
    """A statement's entries do not reconcile with its opening and closing balances."""


def kind_value(name: str) -> api_pb2.PostingKind.ValueType:
    """PostingKind of a name ("transfer", "ESCROW_POST", ...); ValueError for an unknown one."""
    upper = name.upper().removeprefix("POSTING_KIND_")
    if upper not in KINDS:
        raise ValueError(f"unknown kind {name!r}; one of {', '.join(KINDS)}")
    return api_pb2.PostingKind.Value(f"POSTING_KIND_{upper}")


@dataclass(frozen=True)
class HistoryEntry:
    """One movement of one account's balance in one asset (minor units)."""

    height: int
    index: int
    time_ms: int
    kind: str  # MINT, REDEEM, TRANSFER, ESCROW_CREATE, ESCROW_POST, ESCROW_VOID, ESCROW_EXPIRE
    asset: str
    delta_available: int
    delta_held: int
    available_after: int
    held_after: int
    tx_id: bytes  # empty for an escrow expiry
    escrow_id: str
    counterparty: str
    seq: int

    @classmethod
    def from_proto(cls, e: api_pb2.HistoryEntry) -> HistoryEntry:
        return cls(
            height=e.height,
            index=e.index,
            time_ms=e.time_ms,
            kind=api_pb2.PostingKind.Name(e.kind).removeprefix("POSTING_KIND_"),
            asset=e.asset,
            delta_available=e.delta_available,
            delta_held=e.delta_held,
            available_after=e.available_after,
            held_after=e.held_after,
            tx_id=bytes(e.tx_id),
            escrow_id=e.escrow_id,
            counterparty=e.counterparty,
            seq=e.seq,
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "height": self.height,
            "index": self.index,
            "time_ms": self.time_ms,
            "kind": self.kind,
            "asset": self.asset,
            "delta_available": self.delta_available,
            "delta_held": self.delta_held,
            "available_after": self.available_after,
            "held_after": self.held_after,
            "tx_id": self.tx_id.hex(),
            "escrow_id": self.escrow_id,
            "counterparty": self.counterparty,
        }


@dataclass(frozen=True)
class HistoryPage:
    entries: tuple[HistoryEntry, ...]  # newest first
    next_cursor: bytes  # empty: no more (older) entries
    height: int  # the node's last executed block when read
    opening: dict[str, tuple[int, int]]  # first page only: (available, held) by asset before from_ms

    @classmethod
    def from_proto(cls, resp: api_pb2.GetAccountHistoryResponse) -> HistoryPage:
        return cls(
            tuple(HistoryEntry.from_proto(e) for e in resp.entries),
            bytes(resp.next_cursor),
            resp.height,
            {b.asset: (b.available, b.held) for b in resp.opening},
        )


def history_request(
    account_id: str, from_ms: int, to_ms: int, kinds: tuple[str, ...], after: bytes, limit: int
) -> api_pb2.GetAccountHistoryRequest:
    if not limit >= 1:
        raise ValueError("limit must be >= 1")
    if after and len(after) != CURSOR_BYTES:
        raise ValueError("after must be a next_cursor of a history page")
    if to_ms and to_ms <= from_ms:
        raise ValueError(f"to_ms {to_ms} is not after from_ms {from_ms}")
    return api_pb2.GetAccountHistoryRequest(
        account_id=account_id,
        from_time_ms=from_ms,
        to_time_ms=to_ms,
        kinds=[kind_value(k) for k in kinds],
        after=after,
        limit=min(limit, PAGE_MAX),
    )


@dataclass(frozen=True)
class AssetStatement:
    asset: str
    opening_available: int
    opening_held: int
    closing_available: int
    closing_held: int
    credits: int  # sum of positive available deltas
    debits: int  # sum of negative available deltas (<= 0)
    entries: int


@dataclass(frozen=True)
class Statement:
    account_id: str
    from_ms: int
    to_ms: int
    height: int
    assets: tuple[AssetStatement, ...]
    entries: tuple[HistoryEntry, ...]  # oldest first


def build_statement(
    account_id: str, from_ms: int, to_ms: int, opening: dict[str, tuple[int, int]], pages: list[HistoryPage]
) -> Statement:
    """Opening balances, entries and closing balances per asset; raises StatementMismatch
    unless opening + sum(deltas) == the balance after each asset's last entry."""
    entries = tuple(reversed([e for page in pages for e in page.entries]))  # oldest first
    totals = {asset: [available, held, 0, 0, 0] for asset, (available, held) in opening.items()}
    for e in entries:
        t = totals.setdefault(e.asset, [0, 0, 0, 0, 0])
        t[0] += e.delta_available
        t[1] += e.delta_held
        t[2 if e.delta_available > 0 else 3] += e.delta_available
        t[4] += 1
        if (t[0], t[1]) != (e.available_after, e.held_after):
            raise StatementMismatch(
                f"{account_id} {e.asset}: balance after the entry at height {e.height} seq {e.seq} is "
                f"{e.available_after}/{e.held_after}, opening plus deltas give {t[0]}/{t[1]}"
            )
    assets = tuple(
        AssetStatement(
            asset=asset,
            opening_available=opening.get(asset, (0, 0))[0],
            opening_held=opening.get(asset, (0, 0))[1],
            closing_available=t[0],
            closing_held=t[1],
            credits=t[2],
            debits=t[3],
            entries=t[4],
        )
        for asset, t in sorted(totals.items())
    )
    return Statement(account_id, from_ms, to_ms, max((p.height for p in pages), default=0), assets, entries)


@dataclass(frozen=True)
class EscrowInfo:
    escrow_id: str
    from_account: str
    to_account: str
    asset: str
    amount: int
    expires_at_ms: int
    status: str  # PENDING, POSTED, VOIDED, EXPIRED

    @classmethod
    def from_proto(cls, e: api_pb2.Escrow) -> EscrowInfo:
        return cls(
            e.escrow_id,
            e.from_account,
            e.to_account,
            e.asset,
            e.amount,
            e.expires_at_ms,
            api_pb2.EscrowStatus.Name(e.status).removeprefix("ESCROW_STATUS_"),
        )


# --- the feed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedTx:
    index: int
    tx_id: bytes
    body: tx_pb2.TxBody
    result: tx_pb2.TxResult

    @property
    def ok(self) -> bool:
        return self.result.code == tx_pb2.OK


@dataclass(frozen=True)
class FeedBlock:
    """One feed step: a verified block and its matching transactions, or (block None) a
    statement that nothing matched up to ``height``. Resume from ``height + 1``."""

    height: int
    block: VerifiedBlock | None
    transactions: tuple[FeedTx, ...]
    last_height: int


def feed_request(
    from_height: int, accounts: tuple[str, ...], assets: tuple[str, ...], banks: tuple[str, ...]
) -> api_pb2.FeedRequest:
    if from_height < 1:
        raise ValueError("from_height must be >= 1")
    return api_pb2.FeedRequest(
        from_height=from_height, accounts=list(accounts), assets=list(assets), banks=list(banks)
    )


def check_feed_message(genesis: Genesis, next_height: int, msg: api_pb2.FeedMessage) -> FeedBlock:
    """Verify one FeedMessage, expected to continue at ``next_height``: a block must be that
    height, certified, with f+1 attestations over its results; a bare height must not go back
    past what was already covered (a heartbeat repeats it)."""
    if not msg.HasField("block"):
        if msg.height + 1 < next_height:
            raise ReceiptError("feed_order", f"nothing-matched mark at {msg.height} before {next_height - 1}")
        return FeedBlock(msg.height, None, (), msg.last_height)
    if msg.height != next_height:
        raise ReceiptError("feed_order", f"block {msg.height} where {next_height} was next")
    verified = verify_block(genesis, msg.block)
    header = verified.block.header
    if header.height != msg.height:
        raise ReceiptError("other_block", f"feed says {msg.height}, block is {header.height}")
    if verified.attested is None or len(verified.results) != header.tx_count:
        raise ReceiptError("not_attested", f"block {msg.height} came without f+1 attestations of its results")
    matches = list(msg.matches)
    if matches != sorted(set(matches)) or (matches and matches[-1] >= header.tx_count):
        raise ReceiptError("bad_matches", f"match indexes {matches[:5]} of a {header.tx_count}-tx block")
    txs = tuple(
        FeedTx(i, verified.tx_ids[i], _body(verified.envelopes[i]), verified.results[i]) for i in matches
    )
    return FeedBlock(msg.height, verified, txs, msg.last_height)


def _body(envelope: bytes) -> tx_pb2.TxBody:
    try:
        return tx_pb2.TxBody.FromString(tx_pb2.Envelope.FromString(envelope).body)
    except DecodeError:  # a malformed transaction (its result says so): no operation
        return tx_pb2.TxBody()


FEED_RETRY_S = 0.5  # between rounds over every node


class FeedFailover:
    """When a feed's node fails, the feed goes on from the next height on another node.
    Definite answers end it (NOT_FOUND: unknown filter id; INVALID_ARGUMENT; OUT_OF_RANGE or
    FAILED_PRECONDITION from every node in turn: the height is past every node's head, or
    pruned below what any keeps); it
    gives up after two rounds over every node without a verified message: Unverified when
    every failure was an answer that did not verify, Unreachable otherwise."""

    def __init__(self, endpoints: int) -> None:
        self.endpoints = endpoints
        self.failures = 0
        self.unverified = 0
        self.out_of_range = 0
        self.errors: list[str] = []

    def progressed(self) -> None:
        self.failures = self.unverified = self.out_of_range = 0

    def failed(self, endpoint: str, exc: Exception | None) -> None:
        if isinstance(exc, grpc.RpcError):
            code = status_code(exc)
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(describe(endpoint, "feed", exc)) from exc
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise LedgerError(describe(endpoint, "feed", exc)) from exc
            self.errors.append(describe(endpoint, "feed", exc))
            # past the node's head, or pruned below its retention: this node does not serve it
            self.out_of_range += code in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.FAILED_PRECONDITION)
            if self.out_of_range >= self.endpoints:
                raise LedgerError(f"feed: no node serves that height ({self.errors[-1]})") from exc
        elif isinstance(exc, ReceiptError):
            self.unverified += 1
            self.errors.append(f"{endpoint} feed: did not verify: {exc}")
        else:
            self.errors.append(f"{endpoint} feed: stream ended")
        self.failures += 1
        if self.failures >= 2 * self.endpoints:
            if self.unverified == self.failures:
                raise Unverified("feed: no node gave blocks that verify", tuple(self.errors))
            raise Unreachable("feed: no node served it", tuple(self.errors))
