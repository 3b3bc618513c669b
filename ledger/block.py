"""Block hashes every verifier computes (docs/PROTOCOL.md, "Blocks"): the batch hash a header
commits to and the header digest PBFT votes on. Nodes (node/pbft/wire.py) and clients
(client/verify.py) both call these, so there is one definition of each byte layout."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


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
