"""Block hashes and proofs every verifier computes (docs/PROTOCOL.md, sections 4 and 7): the
batch hash a header commits to, the header digest PBFT votes on, and the rules that make a set
of signed Commits a commit certificate and a set of signed Attestations an attested outcome.
Nodes (node/pbft, node/receipts.py), clients (client/verify.py) and the auditor all call these,
so there is one definition of each byte layout and each rule."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import DecodeError

from ledger.v1 import consensus_pb2


def batch_hash(envelopes: Sequence[bytes]) -> bytes:
    """SHA-256 over the serialized envelopes in order, each prefixed by its length as 4 bytes
    big-endian: ``SHA-256(len(e0) || e0 || len(e1) || e1 || ...)``. The empty batch hashes to
    SHA-256(b"")."""
    h = hashlib.sha256()
    for envelope in envelopes:
        h.update(len(envelope).to_bytes(4, "big"))
        h.update(envelope)
    return h.digest()


def digest_of(header: bytes) -> bytes:
    """A block's digest: SHA-256 of its serialized BlockHeader, exactly as received (never
    re-serialized). Commits, prepares, pre-prepares and attestations name a block by it."""
    return hashlib.sha256(header).digest()


# --- commit certificates and attestations (docs/PROTOCOL.md, section 7) -----------------------

CONSENSUS_BODY_BYTES_MAX = 1024  # a Commit or an Attestation is well under 200 bytes
# (signer, body, signature) -> whether the signature is the signer's over
# signing_bytes(DOMAIN_CONSENSUS, chain_id, body): ledger.crypto.verify with the member's node
# key (clients, the auditor) or the replica's ConsensusCrypto.verify (nodes, the simulator).
VerifyFn = Callable[[int, bytes, bytes], bool]


class ProofError(Exception):
    """A certificate or attestation set does not prove what it claims. ``reason`` is a stable
    short code (docs/PROTOCOL.md, section 7)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


V = TypeVar("V", bound=Hashable)


@dataclass(frozen=True)
class Quorum(Generic[V]):
    """The one vote that enough distinct members cast: a view (commits) or a pair of roots
    (attestations), with its signers in entry order and their entries."""

    vote: V
    signers: tuple[int, ...]
    entries: tuple[bytes, ...]


class Votes(Generic[V]):
    """The valid entries of one certificate or attestation set, grouped by what they vote for;
    invalid ones are kept with their reason and otherwise ignored (a node may pass on more
    votes than needed). A member counts once: its first valid entry."""

    def __init__(self) -> None:
        self.groups: dict[V, list[tuple[int, bytes]]] = {}
        self.seen: set[int] = set()
        self.rejected: list[ProofError] = []

    def reject(self, reason: str, message: str) -> None:
        self.rejected.append(ProofError(reason, message))

    def add(self, signer: int, vote: V, entry: bytes, what: str) -> None:
        if signer in self.seen:
            self.reject("duplicate_signer", f"{what}: replica {signer} signed twice")
            return
        self.seen.add(signer)
        self.groups.setdefault(vote, []).append((signer, entry))

    def winner(self, needed: int, kind: str, split_reason: str, few_reason: str) -> Quorum[V]:
        """The one vote with ``needed`` signers; ProofError when none (the first invalid
        entry's reason, if any) or two (``split_reason``: only possible beyond f faults)."""
        winners = [(vote, votes) for vote, votes in self.groups.items() if len(votes) >= needed]
        if len(winners) > 1:
            raise ProofError(split_reason, f"conflicting {kind} each have {needed} signers")
        if winners:
            vote, votes = winners[0]
            return Quorum(vote, tuple(s for s, _ in votes), tuple(e for _, e in votes))
        best = max((len(v) for v in self.groups.values()), default=0)
        message = f"{best} valid matching {kind}, need {needed}"
        if self.rejected:
            first = self.rejected[0]
            raise ProofError(first.reason, f"{message}; {first}")
        raise ProofError(split_reason if len(self.groups) > 1 else few_reason, message)


