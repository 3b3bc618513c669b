"""The seeded simulator: many random seeds, named fault scenarios, and every consensus bug the
simulator found, kept as the scenario that exposed it (frozen here, so changes to the random
scenario generator cannot make them disappear)."""

from __future__ import annotations

import pytest

from sim.cluster import Result, Simulation, run_seed
from sim.scenario import Scenario, restore_scenario


def _ok(r: Result) -> None:
    assert not r.safety_violations, (r.seed, r.safety_violations, r.trace[-30:])
    assert r.liveness_failure is None, (r.seed, r.liveness_failure, r.trace[-30:])


def test_one_hundred_random_seeds_are_safe_and_live() -> None:
    executed = 0
    for seed in range(100):
        r = run_seed(seed)
        _ok(r)
        executed += r.sequences_executed
    assert executed > 1000  # the runs did real work (their speed: scripts/simulate.py, not a test)


def test_random_seeds_on_the_real_ledger() -> None:
    for seed in range(1000, 1008):
        r = run_seed(seed, app="ledger")
        _ok(r)
        assert r.sequences_executed > 0


def test_seeds_with_real_ed25519_signatures() -> None:
    for seed in range(3):
        sc = Scenario(seed=seed, crypto="ed25519", requests=10, drop=0.05, faulty={1: "forge"})
        _ok(Simulation(sc).run())


# --- named scenarios -------------------------------------------------------------------------


def test_primary_crash_and_restart() -> None:
    sc = Scenario(seed=11, faulty={0: "crash"}, crashes=[(0, 400, 2_500)], drop=0.02)
    r = Simulation(sc).run()
    _ok(r)
    assert r.view_changes >= 3  # the three live replicas each moved to a new view


def test_silent_primary() -> None:
    r = Simulation(Scenario(seed=12, faulty={0: "silent"})).run()
    _ok(r)
    assert r.view_changes >= 3


def test_equivocating_primary() -> None:
    # Replicas 1 and 3 get one batch, replica 2 another (replica 1 sees both): no digest reaches
    # 2f prepares, the backups depose the primary; as a backup the liar then votes both ways.
    r = Simulation(Scenario(seed=13, faulty={0: "equivocate"}, requests=20)).run()
    _ok(r)
    assert r.view_changes >= 3
    assert r.counters.get("equivocation", 0) > 0 and r.counters.get("conflicting_vote", 0) > 0


def test_forger_and_replayer_are_rejected_and_counted() -> None:
    for behaviour, counter in (("forge", "bad_signature"), ("replay", "old_view")):
        r = Simulation(Scenario(seed=14, faulty={2: behaviour}, requests=25, drop=0.05)).run()
        _ok(r)
        if behaviour == "forge":
            assert r.counters.get(counter, 0) > 0 and r.counters.get("bad_view_change", 0) > 0


def test_partition_heals_primary_cut_off() -> None:
    sc = Scenario(seed=15, partitions=[(100, 2_500, frozenset({0}))])
    r = Simulation(sc).run()
    _ok(r)
    assert r.view_changes >= 3


def test_partition_without_quorum_on_either_side_heals() -> None:
    sc = Scenario(seed=16, partitions=[(300, 2_900, frozenset({0, 1}))], requests=20)
    _ok(Simulation(sc).run())


def test_replica_restarts_in_the_middle_of_a_view_change() -> None:
    # The primary is cut off from 100 ms on; replica 2 asks for view 1 at 753 ms (seed 17) and
    # crashes at 754, before the NEW-VIEW; it comes back from its journal at 1 s.
    sc = Scenario(
        seed=17,
        partitions=[(100, 2_800, frozenset({0}))],
        faulty={2: "crash"},
        crashes=[(2, 754, 1_000)],
        requests=15,
    )
    r = Simulation(sc).run()
    _ok(r)
    crash = next(i for i, line in enumerate(r.trace) if "r2 crash" in line)
    assert any("r2 view_change" in line for line in r.trace[:crash])  # it was mid-view-change
    assert any("r2 restart (view 1)" in line for line in r.trace[crash:])


@pytest.mark.parametrize(("f", "seed"), [(1, 1), (1, 2), (1, 3), (2, 0)])
def test_every_replica_crashes_during_a_view_change_and_the_lone_one_rejoins(f: int, seed: int) -> None:
    """Issue 21. The primary crashes; the first replica to time out asks for view 1 and at that
    moment every replica crashes; all restart. The one that asked comes back in view 1 from its
    journal, alone, the others in view 0 under the restarted primary. A view moves only on a
    quorum or f+1 view changes, and one is neither: it stayed in view 1 for good, following the
    chain by catch-up and voting in no view. Now the others follow it after two view-change
    timeouts, and every honest replica must end in one view (the liveness check)."""
    sc = Scenario(
        seed=seed,
        f=f,
        faulty={0: "crash"},
        crashes=[(0, 400, 10**9)],  # down until every replica restarts
        crash_all_on_view_change=(400, 200),
        requests=20,
        faults_until_ms=0,  # no network faults: measure isolation from the start
        liveness_bound_ms=10_000,
    )
    r = Simulation(sc).run()
    crash = next(line for line in r.trace if "crash all" in line)
    assert crash.count("(1, True)") == 1 and crash.count("(0, False)") == sc.n - 1, crash  # one alone
    restarts = [line for line in r.trace if "restart (view" in line]
    assert len(restarts) == sc.n and sum("restart (view 1)" in line for line in restarts) == 1, restarts
    _ok(r)
    # Back in the others' view within a few view-change timeouts (two to notice, one to change).
    assert r.isolated_ms_max <= 4 * sc.view_change_timeout_ms, r.isolated_ms_max


