"""Plain, typed results of LedgerClient calls (protobuf stops at the SDK's edge)."""

from __future__ import annotations

from dataclasses import dataclass, field

from client.tx import Transaction
from client.verify import VerifiedBlock, VerifiedReceipt
from ledger.v1 import api_pb2, tx_pb2


class LedgerError(Exception):
    """Base of the SDK's errors."""


class NotFound(LedgerError):
    """No node that answered knows the account, transaction or block."""


class Pending(NotFound):
    """No node that answered has executed the transaction, and at least one holds it (admitted,
    not executed yet). A NotFound, so code that only knows NotFound behaves as before."""


class PendingHere(LedgerError):
    """One node's answer: it holds the transaction, not executed yet (the SDK asks the next)."""


class Unreachable(LedgerError):
    """No node answered in time; ``errors`` lists what each attempt got."""

    def __init__(self, message: str, errors: tuple[str, ...] = ()) -> None:
        super().__init__(message if not errors else f"{message} ({'; '.join(errors[-4:])})")
        self.errors = errors


class NotAuthorized(LedgerError):
    """The nodes refused the read: no read key was given (UNAUTHENTICATED), or the key may not
    read this (PERMISSION_DENIED: docs/ARCHITECTURE.md, "Who may read"). The message is theirs."""

    def __init__(self, message: str, errors: tuple[str, ...] = ()) -> None:
        super().__init__(message if not errors else f"{message} ({'; '.join(errors[-2:])})")
        self.errors = errors


class Unverified(LedgerError):
    """Nodes answered, but no answer verified against the genesis keys (lying nodes)."""

    def __init__(self, message: str, errors: tuple[str, ...] = ()) -> None:
        super().__init__(message if not errors else f"{message} ({'; '.join(errors[-4:])})")
        self.errors = errors


@dataclass(frozen=True)
class Committed:
    """Definite: the transaction is in a committed block with this verified result.

    ``ok`` is False when the ledger executed it and refused it (e.g. INSUFFICIENT_FUNDS):
    that refusal is final too, and a retry of the same envelope returns the same result.
    ``submit`` returns only final results; ``transaction`` may show a non-final one.
    """

    tx_id: bytes
    receipt: VerifiedReceipt
    endpoint: str

    @property
    def result(self) -> tx_pb2.TxResult:
        return self.receipt.result

    @property
    def ok(self) -> bool:
        return self.receipt.code == tx_pb2.OK

    @property
    def final(self) -> bool:
        """The ledger's TxResult.final, covered by the attestations: False when this copy was
        not authorized (bad or missing signature, another bank's operator, envelope over its
        limits), so it did not consume the tx id and a genuine copy may still commit."""
        return self.receipt.result.final

    @property
    def code_name(self) -> str:
        return self.receipt.code_name

    @property
    def detail(self) -> str:
        return str(self.receipt.result.detail)

    @property
    def height(self) -> int:
        return self.receipt.height

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"committed {self.tx_id.hex()[:16]}: {self.code_name}{detail} at height {self.height}"


@dataclass(frozen=True)
class Rejected:
    """Definite when an honest node is among the refusers: the envelope failed the nodes'
    stateless checks (format, size, signature, chain) and was never admitted. Fix and rebuild;
    resubmitting the same bytes will fail the same way. ``refusals`` is (endpoint, status, detail).
    """

    tx_id: bytes
    refusals: tuple[tuple[str, str, str], ...]

    @property
    def detail(self) -> str:
        return self.refusals[0][2] if self.refusals else ""

    def __str__(self) -> str:
        return f"rejected {self.tx_id.hex()[:16]}: {'; '.join(' '.join(r) for r in self.refusals)}"


@dataclass(frozen=True)
class Indefinite:
    """Not known: the deadline passed before a verified receipt came. The transaction may or
    may not commit later; resubmitting the same ``envelope`` (same tx_id) is always safe."""

    tx_id: bytes
    envelope: bytes
    reason: str
    errors: tuple[str, ...]

    def __str__(self) -> str:
        return f"indefinite {self.tx_id.hex()[:16]}: {self.reason} ({'; '.join(self.errors[-3:])})"


Outcome = Committed | Rejected | Indefinite


@dataclass(frozen=True)
class BalanceInfo:
    asset: str
    available_minor: int
    held_minor: int  # in pending escrows


@dataclass(frozen=True)
class AccountInfo:
    """An account as one node reports it (node-local read: not certified), as of ``height``
    (the node's last executed block when it read it; 0 from a node that predates heights).
    Two readings compare equal when the account is, whatever their heights."""

    account_id: str
    member_id: str
    owner_key: bytes
    frozen: bool
    balances: tuple[BalanceInfo, ...]
    height: int = field(default=0, compare=False)

    def balance(self, asset: str) -> BalanceInfo:
        for b in self.balances:
            if b.asset == asset:
                return b
        return BalanceInfo(asset, 0, 0)

    @classmethod
    def from_proto(cls, a: api_pb2.Account) -> AccountInfo:
        return cls(
            account_id=a.account_id,
            member_id=a.member_id,
            owner_key=bytes(a.owner_key),
            frozen=a.frozen,
            balances=tuple(BalanceInfo(b.asset, b.available, b.held) for b in a.balances),
            height=a.height,
        )


@dataclass(frozen=True)
class SupplyInfo:
    asset: str
    issuer: str
    scale: int
    minted_minor: int
    redeemed_minor: int
    outstanding_minor: int


@dataclass(frozen=True)
class Supply:
    """Per-asset supply at ``height`` as one node reports it (node-local read)."""

    height: int
    assets: tuple[SupplyInfo, ...]

    @classmethod
    def from_proto(cls, s: api_pb2.GetSupplyResponse) -> Supply:
        return cls(
            height=s.height,
            assets=tuple(
                SupplyInfo(a.asset, a.issuer, a.scale, a.minted, a.redeemed, a.outstanding) for a in s.assets
            ),
        )


@dataclass(frozen=True)
class BlockRange:
    """Consecutive verified blocks from one node (GetBlocks), and where to go on: ask from
    ``next_height``; the node had executed up to ``last_height`` when it answered."""

    blocks: tuple[VerifiedBlock, ...]
    next_height: int
    last_height: int


@dataclass(frozen=True)
class PeerInfo:
    replica: int
    member_id: str
    up: bool


@dataclass(frozen=True)
class NodeStatusInfo:
    endpoint: str
    member_id: str
    replica: int
    view: int
    primary: int
    last_executed: int
    stable_checkpoint: int
    state_root: bytes
    pending_requests: int
    chain_id: str
    last_block_hash: bytes
    peers: tuple[PeerInfo, ...]

    @classmethod
    def from_proto(cls, endpoint: str, s: api_pb2.NodeStatus) -> NodeStatusInfo:
        return cls(
            endpoint=endpoint,
            member_id=s.member_id,
            replica=s.replica,
            view=s.view,
            primary=s.primary,
            last_executed=s.last_executed,
            stable_checkpoint=s.stable_checkpoint,
            state_root=bytes(s.state_root),
            pending_requests=s.pending_requests,
            chain_id=s.chain_id,
            last_block_hash=bytes(s.last_block_hash),
            peers=tuple(PeerInfo(p.replica, p.member_id, p.up) for p in s.peers),
        )


@dataclass(frozen=True)
class TransactionInfo:
    """A committed transaction: its verified receipt and the envelope whose body hashes to it."""

    committed: Committed
    transaction: Transaction | None  # None when the node did not send the envelope
