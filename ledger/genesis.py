"""The genesis file: who the members are, their keys and addresses, the assets they issue, f,
and the ledger limits every node must apply identically (they are consensus-critical)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ledger.crypto import CHAIN_ID_BYTES_MAX, PUBLIC_KEY_BYTES
from ledger.pki import CERT_PEM_BYTES_MAX, PkiError, load_ca_cert

GENESIS_BYTES_MAX = 1 << 20
# Anchored with \Z, not $ ($ also matches before a trailing "\n"); use them with fullmatch.
MEMBER_ID_RE = re.compile(r"[A-Z0-9][A-Z0-9-]{0,31}\Z")
ASSET_RE = re.compile(r"([A-Z]{3,8})\.([A-Z0-9][A-Z0-9-]{0,31})\Z")
SCALE_MAX = 18
INT64_MAX = (1 << 63) - 1


class GenesisError(Exception):
    """The genesis file is missing or wrong; the message names the field."""


@dataclass(frozen=True)
class LedgerLimits:
    amount_max: int = 10**15  # per amount, per balance and per supply, minor units
    legs_max: int = 16
    memo_bytes_max: int = 256
    id_bytes_max: int = 64  # account ids, escrow ids, references
    signatures_max: int = 16
    tx_bytes_max: int = 8192  # one envelope, serialized
    nonce_bytes_min: int = 8
    nonce_bytes_max: int = 32
    escrow_duration_ms_max: int = 30 * 24 * 3600 * 1000


@dataclass(frozen=True)
class Asset:
    asset: str  # e.g. USD.BANK-A
    issuer: str  # member_id; always the part after the dot
    scale: int  # decimal places of one major unit (USD: 2)


@dataclass(frozen=True)
class Member:
    member_id: str
    replica: int  # index in 0..n-1; the primary of view v is replica v mod n
    node_key: bytes  # signs consensus messages
    operator_key: bytes  # signs the bank's transactions (open account, mint, freeze)
    host: str
    replica_port: int
    api_port: int
    assets: tuple[str, ...] = ()
    # The bank's certificate authority (PEM): its node's TLS certificate must chain to it.
    # Optional so that an older genesis still loads; a node with TLS on refuses to start
    # without every member's (ledger/tls.py).
    ca_cert: bytes | None = None

    @property
    def replica_address(self) -> str:
        return f"{self.host}:{self.replica_port}"

    @property
    def api_address(self) -> str:
        return f"{self.host}:{self.api_port}"


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    f: int
    members: tuple[Member, ...]  # sorted by replica index
    assets: tuple[Asset, ...]  # sorted by name
    limits: LedgerLimits = field(default_factory=LedgerLimits)

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def quorum(self) -> int:
        """2f+1: matching votes needed to prepare, commit or make a checkpoint stable."""
        return 2 * self.f + 1

    def member(self, member_id: str) -> Member | None:
        for m in self.members:
            if m.member_id == member_id:
                return m
        return None

    def asset(self, name: str) -> Asset | None:
        for a in self.assets:
            if a.asset == name:
                return a
        return None

    def node_keys(self) -> tuple[bytes, ...]:
        return tuple(m.node_key for m in self.members)

    def to_json(self) -> str:
        return json.dumps(_to_jsonable(self), indent=2, sort_keys=True) + "\n"


def _to_jsonable(genesis: Genesis) -> dict[str, Any]:
    members = []
    for m in genesis.members:
        members.append(
            {
                "member_id": m.member_id,
                "replica": m.replica,
                "node_key": m.node_key.hex(),
                "operator_key": m.operator_key.hex(),
                "host": m.host,
                "replica_port": m.replica_port,
                "api_port": m.api_port,
                "assets": [
                    {"asset": a.asset, "scale": a.scale} for a in genesis.assets if a.issuer == m.member_id
                ],
            }
        )
        if m.ca_cert is not None:
            members[-1]["ca_cert"] = m.ca_cert.decode()
    return {
        "chain_id": genesis.chain_id,
        "f": genesis.f,
        "members": members,
        "limits": asdict(genesis.limits),
    }


def _need(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise GenesisError(f"{where}: missing field '{key}'")
    value = obj[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise GenesisError(f"{where}.{key}: expected an integer, got {value!r}")
    if kind is not int and not isinstance(value, kind):
        raise GenesisError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _key(obj: dict[str, Any], key: str, where: str) -> bytes:
    text = _need(obj, key, str, where)
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise GenesisError(f"{where}.{key}: not hex") from exc
    if len(raw) != PUBLIC_KEY_BYTES:
        raise GenesisError(f"{where}.{key}: expected {PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
    return raw


def _ca_cert(obj: dict[str, Any], member_id: str, where: str) -> bytes | None:
    if "ca_cert" not in obj:
        return None
    text: str = _need(obj, "ca_cert", str, where)
    if len(text) > CERT_PEM_BYTES_MAX:
        raise GenesisError(f"{where}.ca_cert: larger than {CERT_PEM_BYTES_MAX} bytes")
    try:
        load_ca_cert(text.encode(), member_id)
    except PkiError as exc:
        raise GenesisError(f"{where}.ca_cert: {exc}") from exc
    return text.encode()


def parse_genesis(data: Any) -> Genesis:
    """Validate a decoded genesis document; raise GenesisError naming the first bad field."""
    if not isinstance(data, dict):
        raise GenesisError("genesis: expected a JSON object")
    chain_id = _need(data, "chain_id", str, "genesis")
    if not chain_id or len(chain_id.encode()) > CHAIN_ID_BYTES_MAX:
        raise GenesisError(f"genesis.chain_id: 1..{CHAIN_ID_BYTES_MAX} bytes")
    f = _need(data, "f", int, "genesis")
    raw_members = _need(data, "members", list, "genesis")
    if f < 1 and len(raw_members) != 1:
        raise GenesisError("genesis.f: must be >= 1 for a multi-node consortium")
    if len(raw_members) != 3 * f + 1:
        raise GenesisError(f"genesis: n must be 3f+1 = {3 * f + 1} members for f={f}, got {len(raw_members)}")

    members: list[Member] = []
    assets: list[Asset] = []
    for i, rm in enumerate(raw_members):
        where = f"genesis.members[{i}]"
        if not isinstance(rm, dict):
            raise GenesisError(f"{where}: expected an object")
        member_id = _need(rm, "member_id", str, where)
        if not MEMBER_ID_RE.fullmatch(member_id):
            raise GenesisError(f"{where}.member_id: {member_id!r} is not A-Z, 0-9, '-' (1..32)")
        member_assets: list[str] = []
        for j, ra in enumerate(rm.get("assets", [])):
            awhere = f"{where}.assets[{j}]"
            if not isinstance(ra, dict):
                raise GenesisError(f"{awhere}: expected an object")
            name = _need(ra, "asset", str, awhere)
            match = ASSET_RE.fullmatch(name)
            if not match or match.group(2) != member_id:
                raise GenesisError(f"{awhere}.asset: {name!r} must be CCY.{member_id}")
            scale = _need(ra, "scale", int, awhere)
            if not 0 <= scale <= SCALE_MAX:
                raise GenesisError(f"{awhere}.scale: 0..{SCALE_MAX}")
            assets.append(Asset(asset=name, issuer=member_id, scale=scale))
            member_assets.append(name)
        ports = []
        for port_key in ("replica_port", "api_port"):
            port = _need(rm, port_key, int, where)
            if not 0 < port < 65536:
                raise GenesisError(f"{where}.{port_key}: 1..65535")
            ports.append(port)
        members.append(
            Member(
                member_id=member_id,
                replica=_need(rm, "replica", int, where),
                node_key=_key(rm, "node_key", where),
                operator_key=_key(rm, "operator_key", where),
                host=_need(rm, "host", str, where),
                replica_port=ports[0],
                api_port=ports[1],
                assets=tuple(sorted(member_assets)),
                ca_cert=_ca_cert(rm, member_id, where),
            )
        )
    members.sort(key=lambda m: m.replica)
    if [m.replica for m in members] != list(range(len(members))):
        raise GenesisError("genesis.members: replica indexes must be 0..n-1, each once")
    for what, values in (
        ("member_id", [m.member_id for m in members]),
        ("node_key", [m.node_key for m in members]),
        ("asset", [a.asset for a in assets]),
    ):
        if len(set(values)) != len(values):
            raise GenesisError(f"genesis: duplicate {what}")

    raw_limits = data.get("limits", {})
    if not isinstance(raw_limits, dict):
        raise GenesisError("genesis.limits: expected an object")
    defaults = asdict(LedgerLimits())
    unknown = set(raw_limits) - set(defaults)
    if unknown:
        raise GenesisError(f"genesis.limits: unknown field(s) {sorted(unknown)}")
    limits: dict[str, int] = {}
    for key, default in defaults.items():
        value = raw_limits.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= INT64_MAX:
            raise GenesisError(f"genesis.limits.{key}: a positive 64-bit integer")
        limits[key] = value
    return Genesis(
        chain_id=chain_id,
        f=f,
        members=tuple(members),
        assets=tuple(sorted(assets, key=lambda a: a.asset)),
        limits=LedgerLimits(**limits),
    )


def load_genesis(path: Path) -> Genesis:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GenesisError(f"{path}: cannot read genesis: {exc.strerror}") from exc
    if len(raw) > GENESIS_BYTES_MAX:
        raise GenesisError(f"{path}: larger than {GENESIS_BYTES_MAX} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise GenesisError(f"{path}: not JSON ({exc})") from exc
    return parse_genesis(data)
