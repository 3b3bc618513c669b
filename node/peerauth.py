"""Who is on the other end of a replica-port call: a member, by its TLS certificate.

The replica port requires a client certificate chaining to some member's CA (gRPC checks that
in the handshake: an unknown CA, an expired certificate or a plaintext client never gets a
call through). But any bank's CA can sign a certificate that claims to be another bank, so each
ReplicaService call first checks, before a byte of its stream is read, that the certificate
gRPC verified was issued by the CA of the member its common name names, and is within its
validity period. Refusals get UNAUTHENTICATED (no usable certificate) or PERMISSION_DENIED (a
valid certificate that may not speak for the member it names), are counted
(``peer_refused_<reason>``) and logged once per reason.

Refusals in the handshake itself (unknown CA, expired, no certificate, plaintext) happen in gRPC's
C core; ``HandshakeRefusals`` counts them (``tls_refused_<reason>``) and logs the first of each
reason from the line gRPC writes for each on stderr.

Cost: one dict lookup per call once a certificate has been checked (the result is cached by
the certificate's bytes, with its validity window rechecked each call); streams are long-lived.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc
import grpc.aio

from ledger.genesis import Genesis
from ledger.pki import PkiError, check_issued_by, common_name, load_ca_cert, load_cert
from node.log import EventLog

CACHE_ENTRIES_MAX = 64  # checked certificates kept (a member's node has one at a time)

# reason -> the status the caller gets
_CODES = {
    "no_certificate": grpc.StatusCode.UNAUTHENTICATED,
    "bad_certificate": grpc.StatusCode.UNAUTHENTICATED,
    "expired": grpc.StatusCode.UNAUTHENTICATED,
    "not_yet_valid": grpc.StatusCode.UNAUTHENTICATED,
    "not_a_member": grpc.StatusCode.PERMISSION_DENIED,
    "wrong_ca": grpc.StatusCode.PERMISSION_DENIED,
}
_WHY = {
    "no_certificate": "no client certificate (the replica port takes mutual TLS only)",
    "bad_certificate": "the client certificate cannot be read",
    "expired": "the client certificate has expired",
    "not_yet_valid": "the client certificate is not valid yet",
    "not_a_member": "the certificate's common name is not a member in genesis",
    "wrong_ca": "the certificate was not issued by the CA genesis lists for the member it names",
}


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class PeerAuth:
    """Checks the member identity of replica-port calls (see the module docstring)."""

    def __init__(
        self, genesis: Genesis, log: EventLog, now: Callable[[], datetime.datetime] = _utc_now
    ) -> None:
        self._log = log
        self._now = now
        self._cas = {}
        for m in genesis.members:
            if m.ca_cert is None:
                raise PkiError(f"genesis lists no ca_cert for {m.member_id}; mutual TLS needs every member's")
            self._cas[m.member_id] = load_ca_cert(m.ca_cert, m.member_id)
        # certificate PEM -> (member id, not before, not after), for certificates that passed
        self._checked: dict[bytes, tuple[str, datetime.datetime, datetime.datetime]] = {}
        self._logged: set[str] = set()

    def member_of(self, auth_context: Mapping[str, Iterable[bytes]]) -> tuple[str | None, str]:
        """(member id, "") when the certificate may speak for that member, else (None, reason)."""
        pems = list(auth_context.get("x509_pem_cert") or [])
        if len(pems) != 1:
            return None, "no_certificate"
        pem = pems[0]
        now = self._now()
        hit = self._checked.get(pem)
        if hit is not None:
            member_id, not_before, not_after = hit
            if now < not_before:
                return None, "not_yet_valid"
            if now > not_after:
                return None, "expired"
            return member_id, ""
        try:
            cert = load_cert(pem)
        except PkiError:
            return None, "bad_certificate"
        named = common_name(cert)
        ca = self._cas.get(named or "")
        if named is None or ca is None:
            return None, "not_a_member"
        reason = check_issued_by(cert, ca, now)
        if reason is not None:
            return None, reason
        if len(self._checked) >= CACHE_ENTRIES_MAX:
            self._checked.clear()
        self._checked[pem] = (named, cert.not_valid_before_utc, cert.not_valid_after_utc)
        return named, ""

    async def require_member(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The member the caller speaks for; otherwise the call is aborted (abort raises)."""
        member_id, reason = self.member_of(context.auth_context())
        if member_id is not None:
            return member_id
        self._log.count(f"peer_refused_{reason}")
        if reason not in self._logged:
            self._logged.add(reason)
            cn = b"".join(context.auth_context().get("x509_common_name") or [])[:128]
            self._log.event(
                "peer_refused", reason=reason, peer=context.peer(), cn=cn.decode(errors="replace")
            )
        await context.abort(_CODES[reason], f"replica port: {_WHY[reason]}")
        raise AssertionError("unreachable")  # abort raises


