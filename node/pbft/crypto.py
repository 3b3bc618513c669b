"""The node's ConsensusCrypto: Ed25519 over ledger.crypto.signing_bytes(DOMAIN_CONSENSUS, ...)."""

from __future__ import annotations

from collections.abc import Sequence

from ledger.crypto import DOMAIN_CONSENSUS, SigningKey, verify


class Ed25519Crypto:
    def __init__(self, key: SigningKey, node_keys: Sequence[bytes], chain_id: str) -> None:
        self._key = key
        self._node_keys = tuple(node_keys)
        self._chain_id = chain_id

    def sign(self, body: bytes) -> bytes:
        return self._key.sign(DOMAIN_CONSENSUS, self._chain_id, body)

    def verify(self, replica: int, body: bytes, signature: bytes) -> bool:
        if not 0 <= replica < len(self._node_keys):
            return False
        return verify(self._node_keys[replica], signature, DOMAIN_CONSENSUS, self._chain_id, body)
