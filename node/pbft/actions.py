"""What a Replica asks its driver to do. The driver executes actions strictly in list order:
a Persist always precedes the sends that depend on it (persist before send)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class ConsensusCrypto(Protocol):
    """Signs this replica's consensus message bodies and verifies other replicas' ones.

    The node uses Ed25519 over ledger.crypto.signing_bytes(DOMAIN_CONSENSUS, chain_id, body);
    the simulator may plug in a cheaper scheme with the same unforgeability per replica.
    """

    def sign(self, body: bytes) -> bytes: ...

    def verify(self, replica: int, body: bytes, signature: bytes) -> bool: ...


@dataclass(frozen=True)
class Persist:
    """Durably write (value) or delete (None) a consensus journal record before going on.
    Consecutive Persists may be flushed in one fsync'ed write transaction."""

    key: bytes
    value: bytes | None


@dataclass(frozen=True)
class Send:
    """Deliver a serialized ledger.v1.PeerMessage to one replica."""

    to: int
    message: bytes


@dataclass(frozen=True)
class Broadcast:
    """Deliver a serialized ledger.v1.PeerMessage to every other replica."""

    message: bytes


@dataclass(frozen=True)
class ForwardRequests:
    """Relay client envelopes (serialized ledger.v1.Envelope) to replica `to` (the primary)."""

    to: int
    envelopes: tuple[bytes, ...]


@dataclass(frozen=True)
class Execute:
    """Apply the committed block at `sequence` (always last executed + 1) and store it together
    with its commit certificate in one write transaction; then call Replica.on_executed."""

    sequence: int
    header: bytes  # serialized ledger.v1.BlockHeader
    envelopes: tuple[bytes, ...]  # serialized ledger.v1.Envelope, in order
    certificate: tuple[bytes, ...]  # 2f+1 serialized ledger.v1.SignedMessage (commits)
    tx_ids: tuple[bytes, ...] = field(default=())


@dataclass(frozen=True)
class Attested:
    """f+1 matching attestations for an executed block: receipts for it can now be served."""

    sequence: int
    attestations: tuple[bytes, ...]  # serialized ledger.v1.SignedMessage


@dataclass(frozen=True)
class FetchBlocks:
    """The replica is behind: ask a peer for certified blocks from `from_sequence` on and pass
    them to Replica.on_blocks (which verifies every certificate before executing)."""

    from_sequence: int
    peers: tuple[int, ...]


@dataclass(frozen=True)
class Note:
    """A notable event for logs and metrics: view change, new view, checkpoint, rejections."""

    kind: str
    detail: dict[str, int | str] = field(default_factory=dict)


Action = Persist | Send | Broadcast | ForwardRequests | Execute | Attested | FetchBlocks | Note
