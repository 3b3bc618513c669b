"""A replica restarted from an old journal (a restore from a backup, a wiped store) with its vote
record as floor abstains: it casts no vote that could contradict one it lost, follows by
certified blocks, and votes again once the others' stable checkpoint passed the floor."""

from __future__ import annotations

from collections.abc import Sequence

from node.pbft import wire
from node.pbft.actions import Action, Broadcast, Note, Send
from node.pbft.replica import Replica
from node.pbft.wire import Checkpoint, Commit, Prepare, PrePrepare, ViewChange
from sim.apps import ECHO_GENESIS_ROOT
from tests.pbft.harness import CHAIN, Cluster, body_of, request


def _pp(c: Cluster, view: int, seq: int, envelopes: tuple[bytes, ...]) -> bytes:
    header = wire.build_header(CHAIN, seq, 0, envelopes)
    return wire.encode_peer(
        c.sign(view % c.n, PrePrepare(view, seq, wire.digest_of(header), header)), envelopes
    )


def _votes(actions: Sequence[Action]) -> list[wire.Body]:
    sent = [body_of(a.message) for a in actions if isinstance(a, Broadcast | Send)]
    return [m for m in sent if not isinstance(m, Checkpoint | wire.Attestation)]


def _from_old_journal(c: Cluster, i: int, floor: tuple[int, int] | None) -> Replica:
    """Replica i back from an empty journal (its backup predates its votes)."""
    return Replica(c.config_for(i), c.cryptos[i], {}, 0, ECHO_GENESIS_ROOT, now_ms=c.now, vote_floor=floor)


def test_without_the_floor_a_replica_that_forgot_votes_again_with_the_floor_it_does_not() -> None:
    c = Cluster()
    _, env1 = request(1)
    _, env2 = request(2)
    c.handle(1, c.nodes[1].replica.on_message(_pp(c, 0, 1, (env1,))))  # it prepared env1 at 1
    # Forgot (the regression this guards): a conflicting pre-prepare at the same (view, sequence)
    # gets a PREPARE, an equivocation with the one it sent before the backup was restored.
    forgot = _from_old_journal(c, 1, None)
    assert any(isinstance(m, Prepare) for m in _votes(forgot.on_message(_pp(c, 0, 1, (env2,)))))
    # With its vote record as floor it abstains: no vote of any kind, whatever it is sent.
    guarded = _from_old_journal(c, 1, (0, 4))
    out = guarded.on_message(_pp(c, 0, 1, (env2,)))
    out += guarded.on_tick(c.now + 10_000)  # no timer runs: no view change either
    out += guarded.on_peer_up(0)
    assert _votes(out) == [] and guarded.abstaining


def test_an_abstaining_replica_follows_by_blocks_and_votes_once_past_its_floor() -> None:
    c = Cluster()  # checkpoint every 2, window 4
    for i in range(3):
        c.submit(0, i)
        c.deliver()
    floor = (c.nodes[3].replica.view, c.nodes[3].replica.stable_seq + 2 * 4)
    c.nodes[3].restore_empty(floor)  # restored from a backup older than all of it
    n3 = c.nodes[3]
    n3.batches.clear()
    for i in range(3, 16):  # the others go on; each checkpoint makes it fetch certified blocks
        c.submit(0, i)
        c.deliver()
        for fetch in n3.fetches:
            blocks = [c.nodes[0].blocks[s] for s in range(fetch.from_sequence, len(c.nodes[0].blocks) + 1)]
            c.handle(3, n3.replica.on_blocks(blocks))
        n3.fetches.clear()
        if not n3.replica.abstaining:
            break
        assert all(
            not isinstance(m, Prepare | Commit | ViewChange | PrePrepare)
            for b in n3.batches
            for m in _votes(b)
        )
    c.tick(10)
    assert not n3.replica.abstaining and n3.replica.stable_seq >= floor[1]
    assert any(isinstance(a, Note) and a.kind == "abstain_ended" for b in n3.batches for a in b)
    n3.batches.clear()
    c.submit(0, 99)
    c.deliver()
    assert any(isinstance(m, Prepare | Commit) for b in n3.batches for m in _votes(b))  # it votes
    assert c.executed_digests(3)[-1] == c.executed_digests(0)[-1]
