"""The money rules: one function per transaction kind, each returning an Outcome.

Handlers write through a per-transaction overlay; the caller applies it only when the outcome is
OK, so a handler may fail half-way (a later leg of a transfer) without undoing anything.

Order inside every handler: find who must sign, check they signed, then the body's limits,
then the state. Only an *authorized* transaction (every signer it requires exists and signed)
records its result under the tx_id, so every recorded result is signed by keys the ledger
knows (a bank can freeze their accounts). Not recorded:
- MISSING_SIGNATURE, NOT_ISSUER and NOT_ACCOUNT_BANK: a third party could otherwise strip or
  swap signatures on a genuine body and burn its tx_id;
- an outcome decided before anyone who could authorize it is known (NOT_MEMBER, UNKNOWN_ASSET
  of a mint, UNKNOWN_ACCOUNT of an account that must sign or whose bank must, UNKNOWN_ESCROW):
  anyone without a key could otherwise have such results stored as final, for ever.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ledger.genesis import Genesis
from node.app import money
from node.app import state as st
from node.app.tx import (
    CheckedTx,
    Code,
    EscrowCreate,
    EscrowPost,
    EscrowVoid,
    Mint,
    OpenAccount,
    Redeem,
    SetAccountFrozen,
    Transfer,
)
from node.app.validate import body_problem


@dataclass(frozen=True)
class Outcome:
    code: Code
    detail: str = ""
    recorded: bool = True  # False: the tx was not authorized; its tx_id stays unused


OK = Outcome(Code.OK)


def _fail(code: Code, detail: str) -> Outcome:
    return Outcome(code, detail, recorded=True)


def _unauthorized(code: Code, detail: str) -> Outcome:
    return Outcome(code, detail, recorded=False)


def _operator_outcome(genesis: Genesis, signers: frozenset[bytes], wrong_code: Code, who: str) -> Outcome:
    """The required operator did not sign: another member's operator (wrong_code) or nobody."""
    others = [m.member_id for m in genesis.members if m.operator_key in signers]
    if others:
        return _unauthorized(wrong_code, f"signed by {others[0]}, not by {who}")
    return _unauthorized(Code.MISSING_SIGNATURE, f"the operator of {who} did not sign")


def _missing_owner(signers: frozenset[bytes], owners: Iterable[st.AccountRecord]) -> Outcome | None:
    for acct in owners:
        if acct.owner_key not in signers:
            return _unauthorized(Code.MISSING_SIGNATURE, f"the owner of {acct.account_id} did not sign")
    return None


def _body(genesis: Genesis, tx: CheckedTx) -> Outcome | None:
    problem = body_problem(genesis, tx.body)
    return None if problem is None else _fail(problem.code, problem.message)


def _credit(w: st.Writer, account_id: str, asset: str, amount: int, amount_max: int) -> bool:
    key = st.balance_key(account_id, asset)  # once for the read and the write
    new = money.credit(st.get_amount(w, key), amount, amount_max)
    if new is None:
        return False
    st.put_amount(w, key, new)
    return True


def _debit(w: st.Writer, account_id: str, asset: str, amount: int) -> bool:
    key = st.balance_key(account_id, asset)
    new = money.debit(st.get_amount(w, key), amount)
    if new is None:
        return False
    st.put_amount(w, key, new)
    return True


def open_account(genesis: Genesis, w: st.Writer, tx: CheckedTx, op: OpenAccount) -> Outcome:
    member = genesis.member(op.member_id)
    if member is None:
        return _unauthorized(Code.NOT_MEMBER, f"{op.member_id} is not a member")
    if member.operator_key not in tx.signers:
        return _operator_outcome(genesis, tx.signers, Code.MISSING_SIGNATURE, op.member_id)
    if (problem := _body(genesis, tx)) is not None:
        return problem
    if st.get_account(w, op.account_id) is not None:
        return _fail(Code.ACCOUNT_EXISTS, f"account {op.account_id} exists")
    st.put_account(w, st.AccountRecord(op.account_id, op.member_id, op.owner_key, frozen=False))
    st.count_active_account(w, op.owner_key, +1)
    return OK


