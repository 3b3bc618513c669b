"""Checks of signed consensus messages and of the certificates built from them. Every check
returns None/False on bad input (a lying or broken peer is an expected event) and never raises."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ledger.block import ProofError, Quorum, certified
from node.pbft import wire
from node.pbft.actions import ConsensusCrypto
from node.pbft.config import ReplicaConfig
from node.pbft.wire import Checkpoint, Prepare, PreparedCert, PrePrepare, Signed, ViewChange

_CACHE_MAX = 8192


@dataclass(frozen=True)
class CheckedCert:
    """A prepared certificate that verified: the batch at `sequence` prepared in `view`."""

    view: int
    sequence: int
    digest: bytes
    header: bytes
    envelopes: tuple[bytes, ...]
    cert: PreparedCert


class Verifier:
    def __init__(self, config: ReplicaConfig, crypto: ConsensusCrypto) -> None:
        self.cfg = config
        self.crypto = crypto
        self._cache: dict[bytes, Signed] = {}  # verified SignedMessage bytes (retransmits repeat)
        self.failure = ""  # why the last signed() returned None: garbage, non_member, bad_signature

    def signed(self, raw: bytes) -> Signed | None:
        """Decode and verify a serialized SignedMessage; None when anything is wrong."""
        hit = self._cache.get(raw)
        if hit is not None:
            return hit
        try:
            body, signer, signature = wire.decode_signed(raw)
        except wire.WireError:
            self.failure = "garbage"
            return None
        if not 0 <= signer < self.cfg.n:
            self.failure = "non_member"
            return None
        if not self.crypto.verify(signer, body, signature):
            self.failure = "bad_signature"  # the body is never decoded (it may be large)
            return None
        try:
            msg = wire.decode_body(body)
        except wire.WireError:
            self.failure = "garbage"  # signed, but no consensus message
            return None
        claimed = getattr(msg, "replica", signer)
        if claimed != signer:
            self.failure = "bad_signature"  # a body that names another replica
            return None
        if isinstance(msg, PrePrepare | wire.NewView) and signer != self.cfg.primary(msg.view):
            self.failure = "bad_signature"  # a proposal not by the view's primary
            return None
        s = Signed(raw=raw, body=body, signer=signer, signature=signature, msg=msg)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[raw] = s
        return s

    def checkpoint_proof(self, sequence: int, proof: Sequence[bytes]) -> tuple[bytes, bytes] | None:
        """The (state root, tree root) that 2f+1 distinct replicas signed at `sequence`, else
        None. Sequence 0 (genesis) needs no proof and has no roots here."""
        if sequence == 0:
            return (b"", b"") if not proof else None
        if len(proof) < self.cfg.quorum or len(proof) > self.cfg.n:
            return None
        roots: tuple[bytes, bytes] | None = None
        signers: set[int] = set()
        for raw in proof:
            s = self.signed(raw)
            if s is None or not isinstance(s.msg, Checkpoint) or s.msg.sequence != sequence:
                return None
            if roots is None:
                roots = s.msg.roots
            if s.msg.roots != roots or s.signer in signers:
                return None
            signers.add(s.signer)
        return roots

    def prepared_cert(self, cert: PreparedCert, view_below: int) -> CheckedCert | None:
        """A pre-prepare (view < view_below) by its view's primary, 2f matching prepares from
        distinct backups, and a batch that matches the header the digest names."""
        pp = self.signed(cert.pre_prepare)
        if pp is None or not isinstance(pp.msg, PrePrepare) or pp.msg.view >= view_below:
            return None
        m = pp.msg
        if wire.digest_of(m.header) != m.digest:
            return None
        if len(cert.prepares) < 2 * self.cfg.f or len(cert.prepares) > self.cfg.n:
            return None
        signers: set[int] = set()
        for raw in cert.prepares:
            p = self.signed(raw)
            if p is None or not isinstance(p.msg, Prepare):
                return None
            q = p.msg
            if (q.view, q.sequence, q.digest) != (m.view, m.sequence, m.digest):
                return None
            if p.signer in signers or p.signer == pp.signer:
                return None
            signers.add(p.signer)
        try:
            header = wire.decode_header(m.header)
        except wire.WireError:
            return None
        if not wire.header_matches(header, self.cfg.chain_id, m.sequence, cert.envelopes):
            return None
        return CheckedCert(m.view, m.sequence, m.digest, m.header, cert.envelopes, cert)

    def view_change(self, s: Signed) -> list[CheckedCert] | None:
        """The checked prepared certificates of a VIEW-CHANGE, or None if any part is bad."""
        vc = s.msg
        if not isinstance(vc, ViewChange):
            return None
        if self.checkpoint_proof(vc.stable_sequence, vc.checkpoint_proof) is None:
            return None
        if len(vc.prepared) > self.cfg.log_window:
            return None
        checked: list[CheckedCert] = []
        seen: set[int] = set()
        for cert in vc.prepared:
            c = self.prepared_cert(cert, vc.new_view)
            if c is None or c.sequence in seen:
                return None
            if not vc.stable_sequence < c.sequence <= vc.stable_sequence + self.cfg.log_window:
                return None
            seen.add(c.sequence)
            checked.append(c)
        return checked

    def commit_certificate(
        self, sequence: int, digest: bytes, commits: Sequence[bytes]
    ) -> Quorum[int] | None:
        """The commit certificate rule clients apply too (ledger/block.py ``certified``): 2f+1
        distinct replicas' valid commits on (sequence, digest) in one view; its view and
        signers, else None."""
        try:
            return certified(commits, self.cfg.n, self.cfg.f, sequence, digest, self.crypto.verify)
        except ProofError:
            return None
