"""Replica configuration: the node-local limits and timers of one PBFT replica."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaConfig:
    """Built from the node's limits (node/config.py: NodeLimits.replica_config), where each limit
    has its one default and its one validation; only the cluster's shape is checked here."""

    n: int
    f: int
    replica_id: int
    chain_id: str
    batch_size_max: int
    # How long the primary lets a batch that is not full wait for company: at least
    # batch_delay_ms, and, when batch_delay_per_tps_us is set, longer as requests arrive faster
    # (that many microseconds per transaction/s of the batch's own arrival rate), up to
    # batch_delay_max_ms. Under light load blocks go out quickly; under heavy load they grow,
    # since every block costs each replica a fixed few milliseconds of votes, signatures and
    # fsyncs whatever its size.
    batch_delay_ms: int
    batch_delay_max_ms: int
    batch_delay_per_tps_us: int
    checkpoint_interval: int
    log_window: int  # sequences above the stable checkpoint a pre-prepare may use
    view_change_timeout_ms: int
    view_change_backoff_max: int  # the timeout doubles at most this many times
    retransmit_ms: int  # own votes are re-sent this often (lossy links)
    pending_requests_max: int
    peer_message_bytes_max: int  # one message from a peer
    recent_executed_max: int  # tx_ids remembered to drop late duplicates
    # Blocks the primary has proposed but not yet executed. Under load, requests then gather
    # into larger batches while earlier ones are agreed, instead of splintering into many small
    # blocks whose fixed costs (fsyncs, votes, signatures) dominate.
    proposals_in_flight_max: int
    # A backup will not prepare a block stamped further than this ahead of its own clock.
    timestamp_skew_ms_max: int

    def __post_init__(self) -> None:
        if self.f < 0 or self.n != 3 * self.f + 1:
            raise ValueError(f"n must be 3f+1, got n={self.n} f={self.f}")
        if not 0 <= self.replica_id < self.n:
            raise ValueError(f"replica_id {self.replica_id} outside 0..{self.n - 1}")

    @property
    def quorum(self) -> int:
        return 2 * self.f + 1

    def primary(self, view: int) -> int:
        return view % self.n

    def batch_ready(self, size: int, age_ms: int) -> bool:
        """Whether a batch of ``size`` requests, the oldest ``age_ms`` old, should be proposed.
        The arrival rate is size / age, so waiting until age >= rate * per_tps, clamped to
        [batch_delay_ms, batch_delay_max_ms], is age * age >= size * per_tps (in ms and us)."""
        if size >= self.batch_size_max or age_ms >= max(self.batch_delay_ms, self.batch_delay_max_ms):
            return True
        return age_ms >= self.batch_delay_ms and age_ms * age_ms >= size * self.batch_delay_per_tps_us