def set_frozen(genesis: Genesis, w: st.Writer, tx: CheckedTx, op: SetAccountFrozen) -> Outcome:
    acct = st.get_account(w, op.account_id)
    if acct is None:
        return _unauthorized(Code.UNKNOWN_ACCOUNT, f"no account {op.account_id}")
    bank = genesis.member(acct.member_id)
    assert bank is not None, f"account {acct.account_id} belongs to unknown member {acct.member_id}"
    if bank.operator_key not in tx.signers:
        return _operator_outcome(genesis, tx.signers, Code.NOT_ACCOUNT_BANK, acct.member_id)
    if (problem := _body(genesis, tx)) is not None:
        return problem
    st.put_account(w, st.AccountRecord(acct.account_id, acct.member_id, acct.owner_key, frozen=op.frozen))
    if acct.frozen != op.frozen:
        st.count_active_account(w, acct.owner_key, -1 if op.frozen else +1)
    return OK


def mint(genesis: Genesis, w: st.Writer, tx: CheckedTx, op: Mint) -> Outcome:
    asset = genesis.asset(op.asset)
    if asset is None:
        return _unauthorized(Code.UNKNOWN_ASSET, f"no asset {op.asset}")
    issuer = genesis.member(asset.issuer)
    assert issuer is not None, f"asset {asset.asset} has unknown issuer"
    if issuer.operator_key not in tx.signers:
        return _operator_outcome(genesis, tx.signers, Code.NOT_ISSUER, asset.issuer)
    if (problem := _body(genesis, tx)) is not None:
        return problem
    acct = st.get_account(w, op.account_id)
    if acct is None:
        return _fail(Code.UNKNOWN_ACCOUNT, f"no account {op.account_id}")
    if acct.frozen:
        return _fail(Code.ACCOUNT_FROZEN, f"account {op.account_id} is frozen")
    ref_key = st.deposit_ref_key(asset.issuer, op.deposit_ref)
    if w.get(ref_key) is not None:
        return _fail(Code.DUPLICATE_REFERENCE, f"deposit_ref {op.deposit_ref} already used")
    amount_max = genesis.limits.amount_max
    minted, redeemed = st.get_supply(w, asset.asset)
    # amount_max bounds the outstanding supply, not the cumulative counters: mint/redeem
    # turnover alone must never halt an asset. The counters are u128 (checked).
    if money.credit(minted - redeemed, op.amount, amount_max) is None:
        return _fail(Code.OVERFLOW, f"outstanding supply of {asset.asset} would pass amount_max")
    new_minted = money.credit(minted, op.amount, st.U128_MAX)
    if new_minted is None:
        return _fail(Code.OVERFLOW, f"cumulative minted of {asset.asset} would pass 2^128-1")
    if not _credit(w, acct.account_id, asset.asset, op.amount, amount_max):
        return _fail(Code.OVERFLOW, f"balance of {acct.account_id} would pass amount_max")
    st.put_supply(w, asset.asset, new_minted, redeemed)
    w.put(ref_key, tx.tx_id)
    return OK


def transfer(genesis: Genesis, w: st.Writer, tx: CheckedTx, op: Transfer) -> Outcome:
    payers: dict[str, st.AccountRecord] = {}
    for leg in op.legs:
        acct = payers.get(leg.from_account) or st.get_account(w, leg.from_account)
        if acct is None:
            return _unauthorized(Code.UNKNOWN_ACCOUNT, f"no account {leg.from_account}")
        payers[leg.from_account] = acct
    if (missing := _missing_owner(tx.signers, payers.values())) is not None:
        return missing
    if (problem := _body(genesis, tx)) is not None:
        return problem
    amount_max = genesis.limits.amount_max
    for i, leg in enumerate(op.legs):
        if genesis.asset(leg.asset) is None:
            return _fail(Code.UNKNOWN_ASSET, f"legs[{i}]: no asset {leg.asset}")
        payee = st.get_account(w, leg.to_account)
        if payee is None:
            return _fail(Code.UNKNOWN_ACCOUNT, f"legs[{i}]: no account {leg.to_account}")
        for acct in (payers[leg.from_account], payee):
            if acct.frozen:
                return _fail(Code.ACCOUNT_FROZEN, f"legs[{i}]: account {acct.account_id} is frozen")
        if not _debit(w, leg.from_account, leg.asset, leg.amount):
            return _fail(Code.INSUFFICIENT_FUNDS, f"legs[{i}]: {leg.from_account} has too little {leg.asset}")
        if not _credit(w, leg.to_account, leg.asset, leg.amount, amount_max):
            return _fail(Code.OVERFLOW, f"legs[{i}]: balance of {leg.to_account} would pass amount_max")
    return OK


