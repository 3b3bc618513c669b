"""Checkpoints: stability at 2f+1, garbage collection, the watermark window, state transfer."""

from __future__ import annotations

from node.pbft import journal as jr
from node.pbft import wire
from node.pbft.actions import Execute, FetchBlocks
from node.pbft.wire import Checkpoint
from tests.pbft.harness import Cluster, body_of


def test_stable_checkpoint_discards_the_log_and_its_journal_records() -> None:
    c = Cluster(checkpoint_interval=2, log_window=4)
    for i in range(5):
        c.submit(0, i)
    c.deliver()
    for node in c.nodes:
        r = node.replica
        assert r.stable_seq == 4
        assert min(r.slots) > 4
        keys = [k for k in node.journal if k.startswith(jr.PRE_PREPARE)]
        assert keys == [jr.seq_key(jr.PRE_PREPARE, 5)]
        assert jr.STABLE in node.journal


def test_primary_stops_at_the_high_watermark_until_a_checkpoint_is_stable() -> None:
    c = Cluster(checkpoint_interval=2, log_window=4)
    c.drop = lambda src, dst, msg: isinstance(body_of(msg), Checkpoint)
    for i in range(7):
        c.submit(0, i)
    c.deliver()
    assert max(c.nodes[0].replica.slots) == 4  # stable 0 + window 4
    assert len(c.nodes[1].executed) == 4
    c.drop = lambda src, dst, msg: False
    c.run_for(100)  # checkpoints are re-sent; the window moves on
    assert [e.sequence for e in c.nodes[1].executed] == list(range(1, 8))


def test_a_replica_behind_a_stable_checkpoint_fetches_and_verifies_blocks() -> None:
    c = Cluster(checkpoint_interval=2, log_window=4)
    c.down.add(3)
    for i in range(4):
        c.submit(0, i)
    c.deliver()
    c.down.discard(3)
    c.run_for(100)  # re-sent checkpoints reach replica 3
    behind = c.nodes[3]
    assert behind.replica.stable_seq == 4
    fetch = behind.fetches[-1]
    assert fetch == FetchBlocks(1, fetch.peers) and 3 not in fetch.peers
    blocks = [c.nodes[0].blocks[s] for s in range(1, 5)]
    c.handle(3, behind.replica.on_blocks(blocks))
    assert [e.sequence for e in behind.executed] == [1, 2, 3, 4]
    assert c.executed_digests(3) == c.executed_digests(0)


def test_state_transfer_rejects_forged_and_inconsistent_blocks() -> None:
    c = Cluster(checkpoint_interval=4, log_window=8)
    c.down.add(3)
    for i in range(3):
        c.submit(0, i)
    c.deliver()
    behind = c.nodes[3].replica
    good = [c.nodes[0].blocks[s] for s in (1, 2, 3)]
    header, envelopes, commits = wire.decode_certified_block(good[0])
    forged_cert = wire.encode_certified_block(header, envelopes, commits[:2])
    swapped = wire.encode_certified_block(header, wire.decode_certified_block(good[1])[1], commits)
    h2, e2, c2 = wire.decode_certified_block(good[1])
    wrong_commits = wire.encode_certified_block(header, envelopes, c2)  # certificate of another block
    cases = [
        ([forged_cert], "bad_certificate"),
        ([swapped], "bad_block"),
        ([wrong_commits], "bad_certificate"),
        ([good[1]], "block_gap"),
        ([b"\x00garbage"], "bad_block"),
    ]
    for blocks, counter in cases:
        before = behind.counters[counter]
        assert not any(isinstance(a, Execute) for a in behind.on_blocks(blocks))
        assert behind.counters[counter] == before + 1, counter
    forged2 = wire.encode_certified_block(h2, e2, c2[:2])
    out = behind.on_blocks([good[0], forged2, good[2]])  # stops at the first bad block
    assert [a.sequence for a in out if isinstance(a, Execute)] == [1]
    assert h2 and e2  # the second block really had content


def test_the_journal_stays_bounded_as_checkpoints_move_on() -> None:
    c = Cluster(checkpoint_interval=2, log_window=4)
    for i in range(20):
        c.submit(0, i)
    c.deliver()
    for node in c.nodes:
        assert node.replica.stable_seq == 20
        # Only the stable proof and our own checkpoint at it survive; every per-sequence record
        # and every older checkpoint was deleted on the way.
        assert sorted(node.journal) == [jr.seq_key(jr.CHECKPOINT, 20), jr.STABLE]
