"""LedgerApi: the parts of the client API (admission, receipts, queries) and their gRPC
registration. Requests and replies are raw bytes (parsed by the parts), so garbage gets
INVALID_ARGUMENT with a message rather than gRPC's generic deserialization failure."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from ledger.genesis import Genesis
from node.api.admission import Admission
from node.api.authority import ReadAuthority, token_of
from node.api.common import SERVICE, Abort
from node.api.history import History
from node.api.port import NodePort
from node.api.proofs import BalanceProofs
from node.api.queries import Queries
from node.api.streams import Receipts
from node.app.ledger import Ledger
from node.app.validate import CheckCache
from node.config import NodeLimits
from node.log import EventLog
from node.receipts import AttestationBackfill, ProofCache


class LedgerApi:
    def __init__(
        self,
        genesis: Genesis,
        member_id: str,
        replica_id: int,
        limits: NodeLimits,
        node: NodePort,
        ledger: Ledger,
        replica_status: Callable[[], dict[str, int]],
        log: EventLog,
        backfill: AttestationBackfill,
        checks: CheckCache,
        space_left: Callable[[], str | None] = lambda: None,
        space: Callable[[], dict[str, int]] = dict,
    ) -> None:
        proofs = ProofCache()
        self.admission = Admission(genesis, limits, node, checks, log, space_left)
        self.streams = Receipts(limits, node, self.admission, backfill, proofs)
        self.authority = ReadAuthority(genesis, self.admission.known_keys, node)
        self.queries = Queries(
            genesis,
            member_id,
            replica_id,
            node,
            ledger,
            replica_status,
            log,
            backfill,
            proofs,
            space,
            self.authority,
        )
        self.history = History(genesis, node, backfill, self.authority)
        self.proofs = BalanceProofs(genesis, node, self.authority)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        def unary(fn: Callable[[bytes], Any]) -> grpc.RpcMethodHandler[Any, Any]:
            async def call(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
                try:
                    result: bytes = await fn(raw)
                    return result
                except Abort as exc:
                    await context.abort(exc.code, exc.message)
                    raise AssertionError("unreachable") from None

            return grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=_raw, response_serializer=_raw
            )

        def read(fn: Callable[[bytes, bytes | None], Any]) -> grpc.RpcMethodHandler[Any, Any]:
            """A read: its handler also gets the call's read token (node/api/authority.py)."""

            async def call(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
                try:
                    result: bytes = await fn(raw, token_of(context.invocation_metadata()))
                    return result
                except Abort as exc:
                    await context.abort(exc.code, exc.message)
                    raise AssertionError("unreachable") from None

            return grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=_raw, response_serializer=_raw
            )

        def read_stream(
            fn: Callable[[bytes, bytes | None], AsyncIterator[bytes]],
        ) -> grpc.RpcMethodHandler[Any, Any]:
            """A streamed read: its handler also gets the call's read token."""

            async def call(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
                try:
                    async for item in fn(raw, token_of(context.invocation_metadata())):
                        yield item
                except Abort as exc:
                    await context.abort(exc.code, exc.message)

            return grpc.unary_stream_rpc_method_handler(
                call, request_deserializer=_raw, response_serializer=_raw
            )

        def stream(fn: Callable[[bytes], AsyncIterator[bytes]]) -> grpc.RpcMethodHandler[Any, Any]:
            async def call(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
                try:
                    async for item in fn(raw):
                        yield item
                except Abort as exc:
                    await context.abort(exc.code, exc.message)

            return grpc.unary_stream_rpc_method_handler(
                call, request_deserializer=_raw, response_serializer=_raw
            )

        def stream_stream(
            fn: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]],
        ) -> grpc.RpcMethodHandler[Any, Any]:
            async def call(
                requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[bytes]:
                try:
                    async for item in fn(requests):
                        yield item
                except Abort as exc:
                    await context.abort(exc.code, exc.message)

            return grpc.stream_stream_rpc_method_handler(
                call, request_deserializer=_raw, response_serializer=_raw
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Submit": unary(self.admission.submit),
                "SubmitBatch": unary(self.admission.submit_batch),
                "WaitReceipt": unary(self.streams.wait_receipt),
                "WaitReceipts": stream(self.streams.wait_receipts),
                "WaitReceiptBatches": stream(self.streams.wait_receipt_batches),
                "SubmitStream": stream_stream(self.streams.submit_stream),
                "GetTransaction": read(self.queries.get_transaction),
                "GetAccount": read(self.queries.get_account),
                "GetBalanceProof": read(self.proofs.get_balance_proof),
                "GetBlock": read(self.queries.get_block),
                "GetBlocks": read(self.queries.get_blocks),
                "GetSupply": read(self.queries.get_supply),
                "GetStatus": unary(self.queries.get_status),
                "GetAccountHistory": read(self.history.get_account_history),
                "GetEscrow": read(self.history.get_escrow),
                "ListEscrows": read(self.history.list_escrows),
                "Feed": read_stream(self.history.feed),
            },
        )


def _raw(data: bytes) -> bytes:
    return data
