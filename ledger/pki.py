"""X.509 for the transport: each bank's own certificate authority and its node's certificate.

Each member is its own trust domain (docs/ARCHITECTURE.md, "Transport security"): a bank makes a
self-signed CA, and with it the certificate its node presents on both ports, whose subject
common name is the member id and whose subjectAltName names the member id (what peers and
clients check, with gRPC's target name override) and the node's host. Genesis lists every
member's CA certificate. Keys are ECDSA P-256: what every TLS stack (gRPC's BoringSSL among
them) takes; the Ed25519 consensus and operator keys stay the protocol's proof of who signed.

Certificates are built and checked with the ``cryptography`` package; nothing here parses or
writes ASN.1 by hand.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_PEM_BYTES_MAX = 8192  # one certificate, PEM: ours are under 1 KiB
PRIVATE_FILE_MODE = 0o600
CA_VALID_DAYS = 10 * 365
NODE_VALID_DAYS = 2 * 365
BACKDATE = datetime.timedelta(minutes=5)  # tolerate a peer's clock a little behind ours


class PkiError(Exception):
    """A certificate or key is missing, malformed or not what it must be; the message says which."""


@dataclass(frozen=True)
class Issued:
    """A private key and its certificate, PEM."""

    key_pem: bytes
    cert_pem: bytes


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(member_id: str, *, valid_days: int = CA_VALID_DAYS) -> Issued:
    """A bank's self-signed certificate authority (path length 0: it signs its node only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, member_id),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{member_id} CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def san_names(member_id: str, hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    """The member id as a DNS name (what peers verify, through the target name override), and
    each host: an IP address as an IP entry, a name as a DNS entry."""
    names: list[x509.GeneralName] = [x509.DNSName(member_id)]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue_node_cert(
    ca: Issued,
    member_id: str,
    hosts: tuple[str, ...],
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    common_name: str | None = None,
) -> Issued:
    """The node's TLS certificate under its bank's CA: CN = member id, usable by the node as a
    server (both ports) and as a client (its links to peers). ``common_name``, ``not_before`` and
    ``not_after`` exist so tests can make the wrong certificates the node must refuse."""
    cn = common_name or member_id
    return _issue(
        ca,
        cn,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        san_names(cn, hosts),
        not_before,
        not_after,
    )


def issue_client_cert(ca: Issued, name: str) -> Issued:
    """A client-only certificate under a bank's CA, for the bank's own tools (its monitoring
    scrapes the node's metrics with one). CN = ``name``, which must not be a member id, so the
    certificate can never speak for a node (node/peerauth.py names a peer by its CN)."""
    return _issue(ca, name, [ExtendedKeyUsageOID.CLIENT_AUTH], None, None, None)


def _issue(
    ca: Issued,
    cn: str,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName] | None,
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
) -> Issued:
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PkiError("the CA key is not an ECDSA key")
    ca_cert = load_cert(ca.cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - BACKDATE)
        .not_valid_after(not_after or now + datetime.timedelta(days=NODE_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def load_cert(pem: bytes) -> x509.Certificate:
    if len(pem) > CERT_PEM_BYTES_MAX:
        raise PkiError(f"certificate larger than {CERT_PEM_BYTES_MAX} bytes")
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate ({exc})") from exc


def load_ca_cert(pem: bytes, member_id: str) -> x509.Certificate:
    """A member's CA certificate from genesis: a PEM certificate that may sign certificates."""
    cert = load_cert(pem)
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise PkiError(f"{member_id}: ca_cert is not a CA certificate (basicConstraints CA is not set)")
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        raise PkiError(f"{member_id}: ca_cert's key is not an ECDSA key")
    return cert


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) else None


def check_issued_by(cert: x509.Certificate, ca: x509.Certificate, now: datetime.datetime) -> str | None:
    """Why ``cert`` is not a valid certificate of ``ca`` at ``now`` (a short reason), or None."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "wrong_ca"
    if now < cert.not_valid_before_utc:
        return "not_yet_valid"
    if now > cert.not_valid_after_utc:
        return "expired"
    return None


def key_matches(issued: Issued) -> bool:
    """The private key is the one the certificate certifies."""
    try:
        key = serialization.load_pem_private_key(issued.key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"not a PEM private key ({exc})") from exc
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    mine = key.public_key().public_bytes(serialization.Encoding.DER, public)
    return mine == load_cert(issued.cert_pem).public_key().public_bytes(serialization.Encoding.DER, public)


def write_private(path: Path, data: bytes) -> None:
    """A secret file readable by its owner only; refuses to overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError as exc:
        raise PkiError(f"{path}: already exists; not overwriting a key") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def read_file(path: Path, what: str, bytes_max: int = 64 * 1024) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PkiError(f"{path}: cannot read {what}: {exc.strerror}") from exc
    if len(raw) > bytes_max:
        raise PkiError(f"{path}: larger than {bytes_max} bytes, not a {what}")
    return raw
