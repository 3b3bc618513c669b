"""The retry and trust policy shared by LedgerClient and AsyncLedgerClient (no I/O here).

Submitting: a node that refuses the envelope (INVALID_ARGUMENT, UNAUTHENTICATED, ...) is not
asked again; f+1 refusals (one of them honest) or refusals from every node still worth asking
make the outcome Rejected. A node whose receipt does not verify is a liar: never asked again
for this transaction. Anything else is transient: try the next node, and go round again with
backoff until the deadline, after which the outcome is Indefinite.

Querying: each node once, in turn, until one answers with something that verifies.

Order: calls rotate over the nodes to spread the load, but a node that just timed out or was
unreachable is tried last for UNRESPONSIVE_S (never dropped: it is still asked when the others
fail). Without this, a hung or paused node costs every client one call timeout per rotation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

import grpc
import grpc.aio

from client.models import (
    Committed,
    Indefinite,
    NotAuthorized,
    NotFound,
    Pending,
    Rejected,
    Unreachable,
    Unverified,
)
from client.verify import ReceiptError

# The node's stateless checks refused the envelope itself: deterministic at every honest node.
REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
MESSAGE_BYTES_MAX = 16 << 20
BACKOFF_S_MIN = 0.05
BACKOFF_S_MAX = 1.0
RECEIPT_REPLY_GRACE_S = 0.5  # beyond the node's own wait, for its answer to reach us
UNRESPONSIVE_S = 10.0  # a node that timed out or was unreachable is tried last this long
UNRESPONSIVE = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE})
# A read the nodes refused for want of authority (docs/ARCHITECTURE.md, "Who may read").
NOT_AUTHORIZED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
    # A restarted node should be usable again within a second, not after minutes of backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def status_code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    # Sync errors are grpc.Call; grpc.aio's AioRpcError has the same methods but is not one.
    if isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        code: grpc.StatusCode = exc.code()
        return code
    return None


def status_details(exc: grpc.RpcError) -> str:
    if isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        return str(exc.details() or "")
    return str(exc)


def describe(endpoint: str, what: str, exc: grpc.RpcError) -> str:
    code = status_code(exc)
    details = status_details(exc)
    return f"{endpoint} {what}: {code.name if code else 'ERROR'} {details or ''}".rstrip()


def rotated(endpoints: tuple[str, ...], first: int) -> list[str]:
    k = first % len(endpoints)
    return list(endpoints[k:] + endpoints[:k])


class Unresponsive:
    """Nodes that just timed out or were unreachable, and until when they go last."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    def failed(self, endpoint: str, exc: grpc.RpcError) -> None:
        """A call to a node failed: if it timed out or the node was unreachable, it goes last."""
        if status_code(exc) in UNRESPONSIVE:
            self._until[endpoint] = self._clock() + UNRESPONSIVE_S

    def answered(self, endpoint: str) -> None:
        self._until.pop(endpoint, None)

    def last(self, order: list[str]) -> list[str]:
        """``order`` with the nodes that are still in their spell at the end, in their order."""
        if not self._until:
            return order
        now = self._clock()
        for endpoint, until in list(self._until.items()):  # a snapshot: clients may share threads
            if until <= now:
                self._until.pop(endpoint, None)
        late = set(self._until)
        return [e for e in order if e not in late] + [e for e in order if e in late]


class SubmitState:
    """Bookkeeping of one submit across nodes and rounds."""

    def __init__(self, tx_id: bytes, endpoint_count: int, f: int) -> None:
        self.tx_id = tx_id
        self.endpoint_count = endpoint_count
        self.f = f
        self.errors: list[str] = []
        self.refusals: dict[str, tuple[str, str, str]] = {}
        self.liars: set[str] = set()
        self.unrecorded: Committed | None = None
        self.backoff_s = BACKOFF_S_MIN

    def worth_asking(self, endpoint: str) -> bool:
        return endpoint not in self.liars and endpoint not in self.refusals

    def submit_failed(self, endpoint: str, exc: grpc.RpcError) -> bool:
        """Record a failed Submit; True when the node still took the transaction
        (ALREADY_EXISTS: executed before, so its receipt can be fetched)."""
        code = status_code(exc)
        if code == grpc.StatusCode.ALREADY_EXISTS:
            return True
        if code in REFUSED:
            assert code is not None
            self.refusals[endpoint] = (endpoint, code.name, status_details(exc))
        else:
            self.errors.append(describe(endpoint, "submit", exc))
        return False

    def wait_failed(self, endpoint: str, exc: grpc.RpcError) -> None:
        self.errors.append(describe(endpoint, "wait receipt", exc))

    def not_final(self, endpoint: str, committed: Committed) -> None:
        """A verified, but unrecorded result (e.g. MISSING_SIGNATURE): a copy of our body with
        other signatures failed, or ours lacks one. Keep going; report it if time runs out."""
        self.unrecorded = committed
        self.errors.append(
            f"{endpoint}: included with {committed.code_name}, which is not final ({committed.detail})"
        )

    def lied(self, endpoint: str, exc: ReceiptError) -> None:
        self.liars.add(endpoint)
        self.errors.append(f"{endpoint} receipt rejected: {exc}")

    def rejected(self) -> Rejected | None:
        """Rejected once f+1 nodes (one honest) or every node still worth asking refused."""
        askable = self.endpoint_count - len(self.liars)
        if self.refusals and (len(self.refusals) >= self.f + 1 or len(self.refusals) >= askable):
            return Rejected(self.tx_id, tuple(self.refusals.values()))
        return None

    def exhausted(self) -> bool:
        return len(self.liars) + len(self.refusals) >= self.endpoint_count

    def next_backoff_s(self, remaining_s: float) -> float:
        wait = min(self.backoff_s, remaining_s)
        self.backoff_s = min(self.backoff_s * 2, BACKOFF_S_MAX)
        return max(wait, 0.0)

    def indefinite(self, envelope: bytes) -> Indefinite:
        if self.unrecorded is not None:
            reason = (
                f"only included with {self.unrecorded.code_name} ({self.unrecorded.detail}), which does not "
                "consume the tx id: a copy with other signatures failed, or this envelope lacks one "
                "(add it and resubmit)"
            )
        elif self.liars:
            reason = "no verifiable receipt"
        else:
            reason = "deadline passed before a verified receipt"
        return Indefinite(self.tx_id, envelope, reason, tuple(self.errors))


