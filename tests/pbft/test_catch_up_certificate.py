"""Catch-up applies the one commit-certificate rule (ledger/block.py ``certified``): surplus or
invalid entries beside a quorum do not spoil a certified block, and only the quorum is kept."""

from __future__ import annotations

from node.pbft import wire
from node.pbft.actions import Execute
from tests.pbft.harness import Cluster


def test_a_certificate_with_surplus_entries_is_replayed_and_only_its_quorum_kept() -> None:
    c = Cluster(checkpoint_interval=4, log_window=8)
    c.down.add(3)
    for i in range(2):
        c.submit(0, i)
    c.deliver()
    behind = c.nodes[3].replica
    header, envelopes, commits = wire.decode_certified_block(c.nodes[0].blocks[1])
    body, signer, _ = wire.decode_signed(commits[0])
    forged = wire.encode_signed(body, signer, bytes(64))
    other = wire.decode_certified_block(c.nodes[0].blocks[2])[2][1]  # a commit of block 2
    too_few = wire.encode_certified_block(header, envelopes, [forged, *commits[1:], other])
    before = behind.counters["bad_certificate"]
    assert not any(isinstance(a, Execute) for a in behind.on_blocks([too_few]))
    assert behind.counters["bad_certificate"] == before + 1
    padded = wire.encode_certified_block(header, envelopes, [forged, *commits, commits[1], other])
    executed = [a for a in behind.on_blocks([padded]) if isinstance(a, Execute)]
    assert [e.sequence for e in executed] == [1] and executed[0].certificate == commits
    assert behind.counters["bad_certificate"] == before + 1
