#!/usr/bin/env python3
"""End-to-end benchmark of a local consortium through the real gRPC API.

Starts a consortium (or attaches to a running one with --dir), opens accounts at every bank
and funds them, then runs load from client processes. Every transaction is signed before the
timed window (the signing rate is reported apart). Only transactions whose receipt came back
with a verified commit certificate and attestations count.

  closed loop   --clients K            each client keeps --window batches in flight
  open loop     --rate R               fixed offered load (tx/s), latency measured from each
                                       transaction's scheduled send time (no coordinated omission)
  mix           --multileg F           this fraction are two-leg payment-versus-payment transfers
                                       (two payers, two assets, both legs or neither); default 0
                --escrow F             this fraction are escrow creates: the payer's funds held for
                                       the payee, returned by the ledger when the escrow expires
                                       (10 minutes after the run); default 0

    scripts/bench.py --clients 4 --duration 30 --json
    scripts/bench.py --rate 1500 --duration 30 --json

Reports committed transfers/s, p50/p99/p99.9 submit-to-receipt latency and where it goes
(SubmitBatch answered; scheduled -> block proposed; proposed -> verified receipt), per-node RSS
and its growth over the window (also the anonymous part alone: RSS counts the LMDB file's pages
mapped in, which grow with the chain), CPU seconds per 1,000 transfers per node (and for the load clients), batch sizes.
The last line with --json is one JSON object. --plot FILE.png draws throughput over time and
the latency distribution (needs matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from consortium import Consortium, exit_cleanly_on_sigterm  # noqa: E402

from client.models import Committed  # noqa: E402
from client.sdk import LedgerClient  # noqa: E402
from client.tx import LegSpec, TxBuilder  # noqa: E402
from client.verify import ReceiptError, VerificationCache, verify_receipt  # noqa: E402
from ledger import tls  # noqa: E402
from ledger.crypto import SigningKey, load_key  # noqa: E402
from ledger.genesis import Genesis, load_genesis  # noqa: E402
from ledger.v1 import api_pb2, api_pb2_grpc, tx_pb2  # noqa: E402

MESSAGE_BYTES_MAX = 64 << 20
FUND_MINOR = 10**12
AMOUNT_MINOR_MAX = 100
# Open loop sends what is due every tick; latency still counts from each scheduled time, so a
# coarser tick costs at most one tick of latency and saves an RPC pair per few transactions.
OPEN_LOOP_TICK_S = 0.02
ESCROW_AFTER_RUN_S = 600  # --escrow: creates expire this long after the run would end if signing took no time


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- setup ---------------------------------------------------------------------------------


def open_and_fund(c: Consortium, genesis: Genesis, per_bank: int) -> list[tuple[str, str, str]]:
    """Open per_bank accounts at each bank, fund each with its bank's asset. (id, asset, seed)."""
    client = LedgerClient(genesis, timeout_s=60.0, insecure=c.insecure)
    operators = {m.member_id: load_key(c.operator_key_path(m.member_id)).key for m in genesis.members}
    accounts: list[tuple[str, str, str]] = []
    # A tag per run, so that a second run attached to the same consortium opens fresh accounts.
    run_tag = os.urandom(3).hex()
    try:
        txs = []
        for m in genesis.members:
            asset = m.assets[0]
            for i in range(per_bank):
                owner = SigningKey.generate()
                account_id = f"{m.member_id.lower()}-b{i}-{run_tag}"
                accounts.append((account_id, asset, owner.seed.hex()))
                txs.append(
                    client.tx.open_account(m.member_id, account_id, owner.public_key).signed_by(
                        operators[m.member_id]
                    )
                )
        _submit_all(client, txs, "open accounts")
        mints = []
        for account_id, asset, _ in accounts:
            issuer = asset.split(".", 1)[1]
            mints.append(
                client.tx.mint(asset, account_id, FUND_MINOR, f"bench-{account_id}").signed_by(
                    operators[issuer]
                )
            )
        _submit_all(client, mints, "fund accounts")
    finally:
        client.close()
    return accounts


