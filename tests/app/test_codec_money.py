"""The small pure pieces: codec round trips and refusals, money arithmetic, key encodings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.crypto import tx_id_of
from ledger.v1 import tx_pb2
from node.app import money
from node.app import state as state_keys
from node.app.codec import (
    RESULT_BYTES_MAX,
    CodecError,
    decode_body,
    decode_envelope,
    decode_result,
    encode_body,
    encode_envelope,
    encode_result,
    envelope_tx_id,
)
from node.app.tx import (
    Code,
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
    TxResult,
)

OPS: list[Op] = [
    OpenAccount("BANK-A", "acct", b"\x07" * 32),
    SetAccountFrozen("acct", True),
    Mint("USD.BANK-A", "acct", 5, "dep"),
    Transfer((Leg("a", "b", "USD.BANK-A", 1), Leg("b", "a", "EUR.BANK-B", -3))),
    Redeem("acct", "USD.BANK-A", 9, "pay"),
    EscrowCreate("e", "a", "b", "USD.BANK-A", 4, -17),
    EscrowPost("e", 2),
    EscrowVoid("e"),
]


@pytest.mark.parametrize("op", OPS, ids=lambda op: type(op).__name__)
def test_body_round_trip_for_every_kind(op: Op) -> None:
    body = TxBody("chain", b"n" * 8, "memo ü", op)
    raw = encode_body(body)
    assert decode_body(raw) == body
    env = encode_envelope(raw, [SignatureEntry(b"k" * 32, b"s" * 64)])
    assert decode_envelope(env).body == raw and envelope_tx_id(env) == tx_id_of(raw)


def test_body_without_op_decodes_to_none() -> None:
    assert decode_body(encode_body(TxBody("c", b"n" * 8, "", None))).op is None


@pytest.mark.parametrize("raw", [b"\xff", b"\x0a\x10short"])
def test_decoders_refuse_bytes_that_do_not_parse(raw: bytes) -> None:
    with pytest.raises(CodecError, match="does not parse"):
        decode_envelope(raw)
    with pytest.raises(CodecError, match="does not parse"):
        decode_body(raw)
    assert envelope_tx_id(raw) == tx_id_of(raw)  # still a well-defined id for the block


def test_body_with_invalid_utf8_string_is_refused() -> None:
    with pytest.raises(CodecError):
        decode_body(b"\x1a\x02\xff\xfe")  # memo (field 3) holding two non-UTF-8 bytes


def test_result_round_trip_and_refusals() -> None:
    res = TxResult(b"\x01" * 32, Code.INSUFFICIENT_FUNDS, "too little", 7, 3)
    raw = encode_result(res)
    assert decode_result(raw) == res
    assert encode_result(res) == raw  # the same result always serializes the same way
    with pytest.raises(CodecError):
        decode_result(b"\x00" * (RESULT_BYTES_MAX + 1))
    with pytest.raises(CodecError):
        decode_result(b"\xff\xff")
    with pytest.raises(CodecError):
        decode_result(tx_pb2.TxResult(code=99).SerializeToString())  # type: ignore[arg-type]


def test_money_bounds() -> None:
    assert money.credit(5, 5, 10) == 10
    assert money.credit(5, 6, 10) is None
    assert money.debit(5, 5) == 0
    assert money.debit(5, 6) is None
    for bad in (-1, 1.0, True):
        with pytest.raises(AssertionError):
            money.credit(bad, 1, 10)  # type: ignore[arg-type]
        with pytest.raises(AssertionError):
            money.debit(1, bad)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(a=st.integers(-(2**63), 2**63 - 1), b=st.integers(-(2**63), 2**63 - 1))
def test_expiry_keys_sort_in_time_order(a: int, b: int) -> None:
    ka, kb = state_keys.expiry_key(a, "x"), state_keys.expiry_key(b, "x")
    assert (ka < kb) == (a < b)
    assert state_keys.expiry_of_key(ka) == (a, "x")