T = TypeVar("T")


class AgreementState(Generic[T]):
    """Answers of several nodes to one query; an answer counts once ``needed`` nodes gave it.
    NOT_FOUND is an answer too (None), so f+1 nodes can confirm that something is absent."""

    def __init__(self, what: str, needed: int) -> None:
        self.what = what
        self.needed = needed
        self.answers: dict[str, T | None] = {}
        self.errors: list[str] = []
        self.denied = 0
        self.backoff_s = BACKOFF_S_MIN

    def answered(self, endpoint: str, answer: T) -> None:
        self.answers[endpoint] = answer

    def rpc_failed(self, endpoint: str, exc: grpc.RpcError) -> None:
        if status_code(exc) == grpc.StatusCode.NOT_FOUND:
            self.answers[endpoint] = None
        else:
            self.denied += status_code(exc) in NOT_AUTHORIZED
            self.answers.pop(endpoint, None)
            self.errors.append(describe(endpoint, self.what, exc))

    def agreed(self) -> T | None:
        """The agreed answer; raises NotFound when ``needed`` nodes agree it does not exist."""
        values = list(self.answers.values())
        for value in values:
            if values.count(value) >= self.needed:
                if value is None:
                    raise NotFound(f"{self.what}: not found at {self.needed} nodes")
                return value
        return None

    def next_backoff_s(self, remaining_s: float) -> float:
        wait = min(self.backoff_s, remaining_s)
        self.backoff_s = min(self.backoff_s * 2, BACKOFF_S_MAX)
        return max(wait, 0.0)

    def final_error(self) -> Exception:
        if self.denied and not self.answers:
            return NotAuthorized(f"{self.what}: the nodes refused the read", tuple(self.errors))
        if len(self.answers) >= self.needed:
            return Unverified(
                f"{self.what}: {len(self.answers)} nodes answered but fewer than {self.needed} agree",
                tuple(self.errors),
            )
        return Unreachable(f"{self.what}: fewer than {self.needed} nodes answered", tuple(self.errors))


class QueryState:
    """Bookkeeping of one query across nodes; ``final_error`` when none answered usefully."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.errors: list[str] = []
        self.not_found = 0
        self.pending: list[str] = []  # nodes that hold it, not executed yet
        self.unverified = 0
        self.denied = 0  # nodes that refused the read for want of authority

    def pending_at(self, endpoint: str) -> None:
        self.pending.append(endpoint)

    def rpc_failed(self, endpoint: str, exc: grpc.RpcError) -> None:
        if status_code(exc) == grpc.StatusCode.NOT_FOUND:
            self.not_found += 1
        self.denied += status_code(exc) in NOT_AUTHORIZED
        self.errors.append(describe(endpoint, self.what, exc))

    def did_not_verify(self, endpoint: str, exc: ReceiptError) -> None:
        self.unverified += 1
        self.errors.append(f"{endpoint} {self.what}: did not verify: {exc}")

    def final_error(self) -> Exception:
        # Nodes that answer NOT_FOUND are believed over silence (it is unverifiable either
        # way); an answer that failed verification is reported as such.
        if self.pending:
            return Pending(f"{self.what}: pending (admitted, not executed yet) at {', '.join(self.pending)}")
        if self.not_found:
            return NotFound(f"{self.what}: not found ({'; '.join(self.errors[-2:])})")
        if self.denied:
            return NotAuthorized(f"{self.what}: the nodes refused the read", tuple(self.errors))
        if self.unverified:
            return Unverified(f"{self.what}: no node gave an answer that verifies", tuple(self.errors))
        return Unreachable(f"{self.what}: no node answered", tuple(self.errors))