def _submit_all(client: LedgerClient, txs: list[Any], what: str) -> None:
    # A few at a time keeps setup short without depending on the bulk path under test.
    for tx in txs:
        outcome = client.submit(tx)
        if not (isinstance(outcome, Committed) and outcome.ok):
            raise RuntimeError(f"setup failed ({what}): {outcome}")


# --- load client (one process) --------------------------------------------------------------


@dataclass(frozen=True)
class ClientPlan:
    index: int
    genesis_path: str
    endpoint: str
    accounts: tuple[tuple[str, str, str], ...]  # (id, asset, seed) this client debits
    targets: tuple[tuple[str, str], ...]  # (id, asset) of every account
    count: int
    rate: float  # tx/s for this client in open loop; 0 = closed loop
    batch: int
    window: int
    seed: int
    out_path: str
    multileg: float = 0.0  # fraction that are two-leg atomic transfers (two payers, two assets)
    submit: str = "stream"  # "stream": one SubmitStream; "batch": SubmitBatch + WaitReceiptBatches each
    escrow: float = 0.0  # fraction that are escrow creates
    escrow_expires_at_ms: int = 0  # their expiry (consensus time), after the run
    insecure: bool = False  # plaintext nodes (--insecure), to compare against TLS


def presign(plan: ClientPlan, genesis: Genesis) -> tuple[list[bytes], list[bytes], list[str], float]:
    """(envelopes, tx_ids, kinds, signing rate): kinds[i] is "transfer", "pvp" or "escrow"."""
    builder = TxBuilder(genesis.chain_id, genesis.limits)
    rng = random.Random(plan.seed)
    keys = {a: SigningKey(bytes.fromhex(s)) for a, _, s in plan.accounts}
    by_asset: dict[str, list[str]] = {}
    for acct, asset in plan.targets:
        by_asset.setdefault(asset, []).append(acct)
    envelopes, tx_ids, kinds = [], [], []
    escrow_prefix = f"bench-{secrets.token_hex(6)}-"  # escrow ids are global: unique per run
    t0 = time.perf_counter()
    for n in range(plan.count):
        src, asset, _ = rng.choice(plan.accounts)
        dst = rng.choice([a for a in by_asset[asset] if a != src])
        legs = [LegSpec(src, dst, asset, rng.randint(1, AMOUNT_MINOR_MAX))]
        if plan.escrow and rng.random() < plan.escrow:
            escrow = builder.escrow_create(f"{escrow_prefix}{n}", legs[0], plan.escrow_expires_at_ms)
            envelopes.append(escrow.signed_by(keys[src]).envelope_bytes())
            tx_ids.append(escrow.tx_id)
            kinds.append("escrow")
            continue
        if len(plan.accounts) > 1 and rng.random() < plan.multileg:
            # Payment versus payment: a second payer (another asset, where this client has
            # one) pays a second payee in the same transaction; both legs or neither.
            src2, asset2, _ = rng.choice([a for a in plan.accounts if a[0] != src])
            payees = [a for a in by_asset[asset2] if a not in (src, src2)]
            if payees:
                legs.append(LegSpec(src2, rng.choice(payees), asset2, rng.randint(1, AMOUNT_MINOR_MAX)))
        tx = builder.transfer(legs).signed_by(*(keys[leg.from_account] for leg in legs))
        envelopes.append(tx.envelope_bytes())
        tx_ids.append(tx.tx_id)
        kinds.append("pvp" if len(legs) > 1 else "transfer")
    return envelopes, tx_ids, kinds, plan.count / (time.perf_counter() - t0)


class Verifier:
    """Verifies receipts; counts failures (a failure is never counted as committed)."""

    def __init__(self, genesis: Genesis) -> None:
        self.genesis = genesis
        self.cache = VerificationCache(genesis)
        self.failures = 0
        self.batch_sizes: Counter[int] = Counter()
        self._seen_heights: set[int] = set()
        self.last_block_ms = 0  # header timestamp (the primary's clock at proposal) of the last receipt

    def check(self, receipt: api_pb2.Receipt, tx_id: bytes) -> bool:
        try:
            verified = verify_receipt(self.genesis, receipt, tx_id, self.cache)
        except ReceiptError:
            self.failures += 1
            return False
        h = verified.block.header.height
        self.last_block_ms = int(verified.block.header.timestamp_ms)
        if h not in self._seen_heights:
            self._seen_heights.add(h)
            self.batch_sizes[int(verified.block.header.tx_count)] += 1
        return verified.result.code == tx_pb2.OK