def test_a_liar_asking_alone_for_the_next_view_costs_view_changes_not_liveness() -> None:
    """The price of following a replica alone ahead: a liar that keeps asking for the next view
    makes the correct replicas change views, after 2 timeouts, then 4, 8, ...: the wait doubles
    per follow of the same replica. Everything still executes, in one view at the end."""
    sc = Scenario(seed=21, faulty={3: "pusher"}, requests=30, submit_until_ms=3_000)
    r = Simulation(sc).run()
    _ok(r)
    followed = r.counters.get("followed_lone_view", 0)
    assert followed > 0
    # Three correct replicas, each following the liar after 2, then 4, 8, ... timeouts
    # (views.py, FOLLOW_BACKOFF_MAX): k follows need 2 * (2^k - 1) timeouts at least.
    follows_max = 0
    while 2 * ((1 << (follows_max + 1)) - 1) * sc.view_change_timeout_ms <= r.end_ms:
        follows_max += 1
    assert followed <= 3 * follows_max, (followed, follows_max, r.end_ms)


def test_seven_replicas_two_faulty() -> None:
    sc = Scenario(seed=18, f=2, faulty={0: "equivocate", 4: "crash"}, crashes=[(4, 300, 1_500)], drop=0.05)
    _ok(Simulation(sc).run())


@pytest.mark.parametrize("faulty", [{0: "silent", 1: "silent"}, {1: "crash", 2: "crash"}])
def test_f_plus_one_faults_lose_liveness_and_the_simulator_says_so(faulty: dict[int, str]) -> None:
    """Beyond f faults PBFT promises nothing. With two of four replicas silent (or crashed for
    good) no quorum exists: nothing can commit, and the simulator must report a liveness failure
    rather than claim success."""
    crashes = [(r, 500, 10**9) for r, b in faulty.items() if b == "crash"]
    sc = Scenario(seed=19, faulty=faulty, crashes=crashes, claims_safety=False, liveness_bound_ms=5_000)
    r = Simulation(sc).run()
    assert r.liveness_failure is not None


def test_f_plus_one_colluders_break_agreement_and_the_checker_catches_it() -> None:
    """Two colluding liars of four (the primary and replica 1) show replica 3 another batch with
    all their votes for it: replica 3 commits it while replica 2 commits the real one. PBFT
    claims nothing here; the point is that the agreement checker sees it."""
    sc = Scenario(seed=20, faulty={0: "collude", 1: "collude"}, claims_safety=False, liveness_bound_ms=5_000)
    r = Simulation(sc).run()
    assert any(v.startswith("agreement") for v in r.safety_violations)


# --- regressions: each scenario exposed a consensus bug --------------------------------------


def test_regression_escalation_deadlock_seed_3() -> None:
    """Replicas escalated a view change only on 2f+1 view-changes for exactly their view; one
    replica already asking for the next view was not counted and everyone waited forever."""
    sc = Scenario(
        seed=3,
        requests=28,
        drop=0.2,
        delay_max_ms=60,
        faulty={1: "silent"},
        batch_size_max=8,
        checkpoint_interval=8,
        log_window=16,
    )
    _ok(Simulation(sc).run())


def test_regression_commit_certificate_shrank_seed_16() -> None:
    """A slot committed in view v but executed after votes of view v+1 replaced some of its
    commits: the Execute carried fewer than 2f+1 commits and state transfer rejected it."""
    sc = Scenario(
        seed=16,
        requests=31,
        drop=0.1,
        duplicate=0.1,
        delay_max_ms=20,
        partitions=[(1372, 2787, frozenset({0})), (2466, 2674, frozenset({0}))],
        batch_size_max=2,
        checkpoint_interval=4,
        log_window=8,
    )
    _ok(Simulation(sc).run())


def test_regression_lone_view_change_never_caught_up_seed_53() -> None:
    """A replica that timed out alone stayed in its view change and ignored the commits of the
    old view, so it never executed what the others committed."""
    sc = Scenario(
        seed=53,
        requests=34,
        drop=0.1,
        duplicate=0.1,
        delay_max_ms=2,
        batch_size_max=8,
        checkpoint_interval=8,
        log_window=24,
    )
    _ok(Simulation(sc).run())


def test_regression_new_primary_proposed_over_its_own_plan_seed_132() -> None:
    """Installing a NEW-VIEW first adopted the plan's stable checkpoint, which proposed new
    batches at sequences the plan was about to re-propose (an assertion: own proposal rejected)."""
    sc = Scenario(
        seed=132,
        requests=15,
        drop=0.2,
        delay_max_ms=5,
        partitions=[
            (1643, 2199, frozenset({0})),
            (2539, 2997, frozenset({0, 2})),
            (2821, 2887, frozenset({0})),
        ],
        faulty={2: "silent"},
        batch_size_max=1,
        checkpoint_interval=4,
        log_window=8,
    )
    _ok(Simulation(sc).run())


