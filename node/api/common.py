"""What every part of the client API shares: the refusal that becomes a gRPC status, request
parsing, and the checks of ids."""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf.message import Message

from node.app.tx import Code
from node.storage import blocks
from node.storage.kv import KVReader

SERVICE = "ledger.v1.LedgerService"
TX_ID_BYTES = 32

_STATUS_OF_CODE: dict[Code, grpc.StatusCode] = {
    Code.WRONG_CHAIN: grpc.StatusCode.FAILED_PRECONDITION,
    Code.BAD_SIGNATURE: grpc.StatusCode.UNAUTHENTICATED,
    Code.MISSING_SIGNATURE: grpc.StatusCode.UNAUTHENTICATED,
}

M = TypeVar("M", bound=Message)


def status_of(code: Code) -> grpc.StatusCode:
    return _STATUS_OF_CODE.get(code, grpc.StatusCode.INVALID_ARGUMENT)


class Abort(Exception):
    """A refusal: the call ends with this gRPC status and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse(cls: type[M], raw: bytes) -> M:
    try:
        return cls.FromString(raw)
    except Exception as exc:  # DecodeError and friends
        raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a {cls.__name__}") from exc


def checked_tx_id(raw: bytes) -> bytes:
    if len(raw) != TX_ID_BYTES:
        raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"tx_id must be {TX_ID_BYTES} bytes, got {len(raw)}")
    return raw


def is_final(r: KVReader, tx_id: bytes) -> bool:
    found = blocks.find_tx(r, tx_id)
    return found is not None and found.recorded
