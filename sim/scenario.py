"""A seed -> one fault scenario. Everything random in a run is drawn from the seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

BEHAVIOURS = ("crash", "silent", "equivocate", "forge", "replay")


@dataclass
class Scenario:
    seed: int
    f: int = 1
    app: str = "echo"  # echo | ledger
    crypto: str = "hash"  # hash | ed25519
    requests: int = 30
    submit_until_ms: int = 2_000
    faults_until_ms: int = 3_000  # network faults and crashes stop here; liars keep lying
    liveness_bound_ms: int = 40_000  # after faults stop, everything executes within this
    drop: float = 0.0
    duplicate: float = 0.0
    delay_max_ms: int = 5
    partitions: list[tuple[int, int, frozenset[int]]] = field(
        default_factory=list
    )  # start, end, cut-off group
    faulty: dict[int, str] = field(default_factory=dict)  # replica -> behaviour
    crashes: list[tuple[int, int, int]] = field(default_factory=list)  # replica, crash at, restart at
    # (after_ms, down_ms): the first time an honest replica starts a view change at or after
    # after_ms, every replica crashes at once; all restart down_ms later (issue 21: a replica
    # back alone in the view it asked for, the others in the view they never left).
    crash_all_on_view_change: tuple[int, int] | None = None
    # (replica, backup at, crash at, restore at): an online backup, a crash, and a restart from
    # that backup's journal and state (node/votes.py); restore_floor False drops the vote
    # record (the replica then forgets what it voted after the backup).
    restores: list[tuple[int, int, int, int]] = field(default_factory=list)
    restore_floor: bool = True
    batch_size_max: int = 4
    checkpoint_interval: int = 4
    log_window: int = 8
    view_change_timeout_ms: int = 300
    claims_safety: bool = True  # False when more than f replicas are faulty at once

    @property
    def n(self) -> int:
        return 3 * self.f + 1


def random_scenario(seed: int, app: str = "echo") -> Scenario:
    rng = random.Random(seed)
    f = 2 if rng.random() < 0.15 else 1
    sc = Scenario(seed=seed, f=f, app=app)
    sc.crypto = "ed25519" if rng.random() < 0.05 else "hash"
    sc.requests = rng.randint(5, 40)
    sc.batch_size_max = rng.choice((1, 2, 4, 8))
    sc.checkpoint_interval = rng.choice((2, 4, 8))
    sc.log_window = sc.checkpoint_interval * rng.choice((2, 3))
    sc.drop = rng.choice((0.0, 0.0, 0.02, 0.1, 0.2))
    sc.duplicate = rng.choice((0.0, 0.02, 0.1))
    sc.delay_max_ms = rng.choice((2, 5, 20, 60))
    n = sc.n
    count = rng.randint(0, f)
    for r in rng.sample(range(n), count):
        # Bias towards replica 0, the first primary: equivocating and silent primaries.
        sc.faulty[r] = rng.choice(BEHAVIOURS)
    if rng.random() < 0.3 and 0 not in sc.faulty and len(sc.faulty) < f:
        sc.faulty[0] = rng.choice(("silent", "equivocate"))
    for r, b in sc.faulty.items():
        if b == "crash":
            t = rng.randint(0, sc.faults_until_ms - 200)
            while t < sc.faults_until_ms - 100:
                down = rng.randint(50, 1_000)
                sc.crashes.append((r, t, min(t + down, sc.faults_until_ms)))
                t += down + rng.randint(100, 1_000)
    if rng.random() < 0.4:
        for _ in range(rng.randint(1, 3)):
            start = rng.randint(0, sc.faults_until_ms - 100)
            end = rng.randint(start + 50, sc.faults_until_ms)
            size = rng.randint(1, n // 2)
            group = frozenset(rng.sample(range(n), size)) if rng.random() < 0.6 else frozenset({0})
            sc.partitions.append((start, end, group))
    return sc


def restore_scenario(seed: int, app: str = "echo", floor: bool = True, liars: bool = False) -> Scenario:
    """A random scenario, plus one more replica that is restored from an old backup: backed up,
    crashed a while later (having voted meanwhile), then restarted from that backup's journal
    and state. Requests go on for 3 s after it is back, so that the others move its vote floor
    past (their stable checkpoint passes the highest sequence it could have voted on). With the
    floor it counts as correct: the others may still hold f faulty replicas (``liars``: as many
    as random_scenario drew, with at least one that lies); without, at most f - 1, since a
    replica abstaining until caught up leaves 2f voting when f others are silent. Its own
    generator: random_scenario's seeds stay what they were."""
    sc = random_scenario(seed, app)
    rng = random.Random(seed * 31 + 7)
    sc.restore_floor = floor
    if liars:
        if not any(b != "crash" for b in sc.faulty.values()):
            sc.faulty[max(r for r in range(sc.n) if r not in sc.faulty)] = rng.choice(
                ("equivocate", "forge", "replay")
            )
        while len(sc.faulty) > sc.f:
            del sc.faulty[min(r for r, b in sc.faulty.items() if b == "crash" or len(sc.faulty) > sc.f)]
    else:
        while len(sc.faulty) >= sc.f:
            del sc.faulty[max(sc.faulty)]
    sc.crashes = [c for c in sc.crashes if sc.faulty.get(c[0]) == "crash"]
    r = rng.choice([x for x in range(sc.n) if x not in sc.faulty])
    backup_at = rng.randint(0, sc.faults_until_ms // 2)
    down = rng.randint(backup_at + 100, sc.faults_until_ms - 200)
    up = rng.randint(down + 10, sc.faults_until_ms)
    sc.restores = [(r, backup_at, down, up)]
    sc.submit_until_ms = up + 3_000
    sc.faults_until_ms = max(sc.faults_until_ms, up)
    sc.requests = 5 * (sc.log_window + sc.checkpoint_interval)
    return sc
