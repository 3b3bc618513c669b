"""The one place in node/app that touches protobuf: wire bytes <-> the dataclasses of tx.py.

Decoding never trusts its input: any parse failure becomes CodecError, which validate.py turns
into a MALFORMED result. Its message is fixed text, never the protobuf library's own wording:
results are consensus bytes, and two nodes with different protobuf builds must agree. Encoding is used for results (consensus-critical bytes: the same
TxResult always serializes the same way) and, for tests and tools, for building bodies.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError

from ledger.crypto import tx_id_of
from ledger.v1 import tx_pb2
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
from node.app.tx import Envelope as EnvelopeData

# A TxResult's tx_id is 32 bytes and detail is short; this bounds what decode_result accepts.
RESULT_BYTES_MAX = 1024


class CodecError(Exception):
    """Bytes that do not parse as the expected message."""


def decode_envelope_parts(raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The signed body and the (public_key, signature) pairs of an envelope, as plain tuples:
    validate.py runs this for every transaction at every node and only reads them once."""
    try:
        msg = tx_pb2.Envelope.FromString(raw)
    except (DecodeError, ValueError, TypeError) as exc:
        raise CodecError("envelope does not parse") from exc
    # protobuf returns bytes fields as bytes already: no copies needed.
    return msg.body, [(s.public_key, s.signature) for s in msg.signatures]


def decode_envelope(raw: bytes) -> EnvelopeData:
    body, sigs = decode_envelope_parts(raw)
    return EnvelopeData(body=body, signatures=tuple([SignatureEntry(pk, sig) for pk, sig in sigs]))


def envelope_tx_id(raw: bytes) -> bytes:
    """The tx_id of a serialized envelope: SHA-256 of its body; for bytes that are not an
    envelope at all, SHA-256 of the raw bytes, so every batch entry has a well-defined id."""
    try:
        return tx_id_of(bytes(tx_pb2.Envelope.FromString(raw).body))
    except (DecodeError, ValueError, TypeError):
        return tx_id_of(raw)


def _op_of(msg: tx_pb2.TxBody) -> Op | None:
    kind = msg.WhichOneof("op")
    # The hot path (every transfer, at every node) passes fields by position: a frozen
    # dataclass builds measurably faster so, and the names match the fields one to one.
    if kind == "transfer":  # first: by far the most common kind
        return Transfer(
            tuple([Leg(g.from_account, g.to_account, g.asset, g.amount) for g in msg.transfer.legs])
        )
    if kind == "open_account":
        o = msg.open_account
        return OpenAccount(member_id=o.member_id, account_id=o.account_id, owner_key=o.owner_key)
    if kind == "set_frozen":
        return SetAccountFrozen(account_id=msg.set_frozen.account_id, frozen=msg.set_frozen.frozen)
    if kind == "mint":
        m = msg.mint
        return Mint(asset=m.asset, account_id=m.account_id, amount=m.amount, deposit_ref=m.deposit_ref)
    if kind == "redeem":
        r = msg.redeem
        return Redeem(account_id=r.account_id, asset=r.asset, amount=r.amount, payout_ref=r.payout_ref)
    if kind == "escrow_create":
        e = msg.escrow_create
        return EscrowCreate(
            escrow_id=e.escrow_id,
            from_account=e.from_account,
            to_account=e.to_account,
            asset=e.asset,
            amount=e.amount,
            expires_at_ms=e.expires_at_ms,
        )
    if kind == "escrow_post":
        return EscrowPost(escrow_id=msg.escrow_post.escrow_id, amount=msg.escrow_post.amount)
    if kind == "escrow_void":
        return EscrowVoid(escrow_id=msg.escrow_void.escrow_id)
    return None


def decode_body(raw: bytes) -> TxBody:
    try:
        msg = tx_pb2.TxBody.FromString(raw)
    except (DecodeError, ValueError, TypeError) as exc:
        raise CodecError("body does not parse") from exc
    return TxBody(msg.chain_id, msg.nonce, msg.memo, _op_of(msg))  # by position, as in _op_of


