#!/usr/bin/env python3
"""Attack run: bounded, seeded attacks on a local consortium while a canary client transfers
every 100 ms, then the same independent checks as chaos (scripts/audit.py).

Starts a fresh consortium (or attaches to a running one with --dir), opens and funds one
account per bank, and starts the canary: one client process that transfers 1 minor unit
between two of them through the SDK every 100 ms and records each latency. Then, one after
the other, each attack for --seconds (after a short baseline without attack):

  keyless_spam      envelopes with no signature at all, and transfers from unknown accounts
                    signed by random unknown keys, through SubmitBatch (one caller per node)
                    and SubmitStream, as fast as they go, at most --spam-count envelopes
  vote_flood        --streams raw ReplicaService Stream calls to every node, each sending
                    PeerFrames of 500 Prepares and Commits with forged signatures (random 64
                    bytes; signer a real replica index; the node's current view and sequences)
  oversized         per node, a Stream of PeerMessages carrying a forged PrePrepare and a
                    --batch-mb batch of junk, and ForwardTransactions of junk envelopes of the
                    same total size, back to back
  idle_connections  --idle-connections silent TCP connections to every node (half on its API
                    port, half on its replica port, a few with a half-sent HTTP/2 preface),
                    re-opened as the node closes them

The attacker is a byzantine member: its replica-port attacks present the last bank's own node
certificate, since an outsider's would not get past the mutual-TLS handshake (tests/node/
test_tls.py shows that); API-port attacks are any client's (server-authenticated TLS).
--insecure starts the consortium plaintext.

Every attack runs in its own process, bounded in time and count. Meanwhile the run samples each
node's resident memory (/proc/PID/status VmRSS, every 200 ms) and times a new client's
GetStatus on every node (a fresh channel each time, every 500 ms). After each attack it waits
for the nodes to agree on one height again. At the end the canary stops and scripts/audit.py
checks every node without trusting it: the canary's acknowledged transfers present everywhere
with their result (lost), no id executed twice (duplicated), identical chains
(divergent_nodes), conservation per asset.

Per attack the report gives the canary's p50/p99/max latency in ms (transfers started during
the attack), each node's peak RSS in MB, what the attacker got admitted (keyless_spam: items
accepted at admission, and how many of a sample of those ids the ledger has as transactions),
view changes (highest view after minus before) and whether a node was left alone in a higher
view, new-client GetStatus p99, and nodes that died. An attack held when the canary's p99 is
under 1 s, no node died, and (keyless_spam) nothing was admitted.

    scripts/attack.py --banks 4 --seconds 10 --seed 7 --json
    scripts/attack.py --dir consortium --attacks vote_flood --seconds 30

Exit status 0 when every attack held and every check is zero, 1 otherwise, 2 when the run
could not be made. --json ends the output with one JSON line of the results.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import multiprocessing as mp
import random
import secrets
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import functools  # noqa: E402

import grpc  # noqa: E402
from audit import audit  # noqa: E402
from chaos import Chaos, Stats, settle, setup_accounts  # noqa: E402
from consortium import Consortium, exit_cleanly_on_sigterm  # noqa: E402

from client.models import Committed  # noqa: E402
from client.sdk import LedgerClient  # noqa: E402
from client.tx import LegSpec, TxBuilder  # noqa: E402
from ledger import readtoken, tls  # noqa: E402
from ledger.crypto import SigningKey, load_key  # noqa: E402
from ledger.genesis import load_genesis  # noqa: E402
from ledger.v1 import api_pb2, api_pb2_grpc, consensus_pb2, tx_pb2  # noqa: E402
from node.__main__ import raise_open_files_limit  # noqa: E402

ATTACKS = ("keyless_spam", "vote_flood", "oversized", "idle_connections")
CANARY_PERIOD_S = 0.1
CANARY_P99_MS_MAX = 1_000
BASELINE_S_MAX = 3.0
RSS_PERIOD_S = 0.2
PROBE_PERIOD_S = 0.5
SPAM_BATCH = 500  # envelopes per SubmitBatch request
VOTES_PER_FRAME = 500  # under the 1,024 a frame may hold
SAMPLE_IDS_MAX = 2_000  # admitted attacker ids looked up with GetTransaction afterwards
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SERVICE = "ledger.v1.ReplicaService"
BIG_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 64 << 20)]


def log(msg: str) -> None:
    print(msg, flush=True)


def _raw(b: bytes) -> bytes:
    return b


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the canary -----------------------------------------------------------------------------


def canary_main(
    genesis_path: str,
    accounts: list[tuple[str, str]],
    asset: str,
    out_path: str,
    stop: EventType,
    insecure: bool = False,
) -> None:
    """Transfer 1 minor unit back and forth between two accounts every CANARY_PERIOD_S; one
    JSON line per transfer: start time, latency, outcome, tx id, result code."""
    (a, a_seed), (b, b_seed) = accounts
    keys = {a: SigningKey(bytes.fromhex(a_seed)), b: SigningKey(bytes.fromhex(b_seed))}
    client = LedgerClient(
        genesis_path, timeout_s=10.0, call_timeout_s=2.0, receipt_wait_s=3.0, insecure=insecure
    )
    k = 0
    with open(out_path, "w") as out:
        while not stop.is_set():
            src, dst = (a, b) if k % 2 == 0 else (b, a)
            k += 1
            t0 = time.time()
            tx = client.tx.transfer([LegSpec(src, dst, asset, 1)]).signed_by(keys[src])
            outcome = client.submit(tx)
            ms = (time.time() - t0) * 1000
            committed = isinstance(outcome, Committed)
            code = int(outcome.result.code) if isinstance(outcome, Committed) else None
            row = {"t": t0, "ms": round(ms, 1), "committed": committed, "code": code, "tx": tx.tx_id.hex()}
            out.write(json.dumps(row) + "\n")
            out.flush()
            stop.wait(max(0.0, t0 + CANARY_PERIOD_S - time.time()))  # the canary's pace
    client.close()


# --- the attacks (each in its own process) --------------------------------------------------


@dataclass(frozen=True)
class AttackPlan:
    kind: str
    genesis_path: str
    seed: int
    seconds: float
    spam_count: int
    streams: int
    batch_bytes: int
    idle_connections: int
    out_path: str
    insecure: bool = False  # plaintext consortium
    attacker_cert: str = ""  # the byzantine member's node certificate and key (PEM files)
    attacker_key: str = ""


@functools.cache
def _attacker(plan: AttackPlan) -> tuple[Any, Any]:
    """(genesis, identity) for plan's channels; identity None when plaintext."""
    genesis = load_genesis(Path(plan.genesis_path))
    if plan.insecure:
        return genesis, None
    return genesis, tls.load_identity(Path(plan.attacker_cert), Path(plan.attacker_key))


