"""Recovery from the consensus journal: a restarted replica never casts a conflicting vote."""

from __future__ import annotations

from collections.abc import Sequence

from node.pbft import journal as jr
from node.pbft import wire
from node.pbft.actions import Action, Broadcast, Persist
from node.pbft.wire import Commit, Prepare, PrePrepare, ViewChange
from tests.pbft.harness import CHAIN, Cluster, body_of, request


def _pp(c: Cluster, view: int, seq: int, envelopes: tuple[bytes, ...]) -> bytes:
    header = wire.build_header(CHAIN, seq, 0, envelopes)
    return wire.encode_peer(
        c.sign(view % c.n, PrePrepare(view, seq, wire.digest_of(header), header)), envelopes
    )


def _sent(actions: Sequence[Action]) -> list[wire.Body]:
    return [body_of(a.message) for a in actions if isinstance(a, Broadcast)]


def test_restarted_backup_refuses_a_conflicting_pre_prepare() -> None:
    c = Cluster()
    _, env1 = request(1)
    _, env2 = request(2)
    c.handle(1, c.nodes[1].replica.on_message(_pp(c, 0, 1, (env1,))))
    assert jr.seq_key(jr.PREPARE, 1) in c.nodes[1].journal
    c.restart(1)
    r = c.nodes[1].replica
    out = r.on_message(_pp(c, 0, 1, (env2,)))
    assert not any(isinstance(m, Prepare) for m in _sent(out))
    assert r.counters["equivocation"] == 1


def test_restarted_replica_keeps_its_prepared_certificate_for_the_view_change() -> None:
    c = Cluster(checkpoint_interval=4, log_window=8)
    c.drop = lambda src, dst, msg: isinstance(body_of(msg), Commit)
    c.submit(0, 1)
    c.deliver()
    assert jr.seq_key(jr.CERT, 1) in c.nodes[2].journal
    c.restart(2)
    r = c.nodes[2].replica
    assert r.slots[1].prepared_view == 0
    out: list[Action] = []
    for now in range(10, 310, 10):  # the first tick arms the timer: the pre-prepare is outstanding
        out += r.on_tick(now)
    vcs = [m for m in _sent(out) if isinstance(m, ViewChange)]
    assert vcs and all(v == vcs[0] for v in vcs)  # sent, and re-sent identically
    assert [len(x.prepares) for x in vcs[0].prepared] == [2]
    # A conflicting pre-prepare of view 0 gets no vote (equivocation or old view alike).
    r2 = c.nodes[2].replica.on_message(_pp(c, 0, 1, ()))
    assert not any(isinstance(m, Commit | Prepare) for m in _sent(r2))


def test_restarted_primary_never_reuses_a_sequence() -> None:
    # Three proposals in flight, so that the third can go out while 1 and 2 are unexecuted.
    c = Cluster(checkpoint_interval=4, log_window=8, proposals_in_flight_max=3)
    c.down.update({1, 2, 3})  # nothing commits; the primary only proposes
    c.submit(0, 1)
    c.submit(0, 2)
    c.restart(0)
    tx3, env3 = request(3)
    out = c.nodes[0].replica.on_request(tx3, env3)
    pps = [m for m in _sent(out) if isinstance(m, PrePrepare)]
    assert [p.sequence for p in pps] == [3]


def test_restart_in_the_middle_of_a_view_change() -> None:
    c = Cluster()
    c.submit(1, 1)  # forwarded to the primary, which is down
    c.down.add(0)
    c.deliver()
    c.run_for(150)
    r = c.nodes[1].replica
    assert r.in_view_change and r.view == 1
    own_vc = c.nodes[1].journal[jr.OWN_VIEW_CHANGE]
    c.restart(1)
    r = c.nodes[1].replica
    assert (r.view, r.in_view_change) == (1, True)
    resent = [a.message for a in r.on_tick(c.now + 1_000) if isinstance(a, Broadcast)]
    assert wire.encode_peer(own_vc) in resent  # the very same view-change, not a new one
    _, env = request(5)
    out = r.on_message(_pp(c, 0, 2, (env,)))  # view 0 is over for this replica
    assert not _sent(out) and r.counters["wrong_view"] == 1


def test_every_vote_is_journaled_before_it_is_sent_and_the_journal_restores() -> None:
    c = Cluster(checkpoint_interval=4, log_window=8)
    for i in range(3):
        c.submit(0, i)
    c.deliver()
    for i in range(4):
        batches = c.nodes[i].batches
        for batch in batches:
            keys = {a.key for a in batch if isinstance(a, Persist)}
            for m in _sent(batch):
                if isinstance(m, Prepare | Commit):
                    prefix = jr.PREPARE if isinstance(m, Prepare) else jr.COMMIT
                    assert jr.seq_key(prefix, m.sequence) in keys
        c.restart(i)
        r = c.nodes[i].replica
        assert sorted(r.slots) == [1, 2, 3]
        assert all(s.pp is not None for s in r.slots.values())


def test_restarted_replica_keeps_time_from_its_start_and_stays_in_the_view() -> None:
    """Regression (chaos seed 303, round 2): a backup restarted long after time 0 took a request
    before its first tick, armed its view-change timer at 0 plus one timeout, and left for view
    1 on that first tick. With one more backup down, nothing committed until the others timed
    out too. Its clock must start where it was built."""
    c = Cluster()
    c.submit(0, 1)
    c.deliver()
    for _ in range(5):  # time passes, far beyond one view-change timeout
        c.tick(100)
        c.deliver()
    c.restart(1)
    c.down.add(3)  # every quorum now needs the restarted replica
    c.submit(1, 2)  # a relayed request reaches it before its first tick
    c.tick(10)
    c.deliver()
    r = c.nodes[1].replica
    assert (r.view, r.in_view_change, r.view_changes_started) == (0, False, 0)
    for i in (0, 1, 2):
        assert [e.sequence for e in c.nodes[i].executed][-1] == 2
