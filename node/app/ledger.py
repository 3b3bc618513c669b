"""Ledger: executes committed batches deterministically and answers read-side queries.

    ledger = Ledger(genesis)
    out = ledger.execute(w, height, timestamp_ms, envelopes)

Execution writes only keys under b"s/" through ``w`` (the caller's write transaction, which
also stores the block), never raises on bad input, and is deterministic: the same batches on
the same genesis give the same results and state root on every node.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ledger import merkle
from ledger.crypto import verify as ed25519_verify
from ledger.genesis import Genesis
from node.app import postings, queries, rules, statetree
from node.app import state as st
from node.app.codec import encode_result_fields, envelope_tx_id
from node.app.tx import Code, EscrowPost, EscrowVoid, InvalidTransaction
from node.app.validate import CheckCache, Verifier
from node.storage.kv import KVReader, KVWriter

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
RETRY = "RETRY"  # BatchOutcome.codes: a tx_id already final, answered with its first result
DETAIL_CHARS_MAX = 200  # result details are consensus bytes; keep them short and bounded


class HeightError(ValueError):
    """execute() was called out of order: a bug in the caller, never a client's fault."""


@dataclass(frozen=True)
class BatchOutcome:
    height: int
    consensus_time_ms: int
    tx_ids: tuple[bytes, ...]  # per envelope; SHA-256(body), or SHA-256(raw) if unparseable
    results: tuple[bytes, ...]  # serialized ledger.v1.TxResult per envelope, in order
    results_root: bytes  # ledger.merkle.root(results)
    state_root: bytes  # SHA-256(prev_root || height || canonical write set)
    expired_escrows: tuple[str, ...]  # voided by consensus time at the start of the block
    recorded: tuple[bool, ...] = ()  # per envelope: its result is the tx_id's final one (TxResult.final)
    codes: tuple[str, ...] = ()  # per envelope: its result code's name, or "RETRY" (a final tx_id again)
    # What each successful transaction (and each expiry) did to balances, in execution order,
    # for the node-local history index: not part of the state root (node/app/postings.py).
    postings: tuple[postings.Posting, ...] = ()
    # The state tree's root after this block at tree heights (multiples of tree_interval), else
    # empty: what the block's checkpoint signs beside state_root (node/app/statetree.py).
    tree_root: bytes = b""


class _Overlay:
    """One transaction's changes, applied to the block only when it succeeds."""

    __slots__ = ("changes", "parent")

    def __init__(self, parent: st.Reader) -> None:
        self.parent = parent
        self.changes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        changes = self.changes
        return changes[key] if key in changes else self.parent.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        assert key.startswith(st.PREFIX), f"ledger write outside b's/': {key!r}"
        self.changes[key] = value

    def delete(self, key: bytes) -> None:
        assert key.startswith(st.PREFIX), f"ledger delete outside b's/': {key!r}"
        self.changes[key] = None