def _channel(plan: AttackPlan, address: str, options: tls.ChannelOptions = ()) -> grpc.Channel:
    genesis, identity = _attacker(plan)
    return tls.channel(genesis, address, options, insecure=plan.insecure, identity=identity)


def attack_main(plan: AttackPlan) -> None:
    raise_open_files_limit()  # thousands of sockets for idle_connections
    rng = random.Random(plan.seed)
    run = {
        "keyless_spam": keyless_spam,
        "vote_flood": vote_flood,
        "oversized": oversized,
        "idle_connections": idle_connections,
    }[plan.kind]
    result = run(plan, rng)
    Path(plan.out_path).write_text(json.dumps(result))


def keyless_spam(plan: AttackPlan, rng: random.Random) -> dict[str, Any]:
    genesis = load_genesis(Path(plan.genesis_path))
    builder = TxBuilder(genesis.chain_id, genesis.limits)
    asset = genesis.assets[0].asset
    strangers = [SigningKey(rng.randbytes(32)) for _ in range(16)]  # keys the ledger never saw
    deadline = time.monotonic() + plan.seconds  # making the envelopes is part of the attack
    lock = threading.Lock()
    made = 0
    sent = accepted = 0
    accepted_ids: list[str] = []

    def next_request() -> api_pb2.SubmitBatchRequest | None:
        """SPAM_BATCH fresh envelopes, alternately unsigned and signed by a stranger."""
        nonlocal made
        with lock:
            if made >= plan.spam_count or time.monotonic() >= deadline:
                return None
            start, made = made, min(made + SPAM_BATCH, plan.spam_count)
            nonce_seed = rng.randbytes(8)
        envelopes = []
        for i in range(start, made):
            tx = builder.transfer(
                [LegSpec(f"ghost-{i:x}", "ghost-sink", asset, 1)], nonce=nonce_seed + i.to_bytes(8, "big")
            )
            if i % 2:
                tx = tx.signed_by(strangers[i % len(strangers)])
            envelopes.append(tx.envelope())
        return api_pb2.SubmitBatchRequest(envelopes=envelopes)

    def count(resp: api_pb2.SubmitBatchResponse) -> None:
        nonlocal sent, accepted
        with lock:
            sent += len(resp.items)
            for item in resp.items:
                if item.accepted:
                    accepted += 1
                    if len(accepted_ids) < SAMPLE_IDS_MAX:
                        accepted_ids.append(item.tx_id.hex())

    def batch_caller(address: str) -> None:
        with _channel(plan, address, BIG_OPTIONS) as ch:
            stub = api_pb2_grpc.LedgerServiceStub(ch)
            while (req := next_request()) is not None:
                with contextlib.suppress(grpc.RpcError):
                    count(stub.SubmitBatch(req, timeout=max(0.5, deadline - time.monotonic() + 2)))

    def stream_caller(address: str) -> None:
        def requests() -> Iterator[api_pb2.SubmitBatchRequest]:
            while (req := next_request()) is not None:
                yield req

        with _channel(plan, address, BIG_OPTIONS) as ch:
            stub = api_pb2_grpc.LedgerServiceStub(ch)
            call = stub.SubmitStream(requests(), timeout=max(1.0, deadline - time.monotonic() + 2))
            with contextlib.suppress(grpc.RpcError):
                for reply in call:
                    if reply.HasField("submitted"):
                        count(reply.submitted)
                    if time.monotonic() > deadline:
                        call.cancel()  # type: ignore[no-untyped-call] # receipts of what was admitted: not waited for
                        break

    threads = [threading.Thread(target=batch_caller, args=(m.api_address,)) for m in genesis.members]
    threads.append(threading.Thread(target=stream_caller, args=(genesis.members[0].api_address,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"sent": sent, "accepted": accepted, "accepted_ids": accepted_ids}


def _forged(
    body: consensus_pb2.ConsensusMessage, signer: int, rng: random.Random
) -> consensus_pb2.SignedMessage:
    return consensus_pb2.SignedMessage(
        body=body.SerializeToString(), signer=signer, signature=rng.randbytes(64)
    )


def _statuses(plan: AttackPlan) -> dict[int, api_pb2.NodeStatus]:
    out = {}
    for m in load_genesis(Path(plan.genesis_path)).members:
        with _channel(plan, m.api_address) as ch, contextlib.suppress(grpc.RpcError):
            out[m.replica] = api_pb2_grpc.LedgerServiceStub(ch).GetStatus(
                api_pb2.GetStatusRequest(), timeout=2
            )
    return out


def _stream(plan: AttackPlan, address: str, frames: Iterator[bytes], deadline: float) -> None:
    """Push frames on one raw ReplicaService Stream until they run out or the deadline."""
    with _channel(plan, address, BIG_OPTIONS) as ch:
        call = ch.stream_unary(f"/{SERVICE}/Stream", request_serializer=_raw, response_deserializer=_raw)
        with contextlib.suppress(grpc.RpcError):
            call(frames, timeout=max(1.0, deadline - time.monotonic() + 1))


def vote_flood(plan: AttackPlan, rng: random.Random) -> dict[str, Any]:
    genesis = load_genesis(Path(plan.genesis_path))
    statuses = _statuses(plan)
    sent = [0]
    lock = threading.Lock()

    def frames_for(target: int, seed: int) -> list[bytes]:
        r = random.Random(seed)
        st = statuses.get(target)
        view = int(st.view) if st is not None else 0
        base = int(st.last_executed) if st is not None else 0
        signers = [m.replica for m in genesis.members if m.replica != target]
        out = []
        for _ in range(4):
            messages = []
            for _ in range(VOTES_PER_FRAME):
                signer = r.choice(signers)
                seq, digest = base + r.randint(1, 100), r.randbytes(32)
                if r.random() < 0.5:
                    body = consensus_pb2.ConsensusMessage(
                        prepare=consensus_pb2.Prepare(view=view, sequence=seq, digest=digest, replica=signer)
                    )
                else:
                    body = consensus_pb2.ConsensusMessage(
                        commit=consensus_pb2.Commit(view=view, sequence=seq, digest=digest, replica=signer)
                    )
                messages.append(
                    consensus_pb2.PeerMessage(message=_forged(body, signer, r)).SerializeToString()
                )
            out.append(consensus_pb2.PeerFrame(messages=messages).SerializeToString())
        return out

    def flood(address: str, frames: list[bytes]) -> None:
        def gen() -> Iterator[bytes]:
            i = 0
            while time.monotonic() < deadline:
                yield frames[i % len(frames)]
                i += 1
                with lock:
                    sent[0] += VOTES_PER_FRAME

        _stream(plan, address, gen(), deadline)

    threads = [
        threading.Thread(target=flood, args=(m.replica_address, frames_for(m.replica, rng.getrandbits(32))))
        for m in genesis.members
        for _ in range(plan.streams)
    ]
    deadline = time.monotonic() + plan.seconds  # the frames are made: the flood starts now
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"forged_votes_sent": sent[0]}


def oversized(plan: AttackPlan, rng: random.Random) -> dict[str, Any]:
    genesis = load_genesis(Path(plan.genesis_path))
    statuses = _statuses(plan)
    junk_bytes = 8 << 10
    per_message = max(1, plan.batch_bytes // junk_bytes)
    # ForwardTransactions drops a Forward of more than submit_batch_max (1,000) envelopes unread.
    forward_count = min(per_message, 1_000)
    junk = [rng.randbytes(junk_bytes) for _ in range(per_message)]
    deadline = time.monotonic() + plan.seconds
    counts = {"oversized_peer_messages": 0, "oversized_forwards": 0}
    lock = threading.Lock()

    def peer_frames(target: int) -> Iterator[bytes]:
        st = statuses.get(target)
        view = int(st.view) if st is not None else 0
        signer = view % genesis.n  # the primary's index: a pre-prepare "from" the primary
        while time.monotonic() < deadline:
            seq = (int(st.last_executed) if st is not None else 0) + rng.randint(1, 50)
            body = consensus_pb2.ConsensusMessage(
                pre_prepare=consensus_pb2.PrePrepare(
                    view=view, sequence=seq, digest=rng.randbytes(32), header=rng.randbytes(200)
                )
            )
            msg = consensus_pb2.PeerMessage(
                message=_forged(body, signer, rng), batch=consensus_pb2.Batch(envelopes=junk)
            )
            yield consensus_pb2.PeerFrame(messages=[msg.SerializeToString()]).SerializeToString()
            with lock:
                counts["oversized_peer_messages"] += 1

    def forwards(address: str) -> None:
        request = consensus_pb2.Forward(
            envelopes=[tx_pb2.Envelope(body=j) for j in junk[:forward_count]]
        ).SerializeToString()
        with _channel(plan, address, BIG_OPTIONS) as ch:
            call = ch.unary_unary(
                f"/{SERVICE}/ForwardTransactions", request_serializer=_raw, response_deserializer=_raw
            )
            while time.monotonic() < deadline:
                with contextlib.suppress(grpc.RpcError):
                    call(request, timeout=max(0.5, deadline - time.monotonic() + 1))
                with lock:
                    counts["oversized_forwards"] += 1

    threads = []
    for m in genesis.members:
        threads.append(
            threading.Thread(target=_stream, args=(plan, m.replica_address, peer_frames(m.replica), deadline))
        )
        threads.append(threading.Thread(target=forwards, args=(m.replica_address,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts | {"message_bytes": per_message * junk_bytes}


def idle_connections(plan: AttackPlan, rng: random.Random) -> dict[str, Any]:
    """Hold plan.idle_connections silent connections per node, re-opening what the node closes
    (at most 10x as many opens in all, so the attack stays bounded)."""
    genesis = load_genesis(Path(plan.genesis_path))
    targets = []
    for m in genesis.members:
        for port in (m.api_port, m.replica_port):
            targets.append((m.host, port))
    per_target = max(1, plan.idle_connections // 2)
    opens_max = 10 * per_target * len(targets)
    opened = closed_by_node = refused = 0
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + plan.seconds

    def open_one(target: tuple[str, int]) -> None:
        nonlocal opened, refused
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        if s.connect_ex(target) not in (0, errno.EINPROGRESS):
            s.close()
            refused += 1
            return
        opened += 1
        if rng.random() < 0.01:
            with contextlib.suppress(OSError):
                s.send(H2_PREFACE[:10])  # a half-sent preface
        sel.register(s, selectors.EVENT_READ, target)

    try:
        for _ in range(per_target):
            for target in targets:
                open_one(target)
        while time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    continue  # the node's SETTINGS or GOAWAY: read, never answered
                sel.unregister(s)
                s.close()
                closed_by_node += 1
                if opened < opens_max:
                    open_one(key.data)
    finally:
        for key in list(sel.get_map().values()):
            if isinstance(key.fileobj, socket.socket):
                key.fileobj.close()
        sel.close()
    return {"connections_opened": opened, "closed_by_node": closed_by_node, "connect_failed": refused}


# --- watching the nodes ---------------------------------------------------------------------


class Watch:
    """Samples every node's RSS and a new client's GetStatus latency, tagged by phase."""

    def __init__(self, c: Consortium, banks: list[str]) -> None:
        self.c = c
        self.banks = banks
        self.pids = {b: c.pid(b) for b in banks}
        self.phase = "setup"
        self.rss_kb: dict[str, dict[str, int]] = {}
        self.died: dict[str, list[str]] = {}
        self.probe_ms: dict[str, list[float]] = {}
        self.probe_failed: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._rss, daemon=True),
            threading.Thread(target=self._probe, daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def _rss(self) -> None:
        while not self._stop.wait(RSS_PERIOD_S):
            phase = self.phase
            peaks = self.rss_kb.setdefault(phase, {})
            for bank, pid in self.pids.items():
                kb = None
                with contextlib.suppress(OSError, ValueError):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            kb = int(line.split()[1])
                if kb is None:
                    died = self.died.setdefault(phase, [])
                    if bank not in died and all(bank not in d for d in self.died.values()):
                        died.append(bank)
                    continue
                peaks[bank] = max(peaks.get(bank, 0), kb)

    def _probe(self) -> None:
        addresses = {b: self.c.member(b).api_address for b in self.banks}
        while not self._stop.wait(PROBE_PERIOD_S):
            for address in addresses.values():
                phase = self.phase
                t0 = time.monotonic()
                with self.c.channel(address) as ch:  # a new client: a new connection
                    try:
                        api_pb2_grpc.LedgerServiceStub(ch).GetStatus(api_pb2.GetStatusRequest(), timeout=2.0)
                        self.probe_ms.setdefault(phase, []).append((time.monotonic() - t0) * 1000)
                    except grpc.RpcError:
                        self.probe_failed[phase] = self.probe_failed.get(phase, 0) + 1


def canary_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def phase_report(
    name: str,
    window: tuple[float, float],
    rows: list[dict[str, Any]],
    watch: Watch,
    views: tuple[int, int, bool],
) -> dict[str, Any]:
    lat = [float(r["ms"]) for r in rows if window[0] <= r["t"] < window[1]]
    probes = watch.probe_ms.get(name, [])
    return {
        "canary_transfers": len(lat),
        "canary_failed": sum(1 for r in rows if window[0] <= r["t"] < window[1] and not r["committed"]),
        "canary_p50_ms": round(statistics.median(lat), 1) if lat else None,
        "canary_p99_ms": round(percentile(lat, 0.99), 1) if lat else None,
        "canary_max_ms": round(max(lat), 1) if lat else None,
        "node_peak_rss_mb": {b: round(kb / 1024, 1) for b, kb in sorted(watch.rss_kb.get(name, {}).items())},
        "new_client_p99_ms": round(percentile(probes, 0.99), 1) if probes else None,
        "new_client_failed": watch.probe_failed.get(name, 0),
        "view_changes": views[1] - views[0],
        "lone_higher_view": views[2],
        "nodes_died": watch.died.get(name, []),
    }


def converge(chaos: Chaos, timeout_s: float = 60.0) -> float | None:
    """Seconds until every node answers and all are within 2 blocks of each other (the canary
    keeps committing, so they never stand still); None past the bound."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        h = chaos.heights()
        if len(h) == len(chaos.banks) and max(h.values()) - min(h.values()) <= 2:
            return round(time.monotonic() - t0, 2)
        time.sleep(0.1)  # polling remote nodes' status: there is no event to await
    return None


def views_now(chaos: Chaos) -> tuple[int, bool]:
    """The highest view any node reports, and whether one sits above the active view."""
    st = chaos.statuses()
    active = Chaos.active_view(st)
    top = max((int(s.view) for s in st.values()), default=0)
    return top, top > active


def attacker_found(c: Consortium, bank: str, ids: list[str]) -> int:
    """How many of the attacker's admitted ids the node has as transactions (executed), asked
    with a member's operator key (it may read any transaction); NOT_FOUND is the only answer
    taken for "not there": any other error fails the run rather than pass for a clean result."""
    genesis = c.genesis()
    operator = load_key(c.operator_key_path(genesis.members[0].member_id)).key
    found = 0
    with c.ledger_channel(bank) as ch:
        stub = api_pb2_grpc.LedgerServiceStub(ch)
        for h in ids:
            tx_id = bytes.fromhex(h)
            md = readtoken.metadata(operator, genesis.chain_id, "GetTransaction", readtoken.tx_scope(tx_id))
            try:
                stub.GetTransaction(api_pb2.GetTransactionRequest(tx_id=tx_id), timeout=5, metadata=md)
                found += 1
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
    return found


def held(report: dict[str, Any]) -> bool:
    p99 = report["canary_p99_ms"]
    return (
        p99 is not None
        and p99 < CANARY_P99_MS_MAX
        and not report["nodes_died"]
        and not report.get("attacker_admitted")
    )


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    attached = args.dir is not None
    c = Consortium(args.dir if attached else workdir / "consortium")
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    canary: Any = None
    watch: Watch | None = None
    started = time.monotonic()
    try:
        if attached:
            if not c.exists():
                raise RuntimeError(f"--dir {c.dir}: no consortium there (scripts/consortium.py up)")
            down = [b for b in c.banks() if c.pid(b) is None]
            if down:
                raise RuntimeError(f"--dir {c.dir}: not running: {', '.join(down)}")
        else:
            c.up(banks=args.banks, insecure=args.insecure)
        genesis = c.genesis()
        banks = [m.member_id for m in genesis.members]
        chaos = Chaos(c, genesis, rng, Stats(), workdir / "faults.log")
        log(f"attack: {len(banks)} banks in {c.dir}; seed {args.seed}")
        accounts = setup_accounts(c, genesis, 1, tag=f"canary-{secrets.token_hex(3)}")
        canary_path = workdir / "canary.jsonl"
        canary = ctx.Process(
            target=canary_main,
            args=(
                str(c.genesis_path),
                accounts[:2],
                genesis.assets[0].asset,
                str(canary_path),
                stop,
                c.insecure,
            ),
            daemon=True,
        )
        canary.start()
        watch = Watch(c, banks)
        watch.start()
        phases: list[tuple[str, tuple[float, float], tuple[int, int, bool], dict[str, Any]]] = []

        def timed(name: str, body: Any) -> None:
            assert watch is not None
            v0, _ = views_now(chaos)
            watch.phase = name
            t0 = time.time()
            extra = body()
            t1 = time.time()
            watch.phase = f"{name}:after"
            extra["agree_after_s"] = converge(chaos)
            v1, lone = views_now(chaos)
            phases.append((name, (t0, t1), (v0, v1, lone), extra))

        def baseline() -> dict[str, Any]:
            stop.wait(min(BASELINE_S_MAX, args.seconds))  # the canary alone, for reference
            return {}

        # The canary's first transfer opens its channels; the baseline starts after it.
        deadline = time.monotonic() + 30
        while not canary_rows(canary_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        timed("baseline", baseline)
        for kind in args.attacks:
            plan = AttackPlan(
                kind=kind,
                genesis_path=str(c.genesis_path),
                seed=rng.getrandbits(32),
                seconds=args.seconds,
                spam_count=args.spam_count,
                streams=args.streams,
                batch_bytes=int(args.batch_mb * (1 << 20)),
                idle_connections=args.idle_connections,
                out_path=str(workdir / f"attack-{kind}.json"),
                insecure=c.insecure,
                attacker_cert=str(c.bank_files(banks[-1]).tls_cert),
                attacker_key=str(c.bank_files(banks[-1]).tls_key),
            )

            def attack(plan: AttackPlan = plan) -> dict[str, Any]:
                proc = ctx.Process(target=attack_main, args=(plan,), daemon=True)
                proc.start()
                proc.join(timeout=plan.seconds + 60)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=10)
                path = Path(plan.out_path)
                out: dict[str, Any] = (
                    json.loads(path.read_text()) if path.exists() else {"attacker_failed": True}
                )
                return out

            log(f"attack: {kind} for {args.seconds:g}s")
            timed(kind, attack)
        stop.set()
        canary.join(timeout=30)
        watch.stop()
        if not settle(chaos):
            log("  ! nodes did not settle to one height")
        rows = canary_rows(canary_path)
        attacks: dict[str, Any] = {}
        for name, window, views, extra in phases:
            report = phase_report(name, window, rows, watch, views)
            if name == "keyless_spam":
                ids = extra.pop("accepted_ids", [])
                report["attacker_sent"] = extra.pop("sent", 0)
                report["attacker_admitted"] = extra.pop("accepted", 0)
                alive = [b for b in banks if c.pid(b) is not None]
                report["attacker_ids_checked"] = len(ids)
                report["attacker_ids_found"] = attacker_found(c, alive[0], ids) if alive and ids else 0
            report.update(extra)
            if name != "baseline":
                report["held"] = held(report)
            attacks[name] = report
            log(f"  {name}: {json.dumps(report)}")
        acknowledged = {bytes.fromhex(r["tx"]): int(r["code"]) for r in rows if r["committed"]}
        auditor = load_key(c.operator_key_path(genesis.members[0].member_id)).key
        endpoints = {m.member_id: m.api_address for m in genesis.members}
        audit_report = audit(genesis, endpoints, auditor, acknowledged, insecure=c.insecure)
        for problem in audit_report.problems[:20]:
            log(f"  ! {problem}")
        baseline_report = attacks.pop("baseline")
        died = sorted({b for names in watch.died.values() for b in names})
        return {
            "banks": len(banks),
            "seed": args.seed,
            "seconds_per_attack": args.seconds,
            "baseline": baseline_report,
            "attacks": attacks,
            "keyless_admitted": attacks.get("keyless_spam", {}).get("attacker_admitted", 0),
            "nodes_died": died,
            "canary_acknowledged": len(acknowledged),
            "lost": audit_report.lost,
            "duplicated": audit_report.duplicated,
            "divergent_nodes": audit_report.divergent_nodes,
            "conservation_violations": audit_report.conservation_violations,
            "replay_mismatches": audit_report.replay_mismatches + audit_report.certificate_failures,
            "unreachable": len(audit_report.unreachable),
            "height": audit_report.audited_height,
            "held": all(a["held"] for a in attacks.values()),
            "seconds": round(time.monotonic() - started, 1),
        }
    finally:
        stop.set()
        if watch is not None:
            watch.stop()
        if canary is not None and canary.is_alive():
            canary.terminate()
            canary.join(timeout=5)
        if not attached:
            for line in c.down():
                log(f"attack: {line}")


def passed(result: dict[str, Any]) -> bool:
    zero = (
        "lost",
        "duplicated",
        "divergent_nodes",
        "conservation_violations",
        "replay_mismatches",
        "unreachable",
    )
    return bool(result["held"]) and not result["nodes_died"] and all(result[k] == 0 for k in zero)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--banks", type=int, default=4, help="banks of a fresh consortium: 4, 7, ...")
    parser.add_argument(
        "--dir", type=Path, default=None, help="attach to the running consortium in this directory"
    )
    parser.add_argument("--seed", type=int, default=None, help="fixes the attacks (default: random)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each attack (default 10)")
    parser.add_argument(
        "--attacks",
        default=",".join(ATTACKS),
        help=f"comma-separated subset of {','.join(ATTACKS)} (default all)",
    )
    parser.add_argument(
        "--spam-count", type=int, default=200_000, help="keyless envelopes at most (default 200,000)"
    )
    parser.add_argument("--streams", type=int, default=4, help="forged-vote streams per node (default 4)")
    parser.add_argument(
        "--batch-mb", type=float, default=8.0, help="size of each oversized message in MB (default 8)"
    )
    parser.add_argument(
        "--idle-connections", type=int, default=2_000, help="silent connections held per node (default 2,000)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where logs go (default: a fresh temp dir)"
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line of results")
    parser.add_argument("--insecure", action="store_true", help="a plaintext consortium (debugging only)")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    args.attacks = [a for a in args.attacks.split(",") if a]
    unknown = set(args.attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attack(s) {sorted(unknown)}; choose from {','.join(ATTACKS)}")
    if (
        args.seconds <= 0
        or args.spam_count < 0
        or args.streams < 1
        or args.batch_mb <= 0
        or args.idle_connections < 0
    ):
        parser.error("--seconds, --batch-mb must be > 0, --streams >= 1, counts >= 0")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    try:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            result = run(args, args.workdir)
        else:
            with tempfile.TemporaryDirectory(prefix="attack-") as tmp:
                result = run(args, Path(tmp))
    except Exception as exc:  # the run could not be made: say why, exit 2
        log(f"attack: could not run: {exc!r}")
        return 2
    ok = passed(result)
    log(
        f"attack {'HELD' if ok else 'FAILED'}: "
        + " ".join(f"{k}={v}" for k, v in result.items() if k != "attacks")
    )
    if args.json:
        print(json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
