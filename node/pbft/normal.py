"""The replica's state and its normal case: pre-prepare, prepare, commit, execution in order,
checkpoints, attestations and the state-transfer hooks. View changes are layered on top in
node/pbft/views.py and the entry points in node/pbft/replica.py."""

from __future__ import annotations

import itertools
from collections import Counter

from node.pbft import journal as jr
from node.pbft import wire
from node.pbft.actions import (
    Action,
    Broadcast,
    ConsensusCrypto,
    Execute,
    FetchBlocks,
    Note,
    Persist,
)
from node.pbft.config import ReplicaConfig
from node.pbft.log import Slot
from node.pbft.verify import CheckedCert, Verifier
from node.pbft.wire import (
    Body,
    Checkpoint,
    Commit,
    Prepare,
    PreparedCert,
    PrePrepare,
    Signed,
)

# Messages of a past view, outside the window or for another view: what an honest peer sends
# while it lags (restarted, cut off by a partition, around a view change), often most of what it
# sends for a while. Counted, but not in ``rejected``, which the driver charges to the peer's
# connection and penalizes: a penalized honest peer's VIEW-CHANGE waited in the new primary's
# queue and the view change stalled (chaos, issue 17). Their signatures verified; a member
# sending them costs what its valid messages cost, within its fair share.
STALE_KINDS = frozenset({"old_view", "out_of_window", "wrong_view"})


