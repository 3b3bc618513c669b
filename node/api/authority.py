"""Who may read what (docs/ARCHITECTURE.md, "Who may read"; the token: docs/PROTOCOL.md,
section 10). Every node still stores everything; this decides only what its client port serves.

A read carries a read token (ledger/readtoken.py) in the gRPC metadata: the caller's key, signed
for this chain, this method and this scope, valid for at most LIFETIME_MS_MAX. A call without
one, or with one that is malformed, for another method or scope, expired, not yet valid (beyond
CLOCK_SKEW_MS), valid too long, or whose signature does not verify, is UNAUTHENTICATED. A
caller whose key proved fine but may not see this is PERMISSION_DENIED:

- an account: its owner key, or the operator key of the member that opened it;
- supply figures and block headers: any key the ledger knows (admission's KnownKeys: a member's
  operator key, the owner key of an account that is not frozen, or one of an admitted opening),
  or a member's node key;
- block bodies and results (GetBlock(s) in full), a transaction's envelope: a member's operator
  key or node key (nodes backfill attestations with their node key); other known keys get the
  block without them (header, certificate, attestations);
- a committed transaction (GetTransaction): a key that signed its envelope, or a member's
  operator or node key. Whether a tx_id is pending or unknown is told to any valid token, as
  WaitReceipt tells anyone holding the tx_id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from ledger import readtoken
from ledger.genesis import Genesis
from ledger.readtoken import LIFETIME_MS_MAX, METADATA_KEY, ReadTokenError
from ledger.v1 import api_pb2
from node.api.admission import KnownKeys
from node.api.common import Abort
from node.api.port import NodePort

CLOCK_SKEW_MS = 30_000  # a token issued this far in the future, or expired this long ago, passes
_KNOWN = "a key the ledger knows: a member's operator key or the owner key of an account that is not frozen"


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Caller:
    """A key that proved itself for this call, and the member it speaks for, if any."""

    public_key: bytes
    operator_of: str | None  # the member whose operator key this is
    node_of: str | None  # the member whose node key this is

    @property
    def member(self) -> bool:
        """A member's operator or node: may read block bodies and any envelope."""
        return self.operator_of is not None or self.node_of is not None

    def short(self) -> str:
        return f"key {self.public_key.hex()[:16]}"


def token_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    """The read token in a call's invocation metadata; None when there is none."""
    found = [v for k, v in metadata or () if k == METADATA_KEY]
    if len(found) > 1:
        raise Abort(grpc.StatusCode.UNAUTHENTICATED, f"{len(found)} read tokens ({METADATA_KEY}); send one")
    if not found:
        return None
    value = found[0]
    return value if isinstance(value, bytes) else value.encode()


class ReadAuthority:
    def __init__(
        self, genesis: Genesis, known_keys: KnownKeys, node: NodePort, clock_ms: Callable[[], int] = wall_ms
    ) -> None:
        self.chain_id = genesis.chain_id
        self.operators = {m.operator_key: m.member_id for m in genesis.members}
        self.nodes = {m.node_key: m.member_id for m in genesis.members}
        self.known_keys = known_keys
        self.node = node
        self.clock_ms = clock_ms

    def authenticate(self, token: bytes | None, method: str, scope: str, who: str) -> Caller:
        """The caller a valid token for (method, scope) proves, or UNAUTHENTICATED saying what is
        missing. ``who`` names the keys that may read this, for the message."""
        if token is None:
            raise Abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs a read token ({METADATA_KEY}, docs/PROTOCOL.md section 10) signed by {who}",
            )
        try:
            t = readtoken.decode(token)
        except ReadTokenError as exc:
            raise Abort(grpc.StatusCode.UNAUTHENTICATED, f"read token malformed: {exc}") from exc
        if t.method != method:
            raise Abort(grpc.StatusCode.UNAUTHENTICATED, f"read token is for {t.method}, not {method}")
        if t.scope != scope:
            raise Abort(
                grpc.StatusCode.UNAUTHENTICATED, f"read token is for scope {t.scope!r}, not {scope!r}"
            )
        if t.expires_ms - t.issued_ms > LIFETIME_MS_MAX:
            raise Abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"read token valid for {t.expires_ms - t.issued_ms} ms; at most {LIFETIME_MS_MAX} ms",
            )
        now = self.clock_ms()
        if t.expires_ms + CLOCK_SKEW_MS < now:
            raise Abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"read token expired at {t.expires_ms} ms (node clock {now} ms, skew allowed {CLOCK_SKEW_MS} ms)",
            )
        if t.issued_ms > now + CLOCK_SKEW_MS:
            raise Abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"read token issued at {t.issued_ms} ms, in the future (node clock {now} ms, "
                f"skew allowed {CLOCK_SKEW_MS} ms)",
            )
        if not t.verifies(self.chain_id):
            raise Abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"read token signature does not verify for key {t.public_key.hex()[:16]} on chain "
                f"{self.chain_id!r} (forged, altered, or signed for another chain)",
            )
        return Caller(t.public_key, self.operators.get(t.public_key), self.nodes.get(t.public_key))

    def known(self, token: bytes | None, method: str, scope: str) -> Caller:
        """A valid token by a key the ledger knows (or a member's node key), else the refusal."""
        caller = self.authenticate(token, method, scope, _KNOWN)
        if caller.member:
            return caller
        with self.node.read() as r:
            known = self.known_keys.predicate(r)(caller.public_key)
        if not known:
            raise Abort(grpc.StatusCode.PERMISSION_DENIED, f"{method}: {caller.short()} is not {_KNOWN}")
        return caller

    @staticmethod
    def may_read_account(caller: Caller, found: tuple[bytes, str] | None, not_found: str) -> None:
        """Refuse unless the caller may read an account: ``found`` is its (owner key, member id),
        None when it does not exist. Every read of an account's contents (balances, and any
        history or escrows of it) asks this. A caller learns nothing of an account that is not
        its own, not even whether it exists: PERMISSION_DENIED either way. Only a member's
        operator or node key, which sees every block anyway, is told NOT_FOUND (``not_found``)."""
        if found is None and caller.member:
            raise Abort(grpc.StatusCode.NOT_FOUND, not_found)
        if found is None or (caller.public_key != found[0] and caller.operator_of != found[1]):
            raise Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller.short()} is neither the owner key of this account nor the operator key of "
                "the bank that opened it",
            )


def header_view(block_reply: bytes) -> bytes:
    """A GetBlock answer without bodies: header, certificate and attestations; no batch, no
    results (what a known key that is not a member's operator or node may see)."""
    reply = api_pb2.GetBlockResponse.FromString(block_reply)
    reply.block.ClearField("batch")
    reply.ClearField("results")
    return reply.SerializeToString()
