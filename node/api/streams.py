"""Receipts: WaitReceipt(s), WaitReceiptBatches and SubmitStream (submissions in, receipts out
on one stream), served as blocks are attested on this node."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator

import grpc

from ledger.v1 import api_pb2
from node.api.admission import Admission
from node.api.common import Abort, checked_tx_id, parse
from node.api.port import NodePort
from node.config import NodeLimits
from node.receipts import AttestationBackfill, ProofCache, ReceiptReader, field_bytes, receipt_batches
from node.storage import blocks

# A ReceiptBatch message stays under this (clients' default receive limit is 4 MiB).
RECEIPT_BATCH_BYTES_MAX = 2 << 20
STREAM_ANSWERS_MAX = 16  # SubmitStream: answers held for a client that is not reading


def submitted_reply(response: bytes) -> bytes:
    """A serialized SubmitStreamReply holding a serialized SubmitBatchResponse."""
    return field_bytes(1, response)


def receipts_reply(receipt_batch: bytes) -> bytes:
    """A serialized SubmitStreamReply holding a serialized ReceiptBatch."""
    return field_bytes(2, receipt_batch)


class Receipts:
    def __init__(
        self,
        limits: NodeLimits,
        node: NodePort,
        admission: Admission,
        backfill: AttestationBackfill,
        proofs: ProofCache,
    ) -> None:
        self.limits = limits
        self.node = node
        self.admission = admission
        self.backfill = backfill
        self.proofs = proofs

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
                    req = parse(api_pb2.SubmitBatchRequest, raw)
                    room = max(0, self.limits.pending_requests_max - waits.waiting)
                    reply, accepted = self.admission.batch(req, room)
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

    async def backfill_blocks_of(self, tx_ids: list[bytes]) -> None:
        """Fetch the attestations of executed blocks that will probably never get them here
        (replayed in catch-up, or well behind the head): once per block, not per transaction."""
        heights: set[int] = set()
        with self.node.read() as r:
            for tx_id in tx_ids:
                found = blocks.find_tx(r, tx_id)
                if (
                    found is not None
                    and found.height not in heights
                    and not blocks.get_attestations(r, found.height)
                    and self.node.unlikely_to_be_attested(found.height)
                ):
                    heights.add(found.height)
        for height in sorted(heights):
            if await self.backfill.fill(height):
                self.node.wake_waiters(height)

    def _timeout_s(self, timeout_ms: int) -> float:
        cap = self.limits.receipt_wait_ms_max
        return (min(timeout_ms, cap) if timeout_ms else cap) / 1000

    async def wait_receipt(self, raw: bytes) -> bytes:
        req = parse(api_pb2.WaitReceiptRequest, raw)
        tx_id = checked_tx_id(req.tx_id)
        timeout_s = self._timeout_s(req.timeout_ms)
        async with contextlib.aclosing(self._ready_receipts([tx_id], timeout_s)) as batches:
            async for (receipt,) in batches:
                return receipt
        raise Abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"not committed and attested within {timeout_s:.3f}s")

    def _receipts_request(self, raw: bytes) -> AsyncIterator[list[bytes]]:
        req = parse(api_pb2.WaitReceiptsRequest, raw)
        if len(req.tx_ids) > self.limits.submit_batch_max:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {self.limits.submit_batch_max} tx_ids")
        tx_ids = list(dict.fromkeys(checked_tx_id(t) for t in req.tx_ids))
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


class _ReceiptWaits:
    """The receipt waits of one call: tx_ids are added (all at once, or over a stream's life),
    each with a deadline; a driver future per tx_id reports it here once its block is
    attested, and take_ready() reads the receipts of all reported so far in one read
    transaction (usually a block's worth)."""

    def __init__(self, streams: Receipts) -> None:
        self.streams = streams
        self.node = streams.node
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
        futures = self.node.receipt_waiters(fresh)
        self._watch(futures)
        for tx_id in fresh:
            self._deadlines[tx_id] = deadline
        # Executed here but not attested yet: maybe never (catch-up), so ask peers. A pending
        # transaction has not executed; its block's attestations will come the usual way.
        stragglers = [t for t, f in futures.items() if not f.done() and not self.node.holds(t)]
        if stragglers:
            task = asyncio.ensure_future(self.streams.backfill_blocks_of(stragglers))
            self._backfills.add(task)
            task.add_done_callback(self._backfills.discard)

    def take_ready(self) -> list[bytes]:
        """Serialized receipts of the transactions reported since the last call."""
        batch, self._ready = self._ready, []
        if not batch:
            return []
        with self.node.read() as r:
            reader = ReceiptReader(r, self.streams.proofs)
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
        self.node.drop_waiters(delivered)
        if late:
            # Woken for an unrecorded variant whose recorded copy executed since, in a block
            # not attested yet: wait again, for that block.
            self.node.drop_waiters({t: self._futures[t] for t in late})
            self._watch(self.node.receipt_waiters(late))
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
        self.node.drop_waiters(expired)

    def close(self) -> None:
        for task in list(self._backfills):
            task.cancel()
        self.node.drop_waiters(self._futures)
        self._futures.clear()
        self._deadlines.clear()
