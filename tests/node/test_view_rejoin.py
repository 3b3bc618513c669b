"""Issue 21 over real processes: SIGKILL the primary, then every other node as soon as one of
them reports it is changing views, then start them all. The one that had asked for view 1 comes
back there from its journal, alone; the others go on in view 0 under the restarted primary. It
must be back in the others' view within a few view-change timeouts, and vote again: with another
node down, a commit needs it."""

from __future__ import annotations

import time
from pathlib import Path

from ledger.v1 import api_pb2, tx_pb2
from tests.node.helpers import (
    envelope,
    factory_for,
    running_consortium,
    statuses,
    stub,
    submit_one,
    wait_for,
)

TIMEOUT_MS = 1500  # its timer fires a fifth of this before the relayed copies' timers do
LIMITS = {"view_change_timeout_ms": TIMEOUT_MS}


def test_a_node_alone_in_a_view_change_after_every_node_was_killed_rejoins(tmp_path: Path) -> None:
    with running_consortium(tmp_path / "consortium", limits=LIMITS) as c:
        banks = c.banks()
        fx = factory_for(c)
        assert (
            submit_one(c, banks[1], fx.open_account(banks[1], "warm-up", fx.client("w"))).result.code
            == tx_pb2.OK
        )
        primary, lone = banks[0], banks[2]  # view 0's primary; the node the client asks
        c.kill(primary)
        # Only `lone` holds the request until it relays it, so its timer fires first.
        stub(c, lone).Submit(
            api_pb2.SubmitRequest(envelope=envelope(fx.open_account(lone, "a", fx.client("a")))), timeout=5
        )
        live = [b for b in banks if b != primary]

        def changing() -> list[str] | None:
            found = [b for b, s in statuses(c, live).items() if s.in_view_change]
            return found or None

        assert wait_for("a node to start a view change", changing, timeout_s=3 * TIMEOUT_MS / 1000) == [lone]
        for b in live:
            c.kill(b)
        for b in banks:
            c.start(b)
        c.wait_healthy(banks)
        views = {b: (s.view, s.in_view_change) for b, s in statuses(c, banks).items()}
        assert views[lone] == (1, True), views  # the scenario: back alone in the view it asked for
        assert all(views[b] == (0, False) for b in banks if b != lone), views

        started = time.monotonic()

        def one_view() -> set[tuple[int, bool]] | None:
            sts = statuses(c, banks)
            seen = {(s.view, s.in_view_change) for s in sts.values()}
            return seen if len(sts) == len(banks) and len(seen) == 1 and not next(iter(seen))[1] else None

        ((view, _),) = wait_for("every node in one view", one_view, timeout_s=6 * TIMEOUT_MS / 1000 + 5)
        took = time.monotonic() - started
        print(f"back in one view (view {view}) {took:.1f}s after the restart")
        # Two timeouts to notice it is alone, then one view change.
        assert took < 4 * TIMEOUT_MS / 1000 + 2, took
        # It votes again: with a node other than it and the primary down, a commit needs it.
        new_primary = banks[view % len(banks)]
        other = next(b for b in banks if b not in (lone, new_primary))
        c.kill(other)
        receipt = submit_one(c, lone, fx.open_account(lone, "b", fx.client("b")))
        assert receipt.result.code == tx_pb2.OK
