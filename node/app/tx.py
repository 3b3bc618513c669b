"""Plain frozen dataclasses for transactions and results: what the ledger core works on.

Protobuf stops at node/app/codec.py; everything else in node/app sees only these types.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass


class Code(enum.IntEnum):
    """Mirrors ledger.v1.ResultCode (a test checks the two stay equal)."""

    RESULT_CODE_UNSPECIFIED = 0
    OK = 1
    MALFORMED = 2
    WRONG_CHAIN = 3
    BAD_SIGNATURE = 4
    MISSING_SIGNATURE = 5
    NOT_MEMBER = 6
    NOT_ISSUER = 7
    NOT_ACCOUNT_BANK = 8
    UNKNOWN_ACCOUNT = 9
    UNKNOWN_ASSET = 10
    ACCOUNT_EXISTS = 11
    ACCOUNT_FROZEN = 12
    INSUFFICIENT_FUNDS = 13
    AMOUNT_OUT_OF_RANGE = 14
    OVERFLOW = 15
    DUPLICATE_REFERENCE = 16
    UNKNOWN_ESCROW = 17
    ESCROW_EXISTS = 18
    ESCROW_CLOSED = 19
    EXPIRED = 20
    LIMIT_EXCEEDED = 21
    DUPLICATE = 22


@dataclass(frozen=True)
class OpenAccount:
    member_id: str
    account_id: str
    owner_key: bytes


@dataclass(frozen=True)
class SetAccountFrozen:
    account_id: str
    frozen: bool


@dataclass(frozen=True)
class Mint:
    asset: str
    account_id: str
    amount: int
    deposit_ref: str


@dataclass(frozen=True)
class Leg:
    from_account: str
    to_account: str
    asset: str
    amount: int


@dataclass(frozen=True)
class Transfer:
    legs: tuple[Leg, ...]


@dataclass(frozen=True)
class Redeem:
    account_id: str
    asset: str
    amount: int
    payout_ref: str


@dataclass(frozen=True)
class EscrowCreate:
    escrow_id: str
    from_account: str
    to_account: str
    asset: str
    amount: int
    expires_at_ms: int


@dataclass(frozen=True)
class EscrowPost:
    escrow_id: str
    amount: int


@dataclass(frozen=True)
class EscrowVoid:
    escrow_id: str


Op = OpenAccount | SetAccountFrozen | Mint | Transfer | Redeem | EscrowCreate | EscrowPost | EscrowVoid


@dataclass(frozen=True)
class TxBody:
    chain_id: str
    nonce: bytes
    memo: str
    op: Op | None  # None: the oneof was not set (rejected as MALFORMED by validate)


@dataclass(frozen=True)
class SignatureEntry:
    public_key: bytes
    signature: bytes


@dataclass(frozen=True)
class Envelope:
    body: bytes  # the exact signed bytes
    signatures: tuple[SignatureEntry, ...]


@dataclass(frozen=True)
class CheckedTx:
    """An envelope that passed the stateless checks: it parses, its fields are in format and
    every signature on it verifies. ``signers`` are the public keys that signed it; whether
    they are the *required* signers is decided at execution, against state.

    Unpacks as ``tx_id, body = check_envelope(...)`` as the architecture doc describes."""

    tx_id: bytes
    body: TxBody
    signers: frozenset[bytes]
    raw: bytes

    def __iter__(self) -> Iterator[object]:
        return iter((self.tx_id, self.body))


class InvalidTransaction(Exception):
    """A transaction failed a stateless check; ``code`` is the ResultCode to report."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TxResult:
    tx_id: bytes
    code: Code
    detail: str
    height: int
    index: int
    final: bool = False  # recorded under tx_id (see TxResult.final in tx.proto)
