"""LedgerService: the client API of a bank's node.

Requests arrive as raw bytes and are parsed here, so garbage gets INVALID_ARGUMENT with a
message instead of gRPC's generic deserialization failure. Status codes (the SDK relies on them):

  INVALID_ARGUMENT     not parseable, malformed field, amount out of range, limit exceeded,
                       too many envelopes/ids in one call, bad tx_id/height/account id format
  FAILED_PRECONDITION  wrong chain id; GetAccount/GetSupply: the node is below the request's
                       min_height and did not reach it within MIN_HEIGHT_WAIT_S
  UNAUTHENTICATED      no signature at all, one that does not verify, or no signer is a key
                       the ledger knows (node/admission.py); whether every *required* signer
                       signed depends on state, so execution decides that: the receipt then
                       carries result code MISSING_SIGNATURE, not recorded
  NOT_FOUND            unknown transaction, account or block. GetTransaction: also a transaction
                       this node holds but has not executed (pending), unless the request sets
                       include_pending: then it answers OK with status TX_STATUS_PENDING and
                       no receipt. Older clients, which do not set it, see what they always saw.
  RESOURCE_EXHAUSTED   past pending_requests_max (retry later), or the node is near its disk
                       budget (limits.disk_budget_bytes, disk_reserve_bytes); also gRPC's own
                       answer to a message over message_bytes_max
  DEADLINE_EXCEEDED    WaitReceipt: not committed and attested within the timeout
Reads of current state (GetAccount, GetSupply) carry the height they were read at, in the same
read transaction as the state. GetBlocks serves a range of blocks, each as GetBlock does, bounded
in count and bytes; its reply names the next height to ask for and the node's last height.
Unknown accounts in a transfer are a stateful outcome: the transaction commits with result code
UNKNOWN_ACCOUNT in its receipt (only execution knows the state in its sequence position); it is
recorded as final only when the accounts that must sign exist (node/app/rules.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from ledger.crypto import tx_id_of
from ledger.genesis import Genesis
from ledger.v1 import api_pb2, consensus_pb2, tx_pb2
from node import feed, history
from node.admission import KnownKeys
from node.app.codec import envelope_tx_id
from node.app.ledger import Ledger
from node.app.tx import Code, InvalidTransaction
from node.app.validate import CheckCache
from node.config import NodeLimits
from node.driver import Driver
from node.log import EventLog
from node.receipts import (
    AttestationBackfill,
    ProofCache,
    ReceiptReader,
    block_reply,
    build_receipt,
    field_bytes,
    field_varint,
    receipt_batches,
)
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


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# A ReceiptBatch message stays under this (clients' default receive limit is 4 MiB).
RECEIPT_BATCH_BYTES_MAX = 2 << 20
STREAM_ANSWERS_MAX = 16  # SubmitStream: answers held for a client that is not reading
# GetBlocks: blocks per reply, and its size (as a ReceiptBatch's: under clients' default 4 MiB).
BLOCKS_PER_REPLY_MAX = 512
BLOCKS_REPLY_BYTES_MAX = 2 << 20
GET_BLOCKS_BLOCKS, GET_BLOCKS_NEXT_HEIGHT, GET_BLOCKS_LAST_HEIGHT = 1, 2, 3  # GetBlocksResponse
# A read with min_height waits this long at most for the node to reach it.
MIN_HEIGHT_WAIT_S = 3.0


def _is_final(r: KVReader, tx_id: bytes) -> bool:
    found = blocks.find_tx(r, tx_id)
    return found is not None and found.recorded


def _parse(cls: type[M], raw: bytes) -> M:
    try:
        return cls.FromString(raw)
    except Exception as exc:  # DecodeError and friends
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a {cls.__name__}") from exc


class LedgerApi:
    def __init__(
        self,
        genesis: Genesis,
        member_id: str,
        replica_id: int,
        limits: NodeLimits,
        driver: Driver,
        ledger: Ledger,
        replica_status: Callable[[], dict[str, int]],
        log: EventLog,
        backfill: AttestationBackfill,
        checks: CheckCache,
        space_left: Callable[[], str | None] = lambda: None,
        space: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.genesis = genesis
        self.member_id = member_id
        self.replica_id = replica_id
        self.limits = limits
        self.driver = driver
        self.ledger = ledger
        self.replica_status = replica_status
        self.log = log
        self._proofs = ProofCache()
        self.backfill = backfill
        self.checks = checks
        self.known_keys = KnownKeys(genesis)
        # Why the store cannot take new work now (near its disk budget), or None; and its
        # figures for GetStatus.
        self.space_left = space_left
        self.space = space
        self.min_height_wait_s = MIN_HEIGHT_WAIT_S

    # --- submit -------------------------------------------------------------------------

    def _admit(self, r: KVReader, raw: bytes) -> bytes:
        """Admit one serialized envelope (r: a read transaction for the finality check)."""
        full = self.space_left()
        if full is not None:
            self.log.count("rejected_disk_budget")
            raise _Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"node is near its disk budget ({full}); it executes what was ordered but takes no new work",
            )
        try:
            checked = self.checks.check(raw, self.known_keys.predicate(r))
        except InvalidTransaction as exc:
            self.log.count(f"rejected_{exc.code.name}")
            raise _Abort(status_of(exc.code), str(exc)) from exc
        if _is_final(r, checked.tx_id):
            return checked.tx_id  # already final: a retry is answered, not re-proposed
        if not self.driver.submit(checked.tx_id, raw):
            self.log.count("rejected_pending_full")
            raise _Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"node has {self.limits.pending_requests_max} pending transactions (pending_requests_max); retry later",
            )
        self.checks.keep(checked)
        self.known_keys.admitted(checked)
        return checked.tx_id

    def admit_forwarded(self, envelopes: list[bytes]) -> list[tuple[bytes, bytes]]:
        """(tx_id, envelope) of the envelopes a peer relayed that pass admission. The driver
        calls it in the relaying connection's turn (Driver.on_forward). The same checks as a
        client's, but a
        failure is a peer's bad input: dropped and counted, never answered. Ones already
        final here are dropped too: after a restart the replica no longer remembers what it
        executed, and would hold them as pending forever (and time out into a view change).
        Those, and exact copies of what the replica already holds, are dropped before the
        (costly) signature check: under load most relayed copies arrive after the primary's
        pre-prepare did. Other bytes under a held tx_id still go on: a stranger's copy with
        some signatures stripped must not keep the genuine one from every replica."""
        held = self.driver.replica.pending
        envelopes = [e for e in map(_canonical_envelope, envelopes) if e is not None]
        ids = [envelope_tx_id(raw) for raw in envelopes]
        checked: list[tuple[bytes, bytes]] = []
        with self.driver.store.read() as r:
            final = {tx_id for tx_id in ids if tx_id not in held and _is_final(r, tx_id)}
            known = self.known_keys.predicate(r)
            for raw, tx_id in zip(envelopes, ids, strict=True):
                if held.get(tx_id) == raw:
                    self.log.count("peer_forward_already_pending")
                    continue
                if tx_id in final:
                    self.log.count("peer_forward_already_final")
                    continue
                try:
                    tx = self.checks.check(raw, known)
                except InvalidTransaction:
                    self.log.count("peer_forward_invalid")
                    continue
                self.checks.keep(tx)
                self.known_keys.admitted(tx)
                checked.append((tx.tx_id, raw))
        return checked

    async def submit(self, raw: bytes) -> bytes:
        req = _parse(api_pb2.SubmitRequest, raw)
        if not req.HasField("envelope"):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "envelope is required")
        with self.driver.store.read() as r:
            tx_id = self._admit(r, req.envelope.SerializeToString())
        return api_pb2.SubmitResponse(tx_id=tx_id).SerializeToString()

    async def submit_batch(self, raw: bytes) -> bytes:
        reply, _ = self._submit_batch(_parse(api_pb2.SubmitBatchRequest, raw), room=None)
        return reply

    def _submit_batch(self, req: api_pb2.SubmitBatchRequest, room: int | None) -> tuple[bytes, list[bytes]]:
        """(serialized SubmitBatchResponse, tx_ids accepted). ``room``: how many may be
        accepted (SubmitStream's cap on its waiting transactions); the rest are refused."""
        if len(req.envelopes) > self.limits.submit_batch_max:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(req.envelopes)} envelopes; at most {self.limits.submit_batch_max} (submit_batch_max)",
            )
        out = api_pb2.SubmitBatchResponse()
        accepted: list[bytes] = []
        with self.driver.store.read() as r:  # one read transaction for the batch's finality checks
            for envelope in req.envelopes:
                item = out.items.add()
                item.tx_id = tx_id_of(envelope.body)
                try:
                    if room is not None and len(accepted) >= room:
                        raise _Abort(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"{self.limits.pending_requests_max} transactions of this stream wait for "
                            "receipts (pending_requests_max); retry later",
                        )
                    accepted.append(self._admit(r, envelope.SerializeToString()))
                    item.accepted = True
                except _Abort as exc:
                    item.accepted = False
                    item.error = exc.message
                    item.status_code = exc.code.value[0]
        return out.SerializeToString(), accepted

    async def submit_stream(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """SubmitStream: answer each request in order, and stream the accepted transactions'
        receipts as they become ready, until the client half-closes and none is waiting."""
        loop = asyncio.get_running_loop()
        wait_s = self.limits.receipt_wait_ms_max / 1000
        waits = _ReceiptWaits(self)
        # Answers not yet sent. Bounded: a client that sends without reading stalls its own
        # requests (gRPC flow control) instead of growing this.
        replies: asyncio.Queue[bytes] = asyncio.Queue(STREAM_ANSWERS_MAX)

        async def read() -> None:
            try:
                async for raw in requests:
                    req = _parse(api_pb2.SubmitBatchRequest, raw)
                    room = max(0, self.limits.pending_requests_max - waits.waiting)
                    reply, accepted = self._submit_batch(req, room)
                    await replies.put(submitted_reply(reply))
                    waits.add(accepted, loop.time() + wait_s)  # after its answer: receipts follow it
                    waits.wake.set()
            finally:
                waits.wake.set()

        reader = asyncio.ensure_future(read())
        try:
            while True:
                waits.wake.clear()
                while not replies.empty():
                    yield replies.get_nowait()
                receipts = waits.take_ready()
                if receipts:
                    for message in receipt_batches(receipts, RECEIPT_BATCH_BYTES_MAX):
                        yield receipts_reply(message)
                waits.expire(loop.time())
                if reader.done():
                    reader.result()  # a bad request ends the stream with its status
                    if not waits.waiting and replies.empty():
                        return
                if not replies.empty() or waits.has_ready:
                    continue
                deadline = waits.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waits.wake.wait(), timeout)
        finally:
            reader.cancel()
            waits.close()

    # --- receipts -----------------------------------------------------------------------

    async def _backfill(self, tx_ids: list[bytes]) -> None:
        """Fetch the attestations of executed blocks that will probably never get them here
        (replayed in catch-up, or well behind the head): once per block, not per transaction."""
        heights: set[int] = set()
        with self.driver.store.read() as r:
            for tx_id in tx_ids:
                found = blocks.find_tx(r, tx_id)
                if (
                    found is not None
                    and found.height not in heights
                    and not blocks.get_attestations(r, found.height)
                    and self.driver.unlikely_to_be_attested(found.height)
                ):
                    heights.add(found.height)
        for height in sorted(heights):
            if await self.backfill.fill(height):
                self.driver.wake_waiters(height)

    def _tx_id(self, raw: bytes) -> bytes:
        if len(raw) != TX_ID_BYTES:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"tx_id must be {TX_ID_BYTES} bytes, got {len(raw)}"
            )
        return raw

    def _timeout_s(self, timeout_ms: int) -> float:
        cap = self.limits.receipt_wait_ms_max
        return (min(timeout_ms, cap) if timeout_ms else cap) / 1000

    async def wait_receipt(self, raw: bytes) -> bytes:
        req = _parse(api_pb2.WaitReceiptRequest, raw)
        tx_id = self._tx_id(req.tx_id)
        timeout_s = self._timeout_s(req.timeout_ms)
        async with contextlib.aclosing(self._ready_receipts([tx_id], timeout_s)) as batches:
            async for (receipt,) in batches:
                return receipt
        raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"not committed and attested within {timeout_s:.3f}s")

    def _receipts_request(self, raw: bytes) -> AsyncIterator[list[bytes]]:
        req = _parse(api_pb2.WaitReceiptsRequest, raw)
        if len(req.tx_ids) > self.limits.submit_batch_max:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {self.limits.submit_batch_max} tx_ids")
        tx_ids = list(dict.fromkeys(self._tx_id(t) for t in req.tx_ids))
        return self._ready_receipts(tx_ids, self._timeout_s(req.timeout_ms))

    async def wait_receipts(self, raw: bytes) -> AsyncIterator[bytes]:
        async for batch in self._receipts_request(raw):
            for receipt in batch:
                yield receipt

    async def wait_receipt_batches(self, raw: bytes) -> AsyncIterator[bytes]:
        async for batch in self._receipts_request(raw):
            # Split so that no message passes the client's receive limit (message_bytes_max).
            for message in receipt_batches(batch, RECEIPT_BATCH_BYTES_MAX):
                yield message

    async def _ready_receipts(
        self, tx_ids: list[bytes], timeout_s: float
    ) -> AsyncGenerator[list[bytes], None]:
        """Serialized receipts of distinct tx_ids, in batches as their blocks are attested,
        until all are sent or timeout_s passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        waits = _ReceiptWaits(self)
        waits.add(tx_ids, deadline)
        try:
            while waits.waiting:
                waits.wake.clear()
                receipts = waits.take_ready()
                if receipts:
                    yield receipts
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(waits.wake.wait(), remaining)
                except TimeoutError:
                    break
        finally:
            waits.close()

    # --- queries ------------------------------------------------------------------------

    def _holds(self, tx_id: bytes) -> bool:
        """This node holds tx_id unexecuted: admitted here (until pending_ttl_ms), or held by
        its replica (from a client or a peer's relay) until it executes."""
        return tx_id in self.driver.pending or tx_id in self.driver.replica.pending

    async def get_transaction(self, raw: bytes) -> bytes:
        req = _parse(api_pb2.GetTransactionRequest, raw)
        tx_id = self._tx_id(req.tx_id)
        with self.driver.store.read() as r:
            receipt = build_receipt(r, self._proofs, tx_id, require_attested=False)
        if (
            receipt is not None
            and not receipt.attestations
            and self.driver.unlikely_to_be_attested(receipt.result.height)
        ):
            await self.backfill.fill(receipt.result.height)
        with self.driver.store.read() as r:
            receipt = build_receipt(r, self._proofs, tx_id, require_attested=False)
            if receipt is None:
                if not self._holds(tx_id):
                    raise _Abort(
                        grpc.StatusCode.NOT_FOUND, f"transaction {tx_id.hex()} is not committed here"
                    )
                if req.include_pending:
                    return api_pb2.GetTransactionResponse(
                        status=api_pb2.TX_STATUS_PENDING
                    ).SerializeToString()
                raise _Abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"transaction {tx_id.hex()} is not committed here (pending: admitted, not executed yet)",
                )
            found = blocks.find_tx(r, tx_id)
            assert found is not None
            block_raw = blocks.get_block(r, found.height)
        assert block_raw is not None
        block = consensus_pb2.CertifiedBlock.FromString(block_raw)
        out = api_pb2.GetTransactionResponse(
            receipt=receipt,
            envelope=tx_pb2.Envelope.FromString(block.batch.envelopes[found.index]),
            status=api_pb2.TX_STATUS_COMMITTED,
        )
        return out.SerializeToString()

    async def _reach(self, min_height: int) -> None:
        """Return once this node has executed min_height, waiting at most MIN_HEIGHT_WAIT_S
        (a read asking for a state no older than that height)."""
        if min_height and not await self.driver.wait_height(min_height, self.min_height_wait_s):
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node is at height {self.driver.head.last_executed} < min_height {min_height} "
                f"(waited {self.min_height_wait_s:g}s)",
            )

    async def get_account(self, raw: bytes) -> bytes:
        req = _parse(api_pb2.GetAccountRequest, raw)
        account_id = req.account_id
        if not account_id or len(account_id.encode()) > self.genesis.limits.id_bytes_max:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"account_id must be 1..{self.genesis.limits.id_bytes_max} bytes",
            )
        await self._reach(req.min_height)
        with self.driver.store.read() as r:  # the account and its height: one snapshot
            acct = self.ledger.account(r, account_id)
            height = self.ledger.last_height(r)
        if acct is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"no account {account_id!r} at height {height}")
        out = api_pb2.Account(
            account_id=acct.account_id,
            member_id=acct.member_id,
            owner_key=acct.owner_key,
            frozen=acct.frozen,
            height=height,
        )
        for b in acct.balances:
            out.balances.add(asset=b.asset, available=b.available, held=b.held)
        return out.SerializeToString()

    async def get_block(self, raw: bytes) -> bytes:
        req = _parse(api_pb2.GetBlockRequest, raw)
        with self.driver.store.read() as r:
            reply = block_reply(r, req.height, self.genesis.f + 1)
        if reply is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"no block at height {req.height} here")
        return reply

    async def get_blocks(self, raw: bytes) -> bytes:
        """GetBlocks: consecutive blocks from from_height, at most max_blocks (capped at
        BLOCKS_PER_REPLY_MAX) and BLOCKS_REPLY_BYTES_MAX bytes (a single larger block goes
        alone), read in one read transaction."""
        req = _parse(api_pb2.GetBlocksRequest, raw)
        if req.from_height < 1:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "from_height must be >= 1 (blocks start at 1)")
        if req.max_blocks < 1:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "max_blocks must be >= 1")
        count_max = min(req.max_blocks, BLOCKS_PER_REPLY_MAX)
        parts: list[bytes] = []
        size = 0
        height = req.from_height
        with self.driver.store.read() as r:
            last = self.ledger.last_height(r)
            while height <= last and len(parts) < count_max:
                block = block_reply(r, height, self.genesis.f + 1)
                assert block is not None, f"executed block {height} missing from the store"
                entry = field_bytes(GET_BLOCKS_BLOCKS, block)
                if parts and size + len(entry) > BLOCKS_REPLY_BYTES_MAX:
                    break
                parts.append(entry)
                size += len(entry)
                height += 1
        parts.append(field_varint(GET_BLOCKS_NEXT_HEIGHT, height))
        parts.append(field_varint(GET_BLOCKS_LAST_HEIGHT, last))
        return b"".join(parts)

    async def get_supply(self, raw: bytes) -> bytes:
        req = _parse(api_pb2.GetSupplyRequest, raw)
        await self._reach(req.min_height)
        with self.driver.store.read() as r:
            supply = self.ledger.supply(r)
            height = self.ledger.last_height(r)
        out = api_pb2.GetSupplyResponse(height=height)
        for a in supply:
            out.assets.add(
                asset=a.asset,
                issuer=a.issuer,
                scale=a.scale,
                minted=a.minted,
                redeemed=a.redeemed,
                outstanding=a.outstanding,
            )
        return out.SerializeToString()

    async def get_status(self, raw: bytes) -> bytes:
        _parse(api_pb2.GetStatusRequest, raw)
        head = self.driver.head
        rs = self.replica_status()
        view = rs.get("view", 0)
        out = api_pb2.NodeStatus(
            member_id=self.member_id,
            replica=self.replica_id,
            view=view,
            primary=view % self.genesis.n,
            in_view_change=bool(rs.get("in_view_change", 0)),
            last_executed=head.last_executed,
            stable_checkpoint=rs.get("stable_checkpoint", 0),
            state_root=head.state_root,
            pending_requests=len(self.driver.pending),
            chain_id=self.genesis.chain_id,
            last_block_hash=head.last_block_hash,
        )
        for m in self.genesis.members:
            if m.replica != self.replica_id:
                out.peers.add(
                    replica=m.replica, member_id=m.member_id, up=self.driver.transport.is_up(m.replica)
                )
        for name, value in self.log.counters.items():
            out.counters[name] = value
        for name, value in rs.items():
            if name.startswith("replica_"):
                out.counters[name] = value
        for name, value in self.space().items():
            out.counters[name] = value
        for name, value in (
            ("executed_blocks", self.driver.stats.executed_blocks),
            ("executed_txs", self.driver.stats.executed_txs),
            ("fetched_blocks", self.driver.stats.fetched_blocks),
        ):
            out.counters[name] = value
        return out.SerializeToString()

    # --- history, escrows and the feed (node/history.py, node/feed.py) -----------------

    def _history_query(self, query: Callable[[Genesis, KVReader, bytes], bytes], raw: bytes) -> bytes:
        try:
            with self.driver.store.read() as r:
                return query(self.genesis, r, raw)
        except history.QueryError as exc:
            raise _Abort(exc.code, exc.message) from exc

    async def get_account_history(self, raw: bytes) -> bytes:
        return self._history_query(history.account_history, raw)

    async def get_escrow(self, raw: bytes) -> bytes:
        return self._history_query(history.get_escrow, raw)

    async def list_escrows(self, raw: bytes) -> bytes:
        return self._history_query(history.list_escrows, raw)

    async def feed(self, raw: bytes) -> AsyncIterator[bytes]:
        try:
            async for message in feed.feed(self.genesis, self.driver, self.backfill, raw):
                yield message
        except history.QueryError as exc:
            raise _Abort(exc.code, exc.message) from exc

    # --- registration -------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        def unary(fn: Callable[[bytes], Any]) -> grpc.RpcMethodHandler[Any, Any]:
            async def call(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
                try:
                    result: bytes = await fn(raw)
                    return result
                except _Abort as exc:
                    await context.abort(exc.code, exc.message)
                    raise AssertionError("unreachable") from None

            return grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=_raw, response_serializer=_raw
            )

        def stream(fn: Callable[[bytes], AsyncIterator[bytes]]) -> grpc.RpcMethodHandler[Any, Any]:
            async def call(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
                try:
                    async for item in fn(raw):
                        yield item
                except _Abort as exc:
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
                except _Abort as exc:
                    await context.abort(exc.code, exc.message)

            return grpc.stream_stream_rpc_method_handler(
                call, request_deserializer=_raw, response_serializer=_raw
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Submit": unary(self.submit),
                "SubmitBatch": unary(self.submit_batch),
                "WaitReceipt": unary(self.wait_receipt),
                "WaitReceipts": stream(self.wait_receipts),
                "WaitReceiptBatches": stream(self.wait_receipt_batches),
                "SubmitStream": stream_stream(self.submit_stream),
                "GetTransaction": unary(self.get_transaction),
                "GetAccount": unary(self.get_account),
                "GetBlock": unary(self.get_block),
                "GetBlocks": unary(self.get_blocks),
                "GetSupply": unary(self.get_supply),
                "GetStatus": unary(self.get_status),
                "GetAccountHistory": unary(self.get_account_history),
                "GetEscrow": unary(self.get_escrow),
                "ListEscrows": unary(self.list_escrows),
                "Feed": stream(self.feed),
            },
        )