class _Block:
    """The block's write set, written to the store once, in key order, when the block ends
    (flush); reads see it first. It is also what the state root hashes. A key written many
    times in a block (a busy account's balance) costs one store write, and values read are
    kept for the block, so each key is read from the store at most once."""

    __slots__ = ("known", "w", "writes")

    def __init__(self, w: KVWriter) -> None:
        self.w = w
        self.writes: dict[bytes, bytes | None] = {}
        # Every key read or written in this block, with its current value (None: absent), so
        # that a read is one lookup whether the key was written or only read before.
        self.known: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        known = self.known
        if key in known:
            return known[key]
        value = known[key] = self.w.get(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        assert key.startswith(st.PREFIX)
        self.writes[key] = self.known[key] = value

    def delete(self, key: bytes) -> None:
        assert key.startswith(st.PREFIX)
        self.writes[key] = self.known[key] = None

    def apply(self, overlay: _Overlay) -> None:
        # _Overlay.put and delete asserted every key's prefix already.
        self.writes.update(overlay.changes)
        self.known.update(overlay.changes)

    def flush(self) -> list[bytes]:
        """Write the block's changes to the store; returns the written keys, sorted."""
        keys = sorted(self.writes)
        for key in keys:
            value = self.writes[key]
            if value is None:
                self.w.delete(key)
            else:
                self.w.put(key, value)
        return keys


_U32 = struct.Struct(">I").pack


def write_set_root(
    prev_root: bytes, height: int, writes: dict[bytes, bytes | None], keys: list[bytes] | None = None
) -> bytes:
    """SHA-256(prev_root || height || for each key in order: len key, key, 0 | 1 len value).
    ``keys``: sorted(writes), when the caller has it already."""
    # One join and one hash call: cheaper than a hash update per piece, same bytes hashed.
    parts = [prev_root, struct.pack(">Q", height)]
    for key in sorted(writes) if keys is None else keys:
        value = writes[key]
        if value is None:
            parts += (_U32(len(key)), key, b"\x00")
        else:
            parts += (_U32(len(key)), key, b"\x01", _U32(len(value)), value)
    return hashlib.sha256(b"".join(parts)).digest()


class Ledger:
    """The tokenized-deposit state machine of one chain.

    ``verify`` is the Ed25519 check; only the throughput benchmark replaces it (to measure
    execution without signature cost). ``checks`` is where execution gets each envelope's
    stateless check: a node shares it with its admission path, so that a transaction it admitted
    is not parsed and verified a second time when its block executes."""

    def __init__(
        self,
        genesis: Genesis,
        verify: Verifier = ed25519_verify,
        checks: CheckCache | None = None,
        history: bool = True,
        tree_interval: int = 0,
    ) -> None:
        """``tree_interval``: build the state tree every that many heights (the checkpoint
        interval; 0: no tree, for tools that only replay)."""
        self.genesis = genesis
        self.tree_interval = tree_interval
        self.history = history  # build postings (BatchOutcome.postings); off only to measure their cost
        self.checks = checks if checks is not None else CheckCache(genesis, verify)

    # --- execution ---------------------------------------------------------------------------

    def execute(
        self, w: KVWriter, height: int, timestamp_ms: int, envelopes: Sequence[bytes]
    ) -> BatchOutcome:
        if not INT64_MIN <= timestamp_ms <= INT64_MAX:
            raise ValueError(f"timestamp_ms {timestamp_ms} is not an int64 (BlockHeader.timestamp_ms)")
        last = queries.last_height(w)
        if height != last + 1:
            raise HeightError(f"execute height {height}, but the last executed height is {last}")
        prev_root = queries.state_root(w, self.genesis)
        now_ms = max(queries.consensus_time(w), timestamp_ms)
        block = _Block(w)
        block.put(st.META_TIME, struct.pack(">q", now_ms))
        posted: list[postings.Posting] | None = [] if self.history else None
        expired = self._expire_escrows(block, now_ms, posted)
        tx_ids: list[bytes] = []
        results: list[bytes] = []
        recorded: list[bool] = []
        codes: list[str] = []
        for index, raw in enumerate(envelopes):
            tx_id, result, final, code = self._execute_one(block, height, index, now_ms, raw, posted)
            tx_ids.append(tx_id)
            results.append(result)
            recorded.append(final)
            codes.append(code)
        written = block.flush()
        state_root = write_set_root(prev_root, height, block.writes, written)
        tree_root = b""
        if self.tree_interval:
            statetree.record_writes(w, height, written)
            if height % self.tree_interval == 0:
                tree_root = statetree.update(w, height)
        w.put(st.META_HEIGHT, st.u64(height))
        w.put(st.META_ROOT, state_root)
        return BatchOutcome(
            height=height,
            consensus_time_ms=now_ms,
            tx_ids=tuple(tx_ids),
            results=tuple(results),
            results_root=merkle.root(results),
            state_root=state_root,
            expired_escrows=expired,
            recorded=tuple(recorded),
            codes=tuple(codes),
            postings=tuple(posted or ()),
            tree_root=tree_root,
        )

    def _expire_escrows(
        self, block: _Block, now_ms: int, posted: list[postings.Posting] | None
    ) -> tuple[str, ...]:
        # The scan is lazy and the index is in expiry order, so this reads only the due escrows
        # and the first one not yet due: O(due), not O(pending). All reads end (break) before
        # the first write below, as KVWriter requires of a scan (node/storage/kv.py).
        due: list[str] = []
        for key, _ in block.w.scan(st.EXPIRY):
            expires_at_ms, escrow_id = st.expiry_of_key(key)
            if expires_at_ms > now_ms:
                break  # the index is in expiry order
            due.append(escrow_id)
        due.sort()  # escrow-id order, as the architecture doc specifies
        for escrow_id in due:
            esc = st.get_escrow(block, escrow_id)
            assert esc is not None and esc.status == st.ESCROW_PENDING, f"expiry index names {escrow_id}"
            rules.return_to_payer(self.genesis, block, esc, st.ESCROW_EXPIRED)
            if posted is not None:
                posted += postings.of_expiry(block, esc)
        return tuple(due)

    def _execute_one(
        self,
        block: _Block,
        height: int,
        index: int,
        now_ms: int,
        raw: bytes,
        posted: list[postings.Posting] | None,
    ) -> tuple[bytes, bytes, bool, str]:
        """(tx_id, serialized TxResult, whether that result is recorded under tx_id, the code's
        name or RETRY)"""
        try:
            checked = self.checks.take(raw)
        except InvalidTransaction as exc:
            # Not authorized (or not even a transaction): answered in the block, never recorded.
            tx_id = envelope_tx_id(bytes(raw)) if isinstance(raw, bytes | bytearray | memoryview) else b""
            result = self._result(tx_id, exc.code, exc.message, height, index, final=False)
            return tx_id, result, False, exc.code.name
        key = st.result_key(checked.tx_id)
        first = block.get(key)
        if first is not None:
            return checked.tx_id, first, True, RETRY  # a retry: the first result, unchanged
        overlay = _Overlay(block)
        outcome = rules.apply(self.genesis, overlay, checked, now_ms)
        result = self._result(checked.tx_id, outcome.code, outcome.detail, height, index, outcome.recorded)
        if outcome.code == Code.OK:
            if posted is not None:
                op = checked.body.op
                # A post or void rewrote the escrow (status only): its fields are the ones held.
                escrow = (
                    st.get_escrow(overlay, op.escrow_id) if isinstance(op, EscrowPost | EscrowVoid) else None
                )
                posted += postings.of_transaction(self.genesis, overlay, op, checked.tx_id, index, escrow)
            block.apply(overlay)
        if outcome.recorded:
            block.put(key, result)
        return checked.tx_id, result, outcome.recorded, outcome.code.name

    @staticmethod
    def _result(tx_id: bytes, code: Code, detail: str, height: int, index: int, final: bool) -> bytes:
        return encode_result_fields(tx_id, code, detail[:DETAIL_CHARS_MAX], height, index, final)

    # --- read side (the node API) ------------------------------------------------------------

    def account(self, r: KVReader, account_id: str) -> queries.AccountView | None:
        return queries.account(r, account_id)

    def tx_result(self, r: KVReader, tx_id: bytes) -> bytes | None:
        return queries.tx_result(r, tx_id)

    def escrow(self, r: KVReader, escrow_id: str) -> st.EscrowRecord | None:
        return queries.escrow(r, escrow_id)

    def supply(self, r: KVReader) -> tuple[queries.SupplyView, ...]:
        return queries.supply(r, self.genesis)

    def last_height(self, r: KVReader) -> int:
        return queries.last_height(r)

    def state_root(self, r: KVReader) -> bytes:
        return queries.state_root(r, self.genesis)

    def consensus_time(self, r: KVReader) -> int:
        return queries.consensus_time(r)

    def check_invariants(self, r: KVReader) -> list[str]:
        return queries.check_invariants(r, self.genesis)
