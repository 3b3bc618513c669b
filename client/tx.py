"""Build and sign every transaction kind of proto/ledger/v1/tx.proto.

A builder serializes the TxBody exactly once; those bytes are what every signer signs and what
travels in the Envelope (tx_id = SHA-256(body)). Multi-signer transactions (a PvP is signed by
both debited owners) are built once and then passed around: each party adds its signature to
the same body, so the tx_id never changes and a retry of the envelope is always the same tx.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ledger.crypto import DOMAIN_TX, SigningKey, tx_id_of, verify
from ledger.genesis import LedgerLimits
from ledger.v1 import tx_pb2

NONCE_BYTES_DEFAULT = 16


class TxBuildError(ValueError):
    """A transaction cannot be built as asked (out-of-range amount, too many legs, ...)."""


@dataclass(frozen=True)
class LegSpec:
    """One leg of a transfer: ``amount_minor`` of ``asset`` from one account to another."""

    from_account: str
    to_account: str
    asset: str
    amount_minor: int


@dataclass(frozen=True)
class Transaction:
    """A signed (or partly signed) transaction: exact body bytes plus signatures.

    Immutable: ``signed_by`` and ``with_signature`` return a new Transaction with the same body.
    """

    chain_id: str
    body: bytes
    signatures: tuple[tuple[bytes, bytes], ...] = ()  # (public_key, signature), in signing order

    @property
    def tx_id(self) -> bytes:
        return tx_id_of(self.body)

    @property
    def signers(self) -> tuple[bytes, ...]:
        return tuple(pk for pk, _ in self.signatures)

    def signed_by(self, *keys: SigningKey) -> Transaction:
        """Add each key's signature over the body (a key that already signed is skipped)."""
        tx = self
        for key in keys:
            tx = tx.with_signature(key.public_key, key.sign(DOMAIN_TX, self.chain_id, self.body))
        return tx

    def with_signature(self, public_key: bytes, signature: bytes) -> Transaction:
        """Add a signature made elsewhere (another party's signer); it is verified first."""
        if public_key in self.signers:
            return self
        if not verify(public_key, signature, DOMAIN_TX, self.chain_id, self.body):
            raise TxBuildError("signature does not verify over this transaction's body")
        return Transaction(self.chain_id, self.body, (*self.signatures, (public_key, signature)))

    def envelope(self) -> tx_pb2.Envelope:
        return tx_pb2.Envelope(
            body=self.body,
            signatures=[tx_pb2.Signature(public_key=pk, signature=sig) for pk, sig in self.signatures],
        )

    def envelope_bytes(self) -> bytes:
        return self.envelope().SerializeToString(deterministic=True)

    def decoded_body(self) -> tx_pb2.TxBody:
        body = tx_pb2.TxBody()
        body.ParseFromString(self.body)
        return body

    @classmethod
    def from_envelope(cls, chain_id: str, raw: bytes, *, tx_bytes_max: int = 8192) -> Transaction:
        """Read an envelope (e.g. one a counterparty signed); every signature must verify."""
        if len(raw) > tx_bytes_max:
            raise TxBuildError(f"envelope larger than {tx_bytes_max} bytes")
        env = tx_pb2.Envelope()
        try:
            env.ParseFromString(raw)
            body = tx_pb2.TxBody()
            body.ParseFromString(env.body)
        except DecodeError as exc:
            raise TxBuildError(f"not a serialized Envelope ({exc})") from exc
        if body.chain_id != chain_id:
            raise TxBuildError(f"envelope is for chain {body.chain_id!r}, not {chain_id!r}")
        tx = cls(chain_id, env.body)
        for sig in env.signatures:
            tx = tx.with_signature(sig.public_key, sig.signature)
        return tx


