"""The node's transport security, from its config and genesis: server credentials for its two
ports, how it dials peers, and who may call the replica port (node/peerauth.py).

TLS is on unless the config says ``"tls": false``, which is for debugging only and logged as a
``tls_disabled`` warning event at start-up. With TLS: both ports present the node's certificate;
the replica port requires a client certificate of some member's CA and node/peerauth.py checks
the member it names; the node dials peers (and their API ports, for attestation backfill)
presenting its certificate and trusting only that peer's CA (ledger/tls.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
import grpc.aio

from ledger import tls
from ledger.genesis import Genesis, Member
from ledger.pki import Issued, PkiError, check_issued_by, common_name, load_cert
from node.config import NodeConfig
from node.log import EventLog
from node.peerauth import PeerAuth, _utc_now

Dial = Callable[[str, tls.ChannelOptions], grpc.aio.Channel]


class SecurityError(Exception):
    """TLS cannot be set up from this config and genesis; the message says why."""


@dataclass(frozen=True)
class NodeSecurity:
    genesis: Genesis
    identity: Issued | None  # None: plaintext (config "tls": false)

    def dial(self, endpoint: str, options: tls.ChannelOptions) -> grpc.aio.Channel:
        return tls.aio_channel(
            self.genesis, endpoint, options, insecure=self.identity is None, identity=self.identity
        )

    def credentials(self, *, replica_port: bool) -> grpc.ServerCredentials | None:
        if self.identity is None:
            return None
        return tls.server_credentials(self.genesis, self.identity, require_client_auth=replica_port)

    def peer_auth(self, log: EventLog) -> PeerAuth | None:
        return None if self.identity is None else PeerAuth(self.genesis, log)


def load_security(config: NodeConfig, genesis: Genesis, member: Member, log: EventLog) -> NodeSecurity:
    """Check the node's certificate against its bank's CA in genesis before serving with it: a
    node started with the wrong certificate would otherwise only find out when every peer
    refuses it."""
    if not config.tls:
        log.event(
            "tls_disabled",
            level="warning",
            message="plaintext on both ports: anyone who can reach them can read and inject; debugging only",
        )
        return NodeSecurity(genesis, None)
    assert config.tls_cert_path is not None and config.tls_key_path is not None  # the loader requires them
    try:
        for m in genesis.members:
            tls.member_ca(m)
        identity = tls.load_identity(config.tls_cert_path, config.tls_key_path)
        cert = load_cert(identity.cert_pem)
        ca = load_cert(tls.member_ca(member))
    except (tls.TlsError, PkiError) as exc:
        raise SecurityError(str(exc)) from exc
    if common_name(cert) != member.member_id:
        raise SecurityError(
            f"{config.tls_cert_path}: common name {common_name(cert)!r} is not this node's member id "
            f"{member.member_id!r}"
        )
    reason = check_issued_by(cert, ca, _utc_now())
    if reason is not None:
        raise SecurityError(
            f"{config.tls_cert_path}: not a valid certificate of {member.member_id}'s CA in genesis ({reason})"
        )
    return NodeSecurity(genesis, identity)
