"""Read tokens: a caller's short-lived, signed proof of its key for one read (docs/PROTOCOL.md,
section 10). Shared by the SDK (which builds one per call) and the node (which checks it in
node/api/authority.py).

    token = public_key (32) || signature (64) || body
    body  = u8(1) || u8(len(method)) || method || u8(len(scope)) || scope
            || u64be(issued_ms) || u64be(expires_ms)
    signature = Ed25519 over signing_bytes(DOMAIN_READ, chain_id, body)

``method`` is the LedgerService method's name in ASCII ("GetAccount"), ``scope`` what it reads
(the account id; the tx_id in hex for GetTransaction; "*" for supply and blocks), times are
Unix milliseconds. It travels in the gRPC metadata entry ``x-ledger-read-token-bin``.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from ledger.crypto import DOMAIN_READ, PUBLIC_KEY_BYTES, SIGNATURE_BYTES, SigningKey, verify

METADATA_KEY = "x-ledger-read-token-bin"  # binary metadata: gRPC carries the bytes as they are
VERSION = 1
SCOPE_ALL = "*"  # supply figures and blocks: not one account's
METHOD_BYTES_MAX = 64
SCOPE_BYTES_MAX = 128
LIFETIME_MS_MAX = 5 * 60 * 1000  # a node refuses a token valid for longer
LIFETIME_MS_DEFAULT = 60 * 1000  # what the SDK asks for
TOKEN_BYTES_MAX = PUBLIC_KEY_BYTES + SIGNATURE_BYTES + 3 + METHOD_BYTES_MAX + SCOPE_BYTES_MAX + 16
_TIMES = struct.Struct(">QQ")


class ReadTokenError(ValueError):
    """The bytes are not a read token; the message says why."""


@dataclass(frozen=True)
class ReadToken:
    public_key: bytes
    signature: bytes
    body: bytes  # the signed bytes, as received
    method: str
    scope: str
    issued_ms: int
    expires_ms: int

    def verifies(self, chain_id: str) -> bool:
        return verify(self.public_key, self.signature, DOMAIN_READ, chain_id, self.body)


def tx_scope(tx_id: bytes) -> str:
    """GetTransaction's scope: the tx_id in lowercase hex."""
    return tx_id.hex()


def encode_body(method: str, scope: str, issued_ms: int, expires_ms: int) -> bytes:
    m, s = method.encode("ascii"), scope.encode()
    if not 0 < len(m) <= METHOD_BYTES_MAX or not 0 < len(s) <= SCOPE_BYTES_MAX:
        raise ReadTokenError(
            f"method 1..{METHOD_BYTES_MAX} bytes and scope 1..{SCOPE_BYTES_MAX} bytes, got {len(m)} and {len(s)}"
        )
    if not 0 <= issued_ms <= expires_ms < 1 << 64:
        raise ReadTokenError("times must satisfy 0 <= issued_ms <= expires_ms < 2^64")
    return bytes([VERSION, len(m)]) + m + bytes([len(s)]) + s + _TIMES.pack(issued_ms, expires_ms)


def build(
    key: SigningKey,
    chain_id: str,
    method: str,
    scope: str,
    now_ms: int,
    lifetime_ms: int = LIFETIME_MS_DEFAULT,
) -> bytes:
    """A token for one read by ``key``: valid from now_ms for lifetime_ms."""
    body = encode_body(method, scope, now_ms, now_ms + lifetime_ms)
    return key.public_key + key.sign(DOMAIN_READ, chain_id, body) + body


def metadata(key: SigningKey | None, chain_id: str, method: str, scope: str) -> tuple[tuple[str, bytes], ...]:
    """gRPC call metadata carrying a fresh token for one read by ``key``; none without a key
    (the node then answers UNAUTHENTICATED, saying whose key it needs)."""
    if key is None:
        return ()
    return ((METADATA_KEY, build(key, chain_id, method, scope, time.time_ns() // 1_000_000)),)


def decode(raw: bytes) -> ReadToken:
    """Parse a token (not its signature: ReadToken.verifies). Raises ReadTokenError."""
    if len(raw) > TOKEN_BYTES_MAX:
        raise ReadTokenError(f"{len(raw)} bytes; a read token is at most {TOKEN_BYTES_MAX}")
    head = PUBLIC_KEY_BYTES + SIGNATURE_BYTES
    body = raw[head:]
    if len(body) < 2 or body[0] != VERSION:
        raise ReadTokenError(f"not a version {VERSION} read token")
    pos = 1
    fields: list[bytes] = []
    for _ in range(2):  # method, then scope: each u8(len) || bytes
        if pos >= len(body):
            raise ReadTokenError("truncated")
        n = body[pos]
        fields.append(body[pos + 1 : pos + 1 + n])
        pos += 1 + n
        if pos > len(body):
            raise ReadTokenError("truncated")
    if len(body) - pos != _TIMES.size:
        raise ReadTokenError(f"{len(body) - pos} bytes after the scope; the times are {_TIMES.size}")
    issued_ms, expires_ms = _TIMES.unpack(body[pos:])
    try:
        method, scope = fields[0].decode("ascii"), fields[1].decode()
    except UnicodeDecodeError as exc:
        raise ReadTokenError("method or scope is not text") from exc
    return ReadToken(
        public_key=raw[:PUBLIC_KEY_BYTES],
        signature=raw[PUBLIC_KEY_BYTES:head],
        body=body,
        method=method,
        scope=scope,
        issued_ms=issued_ms,
        expires_ms=expires_ms,
    )
