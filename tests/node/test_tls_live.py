"""Transport security against real node processes (issue 17 items 1, 2 and 8): every bad
connection gets a clear error or is refused, is logged, and the node keeps committing; a
plaintext consortium works only by asking for it, and says so; a node refuses to start with a
certificate that is not its own."""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ledger import pki, tls
from ledger.genesis import Genesis
from ledger.v1 import api_pb2, consensus_pb2, tx_pb2
from tests.node.helpers import (
    ROOT,
    Consortium,
    factory_for,
    rpc_code,
    running_consortium,
    stub,
    submit_one,
    wait_converged,
    wait_for,
)

TARGET = "BANK-C"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    with running_consortium(tmp_path_factory.mktemp("tls") / "c") as c:
        yield c


def _identity(c: Consortium, bank: str) -> pki.Issued:
    files = c.bank_files(bank)
    return tls.load_identity(files.tls_cert, files.tls_key)


def _ca(c: Consortium, bank: str) -> pki.Issued:
    files = c.bank_files(bank)
    return pki.Issued(files.ca_key.read_bytes(), files.ca_cert.read_bytes())


def _replica_call(
    genesis: Genesis, address: str, identity: pki.Issued | None, plaintext: bool = False
) -> grpc.StatusCode:
    """Open a Stream to the replica port with this client certificate and send one frame."""
    frame = consensus_pb2.PeerFrame(messages=[b"\x0a\x00"]).SerializeToString()
    with tls.channel(genesis, address, insecure=plaintext, identity=identity) as ch:
        call = ch.stream_unary("/ledger.v1.ReplicaService/Stream", None, None)
        return rpc_code(lambda: call(iter([frame]), timeout=5))


def _counters(c: Consortium, bank: str) -> dict[str, int]:
    return dict(stub(c, bank).GetStatus(api_pb2.GetStatusRequest(), timeout=5).counters)


def _events(c: Consortium, bank: str, name: str) -> list[dict[str, object]]:
    lines = (c.node_dir(bank) / "events.log").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == name]


def test_bad_connections_are_refused_logged_and_the_node_keeps_committing(net: Consortium) -> None:
    genesis = net.genesis()
    member = genesis.member(TARGET)
    assert member is not None
    now = datetime.datetime.now(datetime.UTC)
    hour = datetime.timedelta(hours=1)
    before = _counters(net, TARGET)
    unavailable, denied = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED
    wrong = {
        # an outsider: its own CA, claiming a member's name
        "unknown CA": pki.issue_node_cert(pki.make_ca("BANK-B"), "BANK-B", ("127.0.0.1",)),
        "expired": pki.issue_node_cert(
            _ca(net, "BANK-B"), "BANK-B", (), not_before=now - 3 * hour, not_after=now - hour
        ),
        "not yet valid": pki.issue_node_cert(
            _ca(net, "BANK-B"), "BANK-B", (), not_before=now + hour, not_after=now + 3 * hour
        ),
    }
    for what, identity in wrong.items():
        assert _replica_call(genesis, member.replica_address, identity) == unavailable, what
    # BANK-D's CA issuing a certificate in BANK-B's name: gRPC's handshake takes it (some
    # member's CA), the node refuses it before reading the stream. Twice: logged once.
    impostor = pki.issue_node_cert(_ca(net, "BANK-D"), "BANK-D", (), common_name="BANK-B")
    assert _replica_call(genesis, member.replica_address, impostor) == denied
    assert _replica_call(genesis, member.replica_address, impostor) == denied
    assert _replica_call(genesis, member.replica_address, None, plaintext=True) == unavailable
    # TLS without a client certificate (a client's credentials, on the replica port)
    assert _replica_call(genesis, member.replica_address, None) == unavailable
    # The API port: plaintext, and a client trusting another bank's CA for this node.
    with grpc.insecure_channel(member.api_address) as ch:
        plain = api_pb2.GetStatusRequest()
        assert (
            rpc_code(
                lambda: ch.unary_unary("/ledger.v1.LedgerService/GetStatus", None, None)(
                    plain.SerializeToString(), timeout=5
                )
            )
            == unavailable
        )
    creds = grpc.ssl_channel_credentials(root_certificates=_ca(net, "BANK-A").cert_pem)
    with grpc.secure_channel(
        member.api_address, creds, options=[("grpc.ssl_target_name_override", TARGET)]
    ) as ch:
        assert (
            rpc_code(lambda: ch.unary_unary("/ledger.v1.LedgerService/GetStatus", None, None)(b"", timeout=5))
            == unavailable
        )
    # Truncated handshakes on both ports: a few bytes of a ClientHello, then silence, then gone.
    held = []
    for address in (member.replica_address, member.api_address):
        host, port = address.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(20))
        held.append(s)
    fx = factory_for(net)
    try:
        # ... while they hang, the node still commits what a client submits to it.
        raw = fx.open_account(TARGET, "tls-live-1", fx.client("tls-live-1"))
        assert submit_one(net, TARGET, raw).result.code == tx_pb2.OK
    finally:
        for s in held:
            s.close()

    after = _counters(net, TARGET)
    assert after.get("peer_refused_wrong_ca", 0) - before.get("peer_refused_wrong_ca", 0) == 2
    refused = _events(net, TARGET, "peer_refused")
    assert [(e["reason"], e["cn"]) for e in refused] == [("wrong_ca", "BANK-B")]
    # Handshake refusals happen in gRPC's C core, which logs each with its reason on stderr.
    stderr = net.node_dir(TARGET) / "stderr.log"
    wait_for(
        "gRPC to log the handshake refusals",
        lambda: all(
            reason in stderr.read_text()
            for reason in (
                "unable to get local issuer certificate",
                "certificate has expired",
                "certificate is not yet valid",
            )
        ),
        timeout_s=10,
    )
    # ... and the node counts them from those lines (node/peerauth.py HandshakeRefusals, once a
    # second), logging the first of each reason: plaintext came twice (replica and API ports).
    handshake = {"unknown_ca": 1, "expired": 1, "not_yet_valid": 1, "no_certificate": 1, "not_tls": 2}

    def counted() -> bool:
        now = _counters(net, TARGET)
        return all(
            now.get(f"tls_refused_{r}", 0) - before.get(f"tls_refused_{r}", 0) >= k
            for r, k in handshake.items()
        )

    wait_for("the handshake refusals to be counted", counted, timeout_s=10)
    reasons = [str(e["reason"]) for e in _events(net, TARGET, "tls_refused")]
    assert sorted(reasons) == sorted(handshake), reasons  # once per reason
    height = stub(net, TARGET).GetStatus(api_pb2.GetStatusRequest(), timeout=5).last_executed
    raw = fx.open_account(TARGET, "tls-live-2", fx.client("tls-live-2"))
    assert submit_one(net, TARGET, raw).result.code == tx_pb2.OK
    wait_converged(net, [m.member_id for m in genesis.members], height + 1)


