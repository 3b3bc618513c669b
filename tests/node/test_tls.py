"""Transport security (issue 17 items 2 and 8), in process: the real ReplicaServer behind the
node's real server credentials on 127.0.0.1, fed by gRPC clients holding right and wrong
certificates. The inbound side records what reaches it (in the node: the driver's fair queue),
so "refused" means: nothing of the stream was handed on, the caller got a clear status, and
the refusal was counted and logged once."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from ledger import pki, tls
from ledger.crypto import DOMAIN_CONSENSUS
from ledger.genesis import Genesis, GenesisError, parse_genesis
from ledger.v1 import consensus_pb2
from node.config import ConfigError, NodeLimits, parse_node_config
from node.log import EventLog
from node.peerauth import HandshakeRefusals, PeerAuth, handshake_reason
from node.transport import ReplicaServer
from tests.client.fakes import Bank, make_banks, make_genesis
from tests.node.helpers import ROOT

assert (ROOT / "scripts" / "members.py").exists()  # helpers put scripts/ on sys.path
from members import BankFiles, assemble_genesis, keygen  # noqa: E402

SERVER = 0  # the node under test is BANK-A
HOST = "127.0.0.1"
CALL_TIMEOUT_S = 5.0


@dataclass
class RecordingInbound:
    """What the transport hands on (in the node: to the driver's queue)."""

    messages: list[tuple[Hashable, bytes]] = field(default_factory=list)
    forwards: list[list[bytes]] = field(default_factory=list)
    fetches: int = 0

    async def on_peer_messages(self, source: Hashable, messages: Sequence[bytes]) -> bool:
        self.messages += [(source, m) for m in messages]
        return True

    def on_forward(self, source: Hashable, envelopes: list[bytes]) -> None:
        self.forwards.append(envelopes)

    def closed(self, source: Hashable) -> None:
        pass

    def fetch_blocks(self, from_height: int, max_blocks: int) -> tuple[list[bytes], int]:
        self.fetches += 1
        return [], 0

    async def fetch_snapshot(self, request: consensus_pb2.SnapshotRequest) -> consensus_pb2.SnapshotChunk:
        self.fetches += 1
        return consensus_pb2.SnapshotChunk()


@dataclass(frozen=True)
class Net:
    banks: list[Bank]
    genesis: Genesis


@pytest.fixture(scope="module")
def net() -> Net:
    banks = make_banks()
    return Net(banks, make_genesis(banks))


def _frame(genesis: Genesis, bank: Bank, replica: int) -> bytes:
    body = consensus_pb2.ConsensusMessage(
        prepare=consensus_pb2.Prepare(view=0, sequence=1, digest=bytes(32), replica=replica)
    ).SerializeToString()
    signed = consensus_pb2.SignedMessage(
        body=body, signer=replica, signature=bank.node_key.sign(DOMAIN_CONSENSUS, genesis.chain_id, body)
    )
    message = consensus_pb2.PeerMessage(message=signed).SerializeToString()
    return consensus_pb2.PeerFrame(messages=[message]).SerializeToString()


class Server:
    """BANK-A's replica port: TLS with client certificates (or plaintext), PeerAuth on."""

    def __init__(self, net: Net, *, plaintext: bool = False) -> None:
        self.net = net
        self.log = EventLog("BANK-A", None)
        self.events: list[dict[str, Any]] = []
        self.log.event = self._event  # type: ignore[method-assign]
        self.inbound = RecordingInbound()
        self.server = grpc.aio.server()
        auth = None if plaintext else PeerAuth(net.genesis, self.log)
        self.server.add_generic_rpc_handlers(
            (ReplicaServer(net.genesis, NodeLimits(), self.inbound, self.log, auth).handler(),)
        )
        creds = (
            None
            if plaintext
            else tls.server_credentials(net.genesis, net.banks[SERVER].tls, require_client_auth=True)
        )
        self.port = tls.bind(self.server, f"{HOST}:0", creds)
        assert self.port

    def _event(self, event: str, /, **detail: Any) -> None:
        self.events.append({"event": event, **detail})

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


def _channel(
    server: Server, identity: pki.Issued | None, *, roots: bytes | None = None, name: str = "BANK-A"
) -> grpc.aio.Channel:
    """A client of BANK-A's replica port: trusting BANK-A's CA (as a member's node does),
    presenting ``identity``; None and no roots: plaintext."""
    if identity is None and roots is None:
        return grpc.aio.insecure_channel(server.address)
    creds = grpc.ssl_channel_credentials(
        root_certificates=roots or server.net.banks[SERVER].ca.cert_pem,
        private_key=None if identity is None else identity.key_pem,
        certificate_chain=None if identity is None else identity.cert_pem,
    )
    return grpc.aio.secure_channel(server.address, creds, options=[("grpc.ssl_target_name_override", name)])


async def _stream(channel: grpc.aio.Channel, frames: list[bytes]) -> grpc.StatusCode:
    call = channel.stream_unary("/ledger.v1.ReplicaService/Stream", None, None)
    try:
        await call(iter(frames), timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _unary(channel: grpc.aio.Channel, method: str, payload: bytes) -> grpc.aio.AioRpcError | None:
    try:
        await channel.unary_unary(f"/ledger.v1.ReplicaService/{method}", None, None)(
            payload, timeout=CALL_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def test_a_member_is_heard_and_every_impostor_is_refused_before_its_stream_is_read(net: Net) -> None:
    a, b, c = net.banks[0], net.banks[1], net.banks[2]
    outsider_ca = pki.make_ca("BANK-B")  # an unknown CA, naming itself after a member
    hour = datetime.timedelta(hours=1)
    certs = {
        "member": b.tls,
        "unknown_ca": pki.issue_node_cert(outsider_ca, "BANK-B", (HOST,)),
        "claims_another_member": pki.issue_node_cert(c.ca, "BANK-C", (HOST,), common_name="BANK-B"),
        "not_a_member_cn": pki.issue_node_cert(c.ca, "BANK-C", (HOST,), common_name="OUTSIDER"),
        "expired": pki.issue_node_cert(
            b.ca, "BANK-B", (HOST,), not_before=_now() - 3 * hour, not_after=_now() - hour
        ),
        "not_yet_valid": pki.issue_node_cert(
            b.ca, "BANK-B", (HOST,), not_before=_now() + hour, not_after=_now() + 3 * hour
        ),
    }
    frame = _frame(net.genesis, b, 1)

    async def scenario() -> tuple[Server, dict[str, Any]]:
        server = Server(net)
        await server.server.start()
        out: dict[str, Any] = {}
        try:
            for name, identity in certs.items():
                async with _channel(server, identity) as ch:
                    before = len(server.inbound.messages)
                    out[name] = (await _stream(ch, [frame, frame]), len(server.inbound.messages) - before)
            # The same wrong identity again: counted again, logged once.
            async with _channel(server, certs["claims_another_member"]) as ch:
                out["again"] = await _stream(ch, [frame])
                forward = await _unary(ch, "ForwardTransactions", b"")
                fetch = await _unary(ch, "FetchBlocks", b"")
                snapshot = await _unary(ch, "FetchSnapshot", b"")
                assert forward is not None and fetch is not None and snapshot is not None
                out["forward"], out["fetch"], out["snapshot"] = forward.code(), fetch.code(), snapshot.code()
                out["why"] = forward.details()
            async with _channel(server, None) as ch:  # plaintext to the TLS port
                out["plaintext"] = (await _stream(ch, [frame]), 0)
            async with _channel(server, None, roots=a.ca.cert_pem) as ch:  # TLS, no client certificate
                out["no_client_cert"] = (await _stream(ch, [frame]), 0)
            # A truncated handshake: the first bytes of a ClientHello, then nothing, then gone.
            _, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(20))
            await writer.drain()
            async with _channel(server, b.tls) as ch:  # the port still serves members meanwhile
                before = len(server.inbound.messages)
                out["member_during_truncated"] = (
                    await _stream(ch, [frame]),
                    len(server.inbound.messages) - before,
                )
            writer.close()
        finally:
            await server.server.stop(None)
        return server, out

    server, out = asyncio.run(scenario())
    ok, denied, unavailable = (
        grpc.StatusCode.OK,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAVAILABLE,
    )
    assert out["member"] == (ok, 2)  # the control: a member's frames do reach the queue
    assert out["member_during_truncated"] == (ok, 1)
    # Refused in the handshake by gRPC (an unknown CA, or outside the validity period) ...
    assert out["unknown_ca"] == (unavailable, 0)
    assert out["expired"] == (unavailable, 0)
    assert out["not_yet_valid"] == (unavailable, 0)
    assert out["plaintext"] == (unavailable, 0)
    assert out["no_client_cert"] == (unavailable, 0)
    # ... or by PeerAuth before a byte of the stream is read: a member CA's valid certificate
    # that names someone it may not speak for.
    assert out["claims_another_member"] == (denied, 0)
    assert out["not_a_member_cn"] == (denied, 0)
    assert out["again"] == denied and out["forward"] == denied and out["fetch"] == denied
    assert out["snapshot"] == denied  # state sync serves members only
    assert "not issued by the CA genesis lists for the member it names" in out["why"]
    assert not server.inbound.forwards and server.inbound.fetches == 0
    assert server.log.counters["peer_refused_wrong_ca"] == 5  # stream, again, forward, fetch, snapshot
    assert server.log.counters["peer_refused_not_a_member"] == 1
    assert "peer_messages_in" in server.log.counters  # counted for the member only:
    assert server.log.counters["peer_messages_in"] == 3
    refused = [e for e in server.events if e["event"] == "peer_refused"]
    assert [(e["reason"], e["cn"]) for e in refused] == [("wrong_ca", "BANK-B"), ("not_a_member", "OUTSIDER")]


def test_peer_auth_reasons_and_codes(net: Net) -> None:
    """The checks behind the handshake's, one by one (gRPC refuses some of these already; the
    check does not rely on it)."""
    b, c = net.banks[1], net.banks[2]
    log = EventLog("BANK-A", None)
    auth = PeerAuth(net.genesis, log)
    hour = datetime.timedelta(hours=1)

    def ctx(issued: pki.Issued | bytes | None) -> dict[str, list[bytes]]:
        if issued is None:
            return {}
        pem = issued if isinstance(issued, bytes) else issued.cert_pem
        return {"x509_pem_cert": [pem]}

    assert auth.member_of(ctx(b.tls)) == ("BANK-B", "")
    assert auth.member_of(ctx(b.tls)) == ("BANK-B", "")  # cached: same answer
    cases = {
        "no_certificate": None,
        "bad_certificate": b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        "wrong_ca": pki.issue_node_cert(c.ca, "BANK-C", (HOST,), common_name="BANK-B"),
        "not_a_member": pki.issue_node_cert(c.ca, "BANK-C", (HOST,), common_name="BANK-Z"),
        "expired": pki.issue_node_cert(
            b.ca, "BANK-B", (HOST,), not_before=_now() - 3 * hour, not_after=_now() - hour
        ),
        "not_yet_valid": pki.issue_node_cert(
            b.ca, "BANK-B", (HOST,), not_before=_now() + hour, not_after=_now() + 3 * hour
        ),
        "wrong_ca ": pki.issue_node_cert(pki.make_ca("BANK-B"), "BANK-B", (HOST,)),  # unknown CA
    }
    for reason, issued in cases.items():
        assert auth.member_of(ctx(issued)) == (None, reason.strip()), reason
    # A certificate that passed is refused once it expires (the cache keeps its validity).
    later = PeerAuth(net.genesis, log, now=lambda: _now() + datetime.timedelta(days=3 * 365))
    assert later.member_of(ctx(b.tls)) == (None, "expired")


def test_tls_to_a_plaintext_port_is_refused_and_plaintext_still_works_for_debugging(net: Net) -> None:
    b = net.banks[1]
    frame = _frame(net.genesis, b, 1)

    async def scenario() -> tuple[grpc.StatusCode, grpc.StatusCode, int]:
        server = Server(net, plaintext=True)
        await server.server.start()
        try:
            async with _channel(server, b.tls) as ch:
                over_tls = await _stream(ch, [frame])
            async with _channel(server, None) as ch:
                plain = await _stream(ch, [frame])
        finally:
            await server.server.stop(None)
        return over_tls, plain, len(server.inbound.messages)

    assert asyncio.run(scenario()) == (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK, 1)


def test_clients_verify_the_node_they_dial_against_its_member_ca(net: Net) -> None:
    """A channel to an address genesis lists for BANK-A accepts BANK-A's certificate only: not
    BANK-B's (a valid member certificate), not one from an unknown CA."""
    a, b = net.banks[0], net.banks[1]

    async def serve_and_dial(identity: pki.Issued, genesis_as: str | None) -> grpc.StatusCode:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "t.T", {"Ping": grpc.unary_unary_rpc_method_handler(_pong)}
                ),
            )
        )
        port = tls.bind(
            server, f"{HOST}:0", tls.server_credentials(net.genesis, identity, require_client_auth=False)
        )
        await server.start()
        genesis = net.genesis
        if genesis_as is not None:  # genesis lists this port as that member's API address
            members = tuple(
                replace(m, api_port=port) if m.member_id == genesis_as else m for m in genesis.members
            )
            genesis = replace(genesis, members=members)
        try:
            async with tls.aio_channel(genesis, f"{HOST}:{port}") as ch:
                await ch.unary_unary("/t.T/Ping", None, None)(b"", timeout=CALL_TIMEOUT_S)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        finally:
            await server.stop(None)

    unknown = pki.issue_node_cert(pki.make_ca("BANK-A"), "BANK-A", (HOST,))

    async def scenario() -> list[grpc.StatusCode]:
        return [
            await serve_and_dial(a.tls, "BANK-A"),  # the right node
            await serve_and_dial(b.tls, "BANK-A"),  # another member's node at A's address
            await serve_and_dial(unknown, "BANK-A"),  # an unknown CA
            await serve_and_dial(b.tls, None),  # an address genesis does not list: any member's CA
            await serve_and_dial(unknown, None),
        ]

    ok, unavailable = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE
    assert asyncio.run(scenario()) == [ok, unavailable, unavailable, ok, unavailable]