class TxBuilder:
    """Makes unsigned Transactions for one chain, checking the limits the ledger will check.

    Client-side checks only give earlier, clearer errors; the ledger checks everything again.
    """

    def __init__(self, chain_id: str, limits: LedgerLimits | None = None) -> None:
        self.chain_id = chain_id
        self.limits = limits or LedgerLimits()

    # --- checks ---------------------------------------------------------------------------

    def _amount(self, amount: int, what: str = "amount") -> int:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TxBuildError(f"{what} must be an integer number of minor units")
        if not 0 < amount <= self.limits.amount_max:
            raise TxBuildError(f"{what} {amount} is outside 1..{self.limits.amount_max} minor units")
        return amount

    def _id(self, value: str, what: str) -> str:
        if not value or len(value.encode()) > self.limits.id_bytes_max:
            raise TxBuildError(f"{what} must be 1..{self.limits.id_bytes_max} bytes")
        if not value.isprintable() or value != value.strip():
            raise TxBuildError(f"{what} {value!r} has control characters or surrounding spaces")
        return value

    def _body(self, memo: str, nonce: bytes | None) -> tx_pb2.TxBody:
        if len(memo.encode()) > self.limits.memo_bytes_max:
            raise TxBuildError(f"memo longer than {self.limits.memo_bytes_max} bytes")
        if nonce is None:
            nonce = os.urandom(NONCE_BYTES_DEFAULT)
        if not self.limits.nonce_bytes_min <= len(nonce) <= self.limits.nonce_bytes_max:
            raise TxBuildError(
                f"nonce must be {self.limits.nonce_bytes_min}..{self.limits.nonce_bytes_max} bytes"
            )
        return tx_pb2.TxBody(chain_id=self.chain_id, nonce=nonce, memo=memo)

    def _finish(self, body: tx_pb2.TxBody) -> Transaction:
        raw = body.SerializeToString(deterministic=True)
        # The envelope adds signatures on top; the node enforces the envelope's limit.
        if len(raw) > self.limits.tx_bytes_max:
            raise TxBuildError(f"transaction larger than {self.limits.tx_bytes_max} bytes")
        return Transaction(self.chain_id, raw)

    # --- builders -----------------------------------------------------------------------

    def open_account(
        self, member_id: str, account_id: str, owner_key: bytes, *, memo: str = "", nonce: bytes | None = None
    ) -> Transaction:
        """OpenAccount; sign with the operator key of ``member_id``."""
        if len(owner_key) != 32:
            raise TxBuildError("owner key must be a 32-byte Ed25519 public key")
        body = self._body(memo, nonce)
        body.open_account.CopyFrom(
            tx_pb2.OpenAccount(
                member_id=self._id(member_id, "member id"),
                account_id=self._id(account_id, "account id"),
                owner_key=owner_key,
            )
        )
        return self._finish(body)

    def set_frozen(
        self, account_id: str, frozen: bool, *, memo: str = "", nonce: bytes | None = None
    ) -> Transaction:
        """Freeze or unfreeze; sign with the operator key of the account's bank."""
        body = self._body(memo, nonce)
        body.set_frozen.CopyFrom(
            tx_pb2.SetAccountFrozen(account_id=self._id(account_id, "account id"), frozen=frozen)
        )
        return self._finish(body)

    def mint(
        self,
        asset: str,
        account_id: str,
        amount_minor: int,
        deposit_ref: str,
        *,
        memo: str = "",
        nonce: bytes | None = None,
    ) -> Transaction:
        """Mint against a deposit; sign with the operator key of the asset's issuer."""
        body = self._body(memo, nonce)
        body.mint.CopyFrom(
            tx_pb2.Mint(
                asset=self._id(asset, "asset"),
                account_id=self._id(account_id, "account id"),
                amount=self._amount(amount_minor),
                deposit_ref=self._id(deposit_ref, "deposit reference"),
            )
        )
        return self._finish(body)

    def transfer(self, legs: Sequence[LegSpec], *, memo: str = "", nonce: bytes | None = None) -> Transaction:
        """An all-or-nothing transfer of one or more legs; sign with every debited owner's key."""
        if not 1 <= len(legs) <= self.limits.legs_max:
            raise TxBuildError(f"a transfer has 1..{self.limits.legs_max} legs, got {len(legs)}")
        body = self._body(memo, nonce)
        for i, leg in enumerate(legs):
            if leg.from_account == leg.to_account:
                raise TxBuildError(f"leg {i}: from and to are the same account")
            body.transfer.legs.append(
                tx_pb2.Leg(
                    from_account=self._id(leg.from_account, f"leg {i} from account"),
                    to_account=self._id(leg.to_account, f"leg {i} to account"),
                    asset=self._id(leg.asset, f"leg {i} asset"),
                    amount=self._amount(leg.amount_minor, f"leg {i} amount"),
                )
            )
        return self._finish(body)

    def pvp(
        self, pay: LegSpec, receive: LegSpec, *, memo: str = "", nonce: bytes | None = None
    ) -> Transaction:
        """Payment versus payment: two legs in opposite directions that settle together or not
        at all. Both debited owners must sign (``pay.from_account`` and ``receive.from_account``)."""
        if (pay.from_account, pay.to_account) != (receive.to_account, receive.from_account):
            raise TxBuildError("a PvP's second leg must go back between the same two accounts")
        if pay.asset == receive.asset:
            raise TxBuildError("a PvP exchanges two different assets")
        return self.transfer([pay, receive], memo=memo, nonce=nonce)

    def redeem(
        self,
        account_id: str,
        asset: str,
        amount_minor: int,
        payout_ref: str,
        *,
        memo: str = "",
        nonce: bytes | None = None,
    ) -> Transaction:
        """Burn tokens back into a deposit at the issuer; sign with the account owner's key."""
        body = self._body(memo, nonce)
        body.redeem.CopyFrom(
            tx_pb2.Redeem(
                account_id=self._id(account_id, "account id"),
                asset=self._id(asset, "asset"),
                amount=self._amount(amount_minor),
                payout_ref=self._id(payout_ref, "payout reference"),
            )
        )
        return self._finish(body)

    def escrow_create(
        self,
        escrow_id: str,
        leg: LegSpec,
        expires_at_ms: int,
        *,
        memo: str = "",
        nonce: bytes | None = None,
    ) -> Transaction:
        """Hold funds for the payee until posted, voided or expired; sign with the payer's key.

        ``expires_at_ms`` is consensus time (block timestamps, ms since the epoch)."""
        if not 0 < expires_at_ms < 1 << 63:
            raise TxBuildError("expiry must be a positive millisecond timestamp")
        if leg.from_account == leg.to_account:
            raise TxBuildError("escrow payer and payee are the same account")
        body = self._body(memo, nonce)
        body.escrow_create.CopyFrom(
            tx_pb2.EscrowCreate(
                escrow_id=self._id(escrow_id, "escrow id"),
                from_account=self._id(leg.from_account, "from account"),
                to_account=self._id(leg.to_account, "to account"),
                asset=self._id(leg.asset, "asset"),
                amount=self._amount(leg.amount_minor),
                expires_at_ms=expires_at_ms,
            )
        )
        return self._finish(body)

    def escrow_post(
        self, escrow_id: str, amount_minor: int, *, memo: str = "", nonce: bytes | None = None
    ) -> Transaction:
        """Release ``amount_minor`` (at most the held amount) to the payee; payer signs."""
        body = self._body(memo, nonce)
        body.escrow_post.CopyFrom(
            tx_pb2.EscrowPost(escrow_id=self._id(escrow_id, "escrow id"), amount=self._amount(amount_minor))
        )
        return self._finish(body)

    def escrow_void(self, escrow_id: str, *, memo: str = "", nonce: bytes | None = None) -> Transaction:
        """Return held funds to the payer; signed by the payer or the payee."""
        body = self._body(memo, nonce)
        body.escrow_void.CopyFrom(tx_pb2.EscrowVoid(escrow_id=self._id(escrow_id, "escrow id")))
        return self._finish(body)


def debited_accounts(body: tx_pb2.TxBody) -> list[str]:
    """Accounts whose owners must sign a client transaction, in first-seen order."""
    kind = body.WhichOneof("op")
    if kind == "transfer":
        seen: list[str] = []
        for leg in body.transfer.legs:
            if leg.from_account not in seen:
                seen.append(leg.from_account)
        return seen
    if kind == "redeem":
        return [body.redeem.account_id]
    if kind == "escrow_create":
        return [body.escrow_create.from_account]
    return []
