"""LedgerClient: submit signed transactions to a consortium and get verified receipts.

Trust model: no single node is trusted. A receipt counts only after client.verify checks its
commit certificate and attestations against the genesis keys, so a lying node can delay an
answer but cannot fake one; the client then asks another node. Reads of current state
(accounts, supply, status) are node-local and unverified: ask several nodes when it matters.

Every call has a deadline (``timeout_s``, default the client's). Submitting is idempotent: the
tx_id is SHA-256 of the signed body, so re-sending the same envelope (to any node, any number of
times) can commit it at most once. That is what makes failover on UNAVAILABLE or
DEADLINE_EXCEEDED safe, and what an Indefinite outcome tells the caller to do.

Example::

    with LedgerClient("consortium/genesis.json") as client:
        tx = client.tx.transfer([LegSpec("alice", "bob", "USD.BANK-A", 12550)]).signed_by(alice_key)
        outcome = client.submit(tx)
        if isinstance(outcome, Committed) and outcome.ok:
            print("settled at height", outcome.height)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import grpc

from client.history import (
    FEED_RETRY_S,
    PAGE_MAX,
    EscrowInfo,
    FeedBlock,
    FeedFailover,
    HistoryEntry,
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
    CHANNEL_OPTIONS,
    NOT_AUTHORIZED,
    RECEIPT_REPLY_GRACE_S,
    AgreementState,
    QueryState,
    SubmitState,
    Unresponsive,
    rotated,
)
from client.proofs import VerifiedBalances, verify_balance_proof
from client.tx import Transaction, TxBuilder, TxBuildError
from client.verify import ReceiptError, VerificationCache, VerifiedBlock, verify_block, verify_receipt
from ledger import readtoken, tls
from ledger.crypto import SigningKey
from ledger.genesis import Genesis, load_genesis
from ledger.statetree import ProofError
from ledger.v1 import api_pb2, api_pb2_grpc, tx_pb2

T = TypeVar("T")
SUBMIT_CHUNK = 100  # envelopes per SubmitBatch; nodes cap it (submit_batch_max, default 1000)
BLOCKS_PER_CALL = 512  # GetBlocks: what nodes serve at most per reply


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


class LedgerClient:
    """A synchronous client of a consortium's LedgerService nodes.

    ``genesis`` is a Genesis or the path of the genesis file; ``endpoints`` are "host:port"
    API addresses (default: every member's api address from genesis). ``timeout_s`` is the
    default deadline of each call; ``call_timeout_s`` bounds a single RPC to one node, and
    ``receipt_wait_s`` how long one node is asked to wait for a receipt before trying another.
    Every channel is TLS and verifies the node against the CA certificates in genesis: an
    endpoint genesis lists must present its member's certificate, any other endpoint one of
    some member's CA (ledger/tls.py). ``insecure=True`` dials plaintext, to debug only.

    ``reader`` is the key reads are made with (a fresh read token per call; docs/PROTOCOL.md,
    section 10): an account's owner key or its bank's operator key for ``account``, any key the
    ledger knows for ``supply`` and block headers, a member's operator key for block bodies, a
    signer's for ``transaction``. Each read also takes ``as_key`` to use another key for that
    call. Without a key the nodes refuse reads (NotAuthorized). Receipts of submitted
    transactions need none: the tx_id is the submitter's handle.
    """

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
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, api_pb2_grpc.LedgerServiceStub] = {}
        self._first = 0  # rotates the endpoint tried first, spreading load
        self._unresponsive = Unresponsive()  # nodes that just timed out go last (policy.py)

    # --- plumbing -------------------------------------------------------------------------

    def _stub(self, endpoint: str) -> api_pb2_grpc.LedgerServiceStub:
        stub = self._stubs.get(endpoint)
        if stub is None:
            channel = tls.channel(self.genesis, endpoint, CHANNEL_OPTIONS, insecure=self.insecure)
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

    def close(self) -> None:
        """Close every channel."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._stubs.clear()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(
        self,
        what: str,
        call: Callable[[api_pb2_grpc.LedgerServiceStub, float], T],
        timeout_s: float | None,
        endpoints: Sequence[str] | None = None,
    ) -> tuple[str, T]:
        """Ask nodes in turn until one answers. ``call`` may raise ReceiptError (the answer did
        not verify: next node). NotFound only after no node had it (see policy.QueryState)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        state = QueryState(what)
        for endpoint in endpoints or self._order():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state.errors.append("deadline passed")
                break
            try:
                answer = call(self._stub(endpoint), min(remaining, self.call_timeout_s))
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

    # --- transactions ---------------------------------------------------------------------

    def submit(self, tx: Transaction | bytes, *, timeout_s: float | None = None) -> Outcome:
        """Submit a signed transaction and wait for its verified receipt.

        Returns Committed (definite, with the ledger's result), Rejected (the nodes' stateless
        checks refused the envelope) or Indefinite (deadline passed; resubmitting the same
        envelope is safe). Raises only for a malformed argument (TxBuildError).
        """
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
                committed = self._submit_to(endpoint, envelope, deadline, state)
                if committed is not None:
                    return committed
                rejected = state.rejected()
                if rejected is not None:
                    return rejected
            remaining = deadline - time.monotonic()
            if remaining <= 0 or state.exhausted():
                return state.indefinite(tx.envelope_bytes())
            time.sleep(state.next_backoff_s(remaining))  # retry backoff between rounds, not a sync wait

    def _submit_to(
        self, endpoint: str, envelope: tx_pb2.Envelope, deadline: float, state: SubmitState
    ) -> Committed | None:
        """One attempt at one node: submit, wait for the receipt, verify it."""
        stub = self._stub(endpoint)
        remaining = deadline - time.monotonic()
        try:
            stub.Submit(api_pb2.SubmitRequest(envelope=envelope), timeout=min(remaining, self.call_timeout_s))
            self._unresponsive.answered(endpoint)
        except grpc.RpcError as exc:
            self._unresponsive.failed(endpoint, exc)
            if not state.submit_failed(endpoint, exc):
                return None
        wait_s = min(deadline - time.monotonic(), self.receipt_wait_s)
        if wait_s <= 0:
            return None
        try:
            receipt = stub.WaitReceipt(
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

    def submit_many(
        self, txs: Sequence[Transaction], *, timeout_s: float | None = None, chunk_size: int = SUBMIT_CHUNK
    ) -> list[Outcome]:
        """Submit many transactions at once; one outcome per transaction, in order.

        The chunks go to one node on one SubmitStream, and their receipts come back on it as
        blocks are attested, each verified like submit's (a node without SubmitStream gets a
        SubmitBatch and a WaitReceiptBatches per chunk instead). Whatever that path does not
        settle (a refusal, a node that fails or lies, a receipt that is not final) goes through
        ``submit`` one by one with the same envelope, so outcomes mean exactly what they mean
        there.
        """
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        chunks = [txs[i : i + max(chunk_size, 1)] for i in range(0, len(txs), max(chunk_size, 1))]
        endpoint = self._order()[0]  # one node takes them all
        streamed = self._submit_streamed(endpoint, chunks, deadline)
        outcomes: dict[bytes, Outcome] = {}
        if streamed is not None:
            outcomes.update(streamed)
        else:
            for chunk in chunks:
                outcomes.update(self._submit_chunk(endpoint, chunk, deadline))
        for tx in txs:
            if tx.tx_id not in outcomes:
                outcomes[tx.tx_id] = self.submit(tx, timeout_s=max(deadline - time.monotonic(), 0.001))
        return [outcomes[tx.tx_id] for tx in txs]

    def _submit_streamed(
        self, endpoint: str, chunks: Sequence[Sequence[Transaction]], deadline: float
    ) -> dict[bytes, Committed] | None:
        """The chunks on one SubmitStream to one node: the final receipts that verified. None
        when the node does not serve SubmitStream (it predates it)."""
        wanted = {tx.tx_id for chunk in chunks for tx in chunk}
        settled: dict[bytes, Committed] = {}
        # The stream ends by itself once every accepted transaction has its receipt; this
        # bounds it for a node that stalls, leaving time for the careful path.
        budget = self.receipt_wait_s * 2 + self.call_timeout_s * len(chunks)
        timeout = max(min(deadline - time.monotonic(), budget), 0.001)
        requests = (api_pb2.SubmitBatchRequest(envelopes=[tx.envelope() for tx in chunk]) for chunk in chunks)
        replies = self._stub(endpoint).SubmitStream(requests, timeout=timeout)
        answered = False
        try:
            for reply in replies:
                answered = True
                receipts = reply.receipts.receipts  # none in an answer (SubmitBatchResponse)
                if not settle_receipts(self.genesis, self.verified, receipts, wanted, endpoint, settled):
                    replies.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave it untyped
                    return settled  # a lying node: the rest go the careful way
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED and not answered:
                return None
            # Whatever is unsettled is retried one by one.
        return settled

    def _submit_chunk(
        self, endpoint: str, chunk: Sequence[Transaction], deadline: float
    ) -> dict[bytes, Committed]:
        wanted = {tx.tx_id for tx in chunk}
        settled: dict[bytes, Committed] = {}
        stub = self._stub(endpoint)
        remaining = deadline - time.monotonic()
        try:
            resp = stub.SubmitBatch(
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
            for batch in stream:
                if not settle_receipts(
                    self.genesis, self.verified, batch.receipts, wanted, endpoint, settled
                ):
                    return settled  # a lying node: the rest go the careful way
        except grpc.RpcError:
            pass  # whatever is unsettled is retried one by one
        return settled

    def wait(
        self, tx_id: bytes, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> Committed | None:
        """The verified receipt of ``tx_id`` if it is committed (asks nodes in turn), else None."""
        try:
            return self.transaction(tx_id, as_key=as_key, timeout_s=timeout_s).committed
        except NotFound:
            return None

    # --- queries --------------------------------------------------------------------------

    def transaction(
        self, tx_id: bytes, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> TransactionInfo:
        """A committed transaction with its verified receipt. NotFound if no node has it;
        Pending (a NotFound) if none has executed it and one holds it, not executed yet. Read
        with a key that signed it, or a member's operator key."""

        def call(stub: api_pb2_grpc.LedgerServiceStub, t: float) -> TransactionInfo:
            req = api_pb2.GetTransactionRequest(tx_id=tx_id, include_pending=True)
            md = self._read_md(as_key, "GetTransaction", readtoken.tx_scope(tx_id))
            resp = stub.GetTransaction(req, timeout=t, metadata=md)
            return check_transaction(self.genesis, tx_id, resp)

        endpoint, info = self._query("transaction", call, timeout_s)
        return TransactionInfo(Committed(tx_id, info.committed.receipt, endpoint), info.transaction)

    def account(
        self,
        account_id: str,
        *,
        confirmations: int = 1,
        min_height: int = 0,
        as_key: SigningKey | None = None,
        timeout_s: float | None = None,
    ) -> AccountInfo:
        """An account and its balances, as of ``AccountInfo.height``. NotFound for an unknown
        account.

        Current state carries no certificate, so one node's answer is only that node's word.
        With ``confirmations`` = f+1, the answer is returned only once f+1 nodes gave the same
        one (one of them is honest); nodes at different heights may need a moment to agree.
        ``min_height``: a reading no older than that height (a node below it waits a little for
        it, then refuses, and the next node is asked): read your own writes by passing the
        height of your transaction's receipt. Read with the account's owner key or its bank's
        operator key (``as_key``, else the client's reader); NotAuthorized otherwise.
        """
        what = f"account {account_id!r}"

        def call(stub: api_pb2_grpc.LedgerServiceStub, t: float) -> AccountInfo:
            req = api_pb2.GetAccountRequest(account_id=account_id, min_height=min_height)
            md = self._read_md(as_key, "GetAccount", account_id)
            return AccountInfo.from_proto(stub.GetAccount(req, timeout=t, metadata=md))

        if confirmations <= 1:
            return self._query(what, call, timeout_s)[1]
        return self._agreed(what, call, confirmations, timeout_s)

    def balance_proof(
        self, account_id: str, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> tuple[VerifiedBalances, bytes]:
        """The account's balances as of the latest stable checkpoint, verified against genesis
        alone (client/proofs.py), and the proof's bytes (keep them: ``verify_balance_proof``
        checks them again later, offline). A node whose proof does not verify is skipped for the
        next; Unverified when none did. Read like ``account``."""

        def call(stub: api_pb2_grpc.LedgerServiceStub, t: float) -> tuple[VerifiedBalances, bytes]:
            md = self._read_md(as_key, "GetBalanceProof", account_id)
            proof = stub.GetBalanceProof(
                api_pb2.GetBalanceProofRequest(account_id=account_id), timeout=t, metadata=md
            )
            try:
                return verify_balance_proof(self.genesis, proof, account_id), proof.SerializeToString()
            except ProofError as exc:  # a lying or broken node: the next one is asked
                raise ReceiptError(exc.reason, str(exc)) from exc

        return self._query(f"balance proof of account {account_id!r}", call, timeout_s)[1]

    def balances(
        self,
        account_id: str,
        *,
        confirmations: int = 1,
        min_height: int = 0,
        as_key: SigningKey | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, BalanceInfo]:
        """The account's balances by asset (see ``account`` for the options)."""
        acc = self.account(
            account_id, confirmations=confirmations, min_height=min_height, as_key=as_key, timeout_s=timeout_s
        )
        return {b.asset: b for b in acc.balances}

    def _agreed(
        self,
        what: str,
        call: Callable[[api_pb2_grpc.LedgerServiceStub, float], T],
        confirmations: int,
        timeout_s: float | None,
    ) -> T:
        """Ask every node, in rounds, until ``confirmations`` of them gave an equal answer."""
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
                    state.answered(endpoint, call(self._stub(endpoint), min(remaining, self.call_timeout_s)))
                except grpc.RpcError as exc:
                    state.rpc_failed(endpoint, exc)
                agreed = state.agreed()
                if agreed is not None:
                    return agreed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise state.final_error()
            time.sleep(state.next_backoff_s(remaining))  # nodes at different heights: ask again

    def block(
        self, height: int, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> VerifiedBlock:
        """The certified block at ``height``, verified against the genesis keys. With a key
        that is not a member's operator key, the node serves it without bodies
        (``VerifiedBlock.bodies`` False: header, certificate, attestations)."""

        def call(stub: api_pb2_grpc.LedgerServiceStub, t: float) -> VerifiedBlock:
            md = self._read_md(as_key, "GetBlock", readtoken.SCOPE_ALL)
            resp = stub.GetBlock(api_pb2.GetBlockRequest(height=height), timeout=t, metadata=md)
            return check_block(self.genesis, height, resp)

        return self._query(f"block {height}", call, timeout_s)[1]

    def blocks(
        self,
        from_height: int,
        max_blocks: int = BLOCKS_PER_CALL,
        *,
        as_key: SigningKey | None = None,
        timeout_s: float | None = None,
    ) -> BlockRange:
        """Up to ``max_blocks`` consecutive certified blocks from ``from_height``, each verified
        against the genesis keys, from one node (GetBlocks: it may send fewer, to stay under
        its reply size; go on from ``next_height``). Empty past the node's head. Bodies as in
        ``block``."""

        def call(stub: api_pb2_grpc.LedgerServiceStub, t: float) -> BlockRange:
            req = api_pb2.GetBlocksRequest(from_height=from_height, max_blocks=max_blocks)
            md = self._read_md(as_key, "GetBlocks", readtoken.SCOPE_ALL)
            return check_blocks(self.genesis, from_height, stub.GetBlocks(req, timeout=t, metadata=md))

        return self._query(f"blocks from {from_height}", call, timeout_s)[1]

    def supply(
        self, *, min_height: int = 0, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> Supply:
        """Per-asset minted, redeemed and outstanding amounts as of ``Supply.height`` (node-local
        read); ``min_height`` as in ``account``. Any key the ledger knows may read it."""
        req = api_pb2.GetSupplyRequest(min_height=min_height)

        def call(stub: api_pb2_grpc.LedgerServiceStub, t: float) -> api_pb2.GetSupplyResponse:
            md = self._read_md(as_key, "GetSupply", readtoken.SCOPE_ALL)
            resp: api_pb2.GetSupplyResponse = stub.GetSupply(req, timeout=t, metadata=md)
            return resp

        return Supply.from_proto(self._query("supply", call, timeout_s)[1])

    def status(self, endpoint: str | None = None, *, timeout_s: float | None = None) -> NodeStatusInfo:
        """One node's status (the given endpoint, else the first that answers)."""
        endpoint, resp = self._query(
            "status",
            lambda stub, t: stub.GetStatus(api_pb2.GetStatusRequest(), timeout=t),
            timeout_s,
            endpoints=[endpoint] if endpoint else None,
        )
        return NodeStatusInfo.from_proto(endpoint, resp)

    def statuses(self, *, timeout_s: float | None = None) -> dict[str, NodeStatusInfo | str]:
        """Every endpoint's status, or the error it gave (each within its own deadline)."""
        out: dict[str, NodeStatusInfo | str] = {}
        for endpoint in self.endpoints:
            try:
                out[endpoint] = self.status(endpoint, timeout_s=timeout_s or self.call_timeout_s)
            except (Unreachable, NotFound, Unverified) as exc:
                out[endpoint] = str(exc)
        return out

    # --- history, escrows and the feed (client/history.py) ----------------------------------

    def history(
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
        """One page of the account's entries, newest first: consensus time in [from_ms, to_ms)
        (to_ms 0: no end), of ``kinds`` (names, e.g. "TRANSFER"; none: all); go on with
        ``after=page.next_cursor`` to older ones. A node-local read under the account's read
        authority (its owner's key or its bank's operator key: ``as_key``, else the reader);
        NotFound for an unknown account (to a member), NotAuthorized otherwise."""
        req = history_request(account_id, from_ms, to_ms, tuple(kinds), after, limit)

        def call(stub: api_pb2_grpc.LedgerServiceStub, t: float) -> api_pb2.GetAccountHistoryResponse:
            md = self._read_md(as_key, "GetAccountHistory", account_id)
            return stub.GetAccountHistory(req, timeout=t, metadata=md)

        _, resp = self._query(f"history of {account_id!r}", call, timeout_s)
        return HistoryPage.from_proto(resp)

    def history_entries(
        self,
        account_id: str,
        *,
        from_ms: int = 0,
        to_ms: int = 0,
        kinds: Sequence[str] = (),
        as_key: SigningKey | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[HistoryEntry]:
        """Every entry of the range, newest first, page by page (stop early for the latest N)."""
        after = b""
        while True:
            page = self.history(
                account_id,
                from_ms=from_ms,
                to_ms=to_ms,
                kinds=kinds,
                after=after,
                limit=PAGE_MAX,
                as_key=as_key,
                timeout_s=timeout_s,
            )
            yield from page.entries
            after = page.next_cursor
            if not after:
                return

    def statement(
        self,
        account_id: str,
        from_ms: int,
        to_ms: int,
        *,
        as_key: SigningKey | None = None,
        timeout_s: float | None = None,
    ) -> Statement:
        """Opening and closing balance per asset over [from_ms, to_ms) and the entries between,
        reconciled (client.history.StatementMismatch if they do not)."""
        pages: list[HistoryPage] = []
        after = b""
        while True:
            page = self.history(
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

    def escrow(
        self, escrow_id: str, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> EscrowInfo:
        """An escrow by id (node-local read, by the owner of its payer or payee or their banks'
        operator); NotFound for an unknown one."""
        req = api_pb2.GetEscrowRequest(escrow_id=escrow_id)

        def call(stub: api_pb2_grpc.LedgerServiceStub, t: float) -> api_pb2.Escrow:
            return stub.GetEscrow(req, timeout=t, metadata=self._read_md(as_key, "GetEscrow", escrow_id))

        _, resp = self._query(f"escrow {escrow_id!r}", call, timeout_s)
        return EscrowInfo.from_proto(resp)

    def escrows(
        self, account_id: str, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> list[EscrowInfo]:
        """Every escrow the account pays or is paid by, in escrow_id order."""
        out: list[EscrowInfo] = []
        after = ""
        while True:
            req = api_pb2.ListEscrowsRequest(account_id=account_id, after=after, limit=PAGE_MAX)

            def call(
                stub: api_pb2_grpc.LedgerServiceStub, t: float, req: api_pb2.ListEscrowsRequest = req
            ) -> api_pb2.ListEscrowsResponse:
                return stub.ListEscrows(
                    req, timeout=t, metadata=self._read_md(as_key, "ListEscrows", account_id)
                )

            _, resp = self._query(f"escrows of {account_id!r}", call, timeout_s)
            out += [EscrowInfo.from_proto(e) for e in resp.escrows]
            after = resp.next_after
            if not after:
                return out

    def feed(
        self,
        from_height: int = 1,
        *,
        accounts: Sequence[str] = (),
        assets: Sequence[str] = (),
        banks: Sequence[str] = (),
        as_key: SigningKey | None = None,
    ) -> Generator[FeedBlock, None, None]:
        """Verified committed blocks from ``from_height``, following the head, for ever: each
        FeedBlock is the next height (a block with its matching transactions) or a mark that
        nothing matched up to a height. When a node fails or sends what does not verify, the
        feed goes on from the next height on another node, so every height comes once."""
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
                    for msg in call:
                        fb = check_feed_message(self.genesis, next_height, msg)
                        failover.progressed()
                        next_height = max(next_height, fb.height + 1)
                        yield fb
                except (grpc.RpcError, ReceiptError) as exc:
                    if isinstance(exc, grpc.RpcError) and exc.code() in NOT_AUTHORIZED:
                        raise NotAuthorized(f"feed: {endpoint} refused the read: {exc.details()}") from exc
                    error = exc
                finally:
                    call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave it untyped
                failover.failed(endpoint, error)
            time.sleep(FEED_RETRY_S)  # every node failed this round: a moment before the next
