"""A client-signature verifier that checks each signature once between admission and execution.
(Consensus signing is node.pbft.crypto.Ed25519Crypto.)"""

from __future__ import annotations

import hashlib

from ledger import crypto


class VerifyCache:
    """ledger.crypto.verify that remembers successes (bounded, oldest forgotten first).

    A client transaction's signatures are checked when the node admits it and again when the
    block executes; the second check of the same (key, signature, message) can only give the
    same answer, so it is answered from here. Failures are never cached (always re-checked)."""

    def __init__(self, entries_max: int = 200_000) -> None:
        self._ok: dict[tuple[bytes, bytes, bytes, str, bytes], None] = {}
        self._entries_max = entries_max
        self.hits = 0

    def __call__(
        self, public_key: bytes, signature: bytes, domain: bytes, chain_id: str, body: bytes
    ) -> bool:
        key = (public_key, signature, domain, chain_id, hashlib.sha256(body).digest())
        if key in self._ok:
            self.hits += 1
            return True
        if not crypto.verify(public_key, signature, domain, chain_id, body):
            return False
        self._ok[key] = None
        if len(self._ok) > self._entries_max:
            del self._ok[next(iter(self._ok))]
        return True