def redeem(genesis: Genesis, w: st.Writer, tx: CheckedTx, op: Redeem) -> Outcome:
    acct = st.get_account(w, op.account_id)
    if acct is None:
        return _unauthorized(Code.UNKNOWN_ACCOUNT, f"no account {op.account_id}")
    if (missing := _missing_owner(tx.signers, [acct])) is not None:
        return missing
    if (problem := _body(genesis, tx)) is not None:
        return problem
    asset = genesis.asset(op.asset)
    if asset is None:
        return _fail(Code.UNKNOWN_ASSET, f"no asset {op.asset}")
    if acct.frozen:
        return _fail(Code.ACCOUNT_FROZEN, f"account {op.account_id} is frozen")
    # Unique per (issuer, redeeming account): another holder cannot consume this ref first.
    ref_key = st.payout_ref_key(asset.issuer, acct.account_id, op.payout_ref)
    if w.get(ref_key) is not None:
        return _fail(Code.DUPLICATE_REFERENCE, f"payout_ref {op.payout_ref} already used")
    if not _debit(w, acct.account_id, asset.asset, op.amount):
        return _fail(Code.INSUFFICIENT_FUNDS, f"{acct.account_id} has too little {asset.asset}")
    minted, redeemed = st.get_supply(w, asset.asset)
    new_redeemed = money.credit(redeemed, op.amount, minted)
    assert new_redeemed is not None, f"redeemed would pass minted for {asset.asset}"
    st.put_supply(w, asset.asset, minted, new_redeemed)
    w.put(ref_key, tx.tx_id)
    return OK


def escrow_create(genesis: Genesis, w: st.Writer, tx: CheckedTx, op: EscrowCreate, now_ms: int) -> Outcome:
    payer = st.get_account(w, op.from_account)
    if payer is None:
        return _unauthorized(Code.UNKNOWN_ACCOUNT, f"no account {op.from_account}")
    if (missing := _missing_owner(tx.signers, [payer])) is not None:
        return missing
    if (problem := _body(genesis, tx)) is not None:
        return problem
    if genesis.asset(op.asset) is None:
        return _fail(Code.UNKNOWN_ASSET, f"no asset {op.asset}")
    payee = st.get_account(w, op.to_account)
    if payee is None:
        return _fail(Code.UNKNOWN_ACCOUNT, f"no account {op.to_account}")
    if st.get_escrow(w, op.escrow_id) is not None:
        return _fail(Code.ESCROW_EXISTS, f"escrow {op.escrow_id} exists")
    for acct in (payer, payee):
        if acct.frozen:
            return _fail(Code.ACCOUNT_FROZEN, f"account {acct.account_id} is frozen")
    if op.expires_at_ms <= now_ms:
        return _fail(Code.EXPIRED, f"expires_at_ms {op.expires_at_ms} is not after consensus time {now_ms}")
    if op.expires_at_ms - now_ms > genesis.limits.escrow_duration_ms_max:
        return _fail(
            Code.LIMIT_EXCEEDED,
            f"escrow longer than escrow_duration_ms_max={genesis.limits.escrow_duration_ms_max}",
        )
    if not _debit(w, payer.account_id, op.asset, op.amount):
        return _fail(Code.INSUFFICIENT_FUNDS, f"{payer.account_id} has too little {op.asset}")
    held = money.credit(st.get_held(w, payer.account_id, op.asset), op.amount, genesis.limits.amount_max)
    assert held is not None, "held amount passed amount_max though it is bounded by the supply"
    st.put_held(w, payer.account_id, op.asset, held)
    st.put_escrow(
        w,
        st.EscrowRecord(
            op.escrow_id,
            op.from_account,
            op.to_account,
            op.asset,
            op.amount,
            op.expires_at_ms,
            st.ESCROW_PENDING,
        ),
    )
    return OK


def _closed_outcome(esc: st.EscrowRecord) -> Outcome | None:
    if esc.status == st.ESCROW_EXPIRED:
        return _fail(Code.EXPIRED, f"escrow {esc.escrow_id} expired")
    if esc.status != st.ESCROW_PENDING:
        return _fail(Code.ESCROW_CLOSED, f"escrow {esc.escrow_id} is {st.ESCROW_STATUS_NAMES[esc.status]}")
    return None


def _release_hold(w: st.Writer, esc: st.EscrowRecord) -> None:
    held = money.debit(st.get_held(w, esc.from_account, esc.asset), esc.amount)
    assert held is not None, f"held of {esc.from_account} is less than pending escrow {esc.escrow_id}"
    st.put_held(w, esc.from_account, esc.asset, held)


