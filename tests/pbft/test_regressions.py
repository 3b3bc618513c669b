"""Consensus bugs the simulator found, pinned as direct unit tests of one replica (the frozen
simulator scenarios live in tests/sim/test_sim.py)."""

from __future__ import annotations

import hashlib

from node.pbft import wire
from node.pbft.actions import Action, Execute, FetchBlocks
from node.pbft.verify import Verifier
from node.pbft.wire import Checkpoint, Commit, Prepare, PrePrepare
from tests.pbft.harness import CHAIN, Cluster, request


def _pp(c: Cluster, view: int, seq: int, envelopes: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    header = wire.build_header(CHAIN, seq, 0, envelopes)
    d = wire.digest_of(header)
    return wire.encode_peer(c.sign(view % c.n, PrePrepare(view, seq, d, header)), envelopes), d


def _vote(c: Cluster, kind: type[Prepare] | type[Commit], view: int, seq: int, d: bytes, r: int) -> bytes:
    return wire.encode_peer(c.sign(r, kind(view, seq, d, r)))


def test_certificate_is_kept_when_later_votes_replace_the_commits_seed_16() -> None:
    c = Cluster(checkpoint_interval=4, log_window=8)
    r = c.nodes[3].replica
    m1, d1 = _pp(c, 0, 1, (request(1)[1],))
    m2, d2 = _pp(c, 0, 2, (request(2)[1],))
    r.on_message(m1)
    r.on_message(m2)
    for sender in (1, 2):
        r.on_message(_vote(c, Prepare, 0, 2, d2, sender))
    for sender in (0, 1):
        r.on_message(_vote(c, Commit, 0, 2, d2, sender))
    assert r.slots[2].committed and r.next_execute == 1  # seq 2 waits for seq 1
    # A vote of view 1 replaces replica 0's view-0 commit: two view-0 commits are left. (Votes
    # of view 1 from f+1 replicas would take this one into view 1 after them.)
    r.on_message(_vote(c, Commit, 1, 2, d2, 0))
    out = []
    for sender in (1, 2):
        out += r.on_message(_vote(c, Prepare, 0, 1, d1, sender))
    for sender in (0, 1):
        out += r.on_message(_vote(c, Commit, 0, 1, d1, sender))
    executes = [a for a in out if isinstance(a, Execute)]
    assert [e.sequence for e in executes] == [1, 2]
    verifier = Verifier(c.config_for(3), c.cryptos[3])
    for e in executes:
        assert verifier.commit_certificate(e.sequence, wire.digest_of(e.header), e.certificate)


def test_replica_in_a_view_change_still_executes_what_the_others_commit_seed_53() -> None:
    c = Cluster(checkpoint_interval=4, log_window=8)
    r = c.nodes[3].replica
    m1, d1 = _pp(c, 0, 1, (request(1)[1],))
    r.on_message(m1)
    r._start_view_change(1)  # timed out alone
    out = []
    for sender in (0, 1, 2):
        out += r.on_message(_vote(c, Commit, 0, 1, d1, sender))
    assert [a.sequence for a in out if isinstance(a, Execute)] == [1]
    assert r.in_view_change  # still asking for view 1: it never votes in view 0 again


def test_f_plus_one_matching_checkpoints_trigger_state_transfer_seed_1164() -> None:
    c = Cluster(checkpoint_interval=2, log_window=4)
    r = c.nodes[3].replica
    root = hashlib.sha256(b"state at 4").digest()
    out = r.on_message(wire.encode_peer(c.sign(1, Checkpoint(4, root, 1))))
    assert not any(isinstance(a, FetchBlocks) for a in out)  # one voice is not evidence
    liar = hashlib.sha256(b"lie").digest()
    r.on_message(wire.encode_peer(c.sign(0, Checkpoint(4, liar, 0))))
    out = r.on_message(wire.encode_peer(c.sign(2, Checkpoint(4, root, 2))))
    fetches = [a for a in out if isinstance(a, FetchBlocks)]
    assert fetches == [FetchBlocks(1, (1, 2))]
    assert r.stable_seq == 0  # f+1 is enough to go and look, not to call it stable


def test_expired_timer_asks_peers_for_blocks_seed_65() -> None:
    c = Cluster(checkpoint_interval=4, log_window=8)
    r = c.nodes[3].replica
    tx_id, env = request(1)
    r.on_request(tx_id, env)
    out: list[Action] = []
    for now in range(10, 110, 10):  # in steps: a tick after a long gap is a frozen process
        out += r.on_tick(now)
    assert FetchBlocks(1, (0, 1, 2)) in out
    assert r.in_view_change
