"""A fast ConsensusCrypto for the simulator: keyed BLAKE2b per replica. A replica's object can
only sign under its own key, and verification still detects forgery; it is ~50x cheaper
than Ed25519 in Python, so most seeds use it and some use real Ed25519."""

from __future__ import annotations

import hashlib

from ledger.crypto import SigningKey
from node.pbft.crypto import Ed25519Crypto


class KeyedHashCrypto:
    def __init__(self, replica: int, secrets: tuple[bytes, ...]) -> None:
        self._own = secrets[replica]
        self._secrets = secrets

    def sign(self, body: bytes) -> bytes:
        return hashlib.blake2b(body, key=self._own, digest_size=64).digest()

    def verify(self, replica: int, body: bytes, signature: bytes) -> bool:
        if not 0 <= replica < len(self._secrets):
            return False
        return hashlib.blake2b(body, key=self._secrets[replica], digest_size=64).digest() == signature


def keyed_hash_cryptos(n: int, seed: int) -> list[KeyedHashCrypto]:
    secrets = tuple(hashlib.sha256(f"sim-secret/{seed}/{i}".encode()).digest() for i in range(n))
    return [KeyedHashCrypto(i, secrets) for i in range(n)]


def ed25519_cryptos(n: int, seed: int, chain_id: str) -> list[Ed25519Crypto]:
    keys = [SigningKey(hashlib.sha256(f"sim-node/{seed}/{i}".encode()).digest()) for i in range(n)]
    public = [k.public_key for k in keys]
    return [Ed25519Crypto(k, public, chain_id) for k in keys]