async def run_client(
    plan: ClientPlan,
    genesis: Genesis,
    envelopes: list[bytes],
    tx_ids: list[bytes],
    start_at: float,
    stop_at: float,
    window_start: float,
) -> dict[str, Any]:
    verifier = Verifier(genesis)
    cpu_window: list[float] = []  # this process's CPU seconds at the timed window's ends

    async def sample_cpu() -> None:
        for t in (window_start, stop_at):
            await asyncio.sleep(max(0.0, t - time.time()))
            cpu_window.append(time.process_time())

    sampler = asyncio.create_task(sample_cpu())
    # Per verified receipt: (completion time, latency, scheduled -> proposed, proposed ->
    # receipt) in seconds; "proposed" is the block header's timestamp: the primary's clock
    # (this machine's) as of its last tick, so the split is good to about tick_ms (20 ms).
    done: list[tuple[float, float, float, float]] = []
    done_index: list[tuple[int, float]] = []  # per verified receipt: (transaction index, completion time)
    acks: list[tuple[float, float]] = []  # per SubmitBatch: (ack time, ack - first tx's send time)
    not_ok = 0
    options = [
        ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
        ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
    ]
    async with tls.aio_channel(genesis, plan.endpoint, options, insecure=plan.insecure) as channel:
        stub = api_pb2_grpc.LedgerServiceStub(channel)

        async def send(lo: int, hi: int, t_sent: list[float]) -> None:
            nonlocal not_ok
            request = api_pb2.SubmitBatchRequest(
                envelopes=[tx_pb2.Envelope.FromString(e) for e in envelopes[lo:hi]]
            )
            await stub.SubmitBatch(request, timeout=30)
            acked = time.time()
            acks.append((acked, acked - t_sent[0]))
            index = {tx_ids[i]: i for i in range(lo, hi)}
            wait = api_pb2.WaitReceiptsRequest(tx_ids=tx_ids[lo:hi], timeout_ms=30_000)
            async for receipts in stub.WaitReceiptBatches(wait, timeout=35):
                for receipt in receipts.receipts:
                    i = index.get(bytes(receipt.result.tx_id))
                    if i is None:
                        continue
                    now = time.time()
                    if verifier.check(receipt, tx_ids[i]):
                        proposed = verifier.last_block_ms / 1000
                        sent = t_sent[i - lo]
                        done.append((now, now - sent, proposed - sent, now - proposed))
                        done_index.append((i, now))
                    else:
                        not_ok += 1

        while time.time() < start_at:
            await asyncio.sleep(min(0.05, start_at - time.time()))
        next_i = 0
        tasks: set[asyncio.Task[None]] = set()
        if plan.submit == "stream":
            exhausted, not_ok = await _stream_load(
                plan, stub, envelopes, tx_ids, start_at, stop_at, verifier, done, done_index, acks
            )
        elif plan.rate <= 0:  # closed loop
            while time.time() < stop_at and next_i < plan.count:
                while len(tasks) >= plan.window:
                    _, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                hi = min(next_i + plan.batch, plan.count)
                now = time.time()
                tasks.add(asyncio.create_task(send(next_i, hi, [now] * (hi - next_i))))
                next_i = hi
        else:  # open loop: transaction i is due at start_at + i / rate, sent on the next tick
            interval = 1.0 / plan.rate
            while time.time() < stop_at and next_i < plan.count:
                now = time.time()
                due = min(plan.count, int((now - start_at) / interval) + 1)
                for lo in range(next_i, due, plan.batch):  # a stall's backlog: in batches
                    hi = min(due, lo + plan.batch)
                    sched = [start_at + i * interval for i in range(lo, hi)]
                    tasks.add(asyncio.create_task(send(lo, hi, sched)))
                next_i = max(next_i, due)
                tasks = {t for t in tasks if not t.done()}
                await asyncio.sleep(OPEN_LOOP_TICK_S)
        if plan.submit != "stream":
            exhausted = _ran_out(plan, next_i, stop_at)
        if tasks:
            await asyncio.wait(tasks, timeout=40)
        await sampler
    return {
        "cpu_s": cpu_window[1] - cpu_window[0],
        "done": done,
        "done_index": done_index,
        "acks": acks,
        "receipt_failures": verifier.failures,
        "not_ok": not_ok,
        "batch_sizes": dict(verifier.batch_sizes),
        "exhausted": exhausted,
    }


