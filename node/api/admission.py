"""Admission: the client transactions (Submit, SubmitBatch, the requests of SubmitStream) and the
peer relays a node takes, and who may have the consortium spend anything on them.

Execution records a result only for an authorized transaction (node/app/rules.py), so a
stranger can never have anything stored as final. Admission goes further and refuses, before
any signature is verified, an envelope that no known key signed (UNAUTHENTICATED): such a
transaction could not be authorized, and would cost every node a signature check, a place in a
block and disk. Known keys:

- a member's operator key (genesis);
- the owner key of an account that is not frozen (the state's owner key index, s/k/): a bank
  that freezes every account of a key that misbehaves makes the key unknown again;
- the owner key of an OpenAccount this node admitted, signed by that member's operator, until
  it executes (bounded): a new client's first transfer may follow its account opening without
  waiting for the block.

This is a node-local rule (each node reads its own state), not consensus: a transaction one
node admits may be refused by another a moment later; execution alone decides the result.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from ledger.crypto import tx_id_of
from ledger.genesis import Genesis
from ledger.v1 import api_pb2, tx_pb2
from node.api.common import Abort, is_final, parse, status_of
from node.api.port import NodePort
from node.app import state as st
from node.app.codec import envelope_tx_id
from node.app.tx import CheckedTx, InvalidTransaction, OpenAccount
from node.app.validate import CheckCache, KnownKey
from node.config import NodeLimits
from node.log import EventLog
from node.storage.kv import KVReader

VOUCHED_KEYS_MAX = 10_000  # owner keys of admitted, not yet executed account openings


class KnownKeys:
    def __init__(self, genesis: Genesis) -> None:
        self._genesis = genesis
        self._operators = frozenset(m.operator_key for m in genesis.members)
        self._vouched: dict[bytes, None] = {}  # insertion order: the oldest leaves first

    def predicate(self, r: KVReader) -> KnownKey:
        """Whether a public key is known, read in ``r`` (the caller's read transaction)."""
        operators, vouched = self._operators, self._vouched

        def known(public_key: bytes) -> bool:
            return (
                public_key in operators
                or public_key in vouched
                or st.active_accounts_of_key(r, public_key) > 0
            )

        return known

    def admitted(self, checked: CheckedTx) -> None:
        """The node took ``checked``: an account opening signed by its bank vouches for the key."""
        op = checked.body.op
        if not isinstance(op, OpenAccount):
            return
        member = self._genesis.member(op.member_id)
        if member is None or member.operator_key not in checked.signers:
            return
        self._vouched.pop(op.owner_key, None)
        self._vouched[op.owner_key] = None
        while len(self._vouched) > VOUCHED_KEYS_MAX:
            del self._vouched[next(iter(self._vouched))]


class Admission:
    """Submit and SubmitBatch, and the admission of relayed transactions (which the driver calls
    in the relaying connection's turn: Driver.on_forward)."""

    def __init__(
        self,
        genesis: Genesis,
        limits: NodeLimits,
        node: NodePort,
        checks: CheckCache,
        log: EventLog,
        space_left: Callable[[], str | None],
    ) -> None:
        self.limits = limits
        self.node = node
        self.checks = checks
        self.log = log
        self.known_keys = KnownKeys(genesis)
        self.space_left = space_left  # why the store cannot take new work now, or None

    def admit(self, r: KVReader, raw: bytes, known: KnownKey | None = None) -> bytes:
        """Admit one serialized envelope (r: a read transaction for the finality check; known:
        the known-key predicate of r, when the caller admits several in it)."""
        full = self.space_left()
        if full is not None:
            self.log.count("rejected_disk_budget")
            raise Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"node is near its disk budget ({full}); it executes what was ordered but takes no new work",
            )
        try:
            checked = self.checks.check(raw, known or self.known_keys.predicate(r))
        except InvalidTransaction as exc:
            self.log.count(f"rejected_{exc.code.name}")
            raise Abort(status_of(exc.code), str(exc)) from exc
        if is_final(r, checked.tx_id):
            return checked.tx_id  # already final: a retry is answered, not re-proposed
        if not self.node.submit(checked.tx_id, raw):
            self.log.count("rejected_pending_full")
            raise Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"node has {self.limits.pending_requests_max} pending transactions (pending_requests_max); retry later",
            )
        self.checks.keep(checked)
        self.known_keys.admitted(checked)
        return checked.tx_id

    def admit_forwarded(self, envelopes: list[bytes]) -> list[tuple[bytes, bytes]]:
        """(tx_id, envelope) of the envelopes a peer relayed that pass admission. The same checks
        as a client's, but a failure is a peer's bad input: dropped and counted, never answered.
        Ones already final here are dropped too: after a restart the replica no longer remembers
        what it executed, and would hold them as pending forever (and time out into a view
        change). Those, and exact copies of what the replica already holds, are dropped before
        the (costly) signature check: under load most relayed copies arrive after the primary's
        pre-prepare did. Other bytes under a held tx_id still go on: a stranger's copy with some
        signatures stripped must not keep the genuine one from every replica."""
        held = self.node.held_by_replica()
        envelopes = [e for e in map(_canonical_envelope, envelopes) if e is not None]
        ids = [envelope_tx_id(raw) for raw in envelopes]
        checked: list[tuple[bytes, bytes]] = []
        with self.node.read() as r:
            final = {tx_id for tx_id in ids if tx_id not in held and is_final(r, tx_id)}
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
        req = parse(api_pb2.SubmitRequest, raw)
        if not req.HasField("envelope"):
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "envelope is required")
        with self.node.read() as r:
            tx_id = self.admit(r, req.envelope.SerializeToString())
        return api_pb2.SubmitResponse(tx_id=tx_id).SerializeToString()

    async def submit_batch(self, raw: bytes) -> bytes:
        reply, _ = self.batch(parse(api_pb2.SubmitBatchRequest, raw), room=None)
        return reply

    def batch(self, req: api_pb2.SubmitBatchRequest, room: int | None) -> tuple[bytes, list[bytes]]:
        """(serialized SubmitBatchResponse, tx_ids accepted). ``room``: how many may be
        accepted (SubmitStream's cap on its waiting transactions); the rest are refused."""
        if len(req.envelopes) > self.limits.submit_batch_max:
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(req.envelopes)} envelopes; at most {self.limits.submit_batch_max} (submit_batch_max)",
            )
        out = api_pb2.SubmitBatchResponse()
        accepted: list[bytes] = []
        with self.node.read() as r:  # one read transaction for the batch's finality checks
            known = self.known_keys.predicate(r)
            for envelope in req.envelopes:
                item = out.items.add()
                item.tx_id = tx_id_of(envelope.body)
                try:
                    if room is not None and len(accepted) >= room:
                        raise Abort(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"{self.limits.pending_requests_max} transactions of this stream wait for "
                            "receipts (pending_requests_max); retry later",
                        )
                    accepted.append(self.admit(r, envelope.SerializeToString(), known))
                    item.accepted = True
                except Abort as exc:
                    item.accepted = False
                    item.error = exc.message
                    item.status_code = exc.code.value[0]
        return out.SerializeToString(), accepted


def _canonical_envelope(raw: bytes) -> bytes | None:
    """A relayed envelope as a client's is admitted: re-encoded once (field order, unknown
    fields), so two encodings of one copy are one request. None when it does not parse."""
    try:
        return tx_pb2.Envelope.FromString(raw).SerializeToString()
    except Exception:  # DecodeError and friends: a peer's garbage
        return None
