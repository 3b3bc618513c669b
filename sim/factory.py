"""Signed-transaction factory for tests: a genesis with deterministic keys, and one builder
per transaction kind that returns serialized, signed Envelope bytes.

    fx = Factory(banks=4)                      # BANK-A..BANK-D, each issuing USD.<bank>
    alice = fx.client("alice")                 # deterministic client key
    env = fx.open_account("BANK-A", "alice-1", alice)
    env = fx.mint("USD.BANK-A", "alice-1", 10_000)
    env = fx.transfer([("alice-1", "bob-1", "USD.BANK-A", 500)])   # signed by alice's key

Builders sign with the right keys by default (the factory remembers who owns each account it
opened); pass ``signers=[...]`` to sign with other keys (or none) and ``chain_id=``,
``nonce=``, ``memo=`` to build bad inputs. Everything is deterministic given ``seed``.
Other suites (simulator, node) import this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ledger.crypto import DOMAIN_TX, SigningKey, tx_id_of
from ledger.genesis import Genesis, parse_genesis
from node.app.codec import decode_envelope, encode_body, encode_envelope
from node.app.tx import (
    EscrowCreate,
    EscrowPost,
    EscrowVoid,
    Leg,
    Mint,
    Op,
    OpenAccount,
    Redeem,
    SetAccountFrozen,
    SignatureEntry,
    Transfer,
    TxBody,
)

LegSpec = tuple[str, str, str, int]  # from_account, to_account, asset, amount


def _seed(*parts: object) -> bytes:
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()


def member_ids(banks: int) -> list[str]:
    return [f"BANK-{chr(65 + i)}" for i in range(banks)]


@dataclass
class Factory:
    banks: int = 4
    currencies: Sequence[str] = ("USD",)
    chain_id: str = "test-chain"
    seed: int = 0
    limits: dict[str, int] | None = None
    host: str = "127.0.0.1"
    base_port: int = 17000

    def __post_init__(self) -> None:
        ids = member_ids(self.banks)
        self.operators: dict[str, SigningKey] = {m: SigningKey(_seed(self.seed, "operator", m)) for m in ids}
        self.node_keys: dict[str, SigningKey] = {m: SigningKey(_seed(self.seed, "node", m)) for m in ids}
        self.owners: dict[str, SigningKey] = {}  # account_id -> owner key, for accounts opened here
        self._nonce_counter = 0
        self.genesis: Genesis = parse_genesis(self.genesis_doc())

    # --- identities ---------------------------------------------------------------------------

    def genesis_doc(self) -> dict[str, Any]:
        members = []
        for i, mid in enumerate(member_ids(self.banks)):
            members.append(
                {
                    "member_id": mid,
                    "replica": i,
                    "node_key": self.node_keys[mid].public_key.hex(),
                    "operator_key": self.operators[mid].public_key.hex(),
                    "host": self.host,
                    "replica_port": self.base_port + 2 * i,
                    "api_port": self.base_port + 2 * i + 1,
                    "assets": [{"asset": f"{ccy}.{mid}", "scale": 2} for ccy in self.currencies],
                }
            )
        doc: dict[str, Any] = {"chain_id": self.chain_id, "f": (self.banks - 1) // 3, "members": members}
        if self.limits:
            doc["limits"] = dict(self.limits)
        return doc

    def client(self, name: str) -> SigningKey:
        """A deterministic client key for ``name``."""
        return SigningKey(_seed(self.seed, "client", name))

    @property
    def assets(self) -> list[str]:
        return [a.asset for a in self.genesis.assets]

    def next_nonce(self) -> bytes:
        self._nonce_counter += 1
        return _seed(self.seed, "nonce", self._nonce_counter)[:16]

    # --- generic building ---------------------------------------------------------------------

    def body(
        self, op: Op | None, *, chain_id: str | None = None, nonce: bytes | None = None, memo: str = ""
    ) -> bytes:
        return encode_body(
            TxBody(
                chain_id=self.chain_id if chain_id is None else chain_id,
                nonce=self.next_nonce() if nonce is None else nonce,
                memo=memo,
                op=op,
            )
        )

    def sign(self, body: bytes, signers: Sequence[SigningKey], *, chain_id: str | None = None) -> bytes:
        chain = self.chain_id if chain_id is None else chain_id
        sigs = [SignatureEntry(k.public_key, k.sign(DOMAIN_TX, chain, body)) for k in signers]
        return encode_envelope(body, sigs)

    def envelope(
        self,
        op: Op | None,
        signers: Sequence[SigningKey],
        *,
        chain_id: str | None = None,
        nonce: bytes | None = None,
        memo: str = "",
    ) -> bytes:
        """Body + signatures. A wrong chain_id is also used for signing, so that the signature
        itself is valid and WRONG_CHAIN is what a test observes."""
        body = self.body(op, chain_id=chain_id, nonce=nonce, memo=memo)
        return self.sign(body, signers, chain_id=chain_id)

    @staticmethod
    def tx_id(envelope: bytes) -> bytes:
        return tx_id_of(decode_envelope(envelope).body)

    def _signers(
        self, default: Sequence[SigningKey], signers: Sequence[SigningKey] | None
    ) -> Sequence[SigningKey]:
        return default if signers is None else signers

    def _owner(self, account_id: str) -> list[SigningKey]:
        key = self.owners.get(account_id)
        return [] if key is None else [key]

    # --- one builder per kind -----------------------------------------------------------------

    def open_account(
        self,
        member_id: str,
        account_id: str,
        owner: SigningKey,
        signers: Sequence[SigningKey] | None = None,
        **kw: Any,
    ) -> bytes:
        self.owners.setdefault(account_id, owner)
        op = OpenAccount(member_id=member_id, account_id=account_id, owner_key=owner.public_key)
        default = [self.operators[member_id]] if member_id in self.operators else []
        return self.envelope(op, self._signers(default, signers), **kw)

    def set_frozen(
        self,
        member_id: str,
        account_id: str,
        frozen: bool = True,
        signers: Sequence[SigningKey] | None = None,
        **kw: Any,
    ) -> bytes:
        """Signed by the operator of ``member_id`` (the account's bank, in a correct call)."""
        op = SetAccountFrozen(account_id=account_id, frozen=frozen)
        return self.envelope(op, self._signers([self.operators[member_id]], signers), **kw)

    def mint(
        self,
        asset: str,
        account_id: str,
        amount: int,
        deposit_ref: str | None = None,
        signers: Sequence[SigningKey] | None = None,
        **kw: Any,
    ) -> bytes:
        issuer = asset.partition(".")[2]
        ref = deposit_ref if deposit_ref is not None else f"dep-{self._nonce_counter + 1}"
        op = Mint(asset=asset, account_id=account_id, amount=amount, deposit_ref=ref)
        default = [self.operators[issuer]] if issuer in self.operators else []
        return self.envelope(op, self._signers(default, signers), **kw)

    def transfer(
        self, legs: Sequence[LegSpec], signers: Sequence[SigningKey] | None = None, **kw: Any
    ) -> bytes:
        op = Transfer(legs=tuple(Leg(f, t, a, n) for f, t, a, n in legs))
        default: list[SigningKey] = []
        for f, _, _, _ in legs:
            for key in self._owner(f):
                if key not in default:
                    default.append(key)
        return self.envelope(op, self._signers(default, signers), **kw)

    def redeem(
        self,
        account_id: str,
        asset: str,
        amount: int,
        payout_ref: str | None = None,
        signers: Sequence[SigningKey] | None = None,
        **kw: Any,
    ) -> bytes:
        ref = payout_ref if payout_ref is not None else f"pay-{self._nonce_counter + 1}"
        op = Redeem(account_id=account_id, asset=asset, amount=amount, payout_ref=ref)
        return self.envelope(op, self._signers(self._owner(account_id), signers), **kw)

    def escrow_create(
        self,
        escrow_id: str,
        from_account: str,
        to_account: str,
        asset: str,
        amount: int,
        expires_at_ms: int,
        signers: Sequence[SigningKey] | None = None,
        **kw: Any,
    ) -> bytes:
        op = EscrowCreate(escrow_id, from_account, to_account, asset, amount, expires_at_ms)
        return self.envelope(op, self._signers(self._owner(from_account), signers), **kw)

    def escrow_post(
        self, escrow_id: str, amount: int, payer: str, signers: Sequence[SigningKey] | None = None, **kw: Any
    ) -> bytes:
        """``payer`` is the escrow's from_account, whose owner signs by default."""
        op = EscrowPost(escrow_id=escrow_id, amount=amount)
        return self.envelope(op, self._signers(self._owner(payer), signers), **kw)

    def escrow_void(
        self, escrow_id: str, signer_account: str, signers: Sequence[SigningKey] | None = None, **kw: Any
    ) -> bytes:
        """Signed by the owner of ``signer_account`` (the payer or the payee) by default."""
        op = EscrowVoid(escrow_id=escrow_id)
        return self.envelope(op, self._signers(self._owner(signer_account), signers), **kw)