def test_regression_lagging_replica_never_fetched_seed_788() -> None:
    """A lagging replica saw later sequences commit but never fetched the ones it missed, and
    a liar's first checkpoint blocked stability: it waited forever."""
    sc = Scenario(
        seed=788,
        requests=5,
        drop=0.2,
        delay_max_ms=5,
        partitions=[
            (274, 1272, frozenset({2})),
            (2165, 2862, frozenset({0})),
            (1531, 2908, frozenset({1, 2})),
        ],
        faulty={1: "forge"},
        batch_size_max=4,
        checkpoint_interval=2,
        log_window=4,
    )
    _ok(Simulation(sc).run())


def test_regression_prepares_not_resent_after_commit_seed_29() -> None:
    """Replicas stopped re-sending prepares once they committed; a peer that had missed one
    never prepared, never sent its commit, and a third replica waited for it forever."""
    sc = Scenario(
        seed=29,
        requests=23,
        drop=0.1,
        duplicate=0.02,
        delay_max_ms=2,
        faulty={0: "equivocate"},
        batch_size_max=1,
        checkpoint_interval=8,
        log_window=24,
    )
    _ok(Simulation(sc).run())


def test_regression_votes_of_the_left_view_not_resent_seed_1336() -> None:
    """A replica that timed out alone stopped re-sending its votes of the view it left; a peer
    still in that view needed exactly its prepare to commit, and it needed that peer's commit."""
    sc = Scenario(
        seed=1336,
        requests=15,
        drop=0.2,
        duplicate=0.1,
        delay_max_ms=2,
        faulty={0: "silent"},
        batch_size_max=1,
        checkpoint_interval=8,
        log_window=16,
    )
    _ok(Simulation(sc).run())


def test_regression_liar_blocks_checkpoint_of_lagging_replica_seed_1164() -> None:
    """Two correct replicas and a liar moved on; the lagging correct replica could gather only
    f+1 matching checkpoints (the liar signed another root) and never fetched what it missed."""
    sc = Scenario(
        seed=1164,
        requests=11,
        drop=0.1,
        delay_max_ms=5,
        faulty={0: "forge"},
        batch_size_max=4,
        checkpoint_interval=2,
        log_window=4,
    )
    _ok(Simulation(sc).run())


def test_regression_lagging_replica_without_f_plus_one_evidence_seed_65_ledger() -> None:
    """On the real ledger: an equivocating primary showed two replicas different votes; a
    lagging correct replica never saw f+1 matching commits or checkpoints and waited forever in
    its view change. Now an expired timer also asks peers for certified blocks."""
    sc = Scenario(
        seed=65,
        app="ledger",
        requests=19,
        drop=0.2,
        duplicate=0.02,
        delay_max_ms=60,
        partitions=[
            (1938, 2626, frozenset({1})),
            (2164, 2968, frozenset({0})),
            (510, 1121, frozenset({2, 3})),
        ],
        faulty={0: "equivocate"},
        batch_size_max=8,
        checkpoint_interval=4,
        log_window=12,
    )
    _ok(Simulation(sc).run())


def test_a_primary_cut_off_through_a_view_change_joins_the_new_view_on_a_quiet_network() -> None:
    # Regression: seeds 103 and 127 of scripts/simulate.py, once the seeds ran the node core
    # (its relays let the others change view and finish while the primary was cut off; back,
    # it heard nothing that names a view and stayed alone in view 0).
    for seed in (103, 127):
        _ok(run_seed(seed))


# --- a replica restored from an old backup (issue 18 item 6, node/votes.py) ------------------


@pytest.mark.parametrize("seed", [3, 7, 12, 26])
def test_a_replica_restored_from_an_old_backup_stays_safe_and_rejoins(seed: int) -> None:
    """Backed up, crashed after voting on more sequences, restarted from the backup's journal
    and state with its vote record as floor: every check holds, and it votes again (the run is
    live only once every honest replica, the restored one too, is in one view)."""
    sc = restore_scenario(seed)
    sim = Simulation(sc)
    r = sim.run()
    _ok(r)
    node = sim.nodes[sc.restores[0][0]]
    assert node.backup is not None and not node.replica.abstaining
    assert node.last_executed == r.sequences_executed


@pytest.mark.parametrize("seed", [1, 5, 9])
def test_a_restored_replica_beside_f_liars_breaks_no_safety_check(seed: int) -> None:
    """With the floor the restored replica counts as correct: f others may lie at once. (Its
    liveness is not claimed: abstaining until caught up, it leaves 2f replicas voting while f
    are silent.)"""
    sc = restore_scenario(seed, liars=True)
    assert any(b not in ("", "crash") for b in sc.faulty.values())
    r = Simulation(sc).run()
    assert not r.safety_violations, (seed, r.safety_violations, r.trace[-30:])
