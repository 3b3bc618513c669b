"""The message log: one Slot per sequence between the stable checkpoint and the high
watermark, holding the accepted pre-prepare and each replica's latest prepare and commit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from node.pbft.wire import Commit, Prepare, PreparedCert, PrePrepare, Signed

VoteOutcome = Literal["new", "duplicate", "conflict", "stale"]


def vote_key(s: Signed) -> tuple[int, bytes]:
    m = s.msg
    assert isinstance(m, Prepare | Commit)
    return m.view, m.digest


@dataclass
class Slot:
    sequence: int
    pre_prepare: Signed | None = None  # accepted pre-prepare of the highest view seen
    pre_prepare_peer: bytes = b""  # the PeerMessage (with batch) as journaled and re-sent
    envelopes: tuple[bytes, ...] = ()
    tx_ids: tuple[bytes, ...] = ()
    # One vote per replica (its highest view) keeps memory bounded whatever a liar sends.
    prepares: dict[int, Signed] = field(default_factory=dict)
    commits: dict[int, Signed] = field(default_factory=dict)
    prepared_view: int = -1  # highest view this replica prepared (and committed-voted) in
    cert: PreparedCert | None = None  # the prepared certificate of prepared_view
    committed: bool = False  # 2f+1 commits of one view on the current pre-prepare's digest
    commit_certificate: tuple[bytes, ...] = ()  # those 2f+1 commits (SignedMessage bytes)

    @property
    def pp(self) -> PrePrepare | None:
        if self.pre_prepare is None:
            return None
        m = self.pre_prepare.msg
        assert isinstance(m, PrePrepare)
        return m

    @staticmethod
    def add_vote(votes: dict[int, Signed], s: Signed) -> VoteOutcome:
        old = votes.get(s.signer)
        if old is not None:
            (ov, od), (nv, nd) = vote_key(old), vote_key(s)
            if nv < ov:
                return "stale"
            if nv == ov:
                return "duplicate" if nd == od else "conflict"
        votes[s.signer] = s
        return "new"

    @staticmethod
    def matching(votes: dict[int, Signed], view: int, digest: bytes) -> list[Signed]:
        return [s for _, s in sorted(votes.items()) if vote_key(s) == (view, digest)]