def signed_message(
    raw: bytes, n: int, verify: VerifyFn, what: str
) -> tuple[int, consensus_pb2.ConsensusMessage]:
    """(signer, message) of one serialized SignedMessage by a member whose signature verifies."""
    try:
        sm = consensus_pb2.SignedMessage.FromString(raw)
    except DecodeError as exc:
        raise ProofError("malformed", f"{what}: not a SignedMessage ({exc})") from exc
    if sm.signer >= n:
        raise ProofError("non_member", f"{what}: signer {sm.signer} is not a member (n={n})")
    if len(sm.body) > CONSENSUS_BODY_BYTES_MAX:
        raise ProofError("malformed", f"{what}: body larger than {CONSENSUS_BODY_BYTES_MAX} bytes")
    if not verify(sm.signer, sm.body, sm.signature):
        raise ProofError("bad_signature", f"{what}: signature of replica {sm.signer} does not verify")
    msg = consensus_pb2.ConsensusMessage()
    try:
        msg.ParseFromString(sm.body)
    except DecodeError as exc:
        raise ProofError("malformed", f"{what}: body is not a ConsensusMessage ({exc})") from exc
    return sm.signer, msg


def _votes(
    entries: Sequence[bytes],
    n: int,
    sequence: int,
    digest: bytes,
    verify: VerifyFn,
    kind: str,
    vote_of: Callable[[Any], V],
) -> Votes[V]:
    """Entries (serialized SignedMessages) that are valid ``kind`` messages (a Commit or an
    Attestation) of block ``digest`` at ``sequence``, grouped by ``vote_of`` the message.
    Valid: signer a member, signature verifies, body of that kind naming replica == signer,
    this sequence and digest. More than 2n entries: ProofError malformed."""
    if len(entries) > 2 * n:
        raise ProofError("malformed", f"{len(entries)} {kind}s for n={n}")
    votes: Votes[V] = Votes()
    for i, raw in enumerate(entries):
        what = f"{kind} {i}"
        try:
            signer, msg = signed_message(raw, n, verify, what)
        except ProofError as exc:
            votes.rejected.append(exc)
            continue
        if msg.WhichOneof("kind") != kind:
            votes.reject(f"not_{kind}", f"{what}: is a {msg.WhichOneof('kind')}, not a {kind}")
            continue
        body = getattr(msg, kind)
        if body.replica != signer:
            votes.reject("bad_signer", f"{what}: names replica {body.replica} but is signed by {signer}")
        elif body.sequence != sequence or body.digest != digest:
            votes.reject(
                "other_block", f"{what}: of another block (sequence {body.sequence}, not {sequence})"
            )
        else:
            votes.add(signer, vote_of(body), raw, what)
    return votes


def commit_votes(
    commits: Sequence[bytes], n: int, height: int, digest: bytes, verify: VerifyFn
) -> Votes[int]:
    """The valid Commits for block ``digest`` at ``height``, by view."""
    return _votes(commits, n, height, digest, verify, "commit", lambda c: int(c.view))


def certified(
    commits: Sequence[bytes], n: int, f: int, height: int, digest: bytes, verify: VerifyFn
) -> Quorum[int]:
    """The commit certificate rule: 2f+1 distinct members' valid commits in one view (the
    Quorum's vote); invalid or extra entries are ignored. ProofError otherwise."""
    return commit_votes(commits, n, height, digest, verify).winner(
        2 * f + 1, "commits", "mixed_views", "too_few_commits"
    )


def attestation_votes(
    attestations: Sequence[bytes], n: int, sequence: int, digest: bytes, verify: VerifyFn
) -> Votes[tuple[bytes, bytes]]:
    """The valid Attestations of block ``digest`` at ``sequence``, by (results_root, state_root)."""
    return _votes(
        attestations,
        n,
        sequence,
        digest,
        verify,
        "attestation",
        lambda a: (bytes(a.results_root), bytes(a.state_root)),
    )


def attested(
    attestations: Sequence[bytes], n: int, f: int, sequence: int, digest: bytes, verify: VerifyFn
) -> Quorum[tuple[bytes, bytes]]:
    """The attestation rule: f+1 distinct members' valid attestations of one (results_root,
    state_root) (the Quorum's vote): one of them is honest, so the roots are the ledger's.
    ProofError otherwise (attestations_disagree when two sets of roots each have f+1)."""
    return attestation_votes(attestations, n, sequence, digest, verify).winner(
        f + 1, "attestations", "attestations_disagree", "too_few_attestations"
    )
