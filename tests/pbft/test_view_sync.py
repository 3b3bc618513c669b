"""No replica left behind (issue 21): a replica alone in a higher view is followed there after a
while, and a replica left in a lower view follows f+1 replicas that vote in a higher one."""

from __future__ import annotations

from node.pbft import wire
from node.pbft.wire import Commit, Prepare, ViewChange
from tests.pbft.harness import CHAIN, Cluster, request

TIMEOUT_MS = 100  # the harness's view_change_timeout_ms


def _alone_in_view_1(c: Cluster) -> None:
    """Replica 3 asks for view 1 alone, as it comes back from its journal after every node was
    killed during a view change it had started."""
    r3 = c.nodes[3].replica
    r3._out = []
    r3._start_view_change(1)
    c.handle(3, r3._out)
    c.deliver()


def _views(c: Cluster) -> list[tuple[int, bool]]:
    return [(n.replica.view, n.replica.in_view_change) for n in c.nodes]


def test_a_replica_alone_in_a_higher_view_is_followed_and_votes_again() -> None:
    c = Cluster()
    _alone_in_view_1(c)
    c.restart(3)  # from its journal: still bound by the VIEW-CHANGE it may have sent
    assert (c.nodes[3].replica.view, c.nodes[3].replica.in_view_change) == (1, True)
    first = c.submit(0, 1)
    c.run_for(TIMEOUT_MS)
    assert [e.tx_ids for e in c.nodes[1].executed] == [(first,)]  # 0, 1, 2 commit without it
    assert _views(c) == [(0, False), (0, False), (0, False), (1, True)]  # f+1 is not reached
    c.run_for(3 * TIMEOUT_MS)
    assert _views(c) == [(1, False)] * 4
    assert c.nodes[0].replica.counters["followed_lone_view"] == 1
    # It votes again: with replica 2 down, a commit needs it.
    c.down.add(2)
    second = c.submit(1, 2)
    c.run_for(TIMEOUT_MS)
    for i in (0, 1, 3):
        assert [e.tx_ids for e in c.nodes[i].executed] == [(first,), (second,)]


def test_a_request_no_longer_repeated_is_not_followed() -> None:
    """A replica that asked alone and then crashed: its old VIEW-CHANGE must not move everyone
    to a view whose primary may be the dead replica."""
    c = Cluster()
    _alone_in_view_1(c)
    c.down.add(3)
    c.run_for(5 * TIMEOUT_MS)
    assert _views(c)[:3] == [(0, False)] * 3


def test_a_view_far_ahead_is_not_followed() -> None:
    """One liar cannot push view numbers up by more than n at a time."""
    c = Cluster()
    far = wire.encode_peer(c.sign(3, ViewChange(c.n + 1, 0, (), (), 3)))
    for _ in range(50):
        for i in (0, 1, 2):
            c.handle(i, c.nodes[i].replica.on_message(far))
        c.tick(10)
    assert _views(c)[:3] == [(0, False)] * 3


def test_a_replica_left_in_a_lower_view_follows_f_plus_one_voters() -> None:
    c = Cluster()
    r3 = c.nodes[3].replica
    _, env = request(1)
    header = wire.build_header(CHAIN, 1, 0, (env,))
    d = wire.digest_of(header)
    r3.on_message(wire.encode_peer(c.sign(1, Prepare(1, 1, d, 1))))
    assert (r3.view, r3.in_view_change) == (0, False)  # one could be a liar
    out = r3.on_message(wire.encode_peer(c.sign(2, Commit(1, 1, d, 2))))
    assert (r3.view, r3.in_view_change) == (1, True)  # f+1: one of them is correct
    assert r3.counters["followed_voting_view"] == 1
    # Its VIEW-CHANGE for view 1 is what makes view 1's primary send it the NEW-VIEW.
    assert any(
        isinstance(
            body := wire.decode_body(wire.decode_signed(wire.decode_peer(a.message)[0])[0]), ViewChange
        )
        and body.new_view == 1
        for a in out
        if hasattr(a, "message")
    )


def test_certified_blocks_of_a_higher_view_take_a_lagging_replica_there() -> None:
    c = Cluster()
    r3 = c.nodes[3].replica
    _, env = request(1)
    header = wire.build_header(CHAIN, 1, 0, (env,))
    d = wire.digest_of(header)
    commits = [c.sign(i, Commit(1, 1, d, i)) for i in (0, 1, 2)]
    r3.on_blocks([wire.encode_certified_block(header, (env,), commits)])
    assert r3.next_execute == 2
    assert (r3.view, r3.in_view_change) == (1, True)


def test_the_whole_way_back_from_a_lower_view() -> None:
    """Replica 3 misses a view change (and the NEW-VIEW) while cut off; traffic in view 1
    brings it in: it asks for view 1, its primary sends the NEW-VIEW, and it votes there."""
    c = Cluster()
    c.down.add(3)
    c.nodes[1].replica._out = []
    for i in (0, 1, 2):
        r = c.nodes[i].replica
        r._out = []
        r._start_view_change(1)
        c.handle(i, r._out)
    c.deliver()
    assert _views(c)[:3] == [(1, False)] * 3
    c.down.discard(3)
    assert c.nodes[3].replica.view == 0
    tx = c.submit(1, 1)
    c.run_for(2 * TIMEOUT_MS)
    assert _views(c) == [(1, False)] * 4
    c.down.add(2)  # now a commit needs replica 3's vote in view 1
    tx2 = c.submit(1, 2)
    c.run_for(TIMEOUT_MS)
    assert [e.tx_ids for e in c.nodes[0].executed] == [(tx,), (tx2,)]
    assert [e.tx_ids for e in c.nodes[3].executed] == [(tx,), (tx2,)]


def test_a_replica_cut_off_during_a_view_change_joins_the_view_once_back_while_all_is_quiet() -> None:
    # Regression (simulator seeds 103 and 127, once the seeds ran the node core): the primary
    # was cut off while the others changed view and committed everything; back on an idle
    # network it heard only checkpoints, which name no view, and stayed alone in view 0.
    c = Cluster()
    c.submit(0, 1)
    c.deliver()
    c.down.add(0)
    tx_id = c.submit(1, 2)  # the primary is gone: the others change view and commit it
    c.run_for(1_000)
    assert all(c.nodes[i].replica.view == 1 for i in (1, 2, 3))
    assert all(tx_id in {t for e in c.nodes[i].executed for t in e.tx_ids} for i in (1, 2, 3))
    c.down.discard(0)
    assert c.nodes[0].replica.view == 0
    c.run_for(1_000)  # no client traffic at all
    assert [n.replica.view for n in c.nodes] == [1, 1, 1, 1]
    assert not c.nodes[0].replica.in_view_change
