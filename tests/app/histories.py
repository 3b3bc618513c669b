"""Support for the property tests: the universe of banks/accounts/assets, a Builder that turns
abstract operations into signed envelopes, and a naive Model of the ledger to check against."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ledger.crypto import DOMAIN_TX, SigningKey, verify
from ledger.v1 import tx_pb2
from node.app.tx import Code
from sim.factory import Factory
from tests.app.helpers import Chain

BANKS = ["BANK-A", "BANK-B", "BANK-C", "BANK-D"]
ACCOUNTS = [("a1", "BANK-A"), ("a2", "BANK-A"), ("b1", "BANK-B"), ("c1", "BANK-C"), ("d1", "BANK-D")]
ACCOUNT_BANK = dict(ACCOUNTS)
LIMITS = {"amount_max": 5_000, "legs_max": 3, "escrow_duration_ms_max": 20_000}
FX = Factory(banks=4, currencies=("USD", "EUR"), limits=LIMITS, seed=7)
ESCROWS = ["e1", "e2", "e3", "e4", "e5", "e6"]  # e1..e3 are created at setup
SEED_ESCROWS = [("e1", "a1", "b1"), ("e2", "b1", "c1"), ("e3", "d1", "a2")]


def new_factory() -> Factory:
    return Factory(banks=4, currencies=("USD", "EUR"), limits=LIMITS, seed=7)


class Builder:
    """Turns an abstract op into a signed envelope; remembers escrows to find payer/payee."""

    def __init__(self, fx: Factory) -> None:
        self.fx = fx
        self.owner = {a: fx.client(a) for a, _ in ACCOUNTS}
        fx.owners.update(self.owner)
        self.escrow_parties: dict[str, tuple[str, str]] = {}
        self.sent: list[bytes] = []

    def signers(self, mode: str) -> list[SigningKey] | None:
        """None: the factory's default (right) signers; "forged" breaks them afterwards."""
        if mode == "none":
            return []
        if mode == "stranger":
            return [self.fx.client("stranger")]
        return None

    def forge(self, env: bytes, mode: str) -> bytes:
        if mode != "forged":
            return env
        msg = tx_pb2.Envelope.FromString(env)
        if not msg.signatures:
            return env
        sig = bytearray(msg.signatures[0].signature)
        sig[0] ^= 0x80
        msg.signatures[0].signature = bytes(sig)
        return msg.SerializeToString()

    def build(self, op: tuple[Any, ...]) -> bytes:
        fx, kind = self.fx, op[0]
        if kind == "open":
            _, (account, bank) = op
            env = fx.open_account(bank, account, self.owner[account])
        elif kind == "freeze":
            _, account, frozen, bank = op
            env = fx.set_frozen(
                ACCOUNT_BANK.get(account, "BANK-A") if bank == "own" else bank, account, frozen
            )
        elif kind == "mint":
            _, a, account, n, r, mode = op
            env = self.forge(fx.mint(a, account, n, r, signers=self.signers(mode)), mode)
        elif kind == "transfer":
            _, legs, mode = op
            env = self.forge(fx.transfer(legs, signers=self.signers(mode)), mode)
        elif kind == "redeem":
            _, account, a, n, r, mode = op
            env = self.forge(fx.redeem(account, a, n, r, signers=self.signers(mode)), mode)
        elif kind == "escrow":
            _, eid, src, dst, a, n, ttl = op
            self.escrow_parties.setdefault(eid, (src, dst))
            env = fx.escrow_create(eid, src, dst, a, n, ttl)
        elif kind == "post":
            _, eid, n, by_payer = op
            payer, payee = self.escrow_parties.get(eid, ("a1", "b1"))
            env = fx.escrow_post(eid, n, payer=payer if by_payer else payee)
        elif kind == "void":
            _, eid, who = op
            payer, payee = self.escrow_parties.get(eid, ("a1", "b1"))
            party = {"payer": payer, "payee": payee, "stranger": "nobody"}[who]
            env = fx.escrow_void(eid, party, signers=[fx.client("stranger")] if who == "stranger" else None)
        elif kind == "retry":
            env = self.sent[op[1] % len(self.sent)] if self.sent else b""
        else:
            env = op[1]
        self.sent.append(env)
        return env


