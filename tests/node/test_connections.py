"""Bounded connections and keepalive on live nodes (issue 16 item 4, issue 17 item 6).

Silent TCP connections and half-sent HTTP/2 prefaces are closed after handshake_timeout_ms, an
HTTP/2 connection with no call after connection_idle_ms, a port holds at most connections_max
connections (gRPC core closes the rest at accept), and meanwhile a new client gets its answer.
Peer links with a short keepalive stay up on an idle consortium: the servers accept the pings
their peers send (no GOAWAY ENHANCE_YOUR_CALM "too_many_pings", no re-dial)."""

from __future__ import annotations

import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from ledger.v1 import api_pb2, api_pb2_grpc
from node.__main__ import CONNECTIONS_MIN, FD_RESERVE, StartupError, connections_cap
from tests.node.helpers import ROOT, Consortium, running_consortium, stub

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS, stream 0
HANDSHAKE_MS = 2_000
IDLE_MS = 5_000  # longer than the handshake timeout, which must close a silent one first
CAP = 600


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_closed(socks: list[socket.socket], timeout_s: float) -> dict[int, float]:
    """Read every socket until the node closes it; fileno -> time.monotonic() when it was
    closed. Stops at the bound (those still open are missing from the result)."""
    t0 = time.monotonic()
    closed: dict[int, float] = {}
    with selectors.DefaultSelector() as sel:
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        while len(closed) < len(socks) and time.monotonic() - t0 < timeout_s:
            for key, _ in sel.select(0.2):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    data = conn.recv(65536)  # the node's SETTINGS, a GOAWAY: read and go on
                except ConnectionResetError:
                    data = b""
                if not data:
                    closed[conn.fileno()] = time.monotonic()
                    sel.unregister(conn)
    return closed


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    limits = {"handshake_timeout_ms": HANDSHAKE_MS, "connection_idle_ms": IDLE_MS, "connections_max": CAP}
    with running_consortium(tmp_path_factory.mktemp("conn") / "consortium", limits=limits) as c:
        yield c


def test_idle_and_half_open_connections_do_not_keep_a_client_out_and_are_closed(net: Consortium) -> None:
    m = net.member("BANK-A")
    with ExitStack() as stack:
        t_open = time.monotonic()
        silent = [stack.enter_context(socket.create_connection((m.host, m.api_port))) for _ in range(500)]
        half = [stack.enter_context(socket.create_connection((m.host, m.api_port))) for _ in range(3)]
        for s in half:
            s.sendall(H2_PREFACE[:10])
        settled = stack.enter_context(socket.create_connection((m.host, m.api_port)))
        settled.sendall(H2_PREFACE + EMPTY_SETTINGS)  # a finished handshake, then no call at all
        t0 = time.monotonic()
        status = stub(net, "BANK-A").GetStatus(api_pb2.GetStatusRequest(), timeout=2.0)
        assert status.member_id == "BANK-A"
        assert time.monotonic() - t0 < 2.0

        closed = wait_closed(silent + half, timeout_s=HANDSHAKE_MS / 1000 + 1.5)
        assert len(closed) == len(silent) + len(half), f"{len(silent) + len(half) - len(closed)} still open"
        # Under the cap, so not closed at accept: at the handshake timeout.
        assert min(closed.values()) - t_open > HANDSHAKE_MS / 1000 * 0.8
        idle = wait_closed([settled], timeout_s=IDLE_MS / 1000 + 5)
        assert len(idle) == 1, "an HTTP/2 connection with no call was not closed"


def test_a_grpc_channel_with_no_call_gets_goaway_after_connection_idle_ms(net: Consortium) -> None:
    states: list[grpc.ChannelConnectivity] = []
    with net.ledger_channel("BANK-B") as channel:
        channel.subscribe(states.append, try_to_connect=False)
        api_pb2_grpc.LedgerServiceStub(channel).GetStatus(api_pb2.GetStatusRequest(), timeout=2.0)
        ready_at = time.monotonic()
        # gRPC's idle timer runs in periods of connection_idle_ms from the connection's start and
        # re-arms when a call came in the period: GOAWAY comes 1x to 2x that after the last call.
        deadline = ready_at + 2 * IDLE_MS / 1000 + 3
        while time.monotonic() < deadline and states[-1:] != [grpc.ChannelConnectivity.IDLE]:
            time.sleep(0.05)  # connectivity arrives on gRPC's thread; poll the list it fills
        assert states[-1:] == [grpc.ChannelConnectivity.IDLE], states
        assert time.monotonic() - ready_at > IDLE_MS / 1000 * 0.8


def test_a_port_holds_at_most_connections_max(net: Consortium) -> None:
    m = net.member("BANK-C")
    pid = net.pid("BANK-C")
    assert pid is not None
    before = open_fds(pid)
    with ExitStack() as stack:
        t_open = time.monotonic()
        socks = [
            stack.enter_context(socket.create_connection((m.host, m.replica_port))) for _ in range(CAP + 400)
        ]
        # Those past the cap are closed at accept; none under it can close before the handshake
        # timeout, counted from the first connection.
        early = wait_closed(socks, timeout_s=t_open + HANDSHAKE_MS / 1000 * 0.9 - time.monotonic())
        # The cap counts the peers' links to this port too (3), hence a few more than 400.
        assert 400 - 10 <= len(early) <= 400 + 10, f"{len(early)} closed before the handshake timeout"
        assert open_fds(pid) <= before + CAP + 10
    # Its own links to its peers are untouched.
    st = net.node_status("BANK-C")
    assert st is not None and all(p.up for p in st.peers)


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    code = (
        "import resource\n"
        "from node.__main__ import raise_open_files_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    reported, soft, hard = (int(x) for x in out)
    assert reported == soft == (hard if hard != resource.RLIM_INFINITY else 1 << 20)


def test_connection_cap_leaves_a_reserve_and_refuses_a_useless_limit() -> None:
    assert connections_cap(8_192, 20_000) == 8_192
    assert connections_cap(8_192, 4_096) == (4_096 - FD_RESERVE) // 2
    assert connections_cap(100, 1_024) == 100
    with pytest.raises(StartupError):
        connections_cap(8_192, FD_RESERVE + 2 * CONNECTIONS_MIN - 2)


def peer_downs(c: Consortium) -> list[dict[str, object]]:
    out = []
    for bank in c.banks():
        path = c.node_dir(bank) / "events.log"
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["event"] == "peer_down":
                out.append(record)
    return out


def test_idle_peer_links_with_a_short_keepalive_stay_up(tmp_path: Path) -> None:
    """Before the fix, the servers allowed one ping per 5 minutes without data: with 500 ms
    keepalives every link got GOAWAY too_many_pings at its 4th ping (~2 s) and re-dialled."""
    keepalive_ms = 500
    limits = {"keepalive_ms": keepalive_ms, "keepalive_timeout_ms": 2_000}
    with running_consortium(tmp_path / "consortium", limits=limits) as c:
        idle_s = 16 * keepalive_ms / 1000  # past the 3 strikes gRPC allows, several times over
        deadline = time.monotonic() + idle_s
        while time.monotonic() < deadline:
            downs = peer_downs(c)
            assert not downs, f"peer links went down on an idle consortium: {downs[:3]}"
            time.sleep(0.1)  # the idle period itself is the test; this only fails early
        assert not peer_downs(c)
        for bank in c.banks():
            err = (c.node_dir(bank) / "stderr.log").read_text(errors="replace")
            assert "too_many_pings" not in err
            st = c.node_status(bank)
            assert st is not None and all(p.up for p in st.peers)
