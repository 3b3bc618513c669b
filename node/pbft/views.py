"""View changes: the timer, VIEW-CHANGE, NEW-VIEW (built from and checked against the plan in
node/pbft/viewchange.py) and retransmission of our own votes."""

from __future__ import annotations

from node.pbft import journal as jr
from node.pbft import wire
from node.pbft.actions import (
    Broadcast,
    ForwardRequests,
    Note,
    Send,
)
from node.pbft.normal import ReplicaCore
from node.pbft.verify import CheckedCert
from node.pbft.viewchange import Plan, plan_new_view
from node.pbft.wire import (
    NewView,
    PrePrepare,
    Signed,
    ViewChange,
)

# Following a replica alone ahead (_follow_lone_view): the wait doubles per recent follow of the
# same replica, up to 2 timeouts << FOLLOW_BACKOFF_MAX (64 timeouts), and the count is forgotten
# after FOLLOW_FORGET_TIMEOUTS timeouts without a follow. A liar that keeps asking: a view change
# at 2, 4, 8, ... then every 64 timeouts. A correct replica back from a crash: 2 timeouts.
FOLLOW_BACKOFF_MAX = 5
FOLLOW_FORGET_TIMEOUTS = 256


class ViewChanging(ReplicaCore):
    # --- view change -----------------------------------------------------------------------

    def _timer_expired(self) -> None:
        # Nothing executed for a whole timeout: maybe the others moved on and a liar keeps us
        # from seeing f+1 evidence of it (regression: seed 65, ledger). Asking costs one
        # request, and whatever comes back is verified block by block.
        self._fetch(tuple(r for r in range(self.cfg.n) if r != self.id))
        if not self.in_view_change:
            if self._work_outstanding():
                self._start_view_change(self.view + 1)
            else:
                self._deadline = None
            return
        # Escalate only once a quorum has left the old view too: a replica cut off alone keeps
        # asking for the same view instead of racing ahead to views nobody else will join.
        joined = sum(1 for s in self._view_changes.values() if getattr(s.msg, "new_view", -1) >= self.view)
        if joined >= self.cfg.quorum:
            self._start_view_change(self.view + 1)
        else:
            self._deadline = self.now_ms + self._timeout()
            if self._own_view_change is not None:
                self._out.append(Broadcast(wire.encode_peer(self._own_view_change)))

    def _follow_lone_view(self) -> None:
        """Join the view change of a replica that has asked, alone, for a view above ours for
        two view-change timeouts and still asks (docs/ARCHITECTURE.md, "A replica alone in
        another view"). It cannot come back down to us without risking safety, and neither a
        quorum nor f+1 would ever move us to it: after a crash of every node during a view
        change it stayed there for minutes, voting in no view (issue 21)."""
        if self.in_view_change or not self._ahead:
            return
        still = 2 * self.cfg.retransmit_ms  # it re-sends its VIEW-CHANGE every retransmit_ms
        asking = {
            r: vc.msg.new_view
            for r, (first, latest) in self._ahead.items()
            if self.now_ms - first >= self._follow_wait_ms(r)
            and self.now_ms - latest <= still
            and isinstance(vc := self._view_changes.get(r), Signed)
            and isinstance(vc.msg, ViewChange)
            # A liar must not push view numbers far in one step; a correct replica is never
            # more than one view above f+1 correct ones.
            and self.view < vc.msg.new_view <= self.view + self.cfg.n
        }
        if asking:
            self.counters["followed_lone_view"] += 1
            for r in asking:
                times, _ = self._followed.get(r, (0, 0))
                self._followed[r] = (times + 1, self.now_ms)
            self._start_view_change(min(asking.values()))

    def _follow_wait_ms(self, replica: int) -> int:
        """How long ``replica`` must ask alone before we follow it: two view-change timeouts,
        doubled for each time we followed it lately (up to 2^FOLLOW_BACKOFF_MAX). A correct
        replica needs following once after a crash; a liar asking over and over for the next
        view would otherwise cost a view change every two timeouts for as long as it likes. The
        count is forgotten after FOLLOW_FORGET_TIMEOUTS quiet timeouts."""
        timeout = self.cfg.view_change_timeout_ms
        times, last = self._followed.get(replica, (0, 0))
        if times and self.now_ms - last > FOLLOW_FORGET_TIMEOUTS * timeout:
            del self._followed[replica]
            times = 0
        return 2 * timeout << min(times, FOLLOW_BACKOFF_MAX)

    def _saw_vote(self, replica: int, view: int) -> None:
        """A verified pre-prepare, prepare or commit of ``view`` by ``replica``. Once f+1 replicas
        (one of them correct, so that view's NEW-VIEW exists) vote in views above ours, we were
        left behind: a partition or pause hid the view change from us, and executing what they
        commit by catch-up would keep us out of every quorum for good. Asking for their view
        makes its primary send us its NEW-VIEW (_bring_up_to_date)."""
        self._shown_view(replica, view)
        if replica == self.id or view <= self._voted_in.get(replica, -1) or self.vote_floor is not None:
            return
        self._voted_in[replica] = view
        above = sorted((v for v in self._voted_in.values() if v > self.view), reverse=True)
        if len(above) > self.cfg.f:
            self.counters["followed_voting_view"] += 1
            self._start_view_change(above[self.cfg.f])

    def _start_view_change(self, new_view: int) -> None:
        assert new_view > self.view or (new_view == self.view and not self.in_view_change)
        self.view = new_view
        self.in_view_change = True
        self._ahead.clear()
        self.view_changes_started += 1
        self._persist(jr.VIEW, jr.encode_view(self.view, True))
        certs = tuple(
            slot.cert
            for seq, slot in sorted(self.slots.items())
            if slot.cert is not None and seq > self.stable_seq
        )
        vc = self._sign(ViewChange(new_view, self.stable_seq, self.stable_proof, certs, self.id))
        self._own_view_change = vc.raw
        self._persist(jr.OWN_VIEW_CHANGE, vc.raw)
        self._out.append(Broadcast(wire.encode_peer(vc.raw)))
        self._out.append(Note("view_change", {"view": new_view}))
        checked = self.verifier.view_change(vc)
        assert checked is not None, "own view-change does not verify"
        self._view_changes[self.id] = vc
        self._vc_certs[self.id] = checked
        self._vc_attempts += 1
        self._deadline = self.now_ms + self._timeout()
        if self.is_primary:
            self._try_new_view()

    def _shown_view(self, replica: int, view: int) -> None:
        if view > self._peer_view.get(replica, -1):
            self._peer_view[replica] = view

    def _on_view_change(self, s: Signed, m: ViewChange) -> None:
        self._shown_view(s.signer, m.new_view)
        if m.new_view <= self.view and not self.in_view_change:
            # A replica still asking for a view we are in or past missed its NEW-VIEW: show it the
            # way in, and our votes since. The view we are in too (regression: chaos seed 303,
            # round 26: a backup down while the NEW-VIEW went out asked for that view until
            # everyone timed out).
            self._bring_up_to_date(s.signer)
        prev = self._view_changes.get(s.signer)
        if m.new_view < self.view or (prev is not None and getattr(prev.msg, "new_view", -1) >= m.new_view):
            if prev is not None and getattr(prev.msg, "new_view", -1) == m.new_view > self.view:
                self._heard_ahead(s.signer)  # it still asks for the view we hold its request for
            return
        certs = self.verifier.view_change(s)
        if certs is None:
            self._reject("bad_view_change")
            return
        self._view_changes[s.signer] = s
        self._vc_certs[s.signer] = certs
        if m.new_view > self.view:
            self._heard_ahead(s.signer)
        higher = sorted(
            v.msg.new_view
            for r, v in self._view_changes.items()
            if r != self.id and isinstance(v.msg, ViewChange) and v.msg.new_view > self.view
        )
        if len(higher) >= self.cfg.f + 1:
            self._start_view_change(higher[0])  # f+1 include a correct replica: join it
        elif self.in_view_change and m.new_view == self.view and self.is_primary:
            self._try_new_view()

    def _heard_ahead(self, replica: int) -> None:
        first, _ = self._ahead.get(replica, (self.now_ms, 0))
        self._ahead[replica] = (first, self.now_ms)

    def _try_new_view(self) -> None:
        chosen = [
            (r, s)
            for r, s in sorted(self._view_changes.items())
            if getattr(s.msg, "new_view", -1) == self.view
        ][: self.cfg.quorum]
        if len(chosen) < self.cfg.quorum:
            return
        pairs = [(s.msg, self._vc_certs[r]) for r, s in chosen if isinstance(s.msg, ViewChange)]
        plan = plan_new_view(self.cfg.chain_id, pairs)
        pps: list[tuple[Signed, tuple[bytes, ...]]] = []
        for p in plan.proposals:
            pps.append(
                (
                    self._sign(PrePrepare(self.view, p.sequence, wire.digest_of(p.header), p.header)),
                    p.envelopes,
                )
            )
        nv = self._sign(
            NewView(
                self.view,
                tuple(s.raw for _, s in chosen),
                tuple(pp.raw for pp, _ in pps),
                tuple(envs for _, envs in pps),
            )
        )
        self._new_view_peer = wire.encode_peer(nv.raw)
        self._persist(jr.NEW_VIEW, self._new_view_peer)
        self._install_new_view(self.view, plan, pps)
        self._out.append(Broadcast(self._new_view_peer))
        self._maybe_propose()

    def _on_new_view(self, s: Signed, m: NewView) -> None:
        if m.view < self.view or (m.view == self.view and not self.in_view_change):
            self._reject("old_view")
            return
        if not self.cfg.quorum <= len(m.view_changes) <= self.cfg.n:
            self._reject("bad_new_view")
            return
        pairs: list[tuple[ViewChange, list[CheckedCert]]] = []
        signers: set[int] = set()
        for raw in m.view_changes:
            vs = self.verifier.signed(raw)
            certs = self.verifier.view_change(vs) if vs is not None else None
            if vs is None or certs is None or vs.signer in signers:
                self._reject("bad_new_view")
                return
            assert isinstance(vs.msg, ViewChange)
            if vs.msg.new_view != m.view:
                self._reject("bad_new_view")
                return
            signers.add(vs.signer)
            pairs.append((vs.msg, certs))
        plan = plan_new_view(self.cfg.chain_id, pairs)
        if len(m.pre_prepares) != len(plan.proposals) or len(m.batches) != len(plan.proposals):
            self._reject("bad_new_view")
            return
        pps: list[tuple[Signed, tuple[bytes, ...]]] = []
        for p, raw, envelopes in zip(plan.proposals, m.pre_prepares, m.batches, strict=True):
            ps = self.verifier.signed(raw)
            pm = ps.msg if ps is not None else None
            if (
                ps is None
                or not isinstance(pm, PrePrepare)
                or (pm.view, pm.sequence, pm.header) != (m.view, p.sequence, p.header)
                or envelopes != p.envelopes
            ):
                self._reject("bad_new_view")
                return
            pps.append((ps, envelopes))
        self._install_new_view(m.view, plan, pps)

    def _install_new_view(self, view: int, plan: Plan, pps: list[tuple[Signed, tuple[bytes, ...]]]) -> None:
        self.view = view
        self.in_view_change = False
        self._ahead.clear()  # how long a replica has been alone ahead counts from our new view
        self._persist(jr.VIEW, jr.encode_view(view, False))
        if plan.stable_sequence > self.stable_seq:
            roots = self.verifier.checkpoint_proof(plan.stable_sequence, plan.stable_proof)
            assert roots is not None, "plan carries a checked proof"
            self._make_stable(plan.stable_sequence, plan.stable_proof, roots)
        for pp, envelopes in pps:
            if self._in_window(getattr(pp.msg, "sequence", 0)):
                self._accept_pre_prepare(pp, envelopes)
        for seq, slot in self.slots.items():
            old = slot.pp
            if seq > plan.last_sequence and old is not None and old.view < view:
                slot.pre_prepare = None  # never re-proposed: void in this view
                slot.committed = False
        if self.is_primary:
            self.seq_next = max(plan.last_sequence, self.stable_seq)
            self._proposed = {t for slot in self.slots.values() if slot.pp is not None for t in slot.tx_ids}
            self._rebuild_unproposed()
        elif self.pending:
            self._out.append(ForwardRequests(self.cfg.primary(view), tuple(self.pending.values())))
        self._deadline = self.now_ms + self._timeout() if self._work_outstanding() else None
        self._out.append(Note("new_view", {"view": view, "proposals": len(plan.proposals)}))
        for slot in list(self.slots.values()):
            self._check_prepared(slot)

    def _retransmit(self) -> None:
        """Links lose messages: re-send our own latest votes (idempotent at the receiver)."""
        if not self.in_view_change and not self.is_primary:
            self._reforward()
        peers = tuple(r for r in range(self.cfg.n) if r != self.id)
        latest = self._own_latest(peers)
        self._out.extend(Broadcast(m) for m in latest)
        self._show_view(peers, latest)

    def _show_view(self, peers: tuple[int, ...], sent: list[bytes]) -> None:
        """A peer that has shown us no view as high as ours (no vote, no view change) may have
        missed the view change, cut off while it ran: after it, with no traffic, nothing else it
        receives names a view, and it would stay alone in the old one (issue 21; simulator
        seeds 103 and 127, once the seeds ran the node core's relays). Our latest vote of this
        view shows it ours; f+1 of them make it follow (_saw_vote), and the view change it then
        asks for shows it back to us, which ends this."""
        if self.in_view_change or self.view == 0:
            return
        lagging = [p for p in peers if self._peer_view.get(p, -1) < self.view]
        if not lagging:
            return
        vote = self._latest_vote()
        if vote is not None and vote not in sent:
            self._out.extend(Send(p, vote) for p in lagging)

    def _latest_vote(self) -> bytes | None:
        """Our vote (commit, else prepare) of the view we are in on the highest sequence, or
        the last one we signed in it (its slot may be gone past a checkpoint)."""
        for _, slot in sorted(self.slots.items(), reverse=True):
            for vote in (slot.commits.get(self.id), slot.prepares.get(self.id)):
                if vote is not None and getattr(vote.msg, "view", -1) == self.view:
                    return wire.encode_peer(vote.raw)
        own = self._own_vote
        if own is not None and getattr(own.msg, "view", -1) == self.view:
            return wire.encode_peer(own.raw)
        return None

    def _bring_up_to_date(self, peer: int) -> None:
        """Send ``peer`` at once what it may have missed: as primary of our view its NEW-VIEW
        (self-checking: the receiver verifies every VIEW-CHANGE and pre-prepare in it), then
        what the periodic retransmit would send. For a peer whose link just came up (it may have
        restarted, or lost what was in flight when the link broke; chaos seed 303: a backup back
        from a restart held up commits for 1.6 s while another was paused), and for one asking
        for a view we are in or past. At most once per quarter retransmit period per peer: a
        NEW-VIEW may carry many batches, and a flapping link or a liar must not make us re-send
        at its pace."""
        last = self._resent_at.get(peer)
        if last is not None and self.now_ms - last < self.cfg.retransmit_ms // 4:
            return
        self._resent_at[peer] = self.now_ms
        if self.is_primary and not self.in_view_change and self._new_view_peer is not None:
            self._out.append(Send(peer, self._new_view_peer))  # ours: of the view we are in
        self._out.extend(Send(peer, m) for m in self._own_latest((peer,)))

    def _own_latest(self, peers: tuple[int, ...]) -> list[bytes]:
        """Our view change, then our votes on every sequence some of ``peers`` has not attested
        (as primary, the pre-prepares not yet committed too), then our latest checkpoint."""
        out: list[bytes] = []
        if self.in_view_change and self._own_view_change is not None:
            out.append(wire.encode_peer(self._own_view_change))
        # Votes of the view we are leaving too: re-sending a vote already cast is safe, and a
        # peer still in that view may need exactly this one to commit (regression: seed 1336).
        oldest = self.view - 1 if self.in_view_change else self.view
        for seq, slot in sorted(self.slots.items()):
            # A replica that attested a sequence has executed it and needs none of our votes
            # for it; once every peer has, re-sending them is pure load (it was most of the
            # prepares and commits on the wire under steady traffic).
            attested_by = self._attestations.get(seq, {})
            if all(r in attested_by for r in peers):
                continue
            pp = slot.pp
            mine = self.is_primary and not self.in_view_change and pp is not None and pp.view == self.view
            if mine and not slot.committed:
                out.append(slot.pre_prepare_peer)
            # Prepares too after committing: a peer that missed ours cannot prepare, so it
            # would never send the commit a third replica may still be waiting for.
            prepare, commit = slot.prepares.get(self.id), slot.commits.get(self.id)
            if prepare is not None and getattr(prepare.msg, "view", -1) >= oldest:
                out.append(wire.encode_peer(prepare.raw))
            if commit is not None:  # a commit of any view is evidence for a replica left behind
                out.append(wire.encode_peer(commit.raw))
        if self._own_checkpoint is not None:
            out.append(wire.encode_peer(self._own_checkpoint.raw))
        return out

    def _reforward(self) -> None:
        """A forward to the primary may have been lost: re-send requests that waited a whole
        retransmit period and appear in no pre-prepare we hold, a batch at a time."""
        proposed = {t for slot in self.slots.values() if slot.pp is not None for t in slot.tx_ids}
        due = self.now_ms - self.cfg.retransmit_ms
        stale = [
            env
            for tx_id, env in self.pending.items()
            if self._pending_since[tx_id] <= due and tx_id not in proposed
        ][: self.cfg.batch_size_max]
        if stale:
            self._out.append(ForwardRequests(self.cfg.primary(self.view), tuple(stale)))