def encode_result(result: TxResult) -> bytes:
    return encode_result_fields(
        result.tx_id, result.code, result.detail, result.height, result.index, result.final
    )


def encode_result_fields(
    tx_id: bytes, code: Code, detail: str, height: int, index: int, final: bool
) -> bytes:
    """encode_result of TxResult(tx_id, code, ...), without building the TxResult: execution
    encodes one result per transaction."""
    msg = tx_pb2.TxResult(
        tx_id=tx_id,
        code=int(code),  # type: ignore[arg-type]
        detail=detail,
        height=height,
        index=index,
        final=final,
    )
    return msg.SerializeToString(deterministic=True)


def decode_result(raw: bytes) -> TxResult:
    if len(raw) > RESULT_BYTES_MAX:
        raise CodecError(f"result longer than {RESULT_BYTES_MAX} bytes")
    try:
        msg = tx_pb2.TxResult.FromString(raw)
        code = Code(msg.code)
    except (DecodeError, ValueError, TypeError) as exc:
        raise CodecError("result does not parse") from exc
    return TxResult(
        tx_id=bytes(msg.tx_id),
        code=code,
        detail=msg.detail,
        height=msg.height,
        index=msg.index,
        final=msg.final,
    )


# --- building (tests, tools, the benchmark) -------------------------------------------------


def encode_body(body: TxBody) -> bytes:
    msg = tx_pb2.TxBody(chain_id=body.chain_id, nonce=body.nonce, memo=body.memo)
    op = body.op
    if isinstance(op, OpenAccount):
        msg.open_account.CopyFrom(
            tx_pb2.OpenAccount(member_id=op.member_id, account_id=op.account_id, owner_key=op.owner_key)
        )
    elif isinstance(op, SetAccountFrozen):
        msg.set_frozen.CopyFrom(tx_pb2.SetAccountFrozen(account_id=op.account_id, frozen=op.frozen))
    elif isinstance(op, Mint):
        msg.mint.CopyFrom(
            tx_pb2.Mint(
                asset=op.asset, account_id=op.account_id, amount=op.amount, deposit_ref=op.deposit_ref
            )
        )
    elif isinstance(op, Transfer):
        msg.transfer.CopyFrom(
            tx_pb2.Transfer(
                legs=[
                    tx_pb2.Leg(
                        from_account=g.from_account, to_account=g.to_account, asset=g.asset, amount=g.amount
                    )
                    for g in op.legs
                ]
            )
        )
    elif isinstance(op, Redeem):
        msg.redeem.CopyFrom(
            tx_pb2.Redeem(
                account_id=op.account_id, asset=op.asset, amount=op.amount, payout_ref=op.payout_ref
            )
        )
    elif isinstance(op, EscrowCreate):
        msg.escrow_create.CopyFrom(
            tx_pb2.EscrowCreate(
                escrow_id=op.escrow_id,
                from_account=op.from_account,
                to_account=op.to_account,
                asset=op.asset,
                amount=op.amount,
                expires_at_ms=op.expires_at_ms,
            )
        )
    elif isinstance(op, EscrowPost):
        msg.escrow_post.CopyFrom(tx_pb2.EscrowPost(escrow_id=op.escrow_id, amount=op.amount))
    elif isinstance(op, EscrowVoid):
        msg.escrow_void.CopyFrom(tx_pb2.EscrowVoid(escrow_id=op.escrow_id))
    return msg.SerializeToString(deterministic=True)


def encode_envelope(body: bytes, signatures: Sequence[SignatureEntry]) -> bytes:
    msg = tx_pb2.Envelope(
        body=body,
        signatures=[tx_pb2.Signature(public_key=s.public_key, signature=s.signature) for s in signatures],
    )
    return msg.SerializeToString(deterministic=True)
