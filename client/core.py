"""The client's decisions, once, without I/O: which node to ask, with which request and deadline,
what an answer or an error means, when to retry, rotate, give up, and whether a receipt or block
verifies. LedgerClient (client/sdk.py, blocking gRPC) and AsyncLedgerClient (client/aio.py,
grpc.aio) are thin shells over it: they only carry out the effects.

Each operation is a generator (an ``Op``) that yields effects and is sent their results:

    Call(endpoint, method, request, timeout, metadata)  -> the response message
    Open(endpoint, method, request, timeout, metadata)  -> a stream handle (server streaming;
                                                            a tuple request is a client stream)
    Next(stream)                                        -> the next message, or END
    Cancel(stream)                                      -> None
    Sleep(seconds)                                      -> None
    Gather(ops, concurrency_max)                        -> [each op's result], in order
    Emit(value)                                         -> None (a value for the caller: feed)

A failed call or stream read is thrown into the generator as the ``grpc.RpcError`` it raised;
the op returns its result (StopIteration) or raises the SDK's error. A shell may run a Gather's
ops one at a time (the blocking client does) or up to ``concurrency_max`` at once (asyncio).
Time is read from the injected ``clock``, so a test drives an op with a fake transport and a
fake clock, deterministically (tests/client/test_core.py).

Policy (client/policy.py): submitting tries nodes in rotation, skips a node that refused or
lied, retries rounds with backoff until the deadline (Indefinite), Rejected after f+1 refusals;
a query asks nodes in turn until one answers with something that verifies; ``confirmations``
asks every node until that many agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message

from client.history import (
    FEED_RETRY_S,
    PAGE_MAX,
    EscrowInfo,
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
    NotFound,
    Outcome,
    PendingHere,
    Supply,
    TransactionInfo,
    Unreachable,
    Unverified,
)
from client.policy import (
    NOT_AUTHORIZED,
    RECEIPT_REPLY_GRACE_S,
    AgreementState,
    QueryState,
    SubmitState,
    Unresponsive,
    rotated,
    status_code,
    status_details,
)
from client.proofs import VerifiedBalances, verify_balance_proof
from client.tx import Transaction, TxBuilder, TxBuildError
from client.verify import ReceiptError, VerificationCache, VerifiedBlock, verify_block, verify_receipt
from ledger import readtoken, tls
from ledger.crypto import SigningKey
from ledger.genesis import Genesis, load_genesis
from ledger.statetree import ProofError
from ledger.v1 import api_pb2, tx_pb2

T = TypeVar("T")
SUBMIT_CHUNK = 100  # envelopes per SubmitBatch; nodes cap it (submit_batch_max, default 1000)
BLOCKS_PER_CALL = 512  # GetBlocks: what nodes serve at most per reply
CAREFUL_SUBMITS_MAX = 16  # submit_many: one-by-one submits in flight at once (where concurrent)
Metadata: TypeAlias = tuple[tuple[str, bytes], ...]


# --- effects -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A unary call; its result is the response message."""

    endpoint: str
    method: str  # a LedgerService method name
    request: Message
    timeout: float | None
    metadata: Metadata = ()


@dataclass(frozen=True)
class Open:
    """Start a streaming call; its result is a handle for Next and Cancel. ``request`` is the
    request, or for a client stream (SubmitStream) the tuple of requests to send."""

    endpoint: str
    method: str
    request: Message | tuple[Message, ...]
    timeout: float | None
    metadata: Metadata = ()


class _End:
    def __repr__(self) -> str:
        return "END"


END: Any = _End()  # what Next gives once a stream ended without an error


@dataclass(frozen=True)
class Next:
    stream: Any


@dataclass(frozen=True)
class Cancel:
    stream: Any


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Gather:
    ops: tuple[Generator[Any, Any, Any], ...]
    concurrency_max: int


@dataclass(frozen=True)
class Emit:
    value: Any


Effect: TypeAlias = Call | Open | Next | Cancel | Sleep | Gather | Emit
Op: TypeAlias = Generator[Effect, Any, T]


