"""The ledger boundary: stateless checks, malformed input, which outcomes consume a tx_id,
retries, block outputs. Nothing a client or peer sends may raise out of execute()."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import merkle
from ledger.crypto import SigningKey, tx_id_of
from ledger.v1 import tx_pb2
from node.app.codec import decode_result, encode_envelope
from node.app.ledger import HeightError, Ledger
from node.app.tx import Code, InvalidTransaction, Mint, SignatureEntry, TxBody
from node.app.validate import check_envelope
from node.storage.memory import MemoryStore
from sim.factory import Factory
from tests.app.helpers import Chain


@pytest.fixture
def fx() -> Factory:
    return Factory(banks=4)


@pytest.fixture
def chain(fx: Factory) -> Chain:
    ch = Chain(Ledger(fx.genesis), MemoryStore())
    setup = [
        fx.open_account("BANK-A", "alice", fx.client("alice")),
        fx.open_account("BANK-B", "bob", fx.client("bob")),
        fx.mint("USD.BANK-A", "alice", 1_000, "d-0"),
    ]
    assert ch.codes(setup) == [Code.OK] * 3
    return ch


def recorded(chain: Chain, tx_id: bytes) -> bytes | None:
    with chain.store.read() as r:
        return chain.ledger.tx_result(r, tx_id)


def test_result_codes_mirror_the_proto() -> None:
    proto = dict(tx_pb2.ResultCode.items())
    assert proto == {c.name: c.value for c in Code}


def test_check_envelope_accepts_and_unpacks(fx: Factory) -> None:
    env = fx.transfer([("alice", "bob", "USD.BANK-A", 5)], signers=[fx.client("alice")])
    checked = check_envelope(fx.genesis, env)
    tx_id, body = checked
    assert tx_id == fx.tx_id(env) == checked.tx_id
    assert isinstance(body, TxBody) and body.chain_id == "test-chain"
    assert checked.signers == frozenset({fx.client("alice").public_key})


@pytest.mark.parametrize(
    ("build", "code"),
    [
        (lambda fx: fx.mint("USD.BANK-A", "a", 5, chain_id="other-chain"), Code.WRONG_CHAIN),
        (lambda fx: fx.mint("USD.BANK-A", "a", 5, nonce=b"short"), Code.MALFORMED),
        (lambda fx: fx.mint("USD.BANK-A", "a", 5, nonce=b"n" * 33), Code.MALFORMED),
        (lambda fx: fx.mint("USD.BANK-A", "a", 0), Code.AMOUNT_OUT_OF_RANGE),
        (lambda fx: fx.mint("USD.BANK-A", "a", 5, memo="x" * 257), Code.LIMIT_EXCEEDED),
        (lambda fx: fx.envelope(None, [fx.operators["BANK-A"]]), Code.MALFORMED),
        (lambda fx: b"\xff\xff\xff", Code.MALFORMED),
        (lambda fx: b"\x0a\x05abc", Code.MALFORMED),  # truncated: field says 5 bytes, 3 follow
        (lambda fx: encode_envelope(b"\x1a\x02\xff\xfe", []), Code.MALFORMED),  # memo not UTF-8
        (lambda fx: b"\x00" * 9000, Code.LIMIT_EXCEEDED),
    ],
)
def test_check_envelope_rejects_with_a_precise_code(fx: Factory, build: object, code: Code) -> None:
    raw = build(fx)  # type: ignore[operator]
    with pytest.raises(InvalidTransaction) as info:
        check_envelope(fx.genesis, raw)
    assert info.value.code == code, info.value.message


def _tamper_signature(env: bytes) -> bytes:
    msg = tx_pb2.Envelope.FromString(env)
    sig = bytearray(msg.signatures[0].signature)
    sig[10] ^= 1
    msg.signatures[0].signature = bytes(sig)
    return msg.SerializeToString()


def test_signature_checks(fx: Factory) -> None:
    env = fx.mint("USD.BANK-A", "a", 5)
    with pytest.raises(InvalidTransaction) as info:
        check_envelope(fx.genesis, _tamper_signature(env))
    assert info.value.code == Code.BAD_SIGNATURE
    body = tx_pb2.Envelope.FromString(env).body
    op = fx.operators["BANK-A"]
    twice = fx.sign(body, [op, op])
    with pytest.raises(InvalidTransaction) as info:
        check_envelope(fx.genesis, twice)
    assert info.value.code == Code.MALFORMED
    short = encode_envelope(body, [SignatureEntry(op.public_key, b"\x00" * 10)])
    with pytest.raises(InvalidTransaction) as info:
        check_envelope(fx.genesis, short)
    assert info.value.code == Code.MALFORMED
    many = fx.sign(body, [SigningKey(hashlib.sha256(bytes([i])).digest()) for i in range(17)])
    with pytest.raises(InvalidTransaction) as info:
        check_envelope(fx.genesis, many)
    assert info.value.code == Code.LIMIT_EXCEEDED
    # Signed for another chain: the signature does not verify on this one.
    wrong_domain = fx.sign(body, [op], chain_id="other-chain")
    with pytest.raises(InvalidTransaction) as info:
        check_envelope(fx.genesis, wrong_domain)
    assert info.value.code == Code.BAD_SIGNATURE


def test_unauthorized_outcomes_do_not_consume_the_tx_id(fx: Factory, chain: Chain) -> None:
    genuine = fx.transfer([("alice", "bob", "USD.BANK-A", 10)])
    tx_id = fx.tx_id(genuine)
    body = tx_pb2.Envelope.FromString(genuine).body
    forged = _tamper_signature(genuine)
    stripped = fx.sign(body, [])
    stranger = fx.sign(body, [fx.client("mallory")])
    results = chain.results([forged, stripped, stranger])
    assert [r.code for r in results] == [Code.BAD_SIGNATURE, Code.MISSING_SIGNATURE, Code.MISSING_SIGNATURE]
    assert all(r.tx_id == tx_id for r in results)
    assert recorded(chain, tx_id) is None
    # The genuine envelope still executes, once.
    first = chain.one(genuine)
    assert first.code == Code.OK and first.height == chain.height and first.index == 0
    assert chain.balance("bob", "USD.BANK-A") == (10, 0)


def test_a_bank_cannot_burn_another_banks_mint_by_swapping_signatures(fx: Factory, chain: Chain) -> None:
    genuine = fx.mint("USD.BANK-A", "bob", 5, "d-swap")
    body = tx_pb2.Envelope.FromString(genuine).body
    swapped = fx.sign(body, [fx.operators["BANK-B"]])
    assert chain.one(swapped).code == Code.NOT_ISSUER
    assert chain.one(genuine).code == Code.OK


def test_retry_returns_the_first_result_unchanged(fx: Factory, chain: Chain) -> None:
    pay = fx.transfer([("alice", "bob", "USD.BANK-A", 10)])
    fail = fx.transfer([("alice", "bob", "USD.BANK-A", 10**6)])
    out1 = chain.run([fail, pay, pay])  # a duplicate inside the same block too
    first_height = chain.height
    assert [decode_result(r).code for r in out1.results] == [Code.INSUFFICIENT_FUNDS, Code.OK, Code.OK]
    assert out1.results[2] == out1.results[1]
    out2 = chain.run([pay, fail])
    assert out2.results == (out1.results[1], out1.results[0])
    assert decode_result(out2.results[0]).height == first_height and decode_result(out2.results[0]).index == 1
    assert chain.balance("bob", "USD.BANK-A") == (10, 0)
    assert recorded(chain, fx.tx_id(pay)) == out1.results[1]
    # Re-signing the same body is the same transaction: it executes at most once.
    resigned = fx.sign(tx_pb2.Envelope.FromString(pay).body, [fx.client("alice"), fx.client("bob")])
    assert chain.run([resigned]).results == (out1.results[1],)


def test_every_truncation_and_bit_flip_is_answered_not_raised(fx: Factory, chain: Chain) -> None:
    env = fx.transfer([("alice", "bob", "USD.BANK-A", 1)], memo="hello")
    variants = [env[:i] for i in range(len(env))]
    for i in range(0, len(env), 3):
        flipped = bytearray(env)
        flipped[i] ^= 0x41
        variants.append(bytes(flipped))
    out = chain.run(variants)
    codes = {decode_result(r).code for r in out.results}
    assert codes <= {
        Code.MALFORMED,
        Code.BAD_SIGNATURE,
        Code.MISSING_SIGNATURE,
        Code.WRONG_CHAIN,
        Code.OK,
        Code.UNKNOWN_ACCOUNT,
        Code.UNKNOWN_ASSET,
        Code.LIMIT_EXCEEDED,
        Code.AMOUNT_OUT_OF_RANGE,
    }
    assert Code.MALFORMED in codes
    assert chain.balance("alice", "USD.BANK-A")[0] >= 999  # at most the one genuine payment
    assert chain.violations() == []


def test_block_outputs(fx: Factory, chain: Chain) -> None:
    envs = [fx.transfer([("alice", "bob", "USD.BANK-A", 1)]), b"garbage", fx.mint("USD.BANK-A", "bob", 2)]
    out = chain.run(envs, time_ms=5_000)
    assert out.height == chain.height and out.consensus_time_ms == 5_000
    assert out.results_root == merkle.root(list(out.results))
    assert out.tx_ids == (fx.tx_id(envs[0]), tx_id_of(b"garbage"), fx.tx_id(envs[2]))
    assert [decode_result(r).index for r in out.results] == [0, 1, 2]
    with chain.store.read() as r:
        assert chain.ledger.state_root(r) == out.state_root
        assert chain.ledger.last_height(r) == chain.height
        assert chain.ledger.consensus_time(r) == 5_000


def test_state_root_chains_and_changes_with_every_block(fx: Factory) -> None:
    chain = Chain(Ledger(fx.genesis), MemoryStore())
    with chain.store.read() as r:
        roots = [chain.ledger.state_root(r)]
    for _ in range(3):
        roots.append(chain.run([]).state_root)  # even empty blocks advance the chain
    assert len(set(roots)) == 4
    other = Factory(banks=4, chain_id="other-chain")
    with MemoryStore().read() as r:
        assert Ledger(other.genesis).state_root(r) != roots[0]


def test_execute_out_of_order_is_refused(fx: Factory, chain: Chain) -> None:
    for bad in (chain.height, chain.height + 2, 0):
        with pytest.raises(HeightError), chain.store.write() as w:
            chain.ledger.execute(w, bad, 1, [])
    assert chain.run([]).height == chain.height


def test_queries_refuse_bad_ids_quietly(chain: Chain) -> None:
    with chain.store.read() as r:
        assert chain.ledger.account(r, "nobody") is None
        assert chain.ledger.account(r, "") is None
        assert chain.ledger.account(r, "x\x00y") is None
        assert chain.ledger.tx_result(r, b"short") is None
        assert chain.ledger.escrow(r, "x" * 300) is None


def test_non_bytes_entries_in_a_batch_are_answered(fx: Factory, chain: Chain) -> None:
    out = chain.run([bytearray(fx.mint("USD.BANK-A", "bob", 3)), "text"])  # type: ignore[list-item]
    assert [decode_result(r).code for r in out.results] == [Code.OK, Code.MALFORMED]


def test_mint_dataclass_round_trip_through_check(fx: Factory) -> None:
    env = fx.envelope(Mint("USD.BANK-A", "acct", 9, "ref"), [fx.operators["BANK-A"]])
    _, body = check_envelope(fx.genesis, env)
    assert body.op == Mint("USD.BANK-A", "acct", 9, "ref")  # type: ignore[attr-defined]


def test_execute_refuses_a_timestamp_outside_int64(chain: Chain) -> None:
    with pytest.raises(ValueError, match="int64"), chain.store.write() as w:
        chain.ledger.execute(w, chain.height + 1, 1 << 63, [])
    assert chain.run([], time_ms=(1 << 63) - 1).consensus_time_ms == (1 << 63) - 1


FUZZ_FX = Factory(banks=4)


@settings(max_examples=150, deadline=None)
@given(
    raws=st.lists(
        st.one_of(
            st.binary(max_size=200),
            # Validly signed by a real operator, but the body is arbitrary bytes: gets past the
            # signature check only if it parses, and must still be answered, never raised.
            st.binary(max_size=120).map(lambda body: FUZZ_FX.sign(body, [FUZZ_FX.operators["BANK-A"]])),
            st.binary(max_size=60).map(lambda junk: FUZZ_FX.mint("USD.BANK-A", "acct", 5) + junk),
        ),
        max_size=6,
    )
)
def test_arbitrary_bytes_are_answered_never_raised(raws: list[bytes]) -> None:
    chain = Chain(Ledger(FUZZ_FX.genesis), MemoryStore())
    out = chain.run(raws)
    assert len(out.results) == len(raws) == len(out.tx_ids)
    for raw, result in zip(raws, out.results, strict=True):
        res = decode_result(result)
        assert res.code != Code.RESULT_CODE_UNSPECIFIED
        if res.code not in (Code.OK, Code.DUPLICATE):
            assert len(res.detail) > 0, f"{res.code.name} without a reason"
        assert res.tx_id == out.tx_ids[raws.index(raw)]
    assert chain.violations() == []