def _ran_out(plan: ClientPlan, sent: int, stop_at: float) -> bool:
    """Whether the client sent every pre-signed transaction before the window ended (logged)."""
    exhausted = sent >= plan.count and time.time() < stop_at
    if exhausted:
        log(f"client {plan.index}: ran out of pre-signed transactions; raise --presign or --expect-tps")
    return exhausted


async def _stream_load(
    plan: ClientPlan,
    stub: Any,
    envelopes: list[bytes],
    tx_ids: list[bytes],
    start_at: float,
    stop_at: float,
    verifier: Verifier,
    done: list[tuple[float, float, float, float]],
    done_index: list[tuple[int, float]],
    acks: list[tuple[float, float]],
) -> tuple[bool, int]:
    """The load over one SubmitStream: batches go out on it (closed loop: while fewer than
    --window are unsettled; open loop: what is due every tick) and its replies come back on it:
    each request's answer in order, then receipts as blocks are attested. (exhausted, not_ok)"""
    call = stub.SubmitStream(timeout=stop_at - time.time() + 60)
    index = {t: i for i, t in enumerate(tx_ids)}
    requests = 0
    sent_at: dict[int, float] = {}  # tx index -> scheduled (open) or send (closed) time
    unacked: deque[float] = deque()  # first send time of each request not answered yet
    outstanding: dict[int, int] = {}  # request number -> its transactions not settled yet
    batch_of: dict[int, int] = {}  # tx index -> request number
    settled = asyncio.Event()
    not_ok = 0
    next_i = 0

    async def write(lo: int, hi: int, times: list[float]) -> None:
        nonlocal requests
        requests += 1
        n = requests
        for i, t in zip(range(lo, hi), times, strict=True):
            sent_at[i] = t
            batch_of[i] = n
        outstanding[n] = hi - lo
        unacked.append(times[0])
        await call.write(
            api_pb2.SubmitBatchRequest(envelopes=[tx_pb2.Envelope.FromString(e) for e in envelopes[lo:hi]])
        )

    def settle(n: int) -> None:
        outstanding[n] -= 1
        if not outstanding[n]:
            del outstanding[n]

    async def read() -> None:
        nonlocal not_ok
        try:
            async for reply in call:
                now = time.time()
                if reply.HasField("submitted"):
                    acks.append((now, now - unacked.popleft()))
                    refused = [item for item in reply.submitted.items if not item.accepted]
                    for item in refused:
                        settle(batch_of[index[bytes(item.tx_id)]])
                    not_ok += len(refused)
                    continue
                for receipt in reply.receipts.receipts:
                    i = index.get(bytes(receipt.result.tx_id))
                    if i is None:
                        continue
                    if verifier.check(receipt, tx_ids[i]):
                        proposed = verifier.last_block_ms / 1000
                        done.append((now, now - sent_at[i], proposed - sent_at[i], now - proposed))
                        done_index.append((i, now))
                    else:
                        not_ok += 1
                    settle(batch_of[i])
                settled.set()
        finally:
            settled.set()  # the writer must not wait on a stream that ended

    reader = asyncio.create_task(read())
    if plan.rate <= 0:  # closed loop
        while time.time() < stop_at and next_i < plan.count:
            while len(outstanding) >= plan.window and not reader.done():
                settled.clear()
                await settled.wait()
            hi = min(next_i + plan.batch, plan.count)
            await write(next_i, hi, [time.time()] * (hi - next_i))
            next_i = hi
    else:  # open loop: transaction i is due at start + i / rate, sent on the next tick
        interval = 1.0 / plan.rate
        while time.time() < stop_at and next_i < plan.count:
            due = min(plan.count, int((time.time() - start_at) / interval) + 1)
            # After a stall more may be due than a node takes in one request (submit_batch_max):
            # send the backlog in batches, each still timed from its own schedule.
            for lo in range(next_i, due, plan.batch):
                hi = min(due, lo + plan.batch)
                await write(lo, hi, [start_at + i * interval for i in range(lo, hi)])
            next_i = max(next_i, due)
            await asyncio.sleep(OPEN_LOOP_TICK_S)
    exhausted = _ran_out(plan, next_i, stop_at)
    await call.done_writing()
    await asyncio.wait_for(reader, timeout=40)
    return exhausted, not_ok


