import stat
from pathlib import Path

import pytest

from client.tx import LegSpec, Transaction, TxBuilder, TxBuildError, debited_accounts
from client.wallet import Wallet, WalletError
from ledger.crypto import DOMAIN_TX, SigningKey, tx_id_of, verify
from ledger.genesis import LedgerLimits
from ledger.v1 import tx_pb2

CHAIN = "test-chain"


def test_wallet_create_load_list(tmp_path: Path) -> None:
    w = Wallet(tmp_path / "w")
    a = w.create("alice")
    b = w.create("bob.usd-1")
    assert w.labels() == ["alice", "bob.usd-1"]
    again = w.load("alice")
    assert again.public_key == a.public_key and again.key.seed == a.key.seed
    assert stat.S_IMODE((tmp_path / "w" / "alice.key").stat().st_mode) == 0o600
    assert w.find_public(b.public_key) is not None and w.find_public(b.public_key).label == "bob.usd-1"  # type: ignore[union-attr]
    assert w.find_public(SigningKey.generate().public_key) is None


def test_wallet_refuses_overwrite_bad_labels_and_unknown(tmp_path: Path) -> None:
    w = Wallet(tmp_path)
    w.create("alice")
    with pytest.raises(WalletError, match="already exists"):
        w.create("alice")
    for bad in ("../evil", "a/b", "", ".hidden", "x" * 65, "a b"):
        with pytest.raises(WalletError, match="label"):
            w.create(bad)
    with pytest.raises(WalletError, match=r"no key 'carol'.*known: alice"):
        w.load("carol")
    (tmp_path / "broken.key").write_text("{not json")
    with pytest.raises(WalletError, match="malformed"):
        w.load("broken")
    assert Wallet(tmp_path / "missing").key_files() == []


def _decode(tx: Transaction) -> tx_pb2.TxBody:
    return tx.decoded_body()


def test_every_kind_builds_signs_and_has_the_body_hash_as_id() -> None:
    b = TxBuilder(CHAIN)
    op, alice = SigningKey.generate(), SigningKey.generate()
    leg = LegSpec("a1", "b1", "USD.BANK-A", 100)
    txs = {
        "open_account": b.open_account("BANK-A", "a1", alice.public_key),
        "set_frozen": b.set_frozen("a1", True),
        "mint": b.mint("USD.BANK-A", "a1", 100, "dep-1"),
        "transfer": b.transfer([leg, LegSpec("a1", "c1", "USD.BANK-A", 5)]),
        "redeem": b.redeem("a1", "USD.BANK-A", 1, "pay-1"),
        "escrow_create": b.escrow_create("e1", leg, 1_800_000_000_000),
        "escrow_post": b.escrow_post("e1", 50),
        "escrow_void": b.escrow_void("e1"),
    }
    for kind, tx in txs.items():
        body = _decode(tx)
        assert body.WhichOneof("op") == kind
        assert body.chain_id == CHAIN and 8 <= len(body.nonce) <= 32
        signed = tx.signed_by(op if kind in ("open_account", "set_frozen", "mint") else alice)
        env = tx_pb2.Envelope()
        env.ParseFromString(signed.envelope_bytes())
        assert env.body == tx.body
        assert tx_id_of(env.body) == signed.tx_id == tx.tx_id
        (sig,) = env.signatures
        assert verify(sig.public_key, sig.signature, DOMAIN_TX, CHAIN, env.body)
    assert _decode(txs["mint"]).mint.amount == 100
    assert [(leg.to_account, leg.amount) for leg in _decode(txs["transfer"]).transfer.legs] == [
        ("b1", 100),
        ("c1", 5),
    ]


def test_random_nonce_makes_equal_payments_distinct_and_fixed_nonce_is_stable() -> None:
    b = TxBuilder(CHAIN)
    leg = [LegSpec("a", "b", "USD.BANK-A", 1)]
    assert b.transfer(leg).tx_id != b.transfer(leg).tx_id
    assert b.transfer(leg, nonce=b"n" * 8).tx_id == b.transfer(leg, nonce=b"n" * 8).tx_id


def test_pvp_is_built_once_and_signed_by_both_parties() -> None:
    b = TxBuilder(CHAIN)
    alice, bob = SigningKey.generate(), SigningKey.generate()
    tx = b.pvp(LegSpec("alice", "bob", "USD.BANK-A", 10000), LegSpec("bob", "alice", "EUR.BANK-B", 9000))
    assert debited_accounts(tx.decoded_body()) == ["alice", "bob"]
    half = tx.signed_by(alice)
    # Alice hands the envelope to Bob, who checks it and adds his signature: same body, same id.
    at_bob = Transaction.from_envelope(CHAIN, half.envelope_bytes())
    full = at_bob.signed_by(bob)
    assert full.tx_id == tx.tx_id and full.signers == (alice.public_key, bob.public_key)
    assert full.signed_by(bob).signers == full.signers  # signing twice adds nothing
    with pytest.raises(TxBuildError, match="does not verify"):
        tx.with_signature(bob.public_key, alice.sign(DOMAIN_TX, CHAIN, tx.body))
    with pytest.raises(TxBuildError, match="chain"):
        Transaction.from_envelope("other-chain", half.envelope_bytes())
    with pytest.raises(TxBuildError, match="not a serialized Envelope"):
        Transaction.from_envelope(CHAIN, b"\xff\xff\xff")
    with pytest.raises(TxBuildError, match="same two accounts"):
        b.pvp(LegSpec("a", "b", "USD.BANK-A", 1), LegSpec("b", "c", "EUR.BANK-B", 1))
    with pytest.raises(TxBuildError, match="different assets"):
        b.pvp(LegSpec("a", "b", "USD.BANK-A", 1), LegSpec("b", "a", "USD.BANK-A", 1))


@pytest.mark.parametrize(
    ("build", "why"),
    [
        (lambda b: b.mint("USD.BANK-A", "a", 0, "d"), "outside 1"),
        (lambda b: b.mint("USD.BANK-A", "a", -5, "d"), "outside 1"),
        (lambda b: b.mint("USD.BANK-A", "a", 10**15 + 1, "d"), "outside 1"),
        (lambda b: b.mint("USD.BANK-A", "a", True, "d"), "integer"),
        (lambda b: b.mint("USD.BANK-A", "a", 1.5, "d"), "integer"),
        (lambda b: b.mint("USD.BANK-A", "", 1, "d"), "account id"),
        (lambda b: b.mint("USD.BANK-A", "x" * 65, 1, "d"), "account id"),
        (lambda b: b.mint("USD.BANK-A", "a\n", 1, "d"), "control"),
        (lambda b: b.transfer([]), "1..16 legs"),
        (lambda b: b.transfer([LegSpec("a", "b", "USD.BANK-A", 1)] * 17), "1..16 legs"),
        (lambda b: b.transfer([LegSpec("a", "a", "USD.BANK-A", 1)]), "same account"),
        (lambda b: b.escrow_void("e", memo="m" * 257), "memo"),
        (lambda b: b.escrow_void("e", nonce=b"short"), "nonce"),
        (lambda b: b.open_account("BANK-A", "a", b"\x01" * 31), "32-byte"),
        (lambda b: b.escrow_create("e", LegSpec("a", "b", "USD.BANK-A", 1), 0), "expiry"),
    ],
)
def test_builder_rejects_what_the_ledger_would(build, why) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TxBuildError, match=why):
        build(TxBuilder(CHAIN, LedgerLimits()))
