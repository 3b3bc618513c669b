"""Stateless checks of a client envelope: what the node API runs before admitting a transaction
and what execution re-runs, deterministically, on every replica.

Two stages, because they differ in whether a failure may be recorded under the tx_id:
- ``decode_and_verify``: size, parse, chain id, field formats, every signature verifies. A
  failure here says nothing trustworthy about the genuine transaction (anyone can attach garbage
  signatures to a body), so execution never records it.
- ``body_problem``: limits and amount ranges, a property of the signed body alone. Execution
  records it once the transaction is known to be authorized.
``check_envelope`` runs both and is the API's admission check.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ledger.crypto import DOMAIN_TX, PUBLIC_KEY_BYTES, SIGNATURE_BYTES, tx_id_of
from ledger.crypto import verify as ed25519_verify
from ledger.genesis import ASSET_RE, MEMBER_ID_RE, Genesis
from node.app.codec import CodecError, decode_body, decode_envelope_parts
from node.app.tx import (
    CheckedTx,
    Code,
    EscrowCreate,
    EscrowPost,
    EscrowVoid,
    InvalidTransaction,
    Mint,
    OpenAccount,
    Redeem,
    SetAccountFrozen,
    Transfer,
    TxBody,
)

# (public_key, signature, domain, chain_id, body) -> valid; the benchmark swaps in a stub to
# measure execution without Ed25519, nothing else should.
Verifier = Callable[[bytes, bytes, bytes, str, bytes], bool]

# Account, escrow and reference ids: they become parts of state keys, so no separators and no
# control bytes. Length is bounded separately by limits.id_bytes_max.
# Anchored with \Z and used with fullmatch: "$" would also accept a trailing "\n".
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*\Z")
# Whatever genesis says, an id must fit in a state key (LMDB keys are at most 511 bytes, and
# state records length-prefix ids with one byte), so a generous genesis cannot turn a long id
# into an assertion failure on every replica.
ID_BYTES_HARD_MAX = 128
# Client text quoted in a result detail (consensus bytes) is cut to this many characters.
SHOWN_CHARS_MAX = 40


def _show(value: str) -> str:
    """Client text for a detail: a bounded prefix, ASCII-escaped. Never repr(): which non-ASCII
    characters repr() escapes depends on the Unicode tables of the Python version, and details
    are hashed into results_root. ascii() escapes every non-ASCII code point by number only."""
    shown = ascii(value[:SHOWN_CHARS_MAX])
    return shown if len(value) <= SHOWN_CHARS_MAX else shown + "..."


def _bad(message: str) -> InvalidTransaction:
    return InvalidTransaction(Code.MALFORMED, message)


def _id_max(genesis: Genesis) -> int:
    return min(genesis.limits.id_bytes_max, ID_BYTES_HARD_MAX)


def _id_problem(id_max: int, value: str) -> str | None:
    """What is wrong with ``value`` as an id (the message after the field's name), or None."""
    # Fast path for the common valid id: a match is ASCII, so len(value) is its byte length.
    if len(value) <= id_max and ID_RE.fullmatch(value):
        return None
    if not value:
        return "is empty"
    if len(value.encode()) > id_max:
        return f"longer than {id_max} bytes"
    if not ID_RE.fullmatch(value):
        return f"{_show(value)} has characters outside A-Z a-z 0-9 . _ : @ -"
    return None


def _check_id(id_max: int, what: str, value: str) -> None:
    problem = _id_problem(id_max, value)
    if problem is not None:
        raise _bad(f"{what} {problem}")


def _check_asset(what: str, value: str) -> None:
    if not ASSET_RE.fullmatch(value):
        raise _bad(f"{what} {_show(value)} is not CCY.MEMBER")


def _check_formats(genesis: Genesis, body: TxBody) -> None:
    """Field formats that make a body meaningless (MALFORMED), independent of limits."""
    op = body.op
    id_max = _id_max(genesis)
    if isinstance(op, Transfer):  # first: by far the most common kind
        if not op.legs:
            raise _bad("transfer has no legs")
        for i, leg in enumerate(op.legs):
            # Field names are formatted only on failure: this loop runs for every leg.
            if (problem := _id_problem(id_max, leg.from_account)) is not None:
                raise _bad(f"legs[{i}].from_account {problem}")
            if (problem := _id_problem(id_max, leg.to_account)) is not None:
                raise _bad(f"legs[{i}].to_account {problem}")
            if not ASSET_RE.fullmatch(leg.asset):
                _check_asset(f"legs[{i}].asset", leg.asset)  # raises, with the message
            if leg.from_account == leg.to_account:
                raise _bad(f"legs[{i}] pays an account to itself")
    elif op is None:
        raise _bad("no operation set")
    elif isinstance(op, OpenAccount):
        if not MEMBER_ID_RE.fullmatch(op.member_id):
            raise _bad(f"member_id {_show(op.member_id)} is not a member id")
        _check_id(id_max, "account_id", op.account_id)
        if len(op.owner_key) != PUBLIC_KEY_BYTES:
            raise _bad(f"owner_key must be {PUBLIC_KEY_BYTES} bytes, got {len(op.owner_key)}")
    elif isinstance(op, SetAccountFrozen):
        _check_id(id_max, "account_id", op.account_id)
    elif isinstance(op, Mint):
        _check_asset("asset", op.asset)
        _check_id(id_max, "account_id", op.account_id)
        _check_id(id_max, "deposit_ref", op.deposit_ref)
    elif isinstance(op, Redeem):
        _check_id(id_max, "account_id", op.account_id)
        _check_asset("asset", op.asset)
        _check_id(id_max, "payout_ref", op.payout_ref)
    elif isinstance(op, EscrowCreate):
        _check_id(id_max, "escrow_id", op.escrow_id)
        _check_id(id_max, "from_account", op.from_account)
        _check_id(id_max, "to_account", op.to_account)
        _check_asset("asset", op.asset)
        if op.from_account == op.to_account:
            raise _bad("escrow pays an account to itself")
    elif isinstance(op, EscrowPost | EscrowVoid):
        _check_id(id_max, "escrow_id", op.escrow_id)
    else:  # pragma: no cover - the codec only produces the kinds above
        raise AssertionError(f"unknown op {op!r}")


# Whether the ledger knows a public key (admission only: node/api/admission.py). Asked before any
# signature is verified, so an envelope signed by strangers costs no Ed25519 check.
KnownKey = Callable[[bytes], bool]


def decode_and_verify(
    genesis: Genesis, raw: bytes, verify: Verifier = ed25519_verify, known_key: KnownKey | None = None
) -> CheckedTx:
    """Parse, check formats and verify every signature. Raises InvalidTransaction with
    LIMIT_EXCEEDED (envelope too large, too many signatures), MALFORMED, WRONG_CHAIN,
    MISSING_SIGNATURE (no signature at all) or BAD_SIGNATURE: the failures that execution does
    not record under the tx_id. With ``known_key`` (admission), also MISSING_SIGNATURE when no
    signer is a key it knows."""
    limits = genesis.limits
    if type(raw) is not bytes:  # exact bytes, the common case, need neither check nor copy
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise _bad("envelope is not bytes")
        raw = bytes(raw)
    if len(raw) > limits.tx_bytes_max:
        raise InvalidTransaction(
            Code.LIMIT_EXCEEDED, f"envelope is {len(raw)} bytes, more than tx_bytes_max={limits.tx_bytes_max}"
        )
    try:
        body_bytes, signatures = decode_envelope_parts(raw)
        body = decode_body(body_bytes)
    except CodecError as exc:
        raise _bad(str(exc)) from exc
    chain_id = genesis.chain_id
    if body.chain_id != chain_id:
        raise InvalidTransaction(
            Code.WRONG_CHAIN,
            f"chain_id {_show(body.chain_id)} is not this ledger's {_show(chain_id)}",
        )
    if not limits.nonce_bytes_min <= len(body.nonce) <= limits.nonce_bytes_max:
        raise _bad(
            f"nonce must be {limits.nonce_bytes_min}..{limits.nonce_bytes_max} bytes, got {len(body.nonce)}"
        )
    _check_formats(genesis, body)
    if not signatures:
        # Refused at admission (UNAUTHENTICATED) and never recorded: nobody vouches for it.
        raise InvalidTransaction(Code.MISSING_SIGNATURE, "the envelope has no signature")
    if len(signatures) > limits.signatures_max:
        raise InvalidTransaction(
            Code.LIMIT_EXCEEDED,
            f"{len(signatures)} signatures, more than signatures_max={limits.signatures_max}",
        )
    if known_key is not None and not any(known_key(public_key) for public_key, _ in signatures):
        raise InvalidTransaction(
            Code.MISSING_SIGNATURE,
            "signed by no key the ledger knows (a member's operator key, or the owner key of an "
            "account that is not frozen)",
        )
    signers: set[bytes] = set()
    for i, (public_key, signature) in enumerate(signatures):
        if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
            raise _bad(f"signatures[{i}]: public key must be 32 bytes and signature 64 bytes")
        if public_key in signers:
            raise _bad(f"signatures[{i}]: the same key signed twice")
        if not verify(public_key, signature, DOMAIN_TX, chain_id, body_bytes):
            raise InvalidTransaction(
                Code.BAD_SIGNATURE, f"signatures[{i}] by {public_key.hex()[:16]} does not verify"
            )
        signers.add(public_key)
    return CheckedTx(tx_id_of(body_bytes), body, frozenset(signers), raw)  # by position: faster


class CheckCache:
    """decode_and_verify that remembers its successes until the transaction executes.

    A node checks a transaction when it admits it (from a client or a peer's relay) and again
    when its block executes. The second check of the same bytes can only give the same answer
    (decode_and_verify is a pure function of the genesis and the bytes), so the caller ``keep``s
    a CheckedTx once the node has taken the transaction, and ``take`` hands it to execution and
    forgets it: each envelope is parsed and its signatures verified once per node. Failures,
    and transactions the node refused, are never kept. Entries that never execute (a duplicate
    the replica dropped) leave oldest first past ``entries_max`` entries or ``bytes_max`` bytes
    of envelopes (a parsed entry costs about twice its envelope again)."""

    def __init__(
        self,
        genesis: Genesis,
        verify: Verifier = ed25519_verify,
        entries_max: int = 40_000,
        bytes_max: int = 32 << 20,
    ) -> None:
        self.genesis = genesis
        self.verify = verify
        self.entries_max = entries_max
        self.bytes_max = bytes_max
        self._kept: dict[bytes, CheckedTx] = {}
        self._bytes = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def kept_bytes(self) -> int:
        return self._bytes

    def check(self, raw: bytes, known_key: KnownKey | None = None) -> CheckedTx:
        """check_envelope(raw, known_key=...), the admission check (answered from what is kept
        when it can be: a kept transaction passed it when it was admitted). Raises
        InvalidTransaction."""
        checked = self._kept.get(raw) if isinstance(raw, bytes) else None
        if checked is not None:
            return checked
        return check_envelope(self.genesis, raw, self.verify, known_key)

    def keep(self, checked: CheckedTx) -> None:
        """Remember ``checked`` for its execution (the node has taken the transaction)."""
        if checked.raw in self._kept:
            return
        self._kept[checked.raw] = checked
        self._bytes += len(checked.raw)
        while len(self._kept) > self.entries_max or self._bytes > self.bytes_max:
            self._bytes -= len(self._kept.pop(next(iter(self._kept))).raw)

    def take(self, raw: bytes) -> CheckedTx:
        """What was kept for these bytes (forgotten now), else decode_and_verify(raw)."""
        checked = self._kept.pop(raw, None) if isinstance(raw, bytes) else None
        if checked is None:
            return decode_and_verify(self.genesis, raw, self.verify)
        self._bytes -= len(checked.raw)
        self.hits += 1
        return checked


def _amount_problem(genesis: Genesis, what: str, amount: int) -> InvalidTransaction | None:
    if not 1 <= amount <= genesis.limits.amount_max:
        return InvalidTransaction(
            Code.AMOUNT_OUT_OF_RANGE, f"{what} {amount} is outside 1..{genesis.limits.amount_max}"
        )
    return None


def body_problem(genesis: Genesis, body: TxBody) -> InvalidTransaction | None:
    """Limits and amount ranges of an already well-formed body (None when it has none)."""
    limits = genesis.limits
    memo_bytes = len(body.memo.encode())
    if memo_bytes > limits.memo_bytes_max:
        return InvalidTransaction(
            Code.LIMIT_EXCEEDED,
            f"memo is {memo_bytes} bytes, more than memo_bytes_max={limits.memo_bytes_max}",
        )
    op = body.op
    if isinstance(op, Transfer):
        if len(op.legs) > limits.legs_max:
            return InvalidTransaction(
                Code.LIMIT_EXCEEDED, f"{len(op.legs)} legs, more than legs_max={limits.legs_max}"
            )
        amount_max = limits.amount_max
        for i, leg in enumerate(op.legs):
            if not 1 <= leg.amount <= amount_max:  # the field name is formatted only on failure
                return _amount_problem(genesis, f"legs[{i}].amount", leg.amount)
        return None
    if isinstance(op, Mint | Redeem | EscrowCreate | EscrowPost):
        return _amount_problem(genesis, "amount", op.amount)
    return None


def check_envelope(
    genesis: Genesis, raw: bytes, verify: Verifier = ed25519_verify, known_key: KnownKey | None = None
) -> CheckedTx:
    """The API's admission check: CheckedTx, or InvalidTransaction(code, message)."""
    checked = decode_and_verify(genesis, raw, verify, known_key)
    problem = body_problem(genesis, checked.body)
    if problem is not None:
        raise problem
    return checked