def client_main(
    plan: ClientPlan, ready: EventType, go: EventType, start_value: Any, warmup: float, duration: float
) -> None:
    """Sign everything (untimed), report ready, wait for the common start, then load."""
    genesis = load_genesis(Path(plan.genesis_path))
    envelopes, tx_ids, kinds, sign_rate = presign(plan, genesis)
    ready.set()
    go.wait()
    start_at = float(start_value.value)
    stop_at = start_at + warmup + duration
    result = asyncio.run(run_client(plan, genesis, envelopes, tx_ids, start_at, stop_at, start_at + warmup))
    window_start = start_at + warmup
    by_kind = Counter(kinds[i] for i, t in result.pop("done_index") if window_start <= t < stop_at)
    result["committed_by_kind"] = dict(by_kind)
    result["sign_rate"] = sign_rate
    Path(plan.out_path).write_text(json.dumps(result))


# --- node resource use ------------------------------------------------------------------------


def proc_sample(pid: int) -> tuple[float, float, float]:
    """(RSS MiB, CPU seconds, anonymous RSS MiB) of a process, from /proc. RSS counts the pages
    of the LMDB file mapped in (they grow with the chain, and the kernel may drop them at will);
    anonymous RSS is the heap alone, where a leak would show."""
    rss_kb = anon_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
        elif line.startswith("RssAnon:"):
            anon_kb = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / ticks, anon_kb / 1024


def views(genesis: Genesis, insecure: bool) -> dict[str, int]:
    """Each answering node's current view (a view change during the window shows as a change)."""
    out: dict[str, int] = {}
    for m in genesis.members:
        try:
            with tls.channel(genesis, m.api_address, insecure=insecure) as channel:
                status = api_pb2_grpc.LedgerServiceStub(channel).GetStatus(
                    api_pb2.GetStatusRequest(), timeout=2
                )
            out[m.member_id] = status.view
        except grpc.RpcError:
            continue
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


# --- the run ------------------------------------------------------------------------------