UNRECORDED = {Code.MALFORMED, Code.WRONG_CHAIN, Code.BAD_SIGNATURE, Code.MISSING_SIGNATURE}
UNRECORDED |= {Code.NOT_ISSUER, Code.NOT_ACCOUNT_BANK}


class Model:
    """An independent, naive model of the ledger. It applies only what the ledger said was OK
    (fresh executions, never retries) and the escrow expiries the block reported, and asserts
    that each OK was legal: signed by the right keys, no frozen account, unused references and
    escrow ids, amounts within limits and balances, expiry in the allowed window. Its balances
    must equal the ledger's after every block, so a rejected transaction cannot have changed
    anything and an OK one cannot have changed the wrong thing."""

    def __init__(self, fx: Factory) -> None:
        self.fx = fx
        self.available: dict[tuple[str, str], int] = defaultdict(int)
        self.held: dict[tuple[str, str], int] = defaultdict(int)
        self.pending: dict[str, tuple[str, str, str, int, int]] = {}  # id -> from, to, asset, amount, expires
        self.escrow_ids: set[str] = set()
        self.accounts: dict[str, tuple[str, bytes]] = {}  # id -> bank, owner key
        self.frozen: set[str] = set()
        self.refs: set[tuple[str, ...]] = set()
        self.outstanding: dict[str, int] = defaultdict(int)  # minted - redeemed

    def records(self, envelope: bytes, code: Code) -> bool:
        """Whether the ledger must record this result under the tx_id (the rule of
        node/app/rules.py, from the model's own state before the transaction): never for the
        unauthorized codes, nor when nobody who could authorize it exists (an unknown member,
        asset of a mint, account that must sign, or escrow)."""
        if code in UNRECORDED or code == Code.UNKNOWN_ESCROW:
            return False
        body = tx_pb2.TxBody.FromString(tx_pb2.Envelope.FromString(envelope).body)
        kind = body.WhichOneof("op")
        must_exist: list[str] = []
        if kind == "open_account":
            return body.open_account.member_id in self.fx.operators
        if kind == "mint":
            return code != Code.UNKNOWN_ASSET
        if kind == "set_frozen":
            must_exist = [body.set_frozen.account_id]
        elif kind == "transfer":
            must_exist = [g.from_account for g in body.transfer.legs]
        elif kind == "redeem":
            must_exist = [body.redeem.account_id]
        elif kind == "escrow_create":
            must_exist = [body.escrow_create.from_account]
        return all(a in self.accounts for a in must_exist)

    def expire(self, escrow_ids: tuple[str, ...], now_ms: int) -> None:
        due = sorted(e for e, p in self.pending.items() if p[4] <= now_ms)
        assert list(escrow_ids) == due, f"expired {escrow_ids}, expected {due}"
        for escrow_id in escrow_ids:
            self._return(escrow_id)

    def _return(self, escrow_id: str) -> None:
        src, _, asset, amount, _ = self.pending.pop(escrow_id)
        self.held[src, asset] -= amount
        self.available[src, asset] += amount

    def _active(self, *accounts: str) -> None:
        for a in accounts:
            assert a in self.accounts, f"OK on unknown account {a}"
            assert a not in self.frozen, f"OK moved money of frozen account {a}"

    def _signed(self, signers: set[bytes], *accounts: str) -> None:
        for a in accounts:
            assert self.accounts[a][1] in signers, f"OK without the signature of {a}'s owner"

    def _operator(self, signers: set[bytes], bank: str) -> None:
        assert self.fx.operators[bank].public_key in signers, f"OK without {bank}'s operator signature"

    def _amount(self, n: int) -> None:
        assert 1 <= n <= LIMITS["amount_max"], f"OK with amount {n}"

    def _new_ref(self, kind: str, asset: str, ref: str, *scope: str) -> None:
        """Deposit refs are unique per issuer, payout refs per (issuer, redeeming account)."""
        key = (kind, asset.partition(".")[2], *scope, ref)
        assert key not in self.refs, f"OK reused {key}"
        self.refs.add(key)

    def apply(self, envelope: bytes, now_ms: int) -> None:
        env = tx_pb2.Envelope.FromString(envelope)
        for sig in env.signatures:
            assert verify(sig.public_key, sig.signature, DOMAIN_TX, self.fx.chain_id, env.body), "OK, forged"
        signers = {sig.public_key for sig in env.signatures}
        body = tx_pb2.TxBody.FromString(env.body)
        kind = body.WhichOneof("op")
        if kind == "open_account":
            o = body.open_account
            assert o.account_id not in self.accounts
            self._operator(signers, o.member_id)
            self.accounts[o.account_id] = (o.member_id, o.owner_key)
        elif kind == "set_frozen":
            f = body.set_frozen
            assert f.account_id in self.accounts
            self._operator(signers, self.accounts[f.account_id][0])
            (self.frozen.add if f.frozen else self.frozen.discard)(f.account_id)
        elif kind == "mint":
            m = body.mint
            self._operator(signers, m.asset.partition(".")[2])
            self._active(m.account_id)
            self._amount(m.amount)
            self._new_ref("deposit", m.asset, m.deposit_ref)
            self.outstanding[m.asset] += m.amount
            assert self.outstanding[m.asset] <= LIMITS["amount_max"], "OK outstanding past amount_max"
            self.available[m.account_id, m.asset] += m.amount
        elif kind == "redeem":
            r = body.redeem
            self._active(r.account_id)
            self._signed(signers, r.account_id)
            self._amount(r.amount)
            self._new_ref("payout", r.asset, r.payout_ref, r.account_id)
            self.available[r.account_id, r.asset] -= r.amount
            self.outstanding[r.asset] -= r.amount
        elif kind == "transfer":
            assert 1 <= len(body.transfer.legs) <= LIMITS["legs_max"]
            for g in body.transfer.legs:
                self._active(g.from_account, g.to_account)
                self._signed(signers, g.from_account)
                self._amount(g.amount)
                self.available[g.from_account, g.asset] -= g.amount
                assert self.available[g.from_account, g.asset] >= 0, "OK leg overdrew an account"
                self.available[g.to_account, g.asset] += g.amount
        elif kind == "escrow_create":
            e = body.escrow_create
            self._active(e.from_account, e.to_account)
            self._signed(signers, e.from_account)
            self._amount(e.amount)
            assert e.escrow_id not in self.escrow_ids, f"OK reused escrow id {e.escrow_id}"
            assert now_ms < e.expires_at_ms <= now_ms + LIMITS["escrow_duration_ms_max"], (
                "OK expiry out of window"
            )
            self.escrow_ids.add(e.escrow_id)
            self.available[e.from_account, e.asset] -= e.amount
            self.held[e.from_account, e.asset] += e.amount
            self.pending[e.escrow_id] = (e.from_account, e.to_account, e.asset, e.amount, e.expires_at_ms)
        elif kind == "escrow_post":
            p = body.escrow_post
            assert p.escrow_id in self.pending, f"OK post of closed escrow {p.escrow_id}"
            src, dst, asset, amount, _ = self.pending.pop(p.escrow_id)
            self._active(src, dst)
            self._signed(signers, src)
            assert 1 <= p.amount <= amount, "OK post of more than held"
            self.held[src, asset] -= amount
            self.available[dst, asset] += p.amount
            self.available[src, asset] += amount - p.amount
        elif kind == "escrow_void":
            v = body.escrow_void
            assert v.escrow_id in self.pending, f"OK void of closed escrow {v.escrow_id}"
            src, dst = self.pending[v.escrow_id][:2]
            assert self.accounts[src][1] in signers or self.accounts[dst][1] in signers, (
                "OK void by a stranger"
            )
            self._return(v.escrow_id)
        else:
            raise AssertionError(f"OK for {kind}")
        assert all(v >= 0 for v in self.available.values()), "OK made a balance negative"

    def view(self) -> dict[tuple[str, str], tuple[int, int]]:
        keys = {k for k, v in self.available.items() if v} | {k for k, v in self.held.items() if v}
        return {k: (self.available[k], self.held[k]) for k in keys}


def ledger_view(chain: Chain) -> dict[tuple[str, str], tuple[int, int]]:
    out = {}
    with chain.store.read() as r:
        for account, _ in ACCOUNTS:
            view = chain.ledger.account(r, account)
            for b in view.balances if view is not None else ():
                out[account, b.asset] = (b.available, b.held)
    return out


def account_totals(chain: Chain) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    with chain.store.read() as r:
        for account, _ in ACCOUNTS:
            view = chain.ledger.account(r, account)
            if view is None:
                continue
            for b in view.balances:
                assert b.available >= 0 and b.held >= 0, f"negative balance {b}"
                totals[b.asset] += b.available + b.held
    return dict(totals)
