"""A bank's own secrets, and genesis from the banks' public parts (issue 17, item 4).

Each bank runs ``keygen`` in its own folder, on its own host. It writes (secrets mode 0600):

    <BANK>.ca.pem        the bank's certificate authority (public: goes into genesis)
    <BANK>.ca-key.pem    its private key (secret; only needed to issue node certificates)
    <BANK>.tls.pem       the node's TLS certificate, issued by the CA: CN and DNS SAN = the
                         member id, and a SAN for the node's host
    <BANK>.tls-key.pem   its private key (secret; the node's config points at it)
    <BANK>.node.key      the node's consensus key (ledger.crypto key file; secret)
    <BANK>.operator.key  the operator's key: signs OpenAccount, Mint, freeze (secret)
    <BANK>.public.json   what the bank hands the others: node key, operator key, CA
                         certificate, host and ports, assets

Then anyone (each bank, to check) assembles genesis from the public files alone, in replica
order: ``assemble_genesis``. Nothing secret is read by that step.

Used by ``scripts/consortium.py keygen / genesis`` and by ``init``, which runs exactly these
steps for every bank of a local consortium.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ledger import pki
from ledger.crypto import SigningKey, save_key
from ledger.genesis import Genesis, GenesisError, LedgerLimits, parse_genesis

PUBLIC_BYTES_MAX = 64 * 1024


@dataclass(frozen=True)
class BankFiles:
    """Where a bank's files are, in its folder."""

    directory: Path
    bank: str

    def path(self, suffix: str) -> Path:
        return self.directory / f"{self.bank}.{suffix}"

    @property
    def ca_cert(self) -> Path:
        return self.path("ca.pem")

    @property
    def ca_key(self) -> Path:
        return self.path("ca-key.pem")

    @property
    def tls_cert(self) -> Path:
        return self.path("tls.pem")

    @property
    def tls_key(self) -> Path:
        return self.path("tls-key.pem")

    @property
    def monitor_cert(self) -> Path:
        return self.path("monitor.pem")

    @property
    def monitor_key(self) -> Path:
        return self.path("monitor-key.pem")

    @property
    def node_key(self) -> Path:
        return self.path("node.key")

    @property
    def operator_key(self) -> Path:
        return self.path("operator.key")

    @property
    def public(self) -> Path:
        return self.path("public.json")


def keygen(
    files: BankFiles, host: str, replica_port: int, api_port: int, assets: list[tuple[str, int]]
) -> Path:
    """Make a bank's CA, node certificate, node key, operator key and a client certificate for
    its monitoring (scrapes the node's metrics) in its folder, and its public part; returns the
    public file. Refuses to overwrite any of them."""
    if files.public.exists():
        raise pki.PkiError(f"{files.public}: already exists; this bank has its keys")
    ca = pki.make_ca(files.bank)
    node_tls = pki.issue_node_cert(ca, files.bank, (host,))
    monitor = pki.issue_client_cert(ca, f"{files.bank} monitoring")
    node_key, operator_key = SigningKey.generate(), SigningKey.generate()
    pki.write_private(files.ca_key, ca.key_pem)
    files.ca_cert.write_bytes(ca.cert_pem)
    pki.write_private(files.tls_key, node_tls.key_pem)
    files.tls_cert.write_bytes(node_tls.cert_pem)
    pki.write_private(files.monitor_key, monitor.key_pem)
    files.monitor_cert.write_bytes(monitor.cert_pem)
    save_key(files.node_key, node_key, f"{files.bank} node")
    save_key(files.operator_key, operator_key, f"{files.bank} operator")
    public = {
        "member_id": files.bank,
        "node_key": node_key.public_key.hex(),
        "operator_key": operator_key.public_key.hex(),
        "ca_cert": ca.cert_pem.decode(),
        "host": host,
        "replica_port": replica_port,
        "api_port": api_port,
        "assets": [{"asset": name, "scale": scale} for name, scale in assets],
    }
    files.public.write_text(json.dumps(public, indent=2, sort_keys=True) + "\n")  # last: marks it done
    return files.public


def read_public(path: Path) -> dict[str, Any]:
    """A bank's public part; only the fields genesis takes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GenesisError(f"{path}: cannot read: {exc.strerror}") from exc
    if len(raw) > PUBLIC_BYTES_MAX:
        raise GenesisError(f"{path}: larger than {PUBLIC_BYTES_MAX} bytes")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise GenesisError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise GenesisError(f"{path}: expected a JSON object")
    allowed = {
        "member_id",
        "node_key",
        "operator_key",
        "ca_cert",
        "host",
        "replica_port",
        "api_port",
        "assets",
    }
    unknown = set(doc) - allowed
    if unknown:  # a secret handed over by mistake is refused, not silently carried into genesis
        raise GenesisError(f"{path}: unexpected field(s) {sorted(unknown)} in a public part")
    return doc


def assemble_genesis(chain_id: str, public_paths: list[Path], limits: LedgerLimits | None = None) -> Genesis:
    """Genesis from the members' public parts, replicas in the order given; validated as any
    genesis is (ledger/genesis.py), so a bad public part is refused naming its field."""
    members = []
    for replica, path in enumerate(public_paths):
        members.append({**read_public(path), "replica": replica})
    n = len(members)
    doc = {
        "chain_id": chain_id,
        "f": (n - 1) // 3,
        "members": members,
        "limits": asdict(limits or LedgerLimits()),
    }
    return parse_genesis(doc)