@dataclass(frozen=True)
class Done(Generic[T]):
    value: T


def collect(op: Op[T], out: list[T]) -> Op[None]:
    """``op``, with its result appended to ``out``: a shell drives every op as one that emits."""
    out.append((yield from op))


def step(op: Op[T], value: object, error: BaseException | None) -> Effect | Done[T]:
    """Resume ``op`` with the last effect's result (or its error): its next effect, or Done."""
    try:
        return op.throw(error) if error is not None else op.send(value)
    except StopIteration as stop:
        return Done(stop.value)


# --- pure checks of answers ----------------------------------------------------------------


def check_transaction(
    genesis: Genesis, tx_id: bytes, resp: api_pb2.GetTransactionResponse
) -> TransactionInfo:
    """Verify a GetTransaction answer: the receipt, and that the envelope hashes to tx_id.
    PendingHere when the node holds it unexecuted (status PENDING, no receipt)."""
    if resp.status == api_pb2.TX_STATUS_PENDING:
        raise PendingHere(f"{tx_id.hex()} is pending")
    verified = verify_receipt(genesis, resp.receipt, tx_id)
    transaction = None
    if resp.HasField("envelope"):
        raw = resp.envelope.SerializeToString(deterministic=True)
        try:
            transaction = Transaction.from_envelope(
                genesis.chain_id, raw, tx_bytes_max=genesis.limits.tx_bytes_max
            )
        except TxBuildError as exc:
            raise ReceiptError("bad_envelope", str(exc)) from exc
        if transaction.tx_id != tx_id:
            raise ReceiptError("bad_envelope", "envelope body does not hash to the tx id")
    return TransactionInfo(Committed(tx_id, verified, ""), transaction)


def check_block(genesis: Genesis, height: int, resp: api_pb2.GetBlockResponse) -> VerifiedBlock:
    """Verify a GetBlock answer, and that it is the block asked for."""
    verified = verify_block(genesis, resp)
    if verified.block.header.height != height:
        raise ReceiptError("other_block", f"asked for block {height}, got {verified.block.header.height}")
    return verified


def check_blocks(genesis: Genesis, from_height: int, resp: api_pb2.GetBlocksResponse) -> BlockRange:
    """Verify a GetBlocks answer: every block, and that they are from_height, from_height+1, ..."""
    verified = tuple(
        check_block(genesis, height, block) for height, block in enumerate(resp.blocks, start=from_height)
    )
    if resp.next_height != from_height + len(verified):
        raise ReceiptError(
            "other_block", f"{len(verified)} blocks from {from_height} but next_height {resp.next_height}"
        )
    return BlockRange(verified, resp.next_height, resp.last_height)


def settle_receipts(
    genesis: Genesis,
    verified: VerificationCache,
    receipts: Iterable[api_pb2.Receipt],
    wanted: set[bytes],
    endpoint: str,
    settled: dict[bytes, Committed],
) -> bool:
    """submit_many's receipts from one node: add to ``settled`` each wanted receipt that
    verifies and is final; False as soon as one does not verify (the node lied)."""
    for receipt in receipts:
        tx_id = bytes(receipt.result.tx_id)
        if tx_id not in wanted or tx_id in settled:
            continue
        try:
            checked = verify_receipt(genesis, receipt, tx_id, verified)
        except ReceiptError:
            return False
        committed = Committed(tx_id=tx_id, receipt=checked, endpoint=endpoint)
        if committed.final:
            settled[tx_id] = committed
    return True


def _answer(resp: Any) -> Any:
    return resp


# --- the core --------------------------------------------------------------------------------