def test_plaintext_only_when_asked_and_the_node_says_so(tmp_path: Path) -> None:
    c = Consortium(tmp_path / "plain")
    try:
        c.up(4, insecure=True)
        genesis = c.genesis()
        for bank in c.banks():
            (warning,) = _events(c, bank, "tls_disabled")
            assert warning["level"] == "warning"
        # TLS to a plaintext port: a clear handshake failure, not a hang.
        with tls.channel(genesis, genesis.members[0].api_address) as ch:
            assert rpc_code(
                lambda: ch.unary_unary("/ledger.v1.LedgerService/GetStatus", None, None)(b"", timeout=5)
            ) == (grpc.StatusCode.UNAVAILABLE)
        fx = factory_for(c)
        raw = fx.open_account("BANK-A", "plain-1", fx.client("plain-1"))
        assert submit_one(c, "BANK-A", raw).result.code == tx_pb2.OK  # plaintext, asked for, works
    finally:
        c.down()


def test_a_node_refuses_to_start_without_its_own_certificate_or_the_cas(tmp_path: Path) -> None:
    c = Consortium(tmp_path / "c")
    c.init(4)

    def start_with(change: dict[str, object], genesis_doc: dict[str, object] | None = None) -> str:
        doc = json.loads(c.config_path("BANK-A").read_text()) | change
        if genesis_doc is not None:
            path = tmp_path / "genesis-old.json"
            path.write_text(json.dumps(genesis_doc))
            doc["genesis_path"] = str(path)
        config = tmp_path / "config.json"
        config.write_text(json.dumps(doc))
        # subprocess.run kills the child if the timeout passes: nothing outlives the test.
        proc = subprocess.run(
            [sys.executable, "-m", "node", "--config", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        return proc.stderr

    b = c.bank_files("BANK-B")
    err = start_with({"tls_cert_path": str(b.tls_cert), "tls_key_path": str(b.tls_key)})
    assert "common name 'BANK-B' is not this node's member id 'BANK-A'" in err
    a = c.bank_files("BANK-A")
    err = start_with({"tls_key_path": str(b.tls_key)})
    assert f"{b.tls_key}: not the private key of the certificate {a.tls_cert}" in err
    old = json.loads(c.genesis_path.read_text())
    for m in old["members"]:
        del m["ca_cert"]
    err = start_with({}, old)
    assert "genesis lists no ca_cert for BANK-A" in err
    del_tls = {
        k: v for k, v in json.loads(c.config_path("BANK-A").read_text()).items() if not k.startswith("tls")
    }
    c.config_path("BANK-A").write_text(json.dumps(del_tls))  # a config from before TLS
    err = start_with({})
    assert "tls_cert_path: required while tls is on" in err
