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