def _raw(data: bytes) -> bytes:
    return data


def _canonical_envelope(raw: bytes) -> bytes | None:
    """A relayed envelope as a client's is admitted: re-encoded once (field order, unknown
    fields), so two encodings of one copy are one request. None when it does not parse."""
    try:
        return tx_pb2.Envelope.FromString(raw).SerializeToString()
    except Exception:  # DecodeError and friends: a peer's garbage
        return None


def submitted_reply(response: bytes) -> bytes:
    """A serialized SubmitStreamReply holding a serialized SubmitBatchResponse."""
    return field_bytes(1, response)


def receipts_reply(receipt_batch: bytes) -> bytes:
    """A serialized SubmitStreamReply holding a serialized ReceiptBatch."""
    return field_bytes(2, receipt_batch)


class _ReceiptWaits:
    """The receipt waits of one call: tx_ids are added (all at once, or over a stream's life),
    each with a deadline; a driver future per tx_id reports it here once its block is
    attested, and take_ready() reads the receipts of all reported so far in one read
    transaction (usually a block's worth)."""

    def __init__(self, api: LedgerApi) -> None:
        self.api = api
        self.driver = api.driver
        self.wake = asyncio.Event()
        self._futures: dict[bytes, asyncio.Future[int]] = {}
        self._deadlines: dict[bytes, float] = {}  # in deadline order: added with a fixed wait
        self._ready: list[bytes] = []
        self._backfills: set[asyncio.Future[None]] = set()

    @property
    def waiting(self) -> int:
        return len(self._futures)

    @property
    def has_ready(self) -> bool:
        return bool(self._ready)

    def next_deadline(self) -> float | None:
        return next(iter(self._deadlines.values()), None)

    def _report(self, tx_id: bytes, fut: asyncio.Future[int]) -> None:
        if not fut.cancelled() and self._futures.get(tx_id) is fut:
            self._ready.append(tx_id)
            self.wake.set()

    def _watch(self, futures: dict[bytes, asyncio.Future[int]]) -> None:
        for tx_id, fut in futures.items():
            self._futures[tx_id] = fut
            fut.add_done_callback(functools.partial(self._report, tx_id))

    def add(self, tx_ids: list[bytes], deadline: float) -> None:
        fresh = [t for t in dict.fromkeys(tx_ids) if t not in self._futures]
        if not fresh:
            return
        futures = self.driver.receipt_waiters(fresh)
        self._watch(futures)
        for tx_id in fresh:
            self._deadlines[tx_id] = deadline
        # Executed here but not attested yet: maybe never (catch-up), so ask peers. A pending
        # transaction has not executed; its block's attestations will come the usual way.
        pending = self.driver.pending
        stragglers = [t for t, f in futures.items() if not f.done() and t not in pending]
        if stragglers:
            task = asyncio.ensure_future(self.api._backfill(stragglers))
            self._backfills.add(task)
            task.add_done_callback(self._backfills.discard)

    def take_ready(self) -> list[bytes]:
        """Serialized receipts of the transactions reported since the last call."""
        batch, self._ready = self._ready, []
        if not batch:
            return []
        with self.driver.store.read() as r:
            reader = ReceiptReader(r, self.api._proofs)
            receipts = [reader.receipt(t, require_attested=True) for t in batch]
        out: list[bytes] = []
        late: list[bytes] = []
        delivered: dict[bytes, asyncio.Future[int]] = {}
        for tx_id, receipt in zip(batch, receipts, strict=True):
            if receipt is None:
                if tx_id in self._futures:  # else it expired meanwhile
                    late.append(tx_id)
            else:
                out.append(receipt)
                fut = self._futures.pop(tx_id, None)
                if fut is not None:
                    delivered[tx_id] = fut
                self._deadlines.pop(tx_id, None)
        self.driver.drop_waiters(delivered)
        if late:
            # Woken for an unrecorded variant whose recorded copy executed since, in a block
            # not attested yet: wait again, for that block.
            self.driver.drop_waiters({t: self._futures[t] for t in late})
            self._watch(self.driver.receipt_waiters(late))
        return out

    def expire(self, now: float) -> None:
        """Stop waiting for the transactions whose deadline has passed."""
        expired: dict[bytes, asyncio.Future[int]] = {}
        for tx_id, deadline in self._deadlines.items():
            if deadline > now:
                break
            expired[tx_id] = self._futures.pop(tx_id)
        for tx_id in expired:
            del self._deadlines[tx_id]
        self.driver.drop_waiters(expired)

    def close(self) -> None:
        for task in list(self._backfills):
            task.cancel()
        self.driver.drop_waiters(self._futures)
        self._futures.clear()
        self._deadlines.clear()