class ClientCore:
    """A client's configuration and state (endpoint rotation, nodes that just timed out, the
    receipt verification cache), and its operations as Ops. See LedgerClient for the meaning
    of the arguments; ``clock`` is monotonic seconds (a test passes a fake one)."""

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
        clock: Callable[[], float] = time.monotonic,
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
        self.clock = clock
        self._first = 0  # rotates the endpoint tried first, spreading load
        self._unresponsive = Unresponsive(clock)  # nodes that just timed out go last (policy.py)
        # The shell's channels and stubs, by endpoint (client/sdk.py, client/aio.py).
        self._channels: dict[str, Any] = {}
        self._stubs: dict[str, Any] = {}

    def _order(self) -> list[str]:
        self._first += 1
        return self._unresponsive.last(rotated(self.endpoints, self._first - 1))

    def _deadline(self, timeout_s: float | None) -> float:
        return self.clock() + (timeout_s or self.timeout_s)

    def _read_md(self, as_key: SigningKey | None, method: str, scope: str) -> Metadata:
        """Call metadata with a fresh read token by ``as_key`` or the client's reader."""
        return readtoken.metadata(as_key or self.reader, self.genesis.chain_id, method, scope)

    def _read(
        self,
        endpoint: str,
        method: str,
        request: Message,
        timeout: float | None,
        scope: str,
        as_key: SigningKey | None,
    ) -> Call:
        """A read call with a fresh read token for ``scope`` (docs/PROTOCOL.md, section 10)."""
        return Call(endpoint, method, request, timeout, self._read_md(as_key, method, scope))

    # --- reads ---------------------------------------------------------------------------

    def _query(
        self,
        what: str,
        method: str,
        request: Message,
        check: Callable[[Any], T],
        timeout_s: float | None,
        *,
        scope: str | None = None,
        as_key: SigningKey | None = None,
        endpoints: Sequence[str] | None = None,
    ) -> Op[tuple[str, T]]:
        """Ask nodes in turn until one answers. ``check`` may raise ReceiptError (the answer did
        not verify: next node). NotFound only after no node had it (see policy.QueryState).
        With a ``scope``, each call carries a fresh read token for it."""
        deadline = self._deadline(timeout_s)
        state = QueryState(what)
        for endpoint in endpoints or self._order():
            remaining = deadline - self.clock()
            if remaining <= 0:
                state.errors.append("deadline passed")
                break
            timeout = min(remaining, self.call_timeout_s)
            try:
                if scope is None:
                    resp = yield Call(endpoint, method, request, timeout)
                else:
                    resp = yield self._read(endpoint, method, request, timeout, scope, as_key)
                answer = check(resp)
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

    def _agreed(
        self,
        what: str,
        method: str,
        request: Message,
        check: Callable[[Any], T],
        confirmations: int,
        timeout_s: float | None,
        scope: str,
        as_key: SigningKey | None,
    ) -> Op[T]:
        """Ask every node, in rounds, until ``confirmations`` of them gave an equal answer."""
        if confirmations > len(self.endpoints):
            raise ValueError(f"{confirmations} confirmations asked of {len(self.endpoints)} endpoints")
        deadline = self._deadline(timeout_s)
        state: AgreementState[T] = AgreementState(what, confirmations)
        while True:
            for endpoint in self.endpoints:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise state.final_error()
                timeout = min(remaining, self.call_timeout_s)
                try:
                    state.answered(
                        endpoint, check((yield self._read(endpoint, method, request, timeout, scope, as_key)))
                    )
                except grpc.RpcError as exc:
                    state.rpc_failed(endpoint, exc)
                agreed = state.agreed()
                if agreed is not None:
                    return agreed
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise state.final_error()
            yield Sleep(state.next_backoff_s(remaining))  # nodes at different heights: ask again

    def op_transaction(
        self, tx_id: bytes, as_key: SigningKey | None, timeout_s: float | None
    ) -> Op[TransactionInfo]:
        request = api_pb2.GetTransactionRequest(tx_id=tx_id, include_pending=True)
        endpoint, info = yield from self._query(
            "transaction",
            "GetTransaction",
            request,
            lambda resp: check_transaction(self.genesis, tx_id, resp),
            timeout_s,
            scope=readtoken.tx_scope(tx_id),
            as_key=as_key,
        )
        return TransactionInfo(Committed(tx_id, info.committed.receipt, endpoint), info.transaction)

    def op_wait(
        self, tx_id: bytes, as_key: SigningKey | None, timeout_s: float | None
    ) -> Op[Committed | None]:
        try:
            info = yield from self.op_transaction(tx_id, as_key, timeout_s)
        except NotFound:
            return None
        return info.committed

    def op_account(
        self,
        account_id: str,
        confirmations: int,
        min_height: int,
        as_key: SigningKey | None,
        timeout_s: float | None,
    ) -> Op[AccountInfo]:
        what = f"account {account_id!r}"
        request = api_pb2.GetAccountRequest(account_id=account_id, min_height=min_height)
        check = AccountInfo.from_proto
        if confirmations <= 1:
            _, found = yield from self._query(
                what, "GetAccount", request, check, timeout_s, scope=account_id, as_key=as_key
            )
            return found
        return (
            yield from self._agreed(
                what, "GetAccount", request, check, confirmations, timeout_s, account_id, as_key
            )
        )

    def op_balance_proof(
        self, account_id: str, as_key: SigningKey | None, timeout_s: float | None
    ) -> Op[tuple[VerifiedBalances, bytes]]:
        """The account's balances as of the latest stable checkpoint, verified with genesis
        alone (client/proofs.py), and the proof's bytes. A node whose proof does not verify is
        skipped for the next. Read like ``op_account``."""

        def check(proof: api_pb2.BalanceProof) -> tuple[VerifiedBalances, bytes]:
            try:
                return verify_balance_proof(self.genesis, proof, account_id), proof.SerializeToString()
            except ProofError as exc:  # a lying or broken node: the next one is asked
                raise ReceiptError(exc.reason, str(exc)) from exc

        _, out = yield from self._query(
            f"balance proof of account {account_id!r}",
            "GetBalanceProof",
            api_pb2.GetBalanceProofRequest(account_id=account_id),
            check,
            timeout_s,
            scope=account_id,
            as_key=as_key,
        )
        return out

    def op_balances(
        self,
        account_id: str,
        confirmations: int,
        min_height: int,
        as_key: SigningKey | None,
        timeout_s: float | None,
    ) -> Op[dict[str, BalanceInfo]]:
        acc = yield from self.op_account(account_id, confirmations, min_height, as_key, timeout_s)
        return {b.asset: b for b in acc.balances}

    def op_block(self, height: int, as_key: SigningKey | None, timeout_s: float | None) -> Op[VerifiedBlock]:
        _, block = yield from self._query(
            f"block {height}",
            "GetBlock",
            api_pb2.GetBlockRequest(height=height),
            lambda resp: check_block(self.genesis, height, resp),
            timeout_s,
            scope=readtoken.SCOPE_ALL,
            as_key=as_key,
        )
        return block

    def op_blocks(
        self, from_height: int, max_blocks: int, as_key: SigningKey | None, timeout_s: float | None
    ) -> Op[BlockRange]:
        _, blocks = yield from self._query(
            f"blocks from {from_height}",
            "GetBlocks",
            api_pb2.GetBlocksRequest(from_height=from_height, max_blocks=max_blocks),
            lambda resp: check_blocks(self.genesis, from_height, resp),
            timeout_s,
            scope=readtoken.SCOPE_ALL,
            as_key=as_key,
        )
        return blocks

    def op_supply(self, min_height: int, as_key: SigningKey | None, timeout_s: float | None) -> Op[Supply]:
        _, supply = yield from self._query(
            "supply",
            "GetSupply",
            api_pb2.GetSupplyRequest(min_height=min_height),
            Supply.from_proto,
            timeout_s,
            scope=readtoken.SCOPE_ALL,
            as_key=as_key,
        )
        return supply

    def op_status(self, endpoint: str | None, timeout_s: float | None) -> Op[NodeStatusInfo]:
        answered, resp = yield from self._query(
            "status",
            "GetStatus",
            api_pb2.GetStatusRequest(),
            _answer,
            timeout_s,
            endpoints=[endpoint] if endpoint else None,
        )
        return NodeStatusInfo.from_proto(answered, resp)

    def op_statuses(self, timeout_s: float | None) -> Op[dict[str, NodeStatusInfo | str]]:
        out: dict[str, NodeStatusInfo | str] = {}
        for endpoint in self.endpoints:
            try:
                out[endpoint] = yield from self.op_status(endpoint, timeout_s or self.call_timeout_s)
            except (Unreachable, NotFound, Unverified) as exc:
                out[endpoint] = str(exc)
        return out

    # --- history, escrows and the feed (client/history.py) ----------------------------------

    def op_history(
        self,
        account_id: str,
        from_ms: int,
        to_ms: int,
        kinds: Sequence[str],
        after: bytes,
        limit: int,
        as_key: SigningKey | None,
        timeout_s: float | None,
    ) -> Op[HistoryPage]:
        request = history_request(account_id, from_ms, to_ms, tuple(kinds), after, limit)
        _, page = yield from self._query(
            f"history of {account_id!r}",
            "GetAccountHistory",
            request,
            HistoryPage.from_proto,
            timeout_s,
            scope=account_id,
            as_key=as_key,
        )
        return page

    def op_history_entries(
        self,
        account_id: str,
        from_ms: int,
        to_ms: int,
        kinds: Sequence[str],
        as_key: SigningKey | None,
        timeout_s: float | None,
    ) -> Op[None]:
        """Emits every entry of the range, newest first, page by page (the caller may stop early)."""
        after = b""
        while True:
            page = yield from self.op_history(
                account_id, from_ms, to_ms, kinds, after, PAGE_MAX, as_key, timeout_s
            )
            for entry in page.entries:
                yield Emit(entry)
            after = page.next_cursor
            if not after:
                return

    def op_statement(
        self, account_id: str, from_ms: int, to_ms: int, as_key: SigningKey | None, timeout_s: float | None
    ) -> Op[Statement]:
        pages: list[HistoryPage] = []
        after = b""
        while True:
            page = yield from self.op_history(
                account_id, from_ms, to_ms, (), after, PAGE_MAX, as_key, timeout_s
            )
            pages.append(page)
            after = page.next_cursor
            if not after:
                return build_statement(account_id, from_ms, to_ms, pages[0].opening, pages)

    def op_escrow(self, escrow_id: str, as_key: SigningKey | None, timeout_s: float | None) -> Op[EscrowInfo]:
        _, escrow = yield from self._query(
            f"escrow {escrow_id!r}",
            "GetEscrow",
            api_pb2.GetEscrowRequest(escrow_id=escrow_id),
            EscrowInfo.from_proto,
            timeout_s,
            scope=escrow_id,
            as_key=as_key,
        )
        return escrow

    def op_escrows(
        self, account_id: str, as_key: SigningKey | None, timeout_s: float | None
    ) -> Op[list[EscrowInfo]]:
        out: list[EscrowInfo] = []
        after = ""
        while True:
            _, resp = yield from self._query(
                f"escrows of {account_id!r}",
                "ListEscrows",
                api_pb2.ListEscrowsRequest(account_id=account_id, after=after, limit=PAGE_MAX),
                _answer,
                timeout_s,
                scope=account_id,
                as_key=as_key,
            )
            out += [EscrowInfo.from_proto(e) for e in resp.escrows]
            after = resp.next_after
            if not after:
                return out

    def op_feed(
        self,
        from_height: int,
        accounts: Sequence[str],
        assets: Sequence[str],
        banks: Sequence[str],
        as_key: SigningKey | None,
    ) -> Op[None]:
        """Emits verified FeedBlocks from ``from_height`` for ever; on a node's failure or an
        answer that does not verify, goes on from the next height at the next node."""
        next_height = from_height
        failover = FeedFailover(len(self.endpoints))
        while True:
            for endpoint in self._order():
                request = feed_request(next_height, tuple(accounts), tuple(assets), tuple(banks))
                md = self._read_md(as_key, "Feed", readtoken.SCOPE_ALL)
                error: Exception | None = None
                stream = yield Open(endpoint, "Feed", request, None, md)
                try:
                    while (msg := (yield Next(stream))) is not END:
                        block = check_feed_message(self.genesis, next_height, msg)
                        failover.progressed()
                        next_height = max(next_height, block.height + 1)
                        yield Emit(block)
                except (grpc.RpcError, ReceiptError) as exc:
                    if isinstance(exc, grpc.RpcError) and status_code(exc) in NOT_AUTHORIZED:
                        details = status_details(exc)
                        raise NotAuthorized(f"feed: {endpoint} refused the read: {details}") from exc
                    error = exc
                yield Cancel(stream)
                failover.failed(endpoint, error)
            yield Sleep(FEED_RETRY_S)  # every node failed this round: a moment before the next

    # --- transactions --------------------------------------------------------------------

    def op_submit(self, tx: Transaction | bytes, timeout_s: float | None) -> Op[Outcome]:
        """Submit and wait for a verified, final receipt: Committed, Rejected or Indefinite."""
        if isinstance(tx, bytes):
            tx = Transaction.from_envelope(
                self.genesis.chain_id, tx, tx_bytes_max=self.genesis.limits.tx_bytes_max
            )
        envelope = tx.envelope()
        deadline = self._deadline(timeout_s)
        state = SubmitState(tx.tx_id, len(self.endpoints), self.genesis.f)
        while True:
            for endpoint in self._order():
                if not state.worth_asking(endpoint):
                    continue
                if deadline - self.clock() <= 0:
                    break
                committed = yield from self._submit_to(endpoint, envelope, deadline, state)
                if committed is not None:
                    return committed
                rejected = state.rejected()
                if rejected is not None:
                    return rejected
            remaining = deadline - self.clock()
            if remaining <= 0 or state.exhausted():
                return state.indefinite(tx.envelope_bytes())
            yield Sleep(state.next_backoff_s(remaining))  # retry backoff between rounds

    def _submit_to(
        self, endpoint: str, envelope: tx_pb2.Envelope, deadline: float, state: SubmitState
    ) -> Op[Committed | None]:
        """One attempt at one node: submit, wait for the receipt, verify it."""
        remaining = deadline - self.clock()
        request = api_pb2.SubmitRequest(envelope=envelope)
        try:
            yield Call(endpoint, "Submit", request, min(remaining, self.call_timeout_s))
            self._unresponsive.answered(endpoint)
        except grpc.RpcError as exc:
            self._unresponsive.failed(endpoint, exc)
            if not state.submit_failed(endpoint, exc):
                return None
        wait_s = min(deadline - self.clock(), self.receipt_wait_s)
        if wait_s <= 0:
            return None
        wait = api_pb2.WaitReceiptRequest(tx_id=state.tx_id, timeout_ms=int(wait_s * 1000))
        timeout = min(wait_s + RECEIPT_REPLY_GRACE_S, max(deadline - self.clock(), 0.001))
        try:
            receipt = yield Call(endpoint, "WaitReceipt", wait, timeout)
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

    def op_submit_many(
        self,
        txs: Sequence[Transaction],
        timeout_s: float | None,
        chunk_size: int,
        stream_unserved: frozenset[grpc.StatusCode],
    ) -> Op[list[Outcome]]:
        """The chunks go to one node on one SubmitStream (a node that answers with a code in
        ``stream_unserved`` before anything else does not serve it: SubmitBatch and
        WaitReceiptBatches per chunk instead); what that does not settle goes through
        op_submit, one transaction at a time, up to CAREFUL_SUBMITS_MAX at once."""
        deadline = self._deadline(timeout_s)
        size = max(chunk_size, 1)
        chunks = [txs[i : i + size] for i in range(0, len(txs), size)]
        endpoint = self._order()[0]  # one node takes them all
        streamed = yield from self._submit_streamed(endpoint, chunks, deadline, stream_unserved)
        outcomes: dict[bytes, Outcome] = {}
        if streamed is not None:
            outcomes.update(streamed)
        else:
            for chunk in chunks:
                outcomes.update((yield from self._submit_chunk(endpoint, chunk, deadline)))
        unsettled = {tx.tx_id: tx for tx in txs if tx.tx_id not in outcomes}
        careful = tuple(self._careful(tx, deadline) for tx in unsettled.values())
        outcomes.update(zip(unsettled, (yield Gather(careful, CAREFUL_SUBMITS_MAX)), strict=True))
        return [outcomes[tx.tx_id] for tx in txs]

    def _careful(self, tx: Transaction, deadline: float) -> Op[Outcome]:
        # A generator: the remaining time is taken when it starts, not when it is made.
        return (yield from self.op_submit(tx, max(deadline - self.clock(), 0.001)))

    def _submit_streamed(
        self,
        endpoint: str,
        chunks: Sequence[Sequence[Transaction]],
        deadline: float,
        unserved: frozenset[grpc.StatusCode],
    ) -> Op[dict[bytes, Committed] | None]:
        """The chunks on one SubmitStream to one node: the final receipts that verified. None
        when the node does not serve SubmitStream (it predates it)."""
        wanted = {tx.tx_id for chunk in chunks for tx in chunk}
        settled: dict[bytes, Committed] = {}
        # The stream ends by itself once every accepted transaction has its receipt; this
        # bounds it for a node that stalls, leaving time for the careful path.
        budget = self.receipt_wait_s * 2 + self.call_timeout_s * len(chunks)
        timeout = max(min(deadline - self.clock(), budget), 0.001)
        requests = tuple(
            api_pb2.SubmitBatchRequest(envelopes=[tx.envelope() for tx in chunk]) for chunk in chunks
        )
        answered = False
        try:
            stream = yield Open(endpoint, "SubmitStream", requests, timeout)
            while (reply := (yield Next(stream))) is not END:
                answered = True
                receipts = reply.receipts.receipts  # none in an answer (SubmitBatchResponse)
                if not settle_receipts(self.genesis, self.verified, receipts, wanted, endpoint, settled):
                    yield Cancel(stream)
                    return settled  # a lying node: the rest go the careful way
        except grpc.RpcError as exc:
            if status_code(exc) in unserved and not answered:
                return None
            # Whatever is unsettled is retried one by one.
        return settled

    def _submit_chunk(
        self, endpoint: str, chunk: Sequence[Transaction], deadline: float
    ) -> Op[dict[bytes, Committed]]:
        """One chunk by SubmitBatch, its receipts by WaitReceiptBatches: the final ones that
        verified."""
        wanted = {tx.tx_id for tx in chunk}
        settled: dict[bytes, Committed] = {}
        remaining = deadline - self.clock()
        request = api_pb2.SubmitBatchRequest(envelopes=[tx.envelope() for tx in chunk])
        try:
            resp = yield Call(endpoint, "SubmitBatch", request, min(remaining, self.call_timeout_s))
            accepted = [item.tx_id for item in resp.items if item.accepted and item.tx_id in wanted]
            wait_s = min(deadline - self.clock(), self.receipt_wait_s * 2)
            if not accepted or wait_s <= 0:
                return settled
            wait = api_pb2.WaitReceiptsRequest(tx_ids=accepted, timeout_ms=int(wait_s * 1000))
            timeout = min(wait_s + RECEIPT_REPLY_GRACE_S, max(deadline - self.clock(), 0.001))
            stream = yield Open(endpoint, "WaitReceiptBatches", wait, timeout)
            while (batch := (yield Next(stream))) is not END:
                if not settle_receipts(
                    self.genesis, self.verified, batch.receipts, wanted, endpoint, settled
                ):
                    yield Cancel(stream)
                    return settled  # a lying node: the rest go the careful way
        except grpc.RpcError:
            pass  # whatever is unsettled is retried one by one
        return settled