# --- refusals in the TLS handshake ----------------------------------------------------------

# gRPC's core refuses a bad handshake in C, before any Python runs, and writes one line for it on
# the process's stderr ("... Handshake failed with error SSL_ERROR_SSL: error:1000007d:SSL
# routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: certificate has expired"). OpenSSL's words
# -> our reason.
_HANDSHAKE_REASONS = (
    (b"certificate has expired", "expired"),
    (b"certificate is not yet valid", "not_yet_valid"),
    (b"unable to get local issuer certificate", "unknown_ca"),
    (b"PEER_DID_NOT_RETURN_A_CERTIFICATE", "no_certificate"),
    (b"WRONG_VERSION_NUMBER", "not_tls"),
    (b"HTTP_REQUEST", "not_tls"),
)
HANDSHAKE_MARK = b"Handshake failed with error "
HANDSHAKE_READ_BYTES_MAX = 1 << 20  # read per poll: a flood of refusals costs bounded work
HANDSHAKE_LINE_BYTES_MAX = 4096


def handshake_reason(line: bytes) -> str | None:
    """Our reason for a gRPC handshake-failure line (``other`` for one we do not name), or None
    when the line is not one."""
    if HANDSHAKE_MARK not in line:
        return None
    return next((reason for words, reason in _HANDSHAKE_REASONS if words in line), "other")


class HandshakeRefusals:
    """Counts the handshakes gRPC refused (``tls_refused_<reason>``) and logs the first of each
    reason (``tls_refused``, with OpenSSL's words), by reading what gRPC wrote to the node's
    stderr when that is a file (a node started by scripts/consortium.py; elsewhere, a pipe or a
    terminal, they are only in the stream). The file is read from its end at start-up, once a
    second, at most HANDSHAKE_READ_BYTES_MAX a time."""

    def __init__(self, path: str, log: EventLog) -> None:
        self._path = path
        self._log = log
        self._logged: set[str] = set()
        self._partial = b""
        try:
            with open(path, "rb") as f:
                self._offset = f.seek(0, 2)
        except OSError:
            self._offset = 0

    @staticmethod
    def of_stderr(log: EventLog, fd: int = 2) -> HandshakeRefusals | None:
        """One for this process's stderr, when it is a regular file; else None."""
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return HandshakeRefusals(os.readlink(f"/proc/self/fd/{fd}"), log)
        except OSError:
            return None

    def feed(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-HANDSHAKE_LINE_BYTES_MAX:]
        for line in lines:
            reason = handshake_reason(line)
            if reason is None:
                continue
            self._log.count(f"tls_refused_{reason}")
            if reason not in self._logged:
                self._logged.add(reason)
                why = line.split(HANDSHAKE_MARK, 1)[1][:HANDSHAKE_LINE_BYTES_MAX].decode(errors="replace")
                self._log.event("tls_refused", reason=reason, error=why)

    def poll(self) -> None:
        """Read what was written since the last poll (from the start if the file was truncated)."""
        try:
            with open(self._path, "rb") as f:
                if f.seek(0, 2) < self._offset:
                    self._offset, self._partial = 0, b""
                f.seek(self._offset)
                data = f.read(HANDSHAKE_READ_BYTES_MAX)
        except OSError:
            return
        self._offset += len(data)
        self.feed(data)

    async def run(self, period_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(period_s)  # a log file has no event to await
            self.poll()
