"""Postings: what each executed transaction did to each account's balances, for the node-local
history index (node/storage/history.py). Not part of the state root and never read by execution.

A posting is one movement of one (account, asset): deltas of available and held, and the
balances right after it. They are built from the operation and the transaction's own writes
(the overlay, after a successful handler): the handlers change nothing and nothing more is
read (a held amount only where the transaction changed it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.genesis import Genesis
from node.app import state as st
from node.app.tx import EscrowCreate, EscrowPost, EscrowVoid, Mint, Op, Redeem, Transfer

# ledger.v1.PostingKind values (proto/ledger/v1/api.proto)
MINT = 1
REDEEM = 2
TRANSFER = 3
ESCROW_CREATE = 4
ESCROW_POST = 5
ESCROW_VOID = 6
ESCROW_EXPIRE = 7
SNAPSHOT = 8  # the balances a synced node's history starts from (node/statesync.py)
KIND_NAMES = {
    MINT: "MINT",
    REDEEM: "REDEEM",
    TRANSFER: "TRANSFER",
    ESCROW_CREATE: "ESCROW_CREATE",
    ESCROW_POST: "ESCROW_POST",
    ESCROW_VOID: "ESCROW_VOID",
    ESCROW_EXPIRE: "ESCROW_EXPIRE",
    SNAPSHOT: "SNAPSHOT",
}


@dataclass(slots=True)
class Posting:
    account: str
    asset: str
    delta_available: int
    delta_held: int
    kind: int
    counterparty: str
    index: int  # the transaction's index in its block; 0 for an expiry
    tx_id: bytes = b""  # empty for an expiry
    escrow_id: str = ""
    available_after: int = 0
    held_after: int | None = None  # None: this transaction did not change the held amount


def _with_balances(r: st.Reader, raw: list[Posting]) -> list[Posting]:
    """Fill in the balances after each posting from the transaction's own writes (``r`` reads
    the state after it; every balance a posting moves was written by its handler): the last
    posting of each (account, asset) has the written value, earlier ones subtract. Held is
    read only where the transaction changed it; elsewhere held_after stays None (unchanged:
    the index knows it from its last change, node/storage/history.py)."""
    available: dict[tuple[str, str], int] = {}
    held: dict[tuple[str, str], int | None] = {}
    moved_held = {(p.account, p.asset) for p in raw if p.delta_held}
    get = r.get
    for p in reversed(raw):
        key = (p.account, p.asset)
        if key not in available:
            pair = f"{p.account}\x00{p.asset}".encode()
            value = get(st.BALANCE + pair)
            available[key] = 0 if value is None else st.read_u64(value)
            held[key] = None
            if key in moved_held:
                value = get(st.HELD + pair)
                held[key] = 0 if value is None else st.read_u64(value)
        p.available_after = available[key]
        p.held_after = now_held = held[key]
        available[key] -= p.delta_available
        if now_held is not None:
            held[key] = now_held - p.delta_held
    return raw


def of_transaction(
    genesis: Genesis, r: st.Reader, op: Op | None, tx_id: bytes, index: int, escrow: st.EscrowRecord | None
) -> list[Posting]:
    """The postings of a successful transaction; ``r`` reads the state right after it, and
    ``escrow`` is the escrow record a post or void closed (as it was before)."""
    raw: list[Posting] = []
    if isinstance(op, Transfer):
        for leg in op.legs:
            raw.append(
                Posting(leg.from_account, leg.asset, -leg.amount, 0, TRANSFER, leg.to_account, index, tx_id)
            )
            raw.append(
                Posting(leg.to_account, leg.asset, leg.amount, 0, TRANSFER, leg.from_account, index, tx_id)
            )
    elif isinstance(op, Mint):
        asset = genesis.asset(op.asset)
        issuer = asset.issuer if asset is not None else ""
        raw.append(Posting(op.account_id, op.asset, op.amount, 0, MINT, issuer, index, tx_id))
    elif isinstance(op, Redeem):
        asset = genesis.asset(op.asset)
        issuer = asset.issuer if asset is not None else ""
        raw.append(Posting(op.account_id, op.asset, -op.amount, 0, REDEEM, issuer, index, tx_id))
    elif isinstance(op, EscrowCreate):
        raw.append(
            Posting(
                op.from_account, op.asset, -op.amount, op.amount, ESCROW_CREATE, op.to_account, index, tx_id,
                op.escrow_id,
            )
        )  # fmt: skip
    elif isinstance(op, EscrowPost) and escrow is not None:
        e = escrow
        raw.append(
            Posting(e.from_account, e.asset, e.amount - op.amount, -e.amount, ESCROW_POST, e.to_account, index, tx_id,
                    e.escrow_id)
        )  # fmt: skip
        if op.amount:
            raw.append(
                Posting(
                    e.to_account,
                    e.asset,
                    op.amount,
                    0,
                    ESCROW_POST,
                    e.from_account,
                    index,
                    tx_id,
                    e.escrow_id,
                )
            )
    elif isinstance(op, EscrowVoid) and escrow is not None:
        raw.append(returned(escrow, ESCROW_VOID, index, tx_id))
    return _with_balances(r, raw)


def returned(esc: st.EscrowRecord, kind: int, index: int, tx_id: bytes) -> Posting:
    """A void or an expiry: the held amount goes back to the payer's available."""
    return Posting(
        esc.from_account,
        esc.asset,
        esc.amount,
        -esc.amount,
        kind,
        esc.to_account,
        index,
        tx_id,
        esc.escrow_id,
    )


def of_expiry(r: st.Reader, esc: st.EscrowRecord) -> list[Posting]:
    return _with_balances(r, [returned(esc, ESCROW_EXPIRE, 0, b"")])
