"""AsyncLedgerClient: the asyncio twin of client.sdk.LedgerClient (grpc.aio).

Same trust model, retry policy (client.policy) and verification; every method is a coroutine
with an explicit deadline. Use it from one event loop; it is not thread-safe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
import grpc.aio

from client.history import (
    FEED_RETRY_S,
    PAGE_MAX,
    EscrowInfo,
    FeedBlock,
    FeedFailover,
    HistoryPage,
    Statement,
    build_statement,
    check_feed_message,
    feed_request,
    history_request,
)
from client.models import (
    AccountInfo,
    BalanceInfo,
    BlockRange,
    Committed,
    NodeStatusInfo,
    NotAuthorized,
    Outcome,
    PendingHere,
    Supply,
    TransactionInfo,
)
from client.policy import (
    CHANNEL_OPTIONS,
    NOT_AUTHORIZED,
    RECEIPT_REPLY_GRACE_S,
    AgreementState,
    QueryState,
    SubmitState,
    Unresponsive,
    rotated,
)
from client.sdk import (
    BLOCKS_PER_CALL,
    SUBMIT_CHUNK,
    check_block,
    check_blocks,
    check_transaction,
    settle_receipts,
)
from client.tx import Transaction, TxBuilder
from client.verify import ReceiptError, VerificationCache, VerifiedBlock, verify_receipt
from ledger import readtoken, tls
from ledger.crypto import SigningKey
from ledger.genesis import Genesis, load_genesis
from ledger.v1 import api_pb2, api_pb2_grpc, tx_pb2

if TYPE_CHECKING:  # the async stub type exists only in the .pyi
    from ledger.v1.api_pb2_grpc import LedgerServiceAsyncStub as Stub

T = TypeVar("T")
CAREFUL_SUBMITS_MAX = 16  # submit_many: one-by-one submits in flight at once


class AsyncLedgerClient:
    """Asynchronous client of a consortium's LedgerService nodes (see LedgerClient; ``reader``
    and each read's ``as_key`` as there)."""

    def __init__(
        self,
        genesis: Genesis | Path | str,
        endpoints: Sequence[str] | None = None,
        *,
        timeout_s: float = 10.0,
        call_timeout_s: float = 2.0,
        receipt_wait_s: float = 3.0,
        reader: SigningKey | None = None,
        insecure: bool = False,
    ) -> None:
        self.genesis = genesis if isinstance(genesis, Genesis) else load_genesis(Path(genesis))
        self.reader = reader
        # TLS, trusting the CAs genesis lists (ledger/tls.py); plaintext only to debug.
        self.insecure = insecure
        if not insecure:
            tls.all_cas(self.genesis)  # TlsError now, naming the member, if genesis lacks one
        self.endpoints: tuple[str, ...] = tuple(endpoints or [m.api_address for m in self.genesis.members])
        if not self.endpoints:
            raise ValueError("no endpoints")
        if min(timeout_s, call_timeout_s, receipt_wait_s) <= 0:
            raise ValueError("timeouts must be positive")
        self.timeout_s = timeout_s
        self.call_timeout_s = call_timeout_s
        self.receipt_wait_s = receipt_wait_s
        self.tx = TxBuilder(self.genesis.chain_id, self.genesis.limits)
        # Receipts of one block share its certificate: verify its signatures once.
        self.verified = VerificationCache(self.genesis)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Stub] = {}
        self._first = 0
        self._unresponsive = Unresponsive()  # nodes that just timed out go last (policy.py)

    def _stub(self, endpoint: str) -> Stub:
        stub = self._stubs.get(endpoint)
        if stub is None:
            channel = tls.aio_channel(self.genesis, endpoint, CHANNEL_OPTIONS, insecure=self.insecure)
            self._channels[endpoint] = channel
            stub = api_pb2_grpc.LedgerServiceStub(channel)
            self._stubs[endpoint] = stub
        return stub

    def _read_md(self, as_key: SigningKey | None, method: str, scope: str) -> tuple[tuple[str, bytes], ...]:
        """Call metadata with a fresh read token by ``as_key`` or the client's reader."""
        return readtoken.metadata(as_key or self.reader, self.genesis.chain_id, method, scope)

    def _order(self) -> list[str]:
        self._first += 1
        return self._unresponsive.last(rotated(self.endpoints, self._first - 1))

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        self._stubs.clear()

    async def __aenter__(self) -> AsyncLedgerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _query(
        self,
        what: str,
        call: Callable[[Stub, float], Awaitable[T]],
        timeout_s: float | None,
        endpoints: Sequence[str] | None = None,
    ) -> tuple[str, T]:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        state = QueryState(what)
        for endpoint in endpoints or self._order():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state.errors.append("deadline passed")
                break
            try:
                answer = await call(self._stub(endpoint), min(remaining, self.call_timeout_s))
                self._unresponsive.answered(endpoint)
                return endpoint, answer
            except ReceiptError as exc:
                self._unresponsive.answered(endpoint)
                state.did_not_verify(endpoint, exc)
            except PendingHere:
                self._unresponsive.answered(endpoint)
                state.pending_at(endpoint)
            except grpc.RpcError as exc:
                self._unresponsive.failed(endpoint, exc)
                state.rpc_failed(endpoint, exc)
        raise state.final_error()

    async def submit(self, tx: Transaction | bytes, *, timeout_s: float | None = None) -> Outcome:
        """Submit and wait for a verified receipt: Committed, Rejected or Indefinite."""
        if isinstance(tx, bytes):
            tx = Transaction.from_envelope(
                self.genesis.chain_id, tx, tx_bytes_max=self.genesis.limits.tx_bytes_max
            )
        envelope = tx.envelope()
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        state = SubmitState(tx.tx_id, len(self.endpoints), self.genesis.f)
        while True:
            for endpoint in self._order():
                if not state.worth_asking(endpoint):
                    continue
                if deadline - time.monotonic() <= 0:
                    break
                committed = await self._submit_to(endpoint, envelope, deadline, state)
                if committed is not None:
                    return committed
                rejected = state.rejected()
                if rejected is not None:
                    return rejected
            remaining = deadline - time.monotonic()
            if remaining <= 0 or state.exhausted():
                return state.indefinite(tx.envelope_bytes())
            await asyncio.sleep(state.next_backoff_s(remaining))  # retry backoff between rounds

    async def _submit_to(
        self, endpoint: str, envelope: tx_pb2.Envelope, deadline: float, state: SubmitState
    ) -> Committed | None:
        stub = self._stub(endpoint)
        remaining = deadline - time.monotonic()
        try:
            await stub.Submit(
                api_pb2.SubmitRequest(envelope=envelope), timeout=min(remaining, self.call_timeout_s)
            )
            self._unresponsive.answered(endpoint)
        except grpc.RpcError as exc:
            self._unresponsive.failed(endpoint, exc)
            if not state.submit_failed(endpoint, exc):
                return None
        wait_s = min(deadline - time.monotonic(), self.receipt_wait_s)
        if wait_s <= 0:
            return None
        try:
            receipt = await stub.WaitReceipt(
                api_pb2.WaitReceiptRequest(tx_id=state.tx_id, timeout_ms=int(wait_s * 1000)),
                timeout=min(wait_s + RECEIPT_REPLY_GRACE_S, max(deadline - time.monotonic(), 0.001)),
            )
        except grpc.RpcError as exc:
            state.wait_failed(endpoint, exc)
            return None
        try:
            verified = verify_receipt(self.genesis, receipt, state.tx_id, self.verified)
        except ReceiptError as exc:
            state.lied(endpoint, exc)
            return None
        committed = Committed(tx_id=state.tx_id, receipt=verified, endpoint=endpoint)
        if not committed.final:
            state.not_final(endpoint, committed)
            return None
        return committed

    async def submit_many(
        self, txs: Sequence[Transaction], *, timeout_s: float | None = None, chunk_size: int = SUBMIT_CHUNK
    ) -> list[Outcome]:
        """Submit many transactions at once; one outcome per transaction, in order (see
        LedgerClient.submit_many: one SubmitStream to one node, else SubmitBatch and
        WaitReceiptBatches per chunk; what that does not settle goes through ``submit``, here
        up to CAREFUL_SUBMITS_MAX at a time)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        size = max(chunk_size, 1)
        chunks = [txs[i : i + size] for i in range(0, len(txs), size)]
        endpoint = self._order()[0]  # one node takes them all
        streamed = await self._submit_streamed(endpoint, chunks, deadline)
        outcomes: dict[bytes, Outcome] = {}
        if streamed is not None:
            outcomes.update(streamed)
        else:
            for chunk in chunks:
                outcomes.update(await self._submit_chunk(endpoint, chunk, deadline))
        unsettled = {tx.tx_id: tx for tx in txs if tx.tx_id not in outcomes}
        room = asyncio.Semaphore(CAREFUL_SUBMITS_MAX)

        async def careful(tx: Transaction) -> tuple[bytes, Outcome]:
            async with room:
                return tx.tx_id, await self.submit(tx, timeout_s=max(deadline - time.monotonic(), 0.001))

        outcomes.update(await asyncio.gather(*(careful(tx) for tx in unsettled.values())))
        return [outcomes[tx.tx_id] for tx in txs]

    async def _submit_streamed(
        self, endpoint: str, chunks: Sequence[Sequence[Transaction]], deadline: float
    ) -> dict[bytes, Committed] | None:
        """The chunks on one SubmitStream to one node: the final receipts that verified. None
        when the node does not serve SubmitStream."""
        wanted = {tx.tx_id for chunk in chunks for tx in chunk}
        settled: dict[bytes, Committed] = {}
        budget = self.receipt_wait_s * 2 + self.call_timeout_s * len(chunks)
        timeout = max(min(deadline - time.monotonic(), budget), 0.001)
        requests = [api_pb2.SubmitBatchRequest(envelopes=[tx.envelope() for tx in chunk]) for chunk in chunks]
        call = self._stub(endpoint).SubmitStream(iter(requests), timeout=timeout)
        answered = False
        try:
            async for reply in call:
                answered = True
                receipts = reply.receipts.receipts  # none in an answer (SubmitBatchResponse)
                if not settle_receipts(self.genesis, self.verified, receipts, wanted, endpoint, settled):
                    call.cancel()
                    return settled  # a lying node: the rest go the careful way
        except grpc.RpcError as exc:
            # A node without SubmitStream answers UNIMPLEMENTED at once; grpc.aio reports that
            # as INTERNAL ("Internal error from Core") when it races the request writes.
            if exc.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL) and not answered:
                return None
            # Whatever is unsettled is retried one by one.
        return settled

    async def _submit_chunk(
        self, endpoint: str, chunk: Sequence[Transaction], deadline: float
    ) -> dict[bytes, Committed]:
        wanted = {tx.tx_id for tx in chunk}
        settled: dict[bytes, Committed] = {}
        stub = self._stub(endpoint)
        remaining = deadline - time.monotonic()
        try:
            resp = await stub.SubmitBatch(
                api_pb2.SubmitBatchRequest(envelopes=[tx.envelope() for tx in chunk]),
                timeout=min(remaining, self.call_timeout_s),
            )
            accepted = [item.tx_id for item in resp.items if item.accepted and item.tx_id in wanted]
            wait_s = min(deadline - time.monotonic(), self.receipt_wait_s * 2)
            if not accepted or wait_s <= 0:
                return settled
            stream = stub.WaitReceiptBatches(
                api_pb2.WaitReceiptsRequest(tx_ids=accepted, timeout_ms=int(wait_s * 1000)),
                timeout=min(wait_s + RECEIPT_REPLY_GRACE_S, max(deadline - time.monotonic(), 0.001)),
            )
            async for batch in stream:
                if not settle_receipts(
                    self.genesis, self.verified, batch.receipts, wanted, endpoint, settled
                ):
                    stream.cancel()
                    return settled  # a lying node: the rest go the careful way
        except grpc.RpcError:
            pass  # whatever is unsettled is retried one by one
        return settled

    async def transaction(
        self, tx_id: bytes, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> TransactionInfo:
        """A committed transaction with its verified receipt (see LedgerClient.transaction)."""

        async def call(stub: Stub, t: float) -> TransactionInfo:
            req = api_pb2.GetTransactionRequest(tx_id=tx_id, include_pending=True)
            md = self._read_md(as_key, "GetTransaction", readtoken.tx_scope(tx_id))
            resp = await stub.GetTransaction(req, timeout=t, metadata=md)
            return check_transaction(self.genesis, tx_id, resp)

        endpoint, info = await self._query("transaction", call, timeout_s)
        return TransactionInfo(Committed(tx_id, info.committed.receipt, endpoint), info.transaction)

    async def account(
        self,
        account_id: str,
        *,
        confirmations: int = 1,
        min_height: int = 0,
        as_key: SigningKey | None = None,
        timeout_s: float | None = None,
    ) -> AccountInfo:
        """An account and its balances as of ``AccountInfo.height``; with ``confirmations`` =
        f+1, only an answer that f+1 nodes gave alike; ``min_height``: a reading no older
        (see LedgerClient.account). NotFound for an unknown account."""

        async def call(stub: Stub, t: float) -> AccountInfo:
            req = api_pb2.GetAccountRequest(account_id=account_id, min_height=min_height)
            md = self._read_md(as_key, "GetAccount", account_id)
            return AccountInfo.from_proto(await stub.GetAccount(req, timeout=t, metadata=md))

        what = f"account {account_id!r}"
        if confirmations <= 1:
            return (await self._query(what, call, timeout_s))[1]
        return await self._agreed(what, call, confirmations, timeout_s)

    async def balances(
        self,
        account_id: str,
        *,
        confirmations: int = 1,
        min_height: int = 0,
        as_key: SigningKey | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, BalanceInfo]:
        """The account's balances by asset."""
        acc = await self.account(
            account_id, confirmations=confirmations, min_height=min_height, as_key=as_key, timeout_s=timeout_s
        )
        return {b.asset: b for b in acc.balances}

    async def _agreed(
        self,
        what: str,
        call: Callable[[Stub, float], Awaitable[T]],
        confirmations: int,
        timeout_s: float | None,
    ) -> T:
        if confirmations > len(self.endpoints):
            raise ValueError(f"{confirmations} confirmations asked of {len(self.endpoints)} endpoints")
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        state: AgreementState[T] = AgreementState(what, confirmations)
        while True:
            for endpoint in self.endpoints:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise state.final_error()
                try:
                    state.answered(
                        endpoint, await call(self._stub(endpoint), min(remaining, self.call_timeout_s))
                    )
                except grpc.RpcError as exc:
                    state.rpc_failed(endpoint, exc)
                agreed = state.agreed()
                if agreed is not None:
                    return agreed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise state.final_error()
            await asyncio.sleep(state.next_backoff_s(remaining))  # nodes at different heights

    async def block(
        self, height: int, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> VerifiedBlock:
        """The certified block at ``height``, verified against the genesis keys (without bodies
        for a reader that is not a member's operator: see LedgerClient.block)."""

        async def call(stub: Stub, t: float) -> VerifiedBlock:
            md = self._read_md(as_key, "GetBlock", readtoken.SCOPE_ALL)
            resp = await stub.GetBlock(api_pb2.GetBlockRequest(height=height), timeout=t, metadata=md)
            return check_block(self.genesis, height, resp)

        return (await self._query(f"block {height}", call, timeout_s))[1]

    async def blocks(
        self,
        from_height: int,
        max_blocks: int = BLOCKS_PER_CALL,
        *,
        as_key: SigningKey | None = None,
        timeout_s: float | None = None,
    ) -> BlockRange:
        """Consecutive verified blocks from ``from_height`` (see LedgerClient.blocks)."""

        async def call(stub: Stub, t: float) -> BlockRange:
            req = api_pb2.GetBlocksRequest(from_height=from_height, max_blocks=max_blocks)
            md = self._read_md(as_key, "GetBlocks", readtoken.SCOPE_ALL)
            return check_blocks(self.genesis, from_height, await stub.GetBlocks(req, timeout=t, metadata=md))

        return (await self._query(f"blocks from {from_height}", call, timeout_s))[1]

    async def supply(
        self, *, min_height: int = 0, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> Supply:
        """Per-asset minted, redeemed and outstanding amounts as of ``Supply.height``
        (node-local read); ``min_height`` as in ``account``."""

        async def call(stub: Stub, t: float) -> api_pb2.GetSupplyResponse:
            md = self._read_md(as_key, "GetSupply", readtoken.SCOPE_ALL)
            return await stub.GetSupply(
                api_pb2.GetSupplyRequest(min_height=min_height), timeout=t, metadata=md
            )

        return Supply.from_proto((await self._query("supply", call, timeout_s))[1])

    async def status(self, endpoint: str | None = None, *, timeout_s: float | None = None) -> NodeStatusInfo:
        """One node's status (the given endpoint, else the first that answers)."""

        async def call(stub: Stub, t: float) -> api_pb2.NodeStatus:
            return await stub.GetStatus(api_pb2.GetStatusRequest(), timeout=t)

        answered, resp = await self._query(
            "status", call, timeout_s, endpoints=[endpoint] if endpoint else None
        )
        return NodeStatusInfo.from_proto(answered, resp)

    # --- history, escrows and the feed (see LedgerClient) -----------------------------------

    async def history(
        self,
        account_id: str,
        *,
        from_ms: int = 0,
        to_ms: int = 0,
        kinds: Sequence[str] = (),
        after: bytes = b"",
        limit: int = 100,
        as_key: SigningKey | None = None,
        timeout_s: float | None = None,
    ) -> HistoryPage:
        """One page of the account's entries (see LedgerClient.history)."""
        req = history_request(account_id, from_ms, to_ms, tuple(kinds), after, limit)

        async def call(stub: Stub, t: float) -> api_pb2.GetAccountHistoryResponse:
            md = self._read_md(as_key, "GetAccountHistory", account_id)
            return await stub.GetAccountHistory(req, timeout=t, metadata=md)

        return HistoryPage.from_proto((await self._query(f"history of {account_id!r}", call, timeout_s))[1])

    async def statement(
        self,
        account_id: str,
        from_ms: int,
        to_ms: int,
        *,
        as_key: SigningKey | None = None,
        timeout_s: float | None = None,
    ) -> Statement:
        """Opening and closing balance per asset, reconciled (see LedgerClient.statement)."""
        pages: list[HistoryPage] = []
        after = b""
        while True:
            page = await self.history(
                account_id,
                from_ms=from_ms,
                to_ms=to_ms,
                after=after,
                limit=PAGE_MAX,
                as_key=as_key,
                timeout_s=timeout_s,
            )
            pages.append(page)
            after = page.next_cursor
            if not after:
                return build_statement(account_id, from_ms, to_ms, pages[0].opening, pages)

    async def escrow(
        self, escrow_id: str, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> EscrowInfo:
        async def call(stub: Stub, t: float) -> api_pb2.Escrow:
            md = self._read_md(as_key, "GetEscrow", escrow_id)
            return await stub.GetEscrow(api_pb2.GetEscrowRequest(escrow_id=escrow_id), timeout=t, metadata=md)

        return EscrowInfo.from_proto((await self._query(f"escrow {escrow_id!r}", call, timeout_s))[1])

    async def escrows(
        self, account_id: str, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> list[EscrowInfo]:
        out: list[EscrowInfo] = []
        after = ""
        while True:
            req = api_pb2.ListEscrowsRequest(account_id=account_id, after=after, limit=PAGE_MAX)

            async def call(
                stub: Stub, t: float, req: api_pb2.ListEscrowsRequest = req
            ) -> api_pb2.ListEscrowsResponse:
                return await stub.ListEscrows(
                    req, timeout=t, metadata=self._read_md(as_key, "ListEscrows", account_id)
                )

            resp = (await self._query(f"escrows of {account_id!r}", call, timeout_s))[1]
            out += [EscrowInfo.from_proto(e) for e in resp.escrows]
            after = resp.next_after
            if not after:
                return out

    async def feed(
        self,
        from_height: int = 1,
        *,
        accounts: Sequence[str] = (),
        assets: Sequence[str] = (),
        banks: Sequence[str] = (),
        as_key: SigningKey | None = None,
    ) -> AsyncGenerator[FeedBlock, None]:
        """Verified committed blocks from ``from_height``, following the head, with failover
        (see LedgerClient.feed)."""
        next_height = from_height
        failover = FeedFailover(len(self.endpoints))
        while True:
            for endpoint in self._order():
                req = feed_request(next_height, tuple(accounts), tuple(assets), tuple(banks))
                call = self._stub(endpoint).Feed(
                    req, metadata=self._read_md(as_key, "Feed", readtoken.SCOPE_ALL)
                )
                error: Exception | None = None
                try:
                    async for msg in call:
                        fb = check_feed_message(self.genesis, next_height, msg)
                        failover.progressed()
                        next_height = max(next_height, fb.height + 1)
                        yield fb
                except (grpc.RpcError, ReceiptError) as exc:
                    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in NOT_AUTHORIZED:
                        raise NotAuthorized(f"feed: {endpoint} refused the read: {exc.details()}") from exc
                    error = exc
                finally:
                    call.cancel()
                failover.failed(endpoint, error)
            await asyncio.sleep(FEED_RETRY_S)  # every node failed this round
