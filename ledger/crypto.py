"""Ed25519 keys and domain-separated signing of bytes.

A signature always covers ``domain || 0x00 || len(chain_id) || chain_id || body``: the domain's
ASCII bytes, one zero byte, the length of the UTF-8 chain id as one byte (at most 64), the chain
id, then ``body``, the exact byte string that travels on the wire (docs/PROTOCOL.md). Verifiers
check the bytes they received and never re-serialize an object to verify it, so a client in any
language can sign.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey as _NaclSigningKey

DOMAIN_TX = b"consortium-ledger/tx/v1"
DOMAIN_CONSENSUS = b"consortium-ledger/consensus/v1"
DOMAIN_READ = b"consortium-ledger/read/v1"  # read tokens (ledger/readtoken.py)

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SEED_BYTES = 32
CHAIN_ID_BYTES_MAX = 64
KEY_FILE_BYTES_MAX = 4096


def signing_bytes(domain: bytes, chain_id: str, body: bytes) -> bytes:
    """The exact message an Ed25519 signature covers."""
    chain = chain_id.encode()
    if len(chain) > CHAIN_ID_BYTES_MAX:
        raise ValueError(f"chain id longer than {CHAIN_ID_BYTES_MAX} bytes")
    return domain + b"\x00" + bytes([len(chain)]) + chain + body


def tx_id_of(body: bytes) -> bytes:
    """A transaction's id: SHA-256 of its signed body bytes (signatures excluded)."""
    return hashlib.sha256(body).digest()


class SigningKey:
    """An Ed25519 private key. ``seed`` is the 32-byte secret; keep it in a key file."""

    __slots__ = ("_key", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 seed is {SEED_BYTES} bytes, got {len(seed)}")
        self._key = _NaclSigningKey(seed)
        self.public_key: bytes = bytes(self._key.verify_key)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(SEED_BYTES))

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    def sign(self, domain: bytes, chain_id: str, body: bytes) -> bytes:
        return bytes(self._key.sign(signing_bytes(domain, chain_id, body)).signature)


def verify(public_key: bytes, signature: bytes, domain: bytes, chain_id: str, body: bytes) -> bool:
    """True when signature is a valid Ed25519 signature by public_key; never raises."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        # libsodium's check of signature || message, as VerifyKey.verify does, without
        # building a VerifyKey per call (this runs for every transaction at every node).
        crypto_sign_open(bytes(signature) + signing_bytes(domain, chain_id, body), bytes(public_key))
    except (BadSignatureError, ValueError):
        return False
    except Exception:  # pynacl raises its own types for malformed points
        return False
    return True


# --- key files -----------------------------------------------------------------------------


class KeyFileError(Exception):
    """A key file is missing, unreadable or malformed; the message says which and why."""


@dataclass(frozen=True)
class KeyFile:
    label: str
    public_key: bytes
    key: SigningKey


def save_key(path: Path, key: SigningKey, label: str) -> None:
    """Write a key file readable by its owner only. Refuses to overwrite an existing file."""
    data = {
        "kind": "ed25519",
        "label": label,
        "public_key": key.public_key.hex(),
        "seed": key.seed.hex(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path}: already exists; not overwriting a key") from exc
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def load_key(path: Path) -> KeyFile:
    """Read and check a key file written by save_key."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror}") from exc
    if len(raw) > KEY_FILE_BYTES_MAX:
        raise KeyFileError(f"{path}: larger than {KEY_FILE_BYTES_MAX} bytes, not a key file")
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("kind") != "ed25519":
            raise ValueError("kind is not ed25519")
        key = SigningKey(bytes.fromhex(str(data["seed"])))
        public_key = bytes.fromhex(str(data["public_key"]))
        label = str(data.get("label", path.stem))
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{path}: malformed key file ({exc})") from exc
    if public_key != key.public_key:
        raise KeyFileError(f"{path}: public key does not match the seed")
    return KeyFile(label=label, public_key=public_key, key=key)


def list_keys(directory: Path) -> list[KeyFile]:
    """All readable key files (*.key) in directory, sorted by label; unreadable ones skipped."""
    found: list[KeyFile] = []
    for path in sorted(directory.glob("*.key")):
        try:
            found.append(load_key(path))
        except KeyFileError:
            continue
    return sorted(found, key=lambda k: k.label)
