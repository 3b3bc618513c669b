"""When a running node starts over to sync by snapshot (node/__main__.py CatchUpWatch): only when
every period of a row saw catch-up refused as pruned and the head not moving."""

from __future__ import annotations

from node.__main__ import RESYNC_CHECKS, CatchUpWatch


def test_refused_and_stuck_for_the_whole_row_needs_a_snapshot() -> None:
    watch = CatchUpWatch(fetch_pruned=0, head=100)
    answers = [watch.period(fetch_pruned=i + 1, head=100) for i in range(RESYNC_CHECKS)]
    assert answers == [False] * (RESYNC_CHECKS - 1) + [True]


def test_a_moving_head_or_a_quiet_period_starts_the_count_again() -> None:
    watch = CatchUpWatch(fetch_pruned=0, head=100)
    refusals, head = 0, 100
    for period in range(5 * RESYNC_CHECKS):
        refusals += 1  # one pruned peer refuses every period ...
        if period % RESYNC_CHECKS == RESYNC_CHECKS - 1:
            head += 64  # ... but another serves the blocks: the head moves
        assert not watch.period(refusals, head)
    for _ in range(RESYNC_CHECKS - 1):
        refusals += 1
        assert not watch.period(refusals, head)
    assert not watch.period(refusals, head)  # no refusal this period: not stuck on pruning
    assert [watch.period(refusals + i + 1, head) for i in range(RESYNC_CHECKS)][-1]