class ReplicaCore:
    def __init__(
        self,
        config: ReplicaConfig,
        crypto: ConsensusCrypto,
        last_executed: int,
        last_state_root: bytes,
        now_ms: int,
    ) -> None:
        self.cfg = config
        self.id = config.replica_id
        self.crypto = crypto
        self.verifier = Verifier(config, crypto)
        self.counters: Counter[str] = Counter()  # rejected inputs and notable events, by kind
        self.rejected = 0  # inputs rejected, all kinds (the driver charges them to their source)
        self._out: list[Action] = []

        self.view = 0
        self.in_view_change = False  # sent VIEW-CHANGE for self.view, its NEW-VIEW not yet accepted
        # (view, sequence) this replica may have voted up to before its journal was taken (a
        # restore from a backup, a wiped store): while set it abstains (replica.py, "Abstaining").
        self.vote_floor: tuple[int, int] | None = None
        self.stable_seq = 0
        self.stable_proof: tuple[bytes, ...] = ()
        self.slots: dict[int, Slot] = {}
        self.last_executed = last_executed  # confirmed by on_executed
        self.last_state_root = last_state_root
        self.next_execute = last_executed + 1  # next sequence to hand out as Execute
        self._executing: dict[int, bytes] = {}  # sequence -> digest, Execute sent, not confirmed
        self.seq_next = 0  # as primary: the last sequence assigned

        self.pending: dict[bytes, bytes] = {}  # tx_id -> canonical envelope, held until executed
        self._pending_since: dict[bytes, int] = {}
        self._proposed: set[bytes] = set()
        # pending tx_ids not yet proposed, oldest first: proposing takes from the front instead
        # of scanning every in-flight request on every call (that scan was quadratic under load)
        self._unproposed: dict[bytes, None] = {}
        self._variants: dict[bytes, list[bytes]] = {}  # tx_id -> other copies (other signatures)
        self._recent_executed: dict[bytes, None] = {}  # request_key of executed envelopes

        self._checkpoints: dict[int, dict[int, Signed]] = {}  # replica -> sequence -> checkpoint
        self._own_checkpoint: Signed | None = None
        self._attestations: dict[int, dict[int, Signed]] = {}  # sequence -> replica -> attestation
        self._attested: set[int] = set()
        self._view_changes: dict[int, Signed] = {}  # replica -> its latest valid VIEW-CHANGE
        self._vc_certs: dict[int, list[CheckedCert]] = {}
        self._own_view_change: bytes | None = None
        self._new_view_peer: bytes | None = None  # as primary: the NEW-VIEW of this view
        # replica -> (first, latest) ms we heard it ask for a view above ours since we entered
        # ours: a replica alone ahead of us, which we follow after a while (views.py)
        self._ahead: dict[int, tuple[int, int]] = {}
        # replica -> (times we followed it alone ahead lately, when we last did): each follow
        # doubles the wait before the next (views.py, _follow_lone_view)
        self._followed: dict[int, tuple[int, int]] = {}
        self._voted_in: dict[int, int] = {}  # replica -> highest view of its votes we verified
        # replica -> the highest view it has shown us it is in or asks for (votes, view changes)
        self._peer_view: dict[int, int] = {}
        self._own_vote: Signed | None = None  # the last prepare or commit we signed

        # The clock from birth, not from the first tick: a request or pre-prepare that arrives
        # before it would otherwise arm the view-change timer at time 0 plus one timeout, and
        # the first tick would fire it at once (regression: a backup restarted under load left
        # for a view nobody else wanted, and the next failure stalled the consortium 2.3 s).
        self.now_ms = now_ms
        self._deadline: int | None = None  # view-change timer
        self._vc_attempts = 0  # consecutive view changes without progress: timeout doubles
        self._last_retransmit_ms = 0
        self._resent_at: dict[int, int] = {}  # peer -> when we last brought it up to date
        self._last_fetch: tuple[int, int] | None = None  # (from_sequence, at ms)
        self.view_changes_started = 0

    @property
    def is_primary(self) -> bool:
        return self.cfg.primary(self.view) == self.id

    # --- normal case -----------------------------------------------------------------------

    def _accept_pre_prepare(
        self, s: Signed, envelopes: tuple[bytes, ...], own_tx_ids: tuple[bytes, ...] | None = None
    ) -> bool:
        """``own_tx_ids``: this replica's own proposal, whose header it built from exactly these
        envelopes and ids (so nothing of it is checked again)."""
        m = s.msg
        assert isinstance(m, PrePrepare)
        if own_tx_ids is not None:
            tx_ids = own_tx_ids
        else:
            try:
                header = wire.decode_header(m.header)
                tx_ids = wire.tx_ids_of(envelopes)
            except wire.WireError:
                self._reject("bad_batch")
                return False
            if wire.digest_of(m.header) != m.digest or not wire.header_matches(
                header, self.cfg.chain_id, m.sequence, envelopes, tx_ids
            ):
                self._reject("bad_batch")
                return False
        slot = self._slot(m.sequence)
        cur = slot.pp
        if cur is not None and cur.view >= m.view:
            if cur.view == m.view and cur.digest != m.digest:
                self._reject("equivocation")
                self._out.append(Note("equivocation", {"sequence": m.sequence, "view": m.view}))
            elif cur.view > m.view:
                self._reject("old_view")
            return False
        slot.pre_prepare = s
        slot.pre_prepare_peer = wire.encode_peer(s.raw, envelopes)
        slot.envelopes = envelopes
        slot.tx_ids = tx_ids
        slot.committed = False
        self._persist(jr.seq_key(jr.PRE_PREPARE, m.sequence), slot.pre_prepare_peer)
        if self.cfg.primary(m.view) != self.id:
            p = self._sign(Prepare(m.view, m.sequence, m.digest, self.id))
            self._persist(jr.seq_key(jr.PREPARE, m.sequence), p.raw)
            self._out.append(Broadcast(wire.encode_peer(p.raw)))
            Slot.add_vote(slot.prepares, p)
        if self._deadline is None:
            self._deadline = self.now_ms + self._timeout()
        self._check_prepared(slot)
        self._check_committed(slot)
        return True

    def _on_vote(self, s: Signed, m: Prepare | Commit) -> None:
        # Commits of an older view still prove a commitment (a replica stuck in a view change
        # learns from them what the others executed); prepares of an older view are useless.
        if m.view < self.view and isinstance(m, Prepare):
            self._reject("old_view")
            return
        if not self._in_window(m.sequence):
            self._reject("out_of_window")
            return
        if isinstance(m, Prepare) and s.signer == self.cfg.primary(m.view):
            self._reject("primary_prepare")
            return
        slot = self._slot(m.sequence)
        outcome = Slot.add_vote(slot.prepares if isinstance(m, Prepare) else slot.commits, s)
        if outcome == "conflict":
            self._reject("conflicting_vote")
            return
        if outcome != "new":
            return
        if isinstance(m, Prepare):
            self._check_prepared(slot)
            return
        self._check_committed(slot)

    def _check_prepared(self, slot: Slot) -> None:
        pp = slot.pp
        if pp is None or self.in_view_change or pp.view != self.view or slot.prepared_view >= pp.view:
            return
        assert slot.pre_prepare is not None
        primary = self.cfg.primary(pp.view)
        votes = [p for p in Slot.matching(slot.prepares, pp.view, pp.digest) if p.signer != primary]
        if len(votes) < 2 * self.cfg.f:
            return
        cert = PreparedCert(
            slot.pre_prepare.raw, tuple(v.raw for v in votes[: 2 * self.cfg.f]), slot.envelopes
        )
        slot.prepared_view = pp.view
        slot.cert = cert
        self._persist(jr.seq_key(jr.CERT, pp.sequence), jr.encode_cert(cert))
        c = self._sign(Commit(pp.view, pp.sequence, pp.digest, self.id))
        self._persist(jr.seq_key(jr.COMMIT, pp.sequence), c.raw)
        self._out.append(Broadcast(wire.encode_peer(c.raw)))
        Slot.add_vote(slot.commits, c)
        self._check_committed(slot)

    def _check_committed(self, slot: Slot) -> None:
        """Committed once 2f+1 commits of one view name the digest of the batch we hold: that is
        a commit certificate, the same proof state transfer accepts, so a replica that missed
        prepares still executes (it just does not vote without having prepared)."""
        pp = slot.pp
        if pp is None or slot.committed:
            return
        views = {v.msg.view for v in slot.commits.values() if isinstance(v.msg, Commit)}
        for view in sorted(views, reverse=True):
            votes = Slot.matching(slot.commits, view, pp.digest)
            if len(votes) >= self.cfg.quorum:
                # Keep the certificate now: later votes of a higher view replace these ones.
                slot.committed = True
                slot.commit_certificate = tuple(v.raw for v in votes[: self.cfg.quorum])
                if self._try_execute():
                    self._on_progress()
                return

    def _try_execute(self) -> bool:
        progressed = False
        while True:
            slot = self.slots.get(self.next_execute)
            pp = slot.pp if slot is not None else None
            if slot is None or pp is None or not slot.committed:
                return progressed
            self._execute(
                pp.sequence, pp.header, slot.envelopes, slot.commit_certificate, pp.digest, slot.tx_ids
            )
            progressed = True

    def _execute(
        self,
        seq: int,
        header: bytes,
        envelopes: tuple[bytes, ...],
        commits: tuple[bytes, ...],
        digest: bytes,
        tx_ids: tuple[bytes, ...],
    ) -> None:
        assert seq == self.next_execute and len(tx_ids) == len(envelopes)
        self._out.append(Execute(seq, header, envelopes, commits, tx_ids))
        self._executing[seq] = digest
        self.next_execute = seq + 1
        for t, env in zip(tx_ids, envelopes, strict=True):
            self._forget_request(t, env)
        while len(self._recent_executed) > self.cfg.recent_executed_max:
            del self._recent_executed[next(iter(self._recent_executed))]

    def _forget_request(self, tx_id: bytes, envelope: bytes) -> None:
        """This exact envelope executed. Another copy of the same tx_id (other signatures) stays
        held: only the app knows whether the executed copy was authorized and consumed the
        tx_id, and a stranger's badly signed copy must not block the genuine one."""
        self._recent_executed[wire.request_key(envelope)] = None
        self._proposed.discard(tx_id)
        variants = self._variants.get(tx_id, [])
        if envelope in variants:
            variants.remove(envelope)
        elif self.pending.get(tx_id) == envelope:
            if variants:
                self.pending[tx_id] = variants.pop(0)
                self._pending_since[tx_id] = self.now_ms
            else:
                self.pending.pop(tx_id, None)
                self._pending_since.pop(tx_id, None)
        if not variants:
            self._variants.pop(tx_id, None)
        self._track_unproposed(tx_id)

    def _track_unproposed(self, tx_id: bytes) -> None:
        """Keep _unproposed = pending minus _proposed, for one tx_id that may have changed."""
        if tx_id in self.pending and tx_id not in self._proposed:
            self._unproposed.setdefault(tx_id, None)
        else:
            self._unproposed.pop(tx_id, None)

    def _rebuild_unproposed(self) -> None:
        self._unproposed = {t: None for t in self.pending if t not in self._proposed}

    def _on_progress(self) -> None:
        if self.in_view_change:
            return
        self._vc_attempts = 0
        self._deadline = self.now_ms + self._timeout() if self._work_outstanding() else None

    def _maybe_propose(self) -> None:
        if self.in_view_change or not self.is_primary or self.vote_floor is not None:
            return
        while (
            self.seq_next < self.stable_seq + self.cfg.log_window
            and self.seq_next - self.last_executed < self.cfg.proposals_in_flight_max
        ):
            if not self._unproposed:
                return
            # Decide before gathering: this runs on every event, and a batch that waits for
            # company would otherwise be rebuilt (up to batch_size_max entries) each time.
            size = min(len(self._unproposed), self.cfg.batch_size_max)
            oldest = self._pending_since[next(iter(self._unproposed))]
            if not self.cfg.batch_ready(size, self.now_ms - oldest):
                return
            seq = max(self.seq_next, self.stable_seq) + 1
            self.seq_next = seq
            # pending and _unproposed are keyed by tx_id (checked on admission)
            tx_ids = tuple(itertools.islice(self._unproposed, size))
            envelopes = tuple(self.pending[t] for t in tx_ids)
            header = wire.build_header(self.cfg.chain_id, seq, self.now_ms, envelopes, tx_ids)
            pp = self._sign(PrePrepare(self.view, seq, wire.digest_of(header), header))
            accepted = self._accept_pre_prepare(pp, envelopes, tx_ids)
            assert accepted, "own proposal rejected"
            self._out.append(Broadcast(self.slots[seq].pre_prepare_peer))
            self._proposed.update(tx_ids)
            for tx_id in tx_ids:
                self._unproposed.pop(tx_id, None)

    # --- checkpoints, attestations, state transfer -----------------------------------------

    def _on_checkpoint(self, s: Signed) -> None:
        m = s.msg
        assert isinstance(m, Checkpoint)
        if m.sequence % self.cfg.checkpoint_interval:
            self._reject("bad_checkpoint")
            return
        if m.sequence <= self.stable_seq:
            return  # a retransmission of what we already hold as stable
        mine = self._checkpoints.setdefault(s.signer, {})
        if m.sequence not in mine:
            mine[m.sequence] = s
            # A few per replica suffice to find a quorum; a liar cannot grow this.
            while len(mine) > self.cfg.log_window // self.cfg.checkpoint_interval + 2:
                del mine[min(mine)]
        matching = [
            c[m.sequence]
            for _, c in sorted(self._checkpoints.items())
            if m.sequence in c and isinstance(c[m.sequence].msg, Checkpoint)
        ]
        same = [c for c in matching if isinstance(c.msg, Checkpoint) and c.msg.roots == m.roots]
        if len(same) >= self.cfg.quorum:
            self._make_stable(m.sequence, tuple(c.raw for c in same[: self.cfg.quorum]), m.roots)
            self._maybe_propose()  # the window moved
        elif self.next_execute <= m.sequence and len(same) >= self.cfg.f + 1:
            # f+1 say they executed this far (one of them is correct) but a liar may keep the
            # checkpoint from ever becoming stable for us: fetch the certified blocks anyway
            # (regression: seed 1164).
            self._fetch(tuple(c.signer for c in same))

    def _make_stable(self, seq: int, proof: tuple[bytes, ...], roots: tuple[bytes, bytes]) -> None:
        """``roots``: the (state root, tree root) the proof's 2f+1 checkpoints signed."""
        if seq <= self.stable_seq:
            return
        own = self._own_checkpoint
        if (
            own is not None
            and isinstance(own.msg, Checkpoint)
            and own.msg.sequence == seq
            and own.msg.roots != roots
        ):
            self.counters["state_diverged"] += 1
            self._out.append(Note("state_diverged", {"sequence": seq}))
        old = self.stable_seq
        self.stable_seq = seq
        self.stable_proof = proof
        self._persist(jr.STABLE, jr.encode_signed_list(proof))
        for s in [s for s in self.slots if s <= seq]:
            del self.slots[s]
            for prefix in jr.PER_SEQUENCE:
                self._persist(jr.seq_key(prefix, s), None)
        for k in range(max(old, self.cfg.checkpoint_interval), seq, self.cfg.checkpoint_interval):
            self._persist(jr.seq_key(jr.CHECKPOINT, k), None)
        for c in self._checkpoints.values():
            for k in [k for k in c if k <= seq]:
                del c[k]
        for k in [k for k in self._attestations if k <= seq - self.cfg.log_window]:
            del self._attestations[k]
        self._attested = {k for k in self._attested if k > seq - self.cfg.log_window}
        self._out.append(Note("stable_checkpoint", {"sequence": seq}))
        if self.next_execute <= seq:
            signed = [self.verifier.signed(raw) for raw in proof]
            self._fetch(tuple(x.signer for x in signed if x is not None))
        # No proposing from here: during a NEW-VIEW install the plan's sequences are not taken
        # yet (regression: seed 132 proposed over them). Callers that may propose do it after.

    def _fetch_if_behind(self) -> None:
        """Commits from f+1 others (at least one correct) on a sequence we cannot execute yet: we
        missed its batch, its prepares or an earlier sequence, and the others may have moved on
        and discarded their votes. Ask the voters for certified blocks instead of waiting."""
        ready = self.slots.get(self.next_execute)
        if ready is not None and ready.committed:
            return
        for seq, slot in sorted(self.slots.items()):
            if seq < self.next_execute:
                continue
            groups: dict[bytes, list[int]] = {}  # by digest alone: any view is evidence here
            for r, v in slot.commits.items():
                if r != self.id and isinstance(v.msg, Commit):
                    groups.setdefault(v.msg.digest, []).append(r)
            for signers in groups.values():
                if len(signers) >= self.cfg.f + 1:
                    self._fetch(tuple(signers))
                    return

    def _fetch(self, peers: tuple[int, ...]) -> None:
        peers = tuple(p for p in peers if p != self.id)
        if not peers:
            return
        last = self._last_fetch
        if (
            last is not None
            and last[0] == self.next_execute
            and self.now_ms - last[1] < self.cfg.retransmit_ms
        ):
            return
        self._last_fetch = (self.next_execute, self.now_ms)
        self._out.append(FetchBlocks(self.next_execute, peers))

    # --- timers and retransmission ---------------------------------------------------------

    def _timeout(self) -> int:
        return self.cfg.view_change_timeout_ms << min(self._vc_attempts, self.cfg.view_change_backoff_max)

    def _work_outstanding(self) -> bool:
        if self.pending:
            return True
        return any(s.pp is not None and seq >= self.next_execute for seq, s in self.slots.items())

    # --- helpers ---------------------------------------------------------------------------

    def _in_window(self, seq: int) -> bool:
        return self.stable_seq < seq <= self.stable_seq + self.cfg.log_window

    def _slot(self, seq: int) -> Slot:
        slot = self.slots.get(seq)
        if slot is None:
            slot = self.slots[seq] = Slot(seq)
        return slot

    def _sign(self, msg: Body) -> Signed:
        body = wire.encode_body(msg)
        signature = self.crypto.sign(body)
        signed = Signed(wire.encode_signed(body, self.id, signature), body, self.id, signature, msg)
        if isinstance(msg, Prepare | Commit):
            self._own_vote = signed  # kept past checkpoints: shows a peer left behind our view
        return signed

    def _persist(self, key: bytes, value: bytes | None) -> None:
        self._out.append(Persist(key, value))

    def _reject(self, kind: str) -> None:
        self.counters[kind] += 1
        if kind not in STALE_KINDS:
            self.rejected += 1
