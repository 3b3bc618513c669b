#!/usr/bin/env python3
"""Every refused connection of issue 17 (items 2 and 8), tried against live nodes: what the
caller got and what the node logged and counted. Prints the table of docs/SECURITY.md.

Starts a 4-bank consortium over mutual TLS in a temp dir (and, for "TLS to a plaintext port",
one node of a plaintext consortium), then tries each bad connection on BANK-C: certificates of
an unknown CA, of the wrong member, expired, not yet valid, none; plaintext to a TLS port, TLS
to a plaintext port; a truncated handshake; 500 silent connections. For each: the status the
caller got, the node's log line for it (events.log for the per-call identity checks of
node/peerauth.py; gRPC core's stderr line for a refused handshake, which happens in C before
any Python runs), and the counter it raised (GetStatus counters). Then every node must still
commit (accounts opened and funded at every bank) and agree on the height.

    python scripts/tls_refusals.py            the Markdown table
    python scripts/tls_refusals.py --json     one JSON object per case, then a summary line

Exit status 0 when every case was refused as expected and the nodes kept committing, else 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import selectors
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from chaos import setup_accounts  # noqa: E402
from consortium import Consortium  # noqa: E402

from ledger import pki, tls  # noqa: E402
from ledger.v1 import api_pb2, api_pb2_grpc, consensus_pb2  # noqa: E402

TARGET = "BANK-C"
CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(20)  # then silence
IDLE_CONNECTIONS = 500
LOG_WAIT_S = 3.0  # gRPC core writes its handshake line on its own thread, soon after the refusal


@dataclass
class Row:
    case: str
    port: str
    caller_got: str
    node_logged: str
    counted: str
    refused: bool


def _status(fn: Callable[[], object]) -> tuple[grpc.StatusCode | None, str]:
    try:
        fn()
    except grpc.RpcError as exc:
        code = exc.code()
        details = exc.details() or ""
        return code, details
    return None, ""


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Target:
    """The node under test: its log files read from an offset, its counters diffed."""

    def __init__(self, c: Consortium, bank: str) -> None:
        self.c = c
        self.bank = bank
        self.member = c.member(bank)
        self._stderr = c.node_dir(bank) / "stderr.log"
        self._events = c.node_dir(bank) / "events.log"
        self.mark()

    def mark(self) -> None:
        self._err_at = self._stderr.stat().st_size
        self._ev_at = self._events.stat().st_size
        self._counters = self.counters()

    def counters(self) -> dict[str, int]:
        st = self.c.node_status(self.bank, timeout_s=5)
        assert st is not None, f"{self.bank} does not answer"
        return dict(st.counters)

    def new_stderr(self) -> list[str]:
        with self._stderr.open("rb") as f:
            f.seek(self._err_at)
            return f.read().decode(errors="replace").splitlines()

    def new_events(self, name: str) -> list[dict[str, object]]:
        with self._events.open("rb") as f:
            f.seek(self._ev_at)
            rows = [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
        return [r for r in rows if r.get("event") == name]

    def logged(self, handshake: bool) -> str:
        """What the node logged since mark(): its peer_refused or tls_refused event(s) (the
        latter once the node has read gRPC's line: it polls once a second), and gRPC core's
        handshake lines on stderr."""
        deadline = time.monotonic() + (LOG_WAIT_S if handshake else 0.3)
        while True:
            lines = [ln for ln in self.new_stderr() if "andshake" in ln]
            events = self.new_events("peer_refused") + self.new_events("tls_refused")
            if ((events or not handshake) and (lines or events)) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        out = []
        if events:
            e = events[0]
            detail = f"cn={e['cn']}" if e["event"] == "peer_refused" else "(first of its reason)"
            out.append(f"events.log ({len(events)} line): {e['event']} reason={e['reason']} {detail}")
        if lines:
            msg = lines[0].split("] ", 1)[-1]
            out.append(f"stderr ({len(lines)} line{'s' * (len(lines) > 1)}): {_short(msg)}")
        return "; ".join(out) or "(nothing)"

    def counted(self, handshake: bool = False) -> str:
        after = self.counters()
        deadline = time.monotonic() + (LOG_WAIT_S if handshake else 0)
        while handshake and after == self._counters and time.monotonic() < deadline:
            time.sleep(0.1)  # the node reads gRPC's line once a second
            after = self.counters()
        moved = {
            k: after[k] - self._counters.get(k, 0)
            for k in sorted(after)
            if ("refused" in k or "rejected" in k) and after[k] != self._counters.get(k, 0)
        }
        return ", ".join(f"{k} +{v}" for k, v in moved.items()) or "-"


def replica_call(
    c: Consortium, address: str, identity: pki.Issued | None, plaintext: bool = False
) -> tuple[grpc.StatusCode | None, str]:
    """Open a Stream on the replica port with this client certificate and send one frame."""
    frame = consensus_pb2.PeerFrame(messages=[b"\x0a\x00"]).SerializeToString()
    with tls.channel(c.genesis(), address, insecure=plaintext, identity=identity) as ch:
        call = ch.stream_unary("/ledger.v1.ReplicaService/Stream", None, None)
        return _status(lambda: call(iter([frame]), timeout=5))


def api_call(channel: grpc.Channel) -> tuple[grpc.StatusCode | None, str]:
    stub = api_pb2_grpc.LedgerServiceStub(channel)
    return _status(lambda: stub.GetStatus(api_pb2.GetStatusRequest(), timeout=5))


def _caller(code: grpc.StatusCode | None, details: str) -> str:
    return "OK (not refused)" if code is None else f"{code.name}: {_short(details, 200)}"


def run_cases(c: Consortium, plain: Consortium) -> list[Row]:
    t = Target(c, TARGET)
    m = t.member
    files = {b: c.bank_files(b) for b in c.banks()}
    ca = {b: pki.Issued(f.ca_key.read_bytes(), f.ca_cert.read_bytes()) for b, f in files.items()}
    now = datetime.datetime.now(datetime.UTC)
    hour = datetime.timedelta(hours=1)
    rows: list[Row] = []

    def case(
        name: str,
        port: str,
        attempt: Callable[[], tuple[grpc.StatusCode | None, str]],
        *,
        handshake: bool,
        times: int = 1,
    ) -> None:
        t.mark()
        results = [attempt() for _ in range(times)]
        code, details = results[0]
        refused = all(r[0] is not None for r in results)
        got = _caller(code, details) + (f" (x{times})" if times > 1 else "")
        rows.append(Row(name, port, got, t.logged(handshake), t.counted(handshake), refused))

    case(
        "outsider: a certificate of an unknown CA (naming BANK-B)",
        "replica",
        lambda: replica_call(
            c, m.replica_address, pki.issue_node_cert(pki.make_ca("BANK-B"), "BANK-B", ("127.0.0.1",))
        ),
        handshake=True,
    )
    case(
        "no client certificate (TLS, server-authenticated only)",
        "replica",
        lambda: replica_call(c, m.replica_address, None),
        handshake=True,
    )
    case(
        "expired certificate (BANK-B's CA), twice",
        "replica",
        lambda: replica_call(
            c,
            m.replica_address,
            pki.issue_node_cert(ca["BANK-B"], "BANK-B", (), not_before=now - 3 * hour, not_after=now - hour),
        ),
        handshake=True,
        times=2,
    )
    case(
        "not-yet-valid certificate (BANK-B's CA)",
        "replica",
        lambda: replica_call(
            c,
            m.replica_address,
            pki.issue_node_cert(ca["BANK-B"], "BANK-B", (), not_before=now + hour, not_after=now + 3 * hour),
        ),
        handshake=True,
    )
    impostor = pki.issue_node_cert(ca["BANK-D"], "BANK-D", (), common_name="BANK-B")
    case(
        "a member presenting another's identity (BANK-D's CA, CN BANK-B), twice",
        "replica",
        lambda: replica_call(c, m.replica_address, impostor),
        handshake=False,
        times=2,
    )
    stranger = pki.issue_node_cert(ca["BANK-B"], "BANK-B", (), common_name="BANK-Z")
    case(
        "wrong member name in the certificate (BANK-B's CA, CN BANK-Z)",
        "replica",
        lambda: replica_call(c, m.replica_address, stranger),
        handshake=False,
    )
    case(
        "plaintext to a TLS port",
        "replica",
        lambda: replica_call(c, m.replica_address, None, plaintext=True),
        handshake=True,
    )

    def plain_api() -> tuple[grpc.StatusCode | None, str]:
        with grpc.insecure_channel(m.api_address) as ch:
            return api_call(ch)

    case("plaintext to a TLS port", "API", plain_api, handshake=True)

    def wrong_trust() -> tuple[grpc.StatusCode | None, str]:
        creds = grpc.ssl_channel_credentials(root_certificates=files["BANK-A"].ca_cert.read_bytes())
        with grpc.secure_channel(
            m.api_address, creds, options=[("grpc.ssl_target_name_override", TARGET)]
        ) as ch:
            return api_call(ch)

    case(
        "client trusting another bank's CA for this node (client refuses the node)",
        "API",
        wrong_trust,
        handshake=True,
    )

    pm = plain.member("BANK-A")
    pt = Target(plain, "BANK-A")

    def tls_to_plain() -> tuple[grpc.StatusCode | None, str]:
        creds = grpc.ssl_channel_credentials(root_certificates=files["BANK-A"].ca_cert.read_bytes())
        with grpc.secure_channel(pm.api_address, creds) as ch:
            return api_call(ch)

    pt.mark()
    code, details = tls_to_plain()
    rows.append(
        Row(
            "TLS to a plaintext port (a node run with --insecure)",
            "API",
            _caller(code, details),
            pt.logged(True),
            pt.counted(),
            code is not None,
        )
    )

    # A truncated handshake: the first bytes of a ClientHello, then silence.
    t.mark()
    limits = c.node_limits(TARGET)
    t0 = time.monotonic()
    with socket.create_connection(
        (m.host, m.replica_port), timeout=limits.handshake_timeout_ms / 1000 + 5
    ) as s:
        s.sendall(CLIENT_HELLO_START)
        try:
            closed = s.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            closed = True
    took = time.monotonic() - t0
    rows.append(
        Row(
            "truncated handshake (11 bytes of a ClientHello, then silence)",
            "replica",
            f"connection closed by the node after {took:.1f}s (handshake_timeout_ms {limits.handshake_timeout_ms})"
            if closed
            else "still open",
            t.logged(True),
            t.counted(),
            closed,
        )
    )

    # 500 silent connections on the API port, while a client calls.
    t.mark()
    socks = [socket.create_connection((m.host, m.api_port)) for _ in range(IDLE_CONNECTIONS)]
    try:
        t0 = time.monotonic()
        with c.ledger_channel(TARGET) as ch:
            code, details = api_call(ch)
        call_ms = (time.monotonic() - t0) * 1000
        gone = closed_within(socks, limits.handshake_timeout_ms / 1000 + 5)
    finally:
        for s in socks:
            s.close()
    rows.append(
        Row(
            f"{IDLE_CONNECTIONS} idle connections (TCP, no bytes)",
            "API",
            f"a client's GetStatus meanwhile: {'OK' if code is None else code.name} in {call_ms:.0f} ms; "
            f"{gone}/{IDLE_CONNECTIONS} closed by the node within handshake_timeout_ms + 5 s",
            t.logged(False),
            t.counted(),
            code is None and gone == IDLE_CONNECTIONS,
        )
    )
    return rows


def closed_within(socks: list[socket.socket], timeout_s: float) -> int:
    """How many of socks the other end closes within timeout_s (read until EOF or reset)."""
    deadline = time.monotonic() + timeout_s
    closed = 0
    with selectors.DefaultSelector() as sel:
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        while closed < len(socks) and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(min(left, 0.2)):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    data = conn.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    closed += 1
                    sel.unregister(conn)
    return closed


def still_commits(c: Consortium) -> tuple[bool, int]:
    """Accounts opened and funded at every bank commit, and every node reaches one height."""
    genesis = c.genesis()
    setup_accounts(c, genesis, 1, tag=f"tls{int(time.time())}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        heights = {b: st.last_executed for b in c.banks() if (st := c.node_status(b)) is not None}
        if len(heights) == genesis.n and len(set(heights.values())) == 1:
            return True, next(iter(heights.values()))
        time.sleep(0.1)
    return False, 0


def markdown(rows: list[Row]) -> str:
    out = ["| case | port | what the caller got | what the node logged | counted |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [r.case, r.port, r.caller_got, r.node_logged, r.counted]
        out.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="JSON lines instead of the Markdown table")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tls-refusals-") as tmp:
        c = Consortium(Path(tmp) / "tls")
        plain = Consortium(Path(tmp) / "plain")
        try:
            c.up(4)
            plain.init(4, insecure=True)
            plain.start("BANK-A")
            deadline = time.monotonic() + 30  # alone it never reaches a quorum (SERVING): it answers
            while plain.node_status("BANK-A") is None and time.monotonic() < deadline:
                time.sleep(0.1)
            rows = run_cases(c, plain)
            committing, height = still_commits(c)
        finally:
            c.down()
            plain.down()
    ok = committing and all(r.refused for r in rows)
    if args.json:
        for r in rows:
            print(json.dumps(asdict(r)))
        print(
            json.dumps(
                {
                    "all_refused": all(r.refused for r in rows),
                    "still_committing": committing,
                    "height": height,
                }
            )
        )
    else:
        print(markdown(rows))
        print(
            f"\nAfterwards every node committed new accounts at every bank and agreed on height {height}."
            if committing
            else "\nThe nodes did NOT keep committing."
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
