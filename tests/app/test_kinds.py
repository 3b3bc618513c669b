"""Every transaction kind: its success and each of its bad inputs, with the exact result code,
and that a rejected transaction changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.app import state as st
from node.app.ledger import Ledger
from node.app.tx import Code, EscrowCreate, Leg, Mint, OpenAccount, Transfer
from node.storage.kv import KVStore
from node.storage.memory import MemoryStore
from sim.factory import Factory
from tests.app.helpers import Chain

USD_A, USD_B, EUR_B = "USD.BANK-A", "USD.BANK-B", "EUR.BANK-B"
SMALL_LIMITS = {"amount_max": 1000, "legs_max": 3, "memo_bytes_max": 16, "escrow_duration_ms_max": 10_000}


def state_dump(store: KVStore) -> list[tuple[bytes, bytes]]:
    """All ledger state except the per-block metadata (height, time, root)."""
    with store.read() as r:
        return [(k, v) for k, v in r.scan(b"s/") if not k.startswith(b"s/_/")]


class World:
    """Four banks issuing USD and EUR; alice and carol bank at A, bob at B, dave at C."""

    def __init__(self, limits: dict[str, int] | None = None) -> None:
        self.fx = Factory(banks=4, currencies=("USD", "EUR"), limits=limits)
        self.store = MemoryStore()
        self.chain = Chain(Ledger(self.fx.genesis), self.store)
        self.keys = {name: self.fx.client(name) for name in ("alice", "bob", "carol", "dave", "mallory")}
        banks = {"alice": "BANK-A", "bob": "BANK-B", "carol": "BANK-A", "dave": "BANK-C"}
        setup = [self.fx.open_account(bank, name, self.keys[name]) for name, bank in banks.items()]
        setup += [self.fx.mint(USD_A, "alice", 500, "d-alice"), self.fx.mint(EUR_B, "bob", 300, "d-bob")]
        assert self.chain.codes(setup) == [Code.OK] * len(setup)

    def code(self, envelope: bytes, time_ms: int | None = None) -> Code:
        """Execute one envelope; check the invariants still hold; and that a rejection changed nothing."""
        before = state_dump(self.store)
        result = self.chain.one(envelope, time_ms)
        assert self.chain.violations() == []
        if result.code != Code.OK:
            after = [(k, v) for k, v in state_dump(self.store) if not k.startswith(b"s/t/")]
            assert after == [(k, v) for k, v in before if not k.startswith(b"s/t/")], (
                "a rejection changed state"
            )
        return result.code

    def bal(self, account: str, asset: str) -> tuple[int, int]:
        return self.chain.balance(account, asset)


@pytest.fixture
def w() -> World:
    return World()


@pytest.fixture
def small() -> World:
    return World(limits=SMALL_LIMITS)


# --- open account -------------------------------------------------------------------------------


def test_open_account(w: World) -> None:
    assert w.code(w.fx.open_account("BANK-D", "erin", w.fx.client("erin"))) == Code.OK
    with w.store.read() as r:
        view = w.chain.ledger.account(r, "erin")
    assert view is not None and view.member_id == "BANK-D" and not view.frozen and view.balances == ()
    assert view.owner_key == w.fx.client("erin").public_key


def test_open_account_bad_inputs(w: World) -> None:
    fx = w.fx
    assert w.code(fx.open_account("BANK-A", "alice", w.keys["mallory"])) == Code.ACCOUNT_EXISTS
    # No member BANK-Z, so no operator signs: the factory adds no signature at all.
    assert w.code(fx.open_account("BANK-Z", "z1", w.keys["mallory"])) == Code.MISSING_SIGNATURE
    signed = fx.open_account("BANK-Z", "z1", w.keys["mallory"], signers=[fx.operators["BANK-A"]])
    assert w.code(signed) == Code.NOT_MEMBER
    other_bank = [fx.operators["BANK-B"]]
    assert (
        w.code(fx.open_account("BANK-A", "x1", w.keys["mallory"], signers=other_bank))
        == Code.MISSING_SIGNATURE
    )
    assert w.code(fx.open_account("BANK-A", "x2", w.keys["mallory"], signers=[])) == Code.MISSING_SIGNATURE
    assert w.code(fx.open_account("BANK-A", "x3", w.keys["mallory"], signers=[w.keys["mallory"]])) == (
        Code.MISSING_SIGNATURE
    )
    assert w.code(fx.open_account("BANK-A", "bad/id", w.keys["mallory"])) == Code.MALFORMED
    assert w.code(fx.open_account("BANK-A", "x" * 65, w.keys["mallory"])) == Code.MALFORMED
    assert w.code(fx.open_account("BANK-A", "", w.keys["mallory"])) == Code.MALFORMED
    assert w.code(fx.open_account("bank a", "x4", w.keys["mallory"], signers=[])) == Code.MALFORMED
    short_key = OpenAccount(member_id="BANK-A", account_id="x5", owner_key=b"\x01" * 31)
    assert w.code(fx.envelope(short_key, [fx.operators["BANK-A"]])) == Code.MALFORMED
    assert w.code(fx.open_account("BANK-A", "x6", w.keys["mallory"], memo="m" * 257)) == Code.LIMIT_EXCEEDED


# --- freeze -------------------------------------------------------------------------------------


def test_freeze_blocks_sending_and_receiving_and_unfreeze_restores(w: World) -> None:
    fx = w.fx
    assert w.code(fx.set_frozen("BANK-A", "alice", True)) == Code.OK
    with w.store.read() as r:
        view = w.chain.ledger.account(r, "alice")
    assert view is not None and view.frozen
    assert w.code(fx.transfer([("alice", "bob", USD_A, 1)])) == Code.ACCOUNT_FROZEN
    assert (
        w.code(fx.transfer([("carol", "alice", USD_A, 1)], signers=[w.keys["carol"]])) == Code.ACCOUNT_FROZEN
    )
    assert w.code(fx.mint(USD_A, "alice", 5)) == Code.ACCOUNT_FROZEN
    assert w.code(fx.redeem("alice", USD_A, 5)) == Code.ACCOUNT_FROZEN
    assert w.code(fx.escrow_create("e-f", "alice", "bob", USD_A, 5, 10_000)) == Code.ACCOUNT_FROZEN
    assert w.code(fx.escrow_create("e-g", "bob", "alice", EUR_B, 5, 10_000)) == Code.ACCOUNT_FROZEN
    assert w.code(fx.set_frozen("BANK-A", "alice", False)) == Code.OK
    assert w.code(fx.transfer([("alice", "bob", USD_A, 1)])) == Code.OK
    assert w.bal("alice", USD_A) == (499, 0)


def test_freeze_bad_inputs(w: World) -> None:
    fx = w.fx
    assert w.code(fx.set_frozen("BANK-B", "alice", True)) == Code.NOT_ACCOUNT_BANK
    assert w.code(fx.set_frozen("BANK-A", "nobody", True)) == Code.UNKNOWN_ACCOUNT
    assert w.code(fx.set_frozen("BANK-A", "alice", True, signers=[])) == Code.MISSING_SIGNATURE
    assert w.code(fx.set_frozen("BANK-A", "alice", True, signers=[w.keys["alice"]])) == Code.MISSING_SIGNATURE
    assert w.code(fx.set_frozen("BANK-A", "al ice", True)) == Code.MALFORMED


# --- mint ---------------------------------------------------------------------------------------


def test_mint_credits_and_counts_supply(w: World) -> None:
    assert w.code(w.fx.mint(USD_A, "bob", 250, "d-1")) == Code.OK
    assert w.bal("bob", USD_A) == (250, 0)
    with w.store.read() as r:
        supply = {s.asset: s for s in w.chain.ledger.supply(r)}
    assert (supply[USD_A].minted, supply[USD_A].redeemed, supply[USD_A].outstanding) == (750, 0, 750)
    assert supply[USD_B].minted == 0 and supply[USD_A].issuer == "BANK-A" and supply[USD_A].scale == 2
    # The same deposit reference at another issuer is a different deposit.
    assert w.code(w.fx.mint(USD_B, "bob", 1, "d-1")) == Code.OK


def test_mint_bad_inputs(w: World) -> None:
    fx = w.fx
    assert w.code(fx.mint(USD_A, "bob", 5, signers=[fx.operators["BANK-B"]])) == Code.NOT_ISSUER
    assert w.code(fx.mint(USD_A, "bob", 5, signers=[])) == Code.MISSING_SIGNATURE
    assert w.code(fx.mint(USD_A, "bob", 5, signers=[w.keys["bob"]])) == Code.MISSING_SIGNATURE
    assert w.code(fx.mint("USD.BANK-Z", "bob", 5, signers=[fx.operators["BANK-A"]])) == Code.UNKNOWN_ASSET
    assert w.code(fx.mint("JPY.BANK-A", "bob", 5)) == Code.UNKNOWN_ASSET
    assert w.code(fx.mint("usd", "bob", 5, signers=[fx.operators["BANK-A"]])) == Code.MALFORMED
    assert w.code(fx.mint(USD_A, "nobody", 5)) == Code.UNKNOWN_ACCOUNT
    assert w.code(fx.mint(USD_A, "bob", 5, "d-alice")) == Code.DUPLICATE_REFERENCE
    assert w.code(fx.mint(USD_A, "bob", 5, "bad ref")) == Code.MALFORMED
    for amount in (0, -1, -(2**63), 10**15 + 1, 2**63 - 1):
        assert w.code(fx.mint(USD_A, "bob", amount)) == Code.AMOUNT_OUT_OF_RANGE, amount
    assert w.bal("bob", USD_A) == (0, 0)


def test_mint_overflow_of_supply_and_max_amount(small: World) -> None:
    fx = small.fx
    assert small.code(fx.mint(USD_A, "bob", 500)) == Code.OK  # alice already holds 500: supply 1000
    assert small.code(fx.mint(USD_A, "bob", 1)) == Code.OVERFLOW
    assert small.code(fx.mint(USD_A, "bob", 1001)) == Code.AMOUNT_OUT_OF_RANGE
    assert small.code(fx.redeem("bob", USD_A, 400)) == Code.OK
    # amount_max bounds the outstanding supply: redeeming makes room to mint again.
    assert small.code(fx.mint(USD_A, "bob", 400)) == Code.OK
    assert small.code(fx.mint(USD_A, "bob", 1)) == Code.OVERFLOW


def test_mint_redeem_turnover_never_halts_an_asset(small: World) -> None:
    """Regression: mint compared cumulative minted with amount_max, so turnover alone (mint,
    redeem, mint, ...) eventually made every further mint an OVERFLOW."""
    fx = small.fx
    assert small.code(fx.redeem("alice", USD_A, 500)) == Code.OK
    for _ in range(5):
        assert small.code(fx.mint(USD_A, "bob", 1000)) == Code.OK
        assert small.code(fx.redeem("bob", USD_A, 1000)) == Code.OK
    assert small.code(fx.mint(USD_A, "bob", 1000)) == Code.OK
    with small.store.read() as r:
        usd = {s.asset: s for s in small.chain.ledger.supply(r)}[USD_A]
    assert (usd.minted, usd.redeemed, usd.outstanding) == (6500, 5500, 1000)


def test_supply_counters_are_u128_and_checked() -> None:
    store = MemoryStore()
    big = (1 << 100) + 7
    with store.write() as wr:
        st.put_supply(wr, USD_A, big, big - 5)
    with store.read() as r:
        assert st.get_supply(r, USD_A) == (big, big - 5)
    with pytest.raises(AssertionError), store.write() as wr:
        st.put_supply(wr, USD_A, 1 << 128, 0)


# --- transfer -----------------------------------------------------------------------------------


def test_transfer_one_leg(w: World) -> None:
    assert w.code(w.fx.transfer([("alice", "dave", USD_A, 120)])) == Code.OK
    assert w.bal("alice", USD_A) == (380, 0) and w.bal("dave", USD_A) == (120, 0)
    assert w.code(w.fx.transfer([("alice", "dave", USD_A, 380)])) == Code.OK
    with w.store.read() as r:
        view = w.chain.ledger.account(r, "alice")
    assert view is not None and view.balances == ()  # zero balances are not listed


def test_pvp_settles_both_legs_or_neither(w: World) -> None:
    fx = w.fx
    pvp = [("alice", "bob", USD_A, 100), ("bob", "alice", EUR_B, 90)]
    # One of the two debited owners did not sign: nothing moves.
    assert w.code(fx.transfer(pvp, signers=[w.keys["alice"]])) == Code.MISSING_SIGNATURE
    # The second leg cannot be funded: the first does not settle either.
    too_much = [("alice", "bob", USD_A, 100), ("bob", "alice", EUR_B, 301)]
    assert w.code(fx.transfer(too_much)) == Code.INSUFFICIENT_FUNDS
    assert w.bal("alice", USD_A) == (500, 0) and w.bal("bob", USD_A) == (0, 0)
    assert w.code(fx.transfer(pvp)) == Code.OK
    assert w.bal("alice", USD_A) == (400, 0) and w.bal("alice", EUR_B) == (90, 0)
    assert w.bal("bob", USD_A) == (100, 0) and w.bal("bob", EUR_B) == (210, 0)


def test_transfer_legs_apply_in_order(w: World) -> None:
    # carol has nothing, but receives in leg 0 what she pays in leg 1.
    chain = [("alice", "carol", USD_A, 50), ("carol", "dave", USD_A, 50)]
    assert w.code(w.fx.transfer(chain)) == Code.OK
    assert w.bal("carol", USD_A) == (0, 0) and w.bal("dave", USD_A) == (50, 0)
    reversed_chain = [("carol", "dave", USD_A, 50), ("alice", "carol", USD_A, 50)]
    assert w.code(w.fx.transfer(reversed_chain)) == Code.INSUFFICIENT_FUNDS


def test_transfer_bad_inputs(w: World) -> None:
    fx = w.fx
    assert w.code(fx.transfer([("alice", "bob", USD_A, 501)])) == Code.INSUFFICIENT_FUNDS
    assert (
        w.code(fx.transfer([("nobody", "bob", USD_A, 1)], signers=[w.keys["alice"]])) == Code.UNKNOWN_ACCOUNT
    )
    assert w.code(fx.transfer([("alice", "nobody", USD_A, 1)])) == Code.UNKNOWN_ACCOUNT
    assert w.code(fx.transfer([("alice", "bob", "GBP.BANK-A", 1)])) == Code.UNKNOWN_ASSET
    assert (
        w.code(fx.transfer([("alice", "bob", USD_A, 1)], signers=[w.keys["mallory"]]))
        == Code.MISSING_SIGNATURE
    )
    assert (
        w.code(fx.transfer([("alice", "bob", USD_A, 1)], signers=[w.keys["bob"]])) == Code.MISSING_SIGNATURE
    )
    assert w.code(fx.transfer([("alice", "alice", USD_A, 1)])) == Code.MALFORMED
    assert w.code(fx.transfer([])) == Code.MALFORMED
    for amount in (0, -5, 10**15 + 1):
        assert w.code(fx.transfer([("alice", "bob", USD_A, amount)])) == Code.AMOUNT_OUT_OF_RANGE
    many = [("alice", "bob", USD_A, 1)] * 17
    assert w.code(fx.transfer(many)) == Code.LIMIT_EXCEEDED
    assert w.bal("alice", USD_A) == (500, 0)


def test_transfer_limits(small: World) -> None:
    legs = [("alice", "bob", USD_A, 1)] * 3
    assert small.code(small.fx.transfer(legs)) == Code.OK
    assert small.code(small.fx.transfer([*legs, ("alice", "bob", USD_A, 1)])) == Code.LIMIT_EXCEEDED
    assert small.code(small.fx.transfer(legs[:1], memo="ü" * 9)) == Code.LIMIT_EXCEEDED  # 18 UTF-8 bytes
    assert small.code(small.fx.transfer(legs[:1], memo="ü" * 8)) == Code.OK


# --- redeem -------------------------------------------------------------------------------------


def test_redeem_burns_and_counts_supply(w: World) -> None:
    assert w.code(w.fx.redeem("alice", USD_A, 200, "p-1")) == Code.OK
    assert w.bal("alice", USD_A) == (300, 0)
    with w.store.read() as r:
        usd = next(s for s in w.chain.ledger.supply(r) if s.asset == USD_A)
    assert (usd.minted, usd.redeemed, usd.outstanding) == (500, 200, 300)
    # A holder at another bank redeems at the issuer too.
    assert w.code(w.fx.transfer([("alice", "dave", USD_A, 10)])) == Code.OK
    assert w.code(w.fx.redeem("dave", USD_A, 10, "p-2")) == Code.OK


def test_redeem_bad_inputs(w: World) -> None:
    fx = w.fx
    assert w.code(fx.redeem("alice", USD_A, 501)) == Code.INSUFFICIENT_FUNDS
    assert w.code(fx.redeem("alice", USD_B, 1)) == Code.INSUFFICIENT_FUNDS
    assert w.code(fx.redeem("nobody", USD_A, 1, signers=[w.keys["alice"]])) == Code.UNKNOWN_ACCOUNT
    assert w.code(fx.redeem("alice", "CHF.BANK-A", 1)) == Code.UNKNOWN_ASSET
    assert w.code(fx.redeem("alice", USD_A, 1, signers=[fx.operators["BANK-A"]])) == Code.MISSING_SIGNATURE
    assert w.code(fx.redeem("alice", USD_A, 1, "p-x")) == Code.OK
    assert w.code(fx.redeem("alice", USD_A, 1, "p-x")) == Code.DUPLICATE_REFERENCE
    assert w.code(fx.redeem("alice", USD_A, 1, "p-x\n")) == Code.MALFORMED  # not a new ref
    for amount in (0, -1, 10**15 + 1):
        assert w.code(fx.redeem("alice", USD_A, amount)) == Code.AMOUNT_OUT_OF_RANGE


# --- escrow -------------------------------------------------------------------------------------


def test_escrow_create_holds_and_post_pays_partially(w: World) -> None:
    fx = w.fx
    assert w.code(fx.escrow_create("e1", "alice", "bob", USD_A, 200, 5_000)) == Code.OK
    assert w.bal("alice", USD_A) == (300, 200)
    with w.store.read() as r:
        esc = w.chain.ledger.escrow(r, "e1")
    assert esc is not None and (esc.amount, esc.expires_at_ms) == (200, 5_000)
    assert w.code(fx.escrow_post("e1", 150, payer="alice")) == Code.OK
    assert w.bal("alice", USD_A) == (350, 0) and w.bal("bob", USD_A) == (150, 0)
    assert w.code(fx.escrow_post("e1", 1, payer="alice")) == Code.ESCROW_CLOSED
    assert w.code(fx.escrow_void("e1", "alice")) == Code.ESCROW_CLOSED


def test_escrow_void_by_payer_or_payee(w: World) -> None:
    fx = w.fx
    assert w.code(fx.escrow_create("e1", "alice", "bob", USD_A, 100, 5_000)) == Code.OK
    assert w.code(fx.escrow_create("e2", "alice", "bob", USD_A, 100, 5_000)) == Code.OK
    assert w.code(fx.escrow_void("e1", "mallory", signers=[w.keys["mallory"]])) == Code.MISSING_SIGNATURE
    assert w.code(fx.escrow_void("e1", "alice")) == Code.OK
    assert w.code(fx.escrow_void("e2", "bob")) == Code.OK
    assert w.bal("alice", USD_A) == (500, 0)
    assert w.code(fx.escrow_void("e2", "bob")) == Code.ESCROW_CLOSED


def test_escrow_expires_at_block_start_in_id_order(w: World) -> None:
    fx = w.fx
    for escrow_id, expires in (("e-b", 3_000), ("e-a", 4_000), ("e-c", 9_000)):
        assert w.code(fx.escrow_create(escrow_id, "alice", "bob", USD_A, 100, expires)) == Code.OK
    assert w.bal("alice", USD_A) == (200, 300)
    out = w.chain.run([], time_ms=4_000)
    assert out.expired_escrows == ("e-a", "e-b")
    assert w.bal("alice", USD_A) == (400, 100)
    assert w.chain.violations() == []
    assert w.code(fx.escrow_post("e-a", 10, payer="alice")) == Code.EXPIRED
    assert w.code(fx.escrow_void("e-b", "bob")) == Code.EXPIRED
    # Consensus time never goes backwards: an earlier proposal timestamp does not revive e-c's window.
    out = w.chain.run([], time_ms=1)
    assert out.consensus_time_ms == 4_000 and out.expired_escrows == ()
    assert w.code(fx.escrow_create("e-d", "alice", "bob", USD_A, 1, 3_999), time_ms=2) == Code.EXPIRED
    assert w.chain.run([], time_ms=9_000).expired_escrows == ("e-c",)
    assert w.bal("alice", USD_A) == (500, 0)


def test_escrow_bad_inputs(w: World) -> None:
    fx = w.fx
    create = fx.escrow_create
    assert w.code(create("e1", "alice", "bob", USD_A, 501, 5_000)) == Code.INSUFFICIENT_FUNDS
    assert w.code(create("e1", "alice", "nobody", USD_A, 1, 5_000)) == Code.UNKNOWN_ACCOUNT
    assert (
        w.code(create("e1", "nobody", "bob", USD_A, 1, 5_000, signers=[w.keys["alice"]]))
        == Code.UNKNOWN_ACCOUNT
    )
    assert w.code(create("e1", "alice", "bob", "XAU.BANK-A", 1, 5_000)) == Code.UNKNOWN_ASSET
    assert (
        w.code(create("e1", "alice", "bob", USD_A, 1, 5_000, signers=[w.keys["bob"]]))
        == Code.MISSING_SIGNATURE
    )
    assert w.code(create("e1", "alice", "bob", USD_A, 1, 1_000)) == Code.EXPIRED  # not after now (1000)
    assert w.code(create("e1", "alice", "bob", USD_A, 1, -5)) == Code.EXPIRED
    assert w.code(create("e1", "alice", "bob", USD_A, 1, 2**63 - 1)) == Code.LIMIT_EXCEEDED
    assert w.code(create("e1", "alice", "alice", USD_A, 1, 5_000)) == Code.MALFORMED
    assert w.code(create("e 1", "alice", "bob", USD_A, 1, 5_000)) == Code.MALFORMED
    for amount in (0, -1, 10**15 + 1):
        assert w.code(create("e1", "alice", "bob", USD_A, amount, 5_000)) == Code.AMOUNT_OUT_OF_RANGE
    assert w.code(create("e1", "alice", "bob", USD_A, 10, 5_000)) == Code.OK
    assert w.code(create("e1", "alice", "bob", USD_A, 10, 5_000)) == Code.ESCROW_EXISTS
    assert w.code(fx.escrow_post("nope", 1, payer="alice")) == Code.UNKNOWN_ESCROW
    assert w.code(fx.escrow_void("nope", "alice")) == Code.UNKNOWN_ESCROW
    assert w.code(fx.escrow_post("e1", 11, payer="alice")) == Code.AMOUNT_OUT_OF_RANGE
    assert w.code(fx.escrow_post("e1", 0, payer="alice")) == Code.AMOUNT_OUT_OF_RANGE
    assert w.code(fx.escrow_post("e1", 5, payer="bob")) == Code.MISSING_SIGNATURE  # payee cannot post
    assert w.code(fx.set_frozen("BANK-B", "bob", True)) == Code.OK
    assert w.code(fx.escrow_post("e1", 5, payer="alice")) == Code.ACCOUNT_FROZEN
    # Voiding returns the payer's own funds even when an account is frozen.
    assert w.code(fx.escrow_void("e1", "alice")) == Code.OK
    assert w.bal("alice", USD_A) == (500, 0)


def test_escrow_duration_limit(small: World) -> None:
    fx = small.fx
    assert small.code(fx.escrow_create("e1", "alice", "bob", USD_A, 1, 1_000 + 10_001)) == Code.LIMIT_EXCEEDED
    assert small.code(fx.escrow_create("e1", "alice", "bob", USD_A, 1, 1_000 + 10_000)) == Code.OK


def test_escrow_create_fields_reach_the_ledger_verbatim(w: World) -> None:
    op = EscrowCreate("e-raw", "alice", "bob", USD_A, 7, 2_000)
    assert w.code(w.fx.envelope(op, [w.keys["alice"]])) == Code.OK
    assert w.bal("alice", USD_A) == (493, 7)


def test_multi_leg_across_three_parties_and_assets(w: World) -> None:
    assert w.code(w.fx.mint(USD_B, "dave", 40, "d-dave")) == Code.OK
    op = Transfer(
        legs=(Leg("alice", "bob", USD_A, 10), Leg("bob", "dave", EUR_B, 20), Leg("dave", "alice", USD_B, 30))
    )
    signers = [w.keys["alice"], w.keys["bob"], w.keys["dave"]]
    assert w.code(w.fx.envelope(op, signers[:2])) == Code.MISSING_SIGNATURE
    assert w.code(w.fx.envelope(op, signers)) == Code.OK
    assert (
        w.bal("alice", USD_B) == (30, 0)
        and w.bal("dave", EUR_B) == (20, 0)
        and w.bal("bob", USD_A) == (10, 0)
    )


def test_mint_op_with_fields_from_dataclass(w: World, tmp_path: Path) -> None:
    op = Mint(asset=USD_A, account_id="carol", amount=3, deposit_ref="d-carol")
    assert w.code(w.fx.envelope(op, [w.fx.operators["BANK-A"]])) == Code.OK
    assert w.bal("carol", USD_A) == (3, 0)


def test_ids_are_bounded_even_when_genesis_allows_more() -> None:
    big = World(limits={"id_bytes_max": 10_000})
    fx = big.fx
    assert big.code(fx.open_account("BANK-A", "x" * 128, big.keys["mallory"])) == Code.OK
    assert big.code(fx.open_account("BANK-A", "y" * 129, big.keys["mallory"])) == Code.MALFORMED
    long_id = "x" * 128
    assert big.code(fx.mint(USD_A, long_id, 5, "r" * 128)) == Code.OK
    assert big.code(fx.escrow_create("e" * 128, long_id, "alice", USD_A, 5, 5_000)) == Code.OK
    assert big.bal(long_id, USD_A) == (0, 5)


def test_one_holder_cannot_consume_another_holders_payout_ref(w: World) -> None:
    """Regression: payout refs were unique per issuer only, so mallory could redeem 1 unit with
    alice's payout_ref first and alice's redeem was DUPLICATE_REFERENCE (recorded, tx_id burned)."""
    fx = w.fx
    assert w.code(fx.open_account("BANK-C", "mallory", w.keys["mallory"])) == Code.OK
    assert w.code(fx.transfer([("alice", "mallory", USD_A, 1)])) == Code.OK
    assert w.code(fx.redeem("mallory", USD_A, 1, "p-alice")) == Code.OK
    assert w.code(fx.redeem("alice", USD_A, 100, "p-alice")) == Code.OK
    assert w.bal("alice", USD_A) == (399, 0)
    # Still unique per (issuer, account): alice cannot reuse her own ref.
    assert w.code(fx.redeem("alice", USD_A, 1, "p-alice")) == Code.DUPLICATE_REFERENCE


def test_ids_with_a_trailing_newline_are_malformed(w: World) -> None:
    """Regression: ^...$ with .match accepted "alice\n" as a distinct id."""
    fx = w.fx
    assert w.code(fx.open_account("BANK-A", "alice\n", w.keys["mallory"])) == Code.MALFORMED
    assert w.code(fx.open_account("BANK-A\n", "x1", w.keys["mallory"], signers=[fx.operators["BANK-A"]])) == (
        Code.MALFORMED
    )
    assert w.code(fx.mint(USD_A, "alice", 1, "d-alice\n")) == Code.MALFORMED
    op = Mint(asset=USD_A + "\n", account_id="alice", amount=1, deposit_ref="d-nl")
    assert w.code(fx.envelope(op, [fx.operators["BANK-A"]])) == Code.MALFORMED
    assert w.bal("alice", USD_A) == (500, 0)


def test_details_never_hold_repr_of_client_text(w: World) -> None:
    """Regression: details (consensus bytes) embedded repr() of client strings; repr of
    non-ASCII text depends on the Python version's Unicode tables."""
    fx = w.fx
    bad = [
        fx.open_account("BANK-A", "caf\u00e9", w.keys["mallory"]),
        fx.open_account("B\u00c4NK" * 30, "x1", w.keys["mallory"], signers=[fx.operators["BANK-A"]]),
        fx.envelope(Mint(asset="USD.B\u00c4NK", account_id="alice", amount=1, deposit_ref="d1"), []),
        fx.open_account("BANK-A", "x2", w.keys["mallory"], chain_id="ch\u00e4in-\U0001f600"),
    ]
    results = w.chain.results(bad)
    assert [r.code for r in results] == [Code.MALFORMED] * 3 + [Code.WRONG_CHAIN]
    for r in results:
        assert r.detail.isascii(), r.detail
        assert len(r.detail) <= 120, r.detail
    assert "\\xe9" in results[0].detail
    assert "..." in results[1].detail  # 120 characters of client text, shown bounded
    assert "\\U0001f600" in results[3].detail