def _close(w: st.Writer, esc: st.EscrowRecord, status: int) -> None:
    st.put_escrow(
        w,
        st.EscrowRecord(
            esc.escrow_id, esc.from_account, esc.to_account, esc.asset, esc.amount, esc.expires_at_ms, status
        ),
    )


def escrow_post(genesis: Genesis, w: st.Writer, tx: CheckedTx, op: EscrowPost) -> Outcome:
    esc = st.get_escrow(w, op.escrow_id)
    if esc is None:
        return _unauthorized(Code.UNKNOWN_ESCROW, f"no escrow {op.escrow_id}")
    payer = st.get_account(w, esc.from_account)
    payee = st.get_account(w, esc.to_account)
    assert payer is not None and payee is not None, f"escrow {esc.escrow_id} names unknown accounts"
    if (missing := _missing_owner(tx.signers, [payer])) is not None:
        return missing
    if (problem := _body(genesis, tx)) is not None:
        return problem
    if (closed := _closed_outcome(esc)) is not None:
        return closed
    if op.amount > esc.amount:
        return _fail(Code.AMOUNT_OUT_OF_RANGE, f"amount {op.amount} is more than the {esc.amount} held")
    for acct in (payer, payee):
        if acct.frozen:
            return _fail(Code.ACCOUNT_FROZEN, f"account {acct.account_id} is frozen")
    amount_max = genesis.limits.amount_max
    _release_hold(w, esc)
    if not _credit(w, payee.account_id, esc.asset, op.amount, amount_max):
        return _fail(Code.OVERFLOW, f"balance of {payee.account_id} would pass amount_max")
    # Sum of balances and held is bounded by the supply, so the refund cannot overflow.
    refunded = _credit(w, payer.account_id, esc.asset, esc.amount - op.amount, amount_max)
    assert refunded, "escrow refund passed amount_max"
    _close(w, esc, st.ESCROW_POSTED)
    return OK


def escrow_void(genesis: Genesis, w: st.Writer, tx: CheckedTx, op: EscrowVoid) -> Outcome:
    esc = st.get_escrow(w, op.escrow_id)
    if esc is None:
        return _unauthorized(Code.UNKNOWN_ESCROW, f"no escrow {op.escrow_id}")
    payer = st.get_account(w, esc.from_account)
    payee = st.get_account(w, esc.to_account)
    assert payer is not None and payee is not None, f"escrow {esc.escrow_id} names unknown accounts"
    if payer.owner_key not in tx.signers and payee.owner_key not in tx.signers:
        return _unauthorized(Code.MISSING_SIGNATURE, "neither the payer nor the payee signed")
    if (problem := _body(genesis, tx)) is not None:
        return problem
    if (closed := _closed_outcome(esc)) is not None:
        return closed
    return_to_payer(genesis, w, esc, st.ESCROW_VOIDED)
    return OK


def return_to_payer(genesis: Genesis, w: st.Writer, esc: st.EscrowRecord, status: int) -> None:
    """Void or expire a pending escrow: the held funds go back to the payer, frozen or not
    (they are already the payer's; a freeze stops new movements, not this return)."""
    assert esc.status == st.ESCROW_PENDING
    _release_hold(w, esc)
    ok = _credit(w, esc.from_account, esc.asset, esc.amount, genesis.limits.amount_max)
    assert ok, "escrow return passed amount_max"
    _close(w, esc, status)


def apply(genesis: Genesis, w: st.Writer, tx: CheckedTx, now_ms: int) -> Outcome:
    op = tx.body.op
    if isinstance(op, Transfer):  # first: by far the most common kind
        return transfer(genesis, w, tx, op)
    if isinstance(op, OpenAccount):
        return open_account(genesis, w, tx, op)
    if isinstance(op, SetAccountFrozen):
        return set_frozen(genesis, w, tx, op)
    if isinstance(op, Mint):
        return mint(genesis, w, tx, op)
    if isinstance(op, Redeem):
        return redeem(genesis, w, tx, op)
    if isinstance(op, EscrowCreate):
        return escrow_create(genesis, w, tx, op, now_ms)
    if isinstance(op, EscrowPost):
        return escrow_post(genesis, w, tx, op)
    if isinstance(op, EscrowVoid):
        return escrow_void(genesis, w, tx, op)
    raise AssertionError(f"validated transaction without an operation: {op!r}")
