"""The sans-I/O PBFT replica (Castro and Liskov, simplified): events in, actions out.

Entry points follow docs/ARCHITECTURE.md ("Replica contract"). Every method that may send
returns its Persist actions before the sends that depend on them (persist before send)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from node.pbft import journal as jr
from node.pbft import wire
from node.pbft.actions import (
    Action,
    Attested,
    Broadcast,
    ConsensusCrypto,
    ForwardRequests,
    Note,
)
from node.pbft.config import ReplicaConfig
from node.pbft.views import ViewChanging
from node.pbft.wire import (
    Attestation,
    Body,
    Checkpoint,
    Commit,
    NewView,
    Prepare,
    PrePrepare,
    Signed,
    ViewChange,
)

VARIANTS_MAX = 2  # other copies held per tx_id


class Replica(ViewChanging):
    def __init__(
        self,
        config: ReplicaConfig,
        crypto: ConsensusCrypto,
        journal: Mapping[bytes, bytes],
        last_executed: int,
        last_state_root: bytes,
        *,
        now_ms: int,
        vote_floor: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(config, crypto, last_executed, last_state_root, now_ms)
        self._restore(journal)
        self.vote_floor = vote_floor

    # --- abstaining ------------------------------------------------------------------------
    # A replica whose journal is older than what it may have sent (restored from a backup, its
    # data directory wiped) must not vote against its lost votes. The node keeps, outside the
    # data directory, a vote record (node/votes.py): the highest view it entered and the highest
    # sequence it could vote on (its stable checkpoint + log_window), raised before any message
    # leaves. Given that record as ``vote_floor`` = (V, S), the replica abstains: it sends no
    # PRE-PREPARE, PREPARE, COMMIT, VIEW-CHANGE or NEW-VIEW and takes none, and follows the chain
    # only by certified blocks (catch-up on the others' checkpoints), signing only checkpoints
    # and attestations, which state what certified blocks executed to and cannot contradict
    # anything. Once its stable checkpoint has reached S (every sequence it could have voted on
    # is below it, certified and never re-proposed) and it has executed that far, it votes
    # again, in a view no lower than V: it may have sent a VIEW-CHANGE for V, and must not come
    # back down (docs/ARCHITECTURE.md, "A replica alone in another view").

    @property
    def abstaining(self) -> bool:
        return self.vote_floor is not None

    def _maybe_stop_abstaining(self) -> None:
        floor = self.vote_floor
        if floor is None or self.stable_seq < floor[1] or self.last_executed < self.stable_seq:
            return
        self.vote_floor = None
        self._out.append(Note("abstain_ended", {"floor_view": floor[0], "floor_sequence": floor[1]}))
        if floor[0] > self.view:
            self._start_view_change(floor[0])

    # --- entry points ----------------------------------------------------------------------

    def on_request(self, tx_id: bytes, envelope: bytes) -> list[Action]:
        self._out = []
        try:
            real_id, canonical = wire.canonical_envelope(envelope)
        except wire.WireError:
            self._reject("bad_request")
            return self._out
        if real_id != tx_id:
            self._reject("bad_request")
            return self._out
        if wire.request_key(canonical) in self._recent_executed:
            return self._out  # this very copy already executed: its result stands
        held = self.pending.get(tx_id)
        if held is not None:
            # Same tx_id, other signatures: keep a few copies, since only execution tells
            # which one is authorized (docs/ARCHITECTURE.md, "Which outcomes consume a tx_id").
            variants = self._variants.setdefault(tx_id, [])
            if held == canonical or canonical in variants or len(variants) >= VARIANTS_MAX:
                if not variants:
                    del self._variants[tx_id]
                return self._out
            variants.append(canonical)
        elif len(self.pending) >= self.cfg.pending_requests_max:
            self._reject("pending_full")
            return self._out
        else:
            self.pending[tx_id] = canonical
            self._pending_since[tx_id] = self.now_ms
            self._track_unproposed(tx_id)
        if self._deadline is None:
            self._deadline = self.now_ms + self._timeout()
        primary = self.cfg.primary(self.view)
        if primary == self.id:
            self._maybe_propose()
        elif not self.in_view_change:
            self._out.append(ForwardRequests(primary, (canonical,)))
        return self._out

    def on_message(self, peer_message: bytes) -> list[Action]:
        self._out = []
        if len(peer_message) > self.cfg.peer_message_bytes_max:
            self._reject("oversize")
            return self._out
        try:
            signed_raw, batch = wire.decode_peer(peer_message)
        except wire.WireError:
            self._reject("garbage")
            return self._out
        s = self.verifier.signed(signed_raw)
        if s is None:
            self._reject(self.verifier.failure)
            return self._out
        if s.signer == self.id:
            return self._out  # our own message echoed back (a replayer): nothing to learn
        self._dispatch(s, batch)
        return self._out

    def on_tick(self, now_ms: int) -> list[Action]:
        self._out = []
        gap = now_ms - self.now_ms
        self.now_ms = max(self.now_ms, now_ms)
        self._maybe_stop_abstaining()
        if self.vote_floor is not None:  # no timers, no view changes: catch-up only
            # Asked at each checkpoint it is behind, and once a retransmit period anyway: it
            # takes no votes, so nothing else tells it of blocks after the last checkpoint.
            if (
                self.next_execute <= self.stable_seq
                or self.now_ms - self._last_retransmit_ms >= self.cfg.retransmit_ms
            ):
                self._last_retransmit_ms = self.now_ms
                self._fetch(tuple(r for r in range(self.cfg.n) if r != self.id))
            return self._out
        if self._deadline is not None and gap > self.cfg.view_change_timeout_ms // 4:
            # This process was frozen (SIGSTOP, a VM pause, a long stall): what the others sent
            # meanwhile is still queued behind this tick, so time it could not watch does not
            # count against the primary. Firing now left the view the others were still
            # committing in, and the next failure stalled them all (chaos seed 303, round 27).
            self._deadline += gap
        if self._deadline is not None and self.now_ms >= self._deadline:
            self._timer_expired()
        elif self._deadline is None and self._work_outstanding():
            self._deadline = self.now_ms + self._timeout()
        if self.next_execute <= self.stable_seq:
            self._fetch(tuple(r for r in range(self.cfg.n) if r != self.id))
        self._follow_lone_view()
        self._maybe_propose()
        if self.now_ms - self._last_retransmit_ms >= self.cfg.retransmit_ms:
            self._last_retransmit_ms = self.now_ms
            self._retransmit()
            self._fetch_if_behind()
        return self._out

    def on_peer_up(self, peer: int) -> list[Action]:
        """The transport's link to ``peer`` (re)connected."""
        self._out = []
        if 0 <= peer < self.cfg.n and peer != self.id and self.vote_floor is None:
            self._bring_up_to_date(peer)
        return self._out

    def on_executed(
        self, sequence: int, state_root: bytes, results_root: bytes, tree_root: bytes = b""
    ) -> list[Action]:
        """``tree_root``: the state tree's root after ``sequence``, at checkpoint sequences."""
        self._out = []
        assert sequence == self.last_executed + 1, "executed out of order"
        digest = self._executing.pop(sequence)
        self.last_executed = sequence
        self.last_state_root = state_root
        att = self._sign(Attestation(sequence, digest, results_root, state_root, self.id))
        self._out.append(Broadcast(wire.encode_peer(att.raw)))
        self._on_attestation(att)
        if sequence % self.cfg.checkpoint_interval == 0:
            ck = self._sign(Checkpoint(sequence, state_root, self.id, tree_root))
            self._persist(jr.seq_key(jr.CHECKPOINT, sequence), ck.raw)
            self._own_checkpoint = ck
            self._out.append(Broadcast(wire.encode_peer(ck.raw)))
            self._on_checkpoint(ck)
        self._maybe_propose()  # a slot in the pipeline is free again
        return self._out

    def on_blocks(self, blocks: Sequence[bytes]) -> list[Action]:
        """Certified blocks from a peer (state transfer): each is executed only after its
        header matches its batch and its commit certificate verifies."""
        self._out = []
        progressed = False
        for raw in blocks:
            if len(raw) > self.cfg.peer_message_bytes_max:
                self._reject("oversize")
                break
            try:
                header_raw, envelopes, commits = wire.decode_certified_block(raw)
                header = wire.decode_header(header_raw)
            except wire.WireError:
                self._reject("bad_block")
                break
            if header.height < self.next_execute:
                continue
            if header.height != self.next_execute:
                self._reject("block_gap")
                break
            try:
                tx_ids = wire.tx_ids_of(envelopes)
            except wire.WireError:
                self._reject("bad_block")
                break
            if not wire.header_matches(header, self.cfg.chain_id, header.height, envelopes, tx_ids):
                self._reject("bad_block")
                break
            digest = wire.digest_of(header_raw)
            certificate = self.verifier.commit_certificate(header.height, digest, commits)
            if certificate is None:
                self._reject("bad_certificate")
                break
            for signer in certificate.signers:
                self._saw_vote(signer, certificate.vote)
            # Its valid commits only (all of an honest certificate's, in order): kept and served.
            self._execute(header.height, header_raw, envelopes, certificate.entries, digest, tx_ids)
            progressed = True
        if progressed:
            self._try_execute()
            self._on_progress()
        return self._out

    # --- dispatch --------------------------------------------------------------------------

    def _from_the_future(self, m: PrePrepare) -> bool:
        # Consensus time never goes back (the ledger takes max(previous, proposed)), so one
        # block stamped far ahead would expire every escrow and refuse new ones for good. Only
        # an upper bound: re-proposals in a new view rightly carry their older timestamps.
        try:
            header = wire.decode_header(m.header)
        except wire.WireError:
            return False  # _accept_pre_prepare rejects and counts it as bad_batch
        return header.timestamp_ms > self.now_ms + self.cfg.timestamp_skew_ms_max

    def _dispatch(self, s: Signed, batch: memoryview | None) -> None:
        m: Body = s.msg
        if self.vote_floor is not None and not isinstance(m, Checkpoint | Attestation):
            self.counters["abstaining_ignored"] += 1  # not the sender's fault: no rejection
            return
        if isinstance(m, PrePrepare | Prepare | Commit):
            self._saw_vote(s.signer, m.view)
        if isinstance(m, PrePrepare):
            if batch is None:
                self._reject("missing_batch")
            elif self.in_view_change or m.view != self.view:
                self._reject("wrong_view")
            elif not self._in_window(m.sequence):
                self._reject("out_of_window")
            elif self._from_the_future(m):
                self._reject("future_timestamp")
            else:
                envelopes = self._batch_of(m, batch)
                if envelopes is not None:
                    self._accept_pre_prepare(s, envelopes)
        elif isinstance(m, Prepare | Commit):
            self._on_vote(s, m)
        elif isinstance(m, Checkpoint):
            self._on_checkpoint(s)
        elif isinstance(m, ViewChange):
            self._on_view_change(s, m)
        elif isinstance(m, NewView):
            self._on_new_view(s, m)
        else:
            self._on_attestation(s)

    def _batch_of(self, m: PrePrepare, batch: memoryview) -> tuple[bytes, ...] | None:
        """The envelopes of a signed pre-prepare's batch, parsed only now, and only as many as
        its signed header counts (so memory stays within about twice the message's size)."""
        try:
            return wire.decode_batch(batch, wire.decode_header(m.header).tx_count)
        except wire.WireError:
            self._reject("bad_batch")
            return None

    def _restore(self, journal: Mapping[bytes, bytes]) -> None:
        r = jr.restore(journal)
        self.view, self.in_view_change = r.view, r.in_view_change
        if r.stable_proof:
            first = self.verifier.signed(r.stable_proof[0])
            assert first is not None and isinstance(first.msg, Checkpoint), "corrupt stable record"
            assert self.verifier.checkpoint_proof(first.msg.sequence, r.stable_proof) is not None
            self.stable_seq, self.stable_proof = first.msg.sequence, r.stable_proof
        for seq, peer in r.pre_prepares.items():
            if seq <= self.stable_seq:
                continue
            signed_raw, batch_raw = wire.decode_peer(peer)
            s = self.verifier.signed(signed_raw)
            assert s is not None and isinstance(s.msg, PrePrepare) and batch_raw is not None, (
                "corrupt pre-prepare record"
            )
            batch = wire.decode_batch(batch_raw, wire.decode_header(s.msg.header).tx_count)
            slot = self._slot(seq)
            slot.pre_prepare, slot.pre_prepare_peer = s, peer
            slot.envelopes, slot.tx_ids = batch, wire.tx_ids_of(batch)
        for records, attr in ((r.prepares, "prepares"), (r.commits, "commits")):
            for seq, raw in records.items():
                if seq > self.stable_seq:
                    s = self.verifier.signed(raw)
                    assert s is not None, "corrupt vote record"
                    getattr(self._slot(seq), attr)[self.id] = s
        for seq, cert in r.certs.items():
            if seq > self.stable_seq:
                checked = self.verifier.prepared_cert(cert, self.view + 1)
                assert checked is not None, "corrupt prepared certificate record"
                slot = self._slot(seq)
                slot.cert, slot.prepared_view = cert, checked.view
        for seq, raw in sorted(r.checkpoints.items()):
            s = self.verifier.signed(raw)
            assert s is not None, "corrupt checkpoint record"
            self._own_checkpoint = s
            if seq > self.stable_seq:
                self._checkpoints.setdefault(self.id, {})[seq] = s
        if r.own_view_change is not None:
            vs = self.verifier.signed(r.own_view_change)
            vc_certs = self.verifier.view_change(vs) if vs is not None else None
            assert vs is not None and vc_certs is not None, "corrupt view-change record"
            self._own_view_change = vs.raw
            self._view_changes[self.id], self._vc_certs[self.id] = vs, vc_certs
        self._new_view_peer = r.new_view
        own_seqs = [q for q, sl in self.slots.items() if sl.pp is not None and sl.pp.view == self.view]
        self.seq_next = max([self.stable_seq, self.last_executed, *own_seqs])

    def _on_attestation(self, s: Signed) -> None:
        m = s.msg
        assert isinstance(m, Attestation)
        if m.sequence <= self.stable_seq - self.cfg.log_window:
            return
        if m.sequence > max(self.next_execute, self.stable_seq) + 2 * self.cfg.log_window:
            self._reject("out_of_window")
            return
        atts = self._attestations.setdefault(m.sequence, {})
        if s.signer in atts:
            return
        atts[s.signer] = s
        own = atts.get(self.id)
        if own is None or m.sequence in self._attested:
            return
        o = own.msg
        assert isinstance(o, Attestation)
        key = (o.digest, o.results_root, o.state_root)
        same = [
            a.raw
            for _, a in sorted(atts.items())
            if isinstance(a.msg, Attestation) and (a.msg.digest, a.msg.results_root, a.msg.state_root) == key
        ]
        if len(same) >= self.cfg.f + 1:
            self._attested.add(m.sequence)
            self._out.append(Attested(m.sequence, tuple(same[: self.cfg.f + 1])))