# --- who can have a result recorded (issue 16: no keyless writes) ---------------------------------


def test_an_envelope_without_any_signature_is_refused_and_never_recorded(w: World) -> None:
    env = w.fx.transfer([("alice", "bob", USD_A, 1)], signers=[])
    result = w.chain.one(env)
    assert result.code == Code.MISSING_SIGNATURE and not result.final
    with w.store.read() as r:
        assert w.chain.ledger.tx_result(r, result.tx_id) is None


def test_keyless_spam_of_unknown_accounts_is_answered_but_never_recorded(w: World) -> None:
    stranger = w.fx.client("stranger")
    spam = [w.fx.transfer([(f"ghost-{i}", "bob", USD_A, 1)], signers=[stranger]) for i in range(20)] + [
        w.fx.redeem("ghost", USD_A, 1, signers=[stranger]),
        w.fx.escrow_create("e-ghost", "ghost", "bob", USD_A, 1, 10_000, signers=[stranger]),
        w.fx.escrow_post("no-such-escrow", 1, payer="alice", signers=[stranger]),
        w.fx.escrow_void("no-such-escrow", "alice", signers=[stranger]),
        w.fx.set_frozen("BANK-A", "ghost", True, signers=[stranger]),
        w.fx.mint("XYZ.BANK-A", "alice", 1, "d-x", signers=[stranger]),
    ]
    before = state_dump(w.store)
    results = [w.chain.one(env) for env in spam]
    assert {r.code for r in results} == {Code.UNKNOWN_ACCOUNT, Code.UNKNOWN_ESCROW, Code.UNKNOWN_ASSET}
    assert not any(r.final for r in results)
    assert state_dump(w.store) == before, "a keyless transaction left something in the state"


def test_a_recorded_failure_is_signed_by_a_key_the_ledger_knows(w: World) -> None:
    # The payee is unknown, but alice, who must sign, exists and signed: recorded, attributable.
    result = w.chain.one(w.fx.transfer([("alice", "ghost", USD_A, 1)]))
    assert result.code == Code.UNKNOWN_ACCOUNT and result.final


def test_the_owner_key_index_counts_the_accounts_that_are_not_frozen(w: World) -> None:
    alice = w.keys["alice"].public_key

    def count() -> int:
        with w.store.read() as r:
            return st.active_accounts_of_key(r, alice)

    assert count() == 1
    assert w.code(w.fx.open_account("BANK-B", "alice-2", w.keys["alice"])) == Code.OK
    assert count() == 2
    assert w.code(w.fx.set_frozen("BANK-A", "alice", True)) == Code.OK
    assert w.code(w.fx.set_frozen("BANK-A", "alice", True)) == Code.OK  # already frozen: no change
    assert count() == 1
    assert w.code(w.fx.set_frozen("BANK-B", "alice-2", True)) == Code.OK
    assert count() == 0
    assert w.code(w.fx.set_frozen("BANK-A", "alice", False)) == Code.OK
    assert count() == 1