async def _pong(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return b""


# --- genesis, config and a bank's own key material ------------------------------------------


def test_genesis_ca_cert_is_optional_round_trips_and_must_be_a_ca(net: Net) -> None:
    assert parse_genesis(json.loads(net.genesis.to_json())) == net.genesis
    doc = json.loads(net.genesis.to_json())
    for m in doc["members"]:
        del m["ca_cert"]
    old = parse_genesis(doc)  # a genesis from before TLS still loads ...
    assert all(m.ca_cert is None for m in old.members)
    with pytest.raises(tls.TlsError, match="no ca_cert for BANK-A"):  # ... but TLS needs the CAs
        tls.all_cas(old)
    doc["members"][1]["ca_cert"] = net.banks[1].tls.cert_pem.decode()  # a node certificate
    with pytest.raises(GenesisError, match=r"members\[1\]\.ca_cert: .*not a CA certificate"):
        parse_genesis(doc)
    doc["members"][1]["ca_cert"] = "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n"
    with pytest.raises(GenesisError, match=r"members\[1\]\.ca_cert: not a PEM certificate"):
        parse_genesis(doc)


def test_node_config_needs_its_certificate_unless_tls_is_off(tmp_path: Path) -> None:
    base = {
        "genesis_path": "g.json",
        "member_id": "BANK-A",
        "key_path": "k",
        "data_dir": "d",
        "api_listen": "127.0.0.1:1",
        "replica_listen": "127.0.0.1:2",
    }
    with pytest.raises(ConfigError, match="tls_cert_path: required while tls is on"):
        parse_node_config(base, tmp_path)
    plain = parse_node_config({**base, "tls": False}, tmp_path)
    assert not plain.tls and plain.tls_cert_path is None
    on = parse_node_config({**base, "tls_cert_path": "c.pem", "tls_key_path": "k.pem"}, tmp_path)
    assert on.tls and on.tls_cert_path == tmp_path / "c.pem"
    assert parse_node_config(json.loads(on.to_json()), tmp_path) == on
    with pytest.raises(ConfigError, match="tls: true or false"):
        parse_node_config({**base, "tls": "no"}, tmp_path)


def test_a_bank_makes_its_own_secrets_and_genesis_takes_only_public_parts(tmp_path: Path) -> None:
    publics = []
    for i, bank in enumerate(["BANK-A", "BANK-B", "BANK-C", "BANK-D"]):
        files = BankFiles(tmp_path / bank, bank)  # each bank's own folder
        publics.append(keygen(files, f"10.0.0.{i + 1}", 7000, 7100, [(f"USD.{bank}", 2)]))
        for secret in (files.ca_key, files.tls_key, files.node_key, files.operator_key):
            assert secret.stat().st_mode & 0o777 == 0o600, secret
        public = json.loads(files.public.read_text())
        assert set(public) == {
            "member_id", "node_key", "operator_key", "ca_cert", "host", "replica_port", "api_port", "assets"
        }  # fmt: skip
        cert = pki.load_cert(files.tls_cert.read_bytes())
        assert pki.common_name(cert) == bank
        assert pki.check_issued_by(cert, pki.load_ca_cert(files.ca_cert.read_bytes(), bank), _now()) is None
        assert f"10.0.0.{i + 1}" in str(cert.extensions)  # the host's IP in the SAN
        with pytest.raises(pki.PkiError, match="already exists"):
            keygen(files, "10.0.0.1", 7000, 7100, [])
    genesis = assemble_genesis("chain-x", publics)
    assert [m.member_id for m in genesis.members] == ["BANK-A", "BANK-B", "BANK-C", "BANK-D"]
    assert genesis.members[2].ca_cert == (tmp_path / "BANK-C" / "BANK-C.ca.pem").read_bytes()
    assert genesis.f == 1 and genesis.members[3].host == "10.0.0.4"
    leaked = json.loads(publics[0].read_text()) | {"seed": "00" * 32}  # a secret handed over
    publics[0].write_text(json.dumps(leaked))
    with pytest.raises(GenesisError, match="unexpected field"):
        assemble_genesis("chain-x", publics)


def test_key_and_certificate_mismatch_is_refused(net: Net, tmp_path: Path) -> None:
    a, b = net.banks[0], net.banks[1]
    (tmp_path / "a.pem").write_bytes(a.tls.cert_pem)
    (tmp_path / "b-key.pem").write_bytes(b.tls.key_pem)
    with pytest.raises(tls.TlsError, match="not the private key of the certificate"):
        tls.load_identity(tmp_path / "a.pem", tmp_path / "b-key.pem")


def test_keygen_and_genesis_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from consortium import main

    publics = []
    for i, bank in enumerate(["BANK-W", "BANK-X", "BANK-Y", "BANK-Z"]):
        folder = tmp_path / bank
        argv = [
            "keygen",
            bank,
            "--dir",
            str(folder),
            "--host",
            "node.example",
            "--replica-port",
            str(7000 + i),
        ]
        assert main([*argv, "--api-port", str(7100 + i), "--asset", f"EUR.{bank}:2"]) == 0
        assert f"hand the others only {folder / f'{bank}.public.json'}" in capsys.readouterr().out
        publics.append(str(folder / f"{bank}.public.json"))
    assert (
        main(
            ["keygen", "BANK-W", "--dir", str(tmp_path / "BANK-W"), "--replica-port", "1", "--api-port", "2"]
        )
        == 1
    )
    assert "already exists" in capsys.readouterr().err
    assert main(["genesis", "--dir", str(tmp_path / "g"), "--chain-id", "chain-w", *publics]) == 0
    genesis = parse_genesis(json.loads((tmp_path / "g" / "genesis.json").read_text()))
    assert genesis.chain_id == "chain-w" and genesis.assets[0].asset == "EUR.BANK-W"
    assert all(m.ca_cert is not None and m.host == "node.example" for m in genesis.members)
    assert main(["genesis", "--dir", str(tmp_path / "g"), *publics]) == 1  # never overwrites
    assert "already exists" in capsys.readouterr().err


GRPC_LINE = (
    b"I1202 08:25:26.720206   14958 ssl_transport_security.cc:2563] Handshake failed with error "
    b"SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: %s\n"
)


def test_handshake_refusals_are_counted_from_grpc_lines_and_logged_once_per_reason(tmp_path: Path) -> None:
    assert handshake_reason(GRPC_LINE % b"certificate has expired") == "expired"
    assert handshake_reason(GRPC_LINE % b"unable to get local issuer certificate") == "unknown_ca"
    assert handshake_reason(GRPC_LINE % b"something new") == "other"
    assert handshake_reason(b"E1202 transport closed\n") is None
    stderr = tmp_path / "stderr.log"
    stderr.write_bytes(GRPC_LINE % b"certificate has expired")  # before start-up: not ours to count
    log = EventLog("BANK-A", tmp_path / "events.log")
    refusals = HandshakeRefusals(str(stderr), log)
    with stderr.open("ab") as f:
        f.write(GRPC_LINE % b"certificate has expired" + b"Traceback: unrelated\n")
        f.write((GRPC_LINE % b"certificate has expired")[:40])  # half a line: counted once whole
    refusals.poll()
    assert log.counters["tls_refused_expired"] == 1
    with stderr.open("ab") as f:
        f.write((GRPC_LINE % b"certificate has expired")[40:] + GRPC_LINE % b"certificate is not yet valid")
    refusals.poll()
    refusals.poll()  # nothing new
    assert dict(log.counters) == {"tls_refused_expired": 2, "tls_refused_not_yet_valid": 1}
    log.close()
    events = [json.loads(line) for line in (tmp_path / "events.log").read_text().splitlines()]
    assert [(e["event"], e["reason"]) for e in events] == [
        ("tls_refused", "expired"),
        ("tls_refused", "not_yet_valid"),
    ]
    assert events[0]["error"].endswith("certificate has expired")
    stderr.write_bytes(b"")  # truncated (rotated): read again from the start
    refusals.poll()
    with stderr.open("ab") as f:
        f.write(GRPC_LINE % b"certificate has expired")
    refusals.poll()
    assert log.counters["tls_refused_expired"] == 3
    # Only a regular file can be read back; a pipe or a terminal cannot.
    read_end, write_end = os.pipe()
    try:
        assert HandshakeRefusals.of_stderr(log, write_end) is None
    finally:
        os.close(read_end)
        os.close(write_end)
