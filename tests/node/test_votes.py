"""The vote record (node/votes.py): kept ahead of what the replica may send, and the floor a
replica restarted from an older journal gets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from node.storage import blocks
from node.storage.memory import MemoryStore
from node.votes import RESTORED, VoteGuard, VoteRecord, VoteRecordError, start_floor


@dataclass
class FakeReplica:
    view: int = 0
    stable_seq: int = 0
    abstaining: bool = False


def test_the_record_rises_before_sends_a_window_ahead_and_is_rewritten_rarely(tmp_path: Path) -> None:
    path = tmp_path / "data.votes.json"
    replica = FakeReplica()
    guard = VoteGuard(path, VoteRecord(), replica, log_window=10, store=MemoryStore())
    guard.before_send()
    assert VoteRecord.load(path) == VoteRecord(0, 20)  # stable 0 + window, one window to spare
    for stable in range(0, 11, 5):  # within the spare window: no rewrite
        replica.stable_seq = stable
        guard.before_send()
    assert guard.writes == 1
    replica.stable_seq = 15
    guard.before_send()
    assert VoteRecord.load(path) == VoteRecord(0, 35) and guard.writes == 2
    replica.view = 3  # a view change: written before its VIEW-CHANGE leaves
    guard.before_send()
    assert VoteRecord.load(path) == VoteRecord(3, 35)


def test_an_abstaining_replica_leaves_the_record_and_clears_the_restored_mark_when_it_votes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "votes.json"
    store = MemoryStore()
    with store.write() as w:
        w.put(RESTORED, b"\x01")
    replica = FakeReplica(view=1, stable_seq=40, abstaining=True)
    guard = VoteGuard(path, VoteRecord(2, 60), replica, log_window=10, store=store)
    guard.before_send()
    assert not path.exists()  # nothing it sends (checkpoints, attestations) needs the record
    replica.abstaining = False
    replica.stable_seq = 60
    guard.before_send()
    with store.read() as r:
        assert r.get(RESTORED) is None
    assert VoteRecord.load(path) == VoteRecord(2, 80)


def test_the_floor_applies_to_a_restored_wiped_or_older_journal_only() -> None:
    record = VoteRecord(3, 120)
    empty = MemoryStore()
    executed = MemoryStore()
    with executed.write() as w:
        w.put(blocks.LAST_EXECUTED, (50).to_bytes(8, "big"))
    restored = MemoryStore()
    with restored.write() as w:
        w.put(blocks.LAST_EXECUTED, (50).to_bytes(8, "big"))
        w.put(RESTORED, b"\x01")
    with executed.read() as r:
        assert start_floor(record, r, journal_empty=False, journal_view=3) is None  # a plain restart
        assert start_floor(record, r, journal_empty=False, journal_view=2) == (3, 120)  # older journal
        assert start_floor(VoteRecord(), r, journal_empty=True, journal_view=0) is None  # never voted
    with restored.read() as r:
        assert start_floor(record, r, journal_empty=False, journal_view=3) == (3, 120)
    with empty.read() as r:
        assert start_floor(record, r, journal_empty=True, journal_view=0) == (3, 120)  # wiped


@pytest.mark.parametrize("content", [b"{", b'{"view": -1, "sequence": 2}', b'{"view": 1}', b"[]"])
def test_a_bad_record_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "votes.json"
    path.write_bytes(content)
    with pytest.raises(VoteRecordError, match=r"votes\.json"):
        VoteRecord.load(path)
