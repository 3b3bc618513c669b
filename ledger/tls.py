"""The one place gRPC channels and server credentials are made (node, SDK, scripts, tests).

TLS is the default everywhere; ``insecure=True`` (a node's ``"tls": false``, a script's
``--insecure``) is for debugging only. Trust comes from genesis: each member lists its bank's CA
certificate, and a node's certificate (CN and a DNS subjectAltName = the member id) is issued
by it. A channel to an address genesis lists for a member trusts that member's CA alone and
checks the certificate names that member (``grpc.ssl_target_name_override``): a node holding
another bank's certificate, or any other bank's CA's, cannot stand in for it. A channel to any
other address (a proxy, a test double) trusts every member's CA and checks the host name.

The handshake and record encryption are gRPC's (C); nothing here runs per message.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from ledger.genesis import Genesis, Member
from ledger.pki import Issued, PkiError, key_matches, read_file

ChannelOptions = Sequence[tuple[str, Any]]


class TlsError(Exception):
    """TLS cannot be set up as asked; the message says what is missing."""


def load_identity(cert_path: Path, key_path: Path) -> Issued:
    """A node's certificate and private key (PEM files), as TLS presents them."""
    try:
        cert_pem = read_file(cert_path, "certificate")
        identity = Issued(key_pem=read_file(key_path, "private key"), cert_pem=cert_pem)
        if not key_matches(identity):
            raise TlsError(f"{key_path}: not the private key of the certificate {cert_path}")
    except PkiError as exc:
        raise TlsError(f"{cert_path}, {key_path}: {exc}") from exc
    return identity


def member_ca(member: Member) -> bytes:
    if member.ca_cert is None:
        raise TlsError(
            f"genesis lists no ca_cert for {member.member_id}: TLS needs every member's CA "
            "(regenerate genesis from the banks' public parts, or run with TLS off to debug)"
        )
    return member.ca_cert


def all_cas(genesis: Genesis) -> bytes:
    """Every member's CA certificate, concatenated (a trust bundle)."""
    return b"".join(member_ca(m) for m in genesis.members)


def member_at(genesis: Genesis, endpoint: str) -> Member | None:
    """The member genesis lists at this address (its API or its replica port), if any."""
    for m in genesis.members:
        if endpoint in (m.api_address, m.replica_address):
            return m
    return None


def channel_credentials(
    genesis: Genesis, endpoint: str, identity: Issued | None = None
) -> tuple[grpc.ChannelCredentials, list[tuple[str, Any]]]:
    """Credentials and the channel options that go with them (see the module docstring).
    ``identity`` is presented as a client certificate (a node dialling a peer)."""
    member = member_at(genesis, endpoint)
    roots = all_cas(genesis) if member is None else member_ca(member)
    creds = grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=None if identity is None else identity.key_pem,
        certificate_chain=None if identity is None else identity.cert_pem,
    )
    options = [] if member is None else [("grpc.ssl_target_name_override", member.member_id)]
    return creds, options


def channel(
    genesis: Genesis,
    endpoint: str,
    options: ChannelOptions = (),
    *,
    insecure: bool = False,
    identity: Issued | None = None,
) -> grpc.Channel:
    """A blocking channel to a node's port."""
    if insecure:
        return grpc.insecure_channel(endpoint, options=list(options))
    creds, extra = channel_credentials(genesis, endpoint, identity)
    return grpc.secure_channel(endpoint, creds, options=[*options, *extra])


def aio_channel(
    genesis: Genesis,
    endpoint: str,
    options: ChannelOptions = (),
    *,
    insecure: bool = False,
    identity: Issued | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to a node's port."""
    if insecure:
        return grpc.aio.insecure_channel(endpoint, options=list(options))
    creds, extra = channel_credentials(genesis, endpoint, identity)
    return grpc.aio.secure_channel(endpoint, creds, options=[*options, *extra])


def server_credentials(
    genesis: Genesis, identity: Issued, *, require_client_auth: bool
) -> grpc.ServerCredentials:
    """The node's server side: its certificate; with ``require_client_auth`` (the replica port)
    a client must present a certificate chaining to some member's CA. Which member it may
    speak for is checked per call by node/peerauth.py: gRPC only knows "some member's CA"."""
    return grpc.ssl_server_credentials(
        [(identity.key_pem, identity.cert_pem)],
        root_certificates=all_cas(genesis) if require_client_auth else None,
        require_client_auth=require_client_auth,
    )


def bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Listen on address, with TLS unless credentials is None; the port, 0 when it failed."""
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)
