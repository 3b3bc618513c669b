"""Read-side queries over the ledger state and the invariant check run at checkpoints/tests."""

from __future__ import annotations

import hashlib
import struct
from collections import defaultdict
from dataclasses import dataclass

from ledger.genesis import Genesis
from node.app import state as st
from node.storage.kv import KVReader


@dataclass(frozen=True)
class BalanceView:
    asset: str
    available: int
    held: int  # in pending escrows


@dataclass(frozen=True)
class AccountView:
    account_id: str
    member_id: str
    owner_key: bytes
    frozen: bool
    balances: tuple[BalanceView, ...]  # sorted by asset; assets with available = held = 0 omitted


@dataclass(frozen=True)
class SupplyView:
    asset: str
    issuer: str
    scale: int
    minted: int
    redeemed: int

    @property
    def outstanding(self) -> int:
        return self.minted - self.redeemed


def genesis_state_root(genesis: Genesis) -> bytes:
    """The state root before height 1: binds the chain id, so two chains never share a root."""
    return hashlib.sha256(b"consortium-ledger/state/v1\x00" + genesis.chain_id.encode()).digest()


def last_height(r: st.Reader) -> int:
    raw = r.get(st.META_HEIGHT)
    return 0 if raw is None else st.read_u64(raw)


def state_root(r: st.Reader, genesis: Genesis) -> bytes:
    raw = r.get(st.META_ROOT)
    return genesis_state_root(genesis) if raw is None else raw


def consensus_time(r: st.Reader) -> int:
    raw = r.get(st.META_TIME)
    return 0 if raw is None else int(struct.unpack(">q", raw)[0])


def _scan(r: KVReader, prefix: bytes) -> list[tuple[bytes, bytes]]:
    return list(r.scan(prefix))


def account(r: KVReader, account_id: str) -> AccountView | None:
    if not account_id or b"\x00" in account_id.encode() or len(account_id.encode()) > 255:
        return None
    rec = st.get_account(r, account_id)
    if rec is None:
        return None
    prefix_tail = account_id.encode() + b"\x00"
    amounts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for slot, prefix in ((0, st.BALANCE), (1, st.HELD)):
        for key, value in _scan(r, prefix + prefix_tail):
            _, asset = st.split_pair_key(prefix, key)
            amounts[asset][slot] = st.read_u64(value)
    balances = tuple(BalanceView(a, v[0], v[1]) for a, v in sorted(amounts.items()))
    return AccountView(rec.account_id, rec.member_id, rec.owner_key, rec.frozen, balances)


def tx_result(r: st.Reader, tx_id: bytes) -> bytes | None:
    """The serialized TxResult recorded for tx_id (authorized transactions only)."""
    if len(tx_id) != 32:
        return None
    return r.get(st.result_key(tx_id))


def escrow(r: st.Reader, escrow_id: str) -> st.EscrowRecord | None:
    if not escrow_id or len(escrow_id.encode()) > 255:
        return None
    return st.get_escrow(r, escrow_id)


def supply(r: st.Reader, genesis: Genesis) -> tuple[SupplyView, ...]:
    out = []
    for asset in genesis.assets:
        minted, redeemed = st.get_supply(r, asset.asset)
        out.append(SupplyView(asset.asset, asset.issuer, asset.scale, minted, redeemed))
    return tuple(out)


def check_invariants(r: KVReader, genesis: Genesis) -> list[str]:
    """Every violation found (empty when the state is sound). Per asset: balances + held ==
    minted - redeemed <= amount_max; held per account == its pending escrows; no amount above amount_max;
    the expiry index lists exactly the pending escrows; the owner key index counts exactly each
    key's accounts that are not frozen."""
    violations: list[str] = []
    amount_max = genesis.limits.amount_max
    known = {a.asset for a in genesis.assets}
    totals: dict[str, int] = defaultdict(int)
    held_by_key: dict[tuple[str, str], int] = {}
    for prefix in (st.BALANCE, st.HELD):
        for key, value in _scan(r, prefix):
            account_id, asset = st.split_pair_key(prefix, key)
            amount = st.read_u64(value)
            if asset not in known:
                violations.append(f"{key!r}: unknown asset")
            if not 0 < amount <= amount_max:
                violations.append(
                    f"{key!r}: amount {amount} outside 1..amount_max (zero is stored as absent)"
                )
            if st.get_account(r, account_id) is None:
                violations.append(f"{key!r}: no such account")
            totals[asset] += amount
            if prefix == st.HELD:
                held_by_key[(account_id, asset)] = amount
    pending_by_key: dict[tuple[str, str], int] = defaultdict(int)
    pending_ids: set[str] = set()
    for key, _ in _scan(r, st.ESCROW):
        esc = st.get_escrow(r, key[len(st.ESCROW) :].decode())
        assert esc is not None
        if esc.status == st.ESCROW_PENDING:
            pending_by_key[(esc.from_account, esc.asset)] += esc.amount
            pending_ids.add(esc.escrow_id)
            if r.get(st.expiry_key(esc.expires_at_ms, esc.escrow_id)) is None:
                violations.append(f"pending escrow {esc.escrow_id} missing from the expiry index")
    if dict(pending_by_key) != held_by_key:
        violations.append(f"held amounts {held_by_key} differ from pending escrows {dict(pending_by_key)}")
    active: dict[bytes, int] = defaultdict(int)
    for key, _ in _scan(r, st.ACCOUNT):
        acct = st.get_account(r, key[len(st.ACCOUNT) :].decode())
        assert acct is not None
        if not acct.frozen:
            active[acct.owner_key] += 1
    counted = {key[len(st.KEY_ACCOUNTS) :]: st.read_u64(value) for key, value in _scan(r, st.KEY_ACCOUNTS)}
    if counted != dict(active):
        violations.append("the owner key index (s/k/) differs from the accounts that are not frozen")
    indexed = {st.expiry_of_key(key)[1] for key, _ in _scan(r, st.EXPIRY)}
    if indexed != pending_ids:
        violations.append(
            f"expiry index {sorted(indexed)} differs from pending escrows {sorted(pending_ids)}"
        )
    for sv in supply(r, genesis):
        if not 0 <= sv.redeemed <= sv.minted or sv.outstanding > amount_max:
            violations.append(
                f"{sv.asset}: supply minted={sv.minted} redeemed={sv.redeemed} out of order or "
                "outstanding above amount_max"
            )
        if totals.get(sv.asset, 0) != sv.outstanding:
            violations.append(
                f"{sv.asset}: balances + held = {totals.get(sv.asset, 0)} but minted - redeemed = {sv.outstanding}"
            )
    return violations
