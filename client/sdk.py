"""LedgerClient: submit signed transactions to a consortium and get verified receipts.

Trust model: no single node is trusted. A receipt counts only after client.verify checks its
commit certificate and attestations against the genesis keys, so a lying node can delay an
answer but cannot fake one; the client then asks another node. Reads of current state
(accounts, supply, status) are node-local and unverified: ask several nodes when it matters.

Every call has a deadline (``timeout_s``, default the client's). Submitting is idempotent: the
tx_id is SHA-256 of the signed body, so re-sending the same envelope (to any node, any number of
times) can commit it at most once. That is what makes failover on UNAVAILABLE or
DEADLINE_EXCEEDED safe, and what an Indefinite outcome tells the caller to do.

The decisions (which node, retries, rotation, agreement, verification) are client/core.py's;
this class only carries out its effects with blocking gRPC calls.

Example::

    with LedgerClient("consortium/genesis.json") as client:
        tx = client.tx.transfer([LegSpec("alice", "bob", "USD.BANK-A", 12550)]).signed_by(alice_key)
        outcome = client.submit(tx)
        if isinstance(outcome, Committed) and outcome.ok:
            print("settled at height", outcome.height)
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from client import core
from client.core import BLOCKS_PER_CALL, SUBMIT_CHUNK, Op
from client.history import EscrowInfo, FeedBlock, HistoryEntry, HistoryPage, Statement
from client.models import (
    AccountInfo,
    BalanceInfo,
    BlockRange,
    Committed,
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

T = TypeVar("T")


class LedgerClient(core.ClientCore):
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

    # A node without SubmitStream answers it with this at once (submit_many then batches).
    STREAM_UNSERVED = frozenset({grpc.StatusCode.UNIMPLEMENTED})

    # --- plumbing: carry out the core's effects ------------------------------------------

    def _stub(self, endpoint: str) -> api_pb2_grpc.LedgerServiceStub:
        stub: api_pb2_grpc.LedgerServiceStub | None = self._stubs.get(endpoint)
        if stub is None:
            channel = tls.channel(self.genesis, endpoint, CHANNEL_OPTIONS, insecure=self.insecure)
            self._channels[endpoint] = channel
            stub = api_pb2_grpc.LedgerServiceStub(channel)
            self._stubs[endpoint] = stub
        return stub

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

    def _perform(self, effect: core.Effect, opened: list[Any]) -> Any:
        if isinstance(effect, core.Call | core.Open):
            method = getattr(self._stub(effect.endpoint), effect.method)
            request = iter(effect.request) if isinstance(effect.request, tuple) else effect.request
            answer = method(request, timeout=effect.timeout, metadata=effect.metadata)
            if isinstance(effect, core.Open):
                opened.append(answer)
            return answer
        if isinstance(effect, core.Next):
            return next(effect.stream, core.END)
        if isinstance(effect, core.Cancel):
            effect.stream.cancel()
            opened.remove(effect.stream)  # a feed opens one per node it fails over to, for ever
        elif isinstance(effect, core.Sleep):
            time.sleep(effect.seconds)  # retry backoff between rounds, not a wait for an event
        elif isinstance(effect, core.Gather):
            return [self._run(op) for op in effect.ops]  # one at a time
        return None

    def _run(self, op: Op[T]) -> T:
        """Carry out ``op``'s effects until it returns."""
        result: list[T] = []
        for emitted in self._emitted(core.collect(op, result)):
            raise AssertionError(f"{emitted} emitted by an operation that returns one value")
        return result[0]

    def _emitted(self, op: Op[None]) -> Iterator[Any]:
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
                    value = self._perform(effect, opened)
                except grpc.RpcError as exc:
                    error = exc
        finally:
            for stream in opened:
                stream.cancel()
            op.close()

    # --- transactions ---------------------------------------------------------------------

    def submit(self, tx: Transaction | bytes, *, timeout_s: float | None = None) -> Outcome:
        """Submit a signed transaction and wait for its verified receipt.

        Returns Committed (definite, with the ledger's result), Rejected (the nodes' stateless
        checks refused the envelope) or Indefinite (deadline passed; resubmitting the same
        envelope is safe). Raises only for a malformed argument (TxBuildError).
        """
        return self._run(self.op_submit(tx, timeout_s))

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
        return self._run(self.op_submit_many(txs, timeout_s, chunk_size, self.STREAM_UNSERVED))

    def wait(
        self, tx_id: bytes, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> Committed | None:
        """The verified receipt of ``tx_id`` if it is committed (asks nodes in turn), else None."""
        return self._run(self.op_wait(tx_id, as_key, timeout_s))

    # --- queries --------------------------------------------------------------------------

    def transaction(
        self, tx_id: bytes, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> TransactionInfo:
        """A committed transaction with its verified receipt. NotFound if no node has it;
        Pending (a NotFound) if none has executed it and one holds it, not executed yet. Read
        with a key that signed it, or a member's operator key."""
        return self._run(self.op_transaction(tx_id, as_key, timeout_s))

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
        return self._run(self.op_account(account_id, confirmations, min_height, as_key, timeout_s))

    def balance_proof(
        self, account_id: str, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> tuple[VerifiedBalances, bytes]:
        """The account's balances as of the latest stable checkpoint, verified against genesis
        alone (client/proofs.py), and the proof's bytes (keep them: ``verify_balance_proof``
        checks them again later, offline). A node whose proof does not verify is skipped for the
        next; Unverified when none did. Read like ``account``."""
        return self._run(self.op_balance_proof(account_id, as_key, timeout_s))

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
        return self._run(self.op_balances(account_id, confirmations, min_height, as_key, timeout_s))

    def block(
        self, height: int, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> VerifiedBlock:
        """The certified block at ``height``, verified against the genesis keys. With a key
        that is not a member's operator key, the node serves it without bodies
        (``VerifiedBlock.bodies`` False: header, certificate, attestations)."""
        return self._run(self.op_block(height, as_key, timeout_s))

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
        return self._run(self.op_blocks(from_height, max_blocks, as_key, timeout_s))

    def supply(
        self, *, min_height: int = 0, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> Supply:
        """Per-asset minted, redeemed and outstanding amounts as of ``Supply.height`` (node-local
        read); ``min_height`` as in ``account``. Any key the ledger knows may read it."""
        return self._run(self.op_supply(min_height, as_key, timeout_s))

    def status(self, endpoint: str | None = None, *, timeout_s: float | None = None) -> NodeStatusInfo:
        """One node's status (the given endpoint, else the first that answers)."""
        return self._run(self.op_status(endpoint, timeout_s))

    def statuses(self, *, timeout_s: float | None = None) -> dict[str, NodeStatusInfo | str]:
        """Every endpoint's status, or the error it gave (each within its own deadline)."""
        return self._run(self.op_statuses(timeout_s))

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
        return self._run(self.op_history(account_id, from_ms, to_ms, kinds, after, limit, as_key, timeout_s))

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
        yield from self._emitted(
            self.op_history_entries(account_id, from_ms, to_ms, kinds, as_key, timeout_s)
        )

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
        return self._run(self.op_statement(account_id, from_ms, to_ms, as_key, timeout_s))

    def escrow(
        self, escrow_id: str, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> EscrowInfo:
        """An escrow by id (node-local read, by the owner of its payer or payee or their banks'
        operator); NotFound for an unknown one."""
        return self._run(self.op_escrow(escrow_id, as_key, timeout_s))

    def escrows(
        self, account_id: str, *, as_key: SigningKey | None = None, timeout_s: float | None = None
    ) -> list[EscrowInfo]:
        """Every escrow the account pays or is paid by, in escrow_id order."""
        return self._run(self.op_escrows(account_id, as_key, timeout_s))

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
        yield from self._emitted(self.op_feed(from_height, accounts, assets, banks, as_key))