def run(args: argparse.Namespace, c: Consortium) -> dict[str, Any]:
    genesis = c.genesis()
    log(f"bench: opening and funding {args.accounts_per_bank * genesis.n} accounts")
    accounts = open_and_fund(c, genesis, args.accounts_per_bank)
    targets = tuple((a, asset) for a, asset, _ in accounts)
    k = args.clients
    per_client_rate = args.rate / k if args.rate else 0.0
    expected_tps = args.rate or args.expect_tps
    count = args.presign or int(expected_tps * (args.warmup + args.duration) * 1.3 / k) + args.batch
    # Escrows stay pending through the run (signing, warm-up, window), then expire.
    escrow_expires_at_ms = int((time.time() + ESCROW_AFTER_RUN_S + args.warmup + args.duration) * 1000)
    ctx = mp.get_context("spawn")
    ready = [ctx.Event() for _ in range(k)]
    go = ctx.Event()
    start_value = ctx.Value("d", 0.0)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        plans = [
            ClientPlan(
                index=i,
                genesis_path=str(c.genesis_path),
                endpoint=genesis.members[i % genesis.n].api_address,
                accounts=tuple(accounts[i::k]),
                targets=targets,
                count=count,
                rate=per_client_rate,
                batch=args.batch,
                window=args.window,
                seed=args.seed + i,
                out_path=str(Path(tmp) / f"client-{i}.json"),
                multileg=args.multileg,
                submit=args.submit,
                escrow=args.escrow,
                insecure=c.insecure,
                escrow_expires_at_ms=escrow_expires_at_ms,
            )
            for i in range(k)
        ]
        log(f"bench: {k} client(s) signing {count} transfers each (untimed)")
        procs = [
            ctx.Process(
                target=client_main, args=(plan, ready[i], go, start_value, args.warmup, args.duration)
            )
            for i, plan in enumerate(plans)
        ]
        for proc in procs:
            proc.start()
        try:
            for ev in ready:
                if not ev.wait(timeout=600):
                    raise RuntimeError("a client did not finish signing within 600 s")
            t0 = time.time() + 0.2
            start_value.value = t0
            go.set()
            window_start = t0 + args.warmup
            window_end = window_start + args.duration
            pids = {m.member_id: c.pid(m.member_id) for m in genesis.members}
            log(f"bench: load started; warm-up {args.warmup:.0f}s, then {args.duration:.0f}s timed")
            time.sleep(max(0.0, window_start - time.time()))
            before = {b: proc_sample(pid) for b, pid in pids.items() if pid}
            views_before = views(genesis, c.insecure)
            while time.time() < window_end:
                time.sleep(min(5.0, max(0.0, window_end - time.time())))
                if time.time() < window_end:
                    log(f"bench: {window_end - time.time():4.0f}s left in the timed window")
            after = {b: proc_sample(pid) for b, pid in pids.items() if pid}
            views_after = views(genesis, c.insecure)
            for proc in procs:
                proc.join(timeout=120)
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
        results = [json.loads(Path(p.out_path).read_text()) for p in plans if Path(p.out_path).exists()]
    if len(results) != k:
        raise RuntimeError(f"{k - len(results)} client(s) failed; see their output above")
    in_window = [d for r in results for d in r["done"] if window_start <= d[0] < window_end]
    lat_ms = sorted(d[1] * 1000 for d in in_window)

    def part(values: list[float]) -> dict[str, float]:
        ordered = sorted(v * 1000 for v in values)
        return {"p50": round(percentile(ordered, 0.5), 1), "p99": round(percentile(ordered, 0.99), 1)}

    committed = len(in_window)
    per_second = Counter(int(d[0] - window_start) for d in in_window)
    batch_sizes: Counter[int] = Counter()
    for r in results:
        batch_sizes.update({int(size): n for size, n in r["batch_sizes"].items()})
    rss = {b: after[b][0] for b in after}
    cpu_per_k = {b: (after[b][1] - before[b][1]) / max(1, committed) * 1000 for b in after if b in before}
    sizes = sorted(batch_sizes.elements())
    out = {
        "banks": genesis.n,
        "tls": not c.insecure,
        "mode": "open" if args.rate else "closed",
        "submit": args.submit,
        "multileg": args.multileg,
        "escrow": args.escrow,
        "clients": k,
        "offered_tps": args.rate or None,
        "committed_tps": round(committed / args.duration, 1),
        "p50_ms": round(percentile(lat_ms, 0.50), 1),
        "p99_ms": round(percentile(lat_ms, 0.99), 1),
        "p999_ms": round(percentile(lat_ms, 0.999), 1),
        "rss_mb_max": round(max(rss.values()), 1) if rss else None,
        "rss_growth_mb": round(max(after[b][0] - before[b][0] for b in after if b in before), 1)
        if after
        else None,
        "rss_anon_mb_max": round(max(after[b][2] for b in after), 1) if after else None,
        "rss_anon_growth_mb": round(max(after[b][2] - before[b][2] for b in after if b in before), 1)
        if after
        else None,
        "cpu_s_per_1k_tx": {b: round(v, 3) for b, v in sorted(cpu_per_k.items())},
        # All load clients together (they verify every receipt; they sign before the window).
        "client_cpu_s_per_1k_tx": round(sum(r["cpu_s"] for r in results) / max(1, committed) * 1000, 3),
        # Views the consortium moved through during the window (0: the primary never changed).
        "view_changes": max(
            (views_after[b] - views_before[b] for b in views_after if b in views_before), default=0
        ),
        "batch_size_p50": percentile([float(s) for s in sizes], 0.5) if sizes else None,
        "batch_size_max": max(sizes) if sizes else None,
        "sign_rate_per_client": round(statistics.median(r["sign_rate"] for r in results)),
        # Committed in the window by kind: "transfer" (one leg), "pvp" (two), "escrow" (creates).
        "committed_by_kind": dict(sum((Counter(r["committed_by_kind"]) for r in results), Counter())),
        "receipt_failures": sum(r["receipt_failures"] for r in results),
        "not_ok": sum(r["not_ok"] for r in results),
        "presign_exhausted": any(r["exhausted"] for r in results),
        "duration_s": args.duration,
        # Where the latency goes: SubmitBatch answered (admission at the entry node), scheduled
        # -> the block's proposal, and proposal -> verified receipt (agreement, execution,
        # attestations, delivery).
        "latency_parts_ms": {
            "submit_ack": part([a for r in results for t, a in r["acks"] if window_start <= t < window_end]),
            "to_proposal": part([d[2] for d in in_window]),
            "proposal_to_receipt": part([d[3] for d in in_window]),
        },
        "tps_by_second": [per_second.get(s, 0) for s in range(int(args.duration))],
    }
    if args.plot:
        plot(args.plot, out, lat_ms)
    return out


