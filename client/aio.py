"""AsyncLedgerClient: the asyncio twin of client.sdk.LedgerClient (grpc.aio).

Same trust model, retry policy, verification and decisions (client/core.py): this class only
carries out the core's effects with grpc.aio, and runs submit_many's one-by-one submits
concurrently. Every method is a coroutine with an explicit deadline. Use it from one event
loop; it is not thread-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio

from client import core
from client.core import BLOCKS_PER_CALL, SUBMIT_CHUNK, Op
from client.history import EscrowInfo, FeedBlock, HistoryPage, Statement
from client.models import (
    AccountInfo,
    BalanceInfo,
    BlockRange,
    NodeStatusInfo,
    Outcome,
    Supply,
    TransactionInfo,
)
from client.policy import CHANNEL_OPTIONS
from client.proofs import VerifiedBalances
from client.tx import Transaction
from client.verify import VerifiedBlock
from ledger import tls
from ledger.crypto import SigningKey
from ledger.v1 import api_pb2_grpc

if TYPE_CHECKING:  # the async stub type exists only in the .pyi
    from ledger.v1.api_pb2_grpc import LedgerServiceAsyncStub as Stub

T = TypeVar("T")


class AsyncLedgerClient(core.ClientCore):
    """Asynchronous client of a consortium's LedgerService nodes (see LedgerClient; ``reader``
    and each read's ``as_key`` as there)."""

    # A node without SubmitStream answers UNIMPLEMENTED at once; grpc.aio reports that as
    # INTERNAL ("Internal error from Core") when it races the request writes.
    STREAM_UNSERVED = frozenset({grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL})

    def _stub(self, endpoint: str) -> Stub:
        stub: Stub | None = self._stubs.get(endpoint)
        if stub is None:
            channel = tls.aio_channel(self.genesis, endpoint, CHANNEL_OPTIONS, insecure=self.insecure)
            self._channels[endpoint] = channel
            stub = api_pb2_grpc.LedgerServiceStub(channel)
            self._stubs[endpoint] = stub
        return stub

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

    # --- plumbing: carry out the core's effects ------------------------------------------

    async def _perform(self, effect: core.Effect, opened: list[Any]) -> Any:
        if isinstance(effect, core.Call):
            method = getattr(self._stub(effect.endpoint), effect.method)
            return await method(effect.request, timeout=effect.timeout, metadata=effect.metadata)
        if isinstance(effect, core.Open):
            method = getattr(self._stub(effect.endpoint), effect.method)
            request = iter(effect.request) if isinstance(effect.request, tuple) else effect.request
            stream = method(request, timeout=effect.timeout, metadata=effect.metadata)
            opened.append(stream)
            return stream
        if isinstance(effect, core.Next):
            message = await effect.stream.read()
            return core.END if message is grpc.aio.EOF else message  # type: ignore[attr-defined]  # not in grpc-stubs
        if isinstance(effect, core.Cancel):
            effect.stream.cancel()
            opened.remove(effect.stream)  # a feed opens one per node it fails over to, for ever
        elif isinstance(effect, core.Sleep):
            await asyncio.sleep(effect.seconds)  # retry backoff between rounds
        elif isinstance(effect, core.Gather):
            room = asyncio.Semaphore(effect.concurrency_max)

            async def one(op: Op[Any]) -> Any:
                async with room:
                    return await self._run(op)

            return list(await asyncio.gather(*(one(op) for op in effect.ops)))
        return None

    async def _run(self, op: Op[T]) -> T:
        """Carry out ``op``'s effects until it returns."""
        result: list[T] = []
        async for emitted in self._emitted(core.collect(op, result)):
            raise AssertionError(f"{emitted} emitted by an operation that returns one value")
        return result[0]

    async def _emitted(self, op: Op[None]) -> AsyncIterator[Any]:
        """Carry out ``op``'s effects, yielding what it emits; its streams end with it."""
        value: Any = None
        error: grpc.RpcError | None = None
        opened: list[Any] = []
        try:
            while not isinstance(effect := core.step(op, value, error), core.Done):
                value, error = None, None
                if isinstance(effect, core.Emit):
                    yield effect.value
                    continue
                try:
                    value = await self._perform(effect, opened)
                except grpc.RpcError as exc:
                    error = exc
        finally:
            for stream in opened:
                stream.cancel()
            op.close()

    # --- transactions and queries (see LedgerClient) -------------------------------------

    async def submit(self, tx: Transaction | bytes, *, timeout_s: float | None = None) -> Outcome:
        """Submit and wait for a verified receipt: Committed, Rejected or Indefinite."""
        return await self._run(self.op_submit(tx, timeout_s))

    async def submit_many(
        self, txs: Sequence[Transaction], *, timeout_s: float | None = None, chunk_size: int = SUBMIT_CHUNK
    ) -> list[Outcome]:
        """Submit many transactions at once; one outcome per transaction, in order (see
        LedgerClient.submit_many: one SubmitStream to one node, else SubmitBatch and
        WaitReceiptBatches per chunk; what that does not settle goes through ``submit``, here
        up to CAREFUL_SUBMITS_MAX at a time)."""
        return await self._run(self.op_submit_many(txs, timeout_s, chunk_size, self.STREAM_UNSERVED))

    async def transaction(
        self, tx_id: bytes, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> TransactionInfo:
        """A committed transaction with its verified receipt (see LedgerClient.transaction)."""
        return await self._run(self.op_transaction(tx_id, as_key, timeout_s))

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
        return await self._run(self.op_account(account_id, confirmations, min_height, as_key, timeout_s))

    async def balance_proof(
        self, account_id: str, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> tuple[VerifiedBalances, bytes]:
        """The account's balances as of the latest stable checkpoint, verified against genesis
        alone (client/proofs.py), and the proof's bytes (keep them: ``verify_balance_proof``
        checks them again later, offline). A node whose proof does not verify is skipped for the
        next; Unverified when none did. Read like ``account``."""
        return await self._run(self.op_balance_proof(account_id, as_key, timeout_s))

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
        return await self._run(self.op_balances(account_id, confirmations, min_height, as_key, timeout_s))

    async def block(
        self, height: int, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> VerifiedBlock:
        """The certified block at ``height``, verified against the genesis keys (without bodies
        for a reader that is not a member's operator: see LedgerClient.block)."""
        return await self._run(self.op_block(height, as_key, timeout_s))

    async def blocks(
        self,
        from_height: int,
        max_blocks: int = BLOCKS_PER_CALL,
        *,
        as_key: SigningKey | None = None,
        timeout_s: float | None = None,
    ) -> BlockRange:
        """Consecutive verified blocks from ``from_height`` (see LedgerClient.blocks)."""
        return await self._run(self.op_blocks(from_height, max_blocks, as_key, timeout_s))

    async def supply(
        self, *, min_height: int = 0, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> Supply:
        """Per-asset minted, redeemed and outstanding amounts as of ``Supply.height``
        (node-local read); ``min_height`` as in ``account``."""
        return await self._run(self.op_supply(min_height, as_key, timeout_s))

    async def status(self, endpoint: str | None = None, *, timeout_s: float | None = None) -> NodeStatusInfo:
        """One node's status (the given endpoint, else the first that answers)."""
        return await self._run(self.op_status(endpoint, timeout_s))

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
        return await self._run(
            self.op_history(account_id, from_ms, to_ms, kinds, after, limit, as_key, timeout_s)
        )

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
        return await self._run(self.op_statement(account_id, from_ms, to_ms, as_key, timeout_s))

    async def escrow(
        self, escrow_id: str, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> EscrowInfo:
        return await self._run(self.op_escrow(escrow_id, as_key, timeout_s))

    async def escrows(
        self, account_id: str, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> list[EscrowInfo]:
        return await self._run(self.op_escrows(account_id, as_key, timeout_s))

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
        async for block in self._emitted(self.op_feed(from_height, accounts, assets, banks, as_key)):
            yield block
