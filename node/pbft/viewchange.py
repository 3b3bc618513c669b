"""What a NEW-VIEW must propose, computed from 2f+1 checked VIEW-CHANGEs. The new primary
builds its NEW-VIEW from this plan and every backup recomputes it to verify the NEW-VIEW, so
the function must be deterministic in its inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from node.pbft import wire
from node.pbft.verify import CheckedCert
from node.pbft.wire import ViewChange


@dataclass(frozen=True)
class Proposal:
    sequence: int
    header: bytes
    envelopes: tuple[bytes, ...]


@dataclass(frozen=True)
class Plan:
    stable_sequence: int  # the highest stable checkpoint any view-change proved
    stable_proof: tuple[bytes, ...]
    proposals: tuple[Proposal, ...]  # every sequence above stable_sequence up to the highest prepared

    @property
    def last_sequence(self) -> int:
        return self.proposals[-1].sequence if self.proposals else self.stable_sequence


def plan_new_view(chain_id: str, view_changes: Sequence[tuple[ViewChange, list[CheckedCert]]]) -> Plan:
    """Re-propose, for each sequence in (min_s, max_s], the batch prepared in the highest view
    (it may have committed somewhere); fill gaps with null batches."""
    assert view_changes, "a plan needs view-changes"
    best_vc = max(view_changes, key=lambda x: (x[0].stable_sequence, x[0].replica))[0]
    min_s = best_vc.stable_sequence
    chosen: dict[int, CheckedCert] = {}
    for _, certs in view_changes:
        for c in certs:
            if c.sequence <= min_s:
                continue
            cur = chosen.get(c.sequence)
            # Two certificates of one view with different digests need f+1 equivocators; the
            # digest tie-break only keeps the plan deterministic.
            if cur is None or (c.view, c.digest) > (cur.view, cur.digest):
                chosen[c.sequence] = c
    max_s = max(chosen, default=min_s)
    proposals: list[Proposal] = []
    for seq in range(min_s + 1, max_s + 1):
        pick = chosen.get(seq)
        if pick is None:
            proposals.append(Proposal(seq, wire.null_header(chain_id, seq), ()))
        else:
            proposals.append(Proposal(seq, pick.header, pick.envelopes))
    return Plan(min_s, best_vc.checkpoint_proof, tuple(proposals))