def plot(path: Path, out: dict[str, Any], lat_ms: list[float]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("bench: --plot needs matplotlib (.venv/bin/pip install matplotlib); skipped")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(range(len(out["tps_by_second"])), out["tps_by_second"])
    ax1.set_xlabel("second of the timed window")
    ax1.set_ylabel("committed transfers/s")
    ax1.set_title(f"{out['banks']} banks, {out['mode']} loop")
    ax2.hist(lat_ms, bins=60)
    ax2.set_xlabel("submit-to-receipt latency (ms)")
    ax2.set_ylabel("transfers")
    ax2.set_title(f"p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms")
    fig.tight_layout()
    fig.savefig(path)
    log(f"bench: wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=None, help="attach to the running consortium in DIR")
    parser.add_argument("--banks", type=int, default=4, help="banks of the consortium to start (default 4)")
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop at this many tx/s in total")
    parser.add_argument("--duration", type=float, default=30.0, help="timed window, seconds (default 30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="untimed warm-up, seconds (default 5)")
    parser.add_argument("--batch", type=int, default=200, help="transactions per SubmitBatch (default 200)")
    parser.add_argument("--window", type=int, default=4, help="closed loop: batches in flight per client")
    parser.add_argument("--accounts-per-bank", type=int, default=25)
    parser.add_argument(
        "--presign", type=int, default=0, help="transactions each client signs (default: enough)"
    )
    parser.add_argument("--expect-tps", type=float, default=4000.0, help="closed loop: sizes --presign")
    parser.add_argument(
        "--multileg",
        type=float,
        default=0.0,
        help="fraction (0..1) of two-leg atomic transfers, payment versus payment (default 0: one leg)",
    )
    parser.add_argument(
        "--escrow",
        type=float,
        default=0.0,
        help="fraction (0..1) of escrow creates, expiring 10 minutes after the run (default 0)",
    )
    parser.add_argument(
        "--submit",
        choices=("stream", "batch"),
        default="stream",
        help="stream: each client's load on one SubmitStream (default); batch: a SubmitBatch and "
        "a WaitReceiptBatches per batch",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=None, help="write throughput and latency plots (PNG)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of results")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="start the consortium plaintext (to measure what TLS costs; with --dir, its own setting holds)",
    )
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if not 0 <= args.multileg <= 1 or not 0 <= args.escrow <= 1:
        parser.error("--multileg and --escrow are fractions from 0 to 1")
    if args.clients < 1 or args.duration <= 0 or args.warmup < 0 or args.batch < 1 or args.rate < 0:
        parser.error("--clients, --duration, --batch must be positive; --rate, --warmup not negative")
    try:
        if args.dir is not None:
            out = run(args, Consortium(args.dir))
        else:
            with tempfile.TemporaryDirectory(prefix="bench-consortium-") as tmp:
                c = Consortium(Path(tmp))
                try:
                    c.up(banks=args.banks, insecure=args.insecure)
                    out = run(args, c)
                finally:
                    for line in c.down():
                        log(f"bench: {line}")
    except (RuntimeError, OSError) as exc:
        log(f"bench: failed: {exc}")
        return 2
    table = {k: v for k, v in out.items() if k != "tps_by_second"}
    for key, value in table.items():
        log(f"  {key:<22} {value}")
    if args.json:
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
