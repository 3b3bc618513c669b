#!/usr/bin/env python3
"""State sync against replay, on a consortium with a long history (issue 18, item 4).

    scripts/state_sync_bench.py build --dir D --accounts 100000 --txs 1000000 [--banks 4]
    scripts/state_sync_bench.py measure --dir D --bank BANK-D [--modes snapshot,replay] --json

``build`` creates the consortium in D (or resumes the one there: it starts the nodes that are
down) with the default retention (archive: every block kept, so replay from block 1 is
possible) and loads it as fast as it goes: --accounts accounts opened (spread over the banks,
each by its bank's operator), each minted a balance of its bank's asset, then one-leg transfers
between random accounts of the same asset until the chain holds at least --txs transactions
(opens, mints and transfers all count). Every transaction is signed in worker processes ahead
of its submission (--signers); batches (--batch, at most the node's submit_batch_max) go out
over SubmitBatch, --lanes at a time per bank's API port. Opens and mints wait for their
receipts (and are sent again until each has one); transfers are fire and forget, at most
--pending of them accepted and not yet executed (GetStatus's executed_txs tells). The account
list with its owner keys is kept in D/state_sync_bench.json, so a second run transfers between
the same accounts; the chain's transaction count is the sum of its block headers' tx_count
(GetBlocks, headers only; counted up to where the file says it was counted). A progress line
every 10 s on stderr; the nodes keep running afterwards (--stop stops them). The last line is
one JSON object: accounts, txs, height, seconds, tx_per_s, disk_bytes per node.
Measured (4 banks, TLS, default limits, on 2 cores shared with other work, load average 6-8):
100,000 accounts and 1,000,000 transactions in 2,380 s, 420 tx/s (opens and mints about 625 tx/s,
transfers about 390 tx/s), height 2,219, about 1.0 GB of store per node.

``measure`` needs the consortium idle (no load) and every node up. For each mode it wipes the
bank's node (Consortium.wipe: data directory deleted, vote record kept), starts it and times
until it has rejoined: its height at least the others' height at the wipe, its state root equal
to theirs at equal height, and healthy. ``snapshot`` is the node's default start-up (state
sync by snapshot); ``replay`` sets ``"state_sync": false`` in the bank's node config for that
start (the file is put back afterwards, also on failure) when the node's config loader knows
the key; a loader that does not know it has no state sync, so replay is what the node does
anyway. What the node's events.log says in its ``state_synced`` event is copied (null when it
wrote none). One JSON object at the end (--json: on one line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from consortium import Consortium, ConsortiumError, exit_cleanly_on_sigterm  # noqa: E402

from client.sdk import LedgerClient  # noqa: E402
from client.tx import LegSpec, Transaction, TxBuilder  # noqa: E402
from ledger import tls  # noqa: E402
from ledger.crypto import SigningKey, load_key  # noqa: E402
from ledger.v1 import api_pb2, api_pb2_grpc, tx_pb2  # noqa: E402
from node.backup import disk_bytes  # noqa: E402
from node.config import ConfigError, load_node_config  # noqa: E402

STATE_FILE = "state_sync_bench.json"
FUND_MINOR = (
    10**9
)  # each account's mint: 25,000 accounts per asset stay far below amount_max (10**15) of supply
AMOUNT_MINOR_MAX = 100
PROGRESS_S = 10.0
POLL_S = 0.25  # GetStatus polls for the transfer window
RECEIPT_WAIT_MS = 30_000
SEND_TRIES = 8  # an open or a mint without a receipt is sent again this often, then the build fails
DRAIN_STALL_S = 60.0  # transfers accepted but not executed this long after the last ones went: lost
BLOCKS_PER_SCAN = 512  # GetBlocks' cap per reply
MESSAGE_BYTES_MAX = 64 << 20
MEASURE_PROGRESS_S = 5.0
IDLE_WAIT_S = 60.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class BenchError(Exception):
    """The build or the measurement cannot go on; the message says why."""


# --- D/state_sync_bench.json -------------------------------------------------------------------


@dataclass
class BenchState:
    """What a resumed build needs: the accounts with their owner keys, how far the opens and
    mints are known done (a prefix of the list), and the chain's transactions counted so far."""

    chain_id: str
    accounts: list[tuple[str, str, str]] = field(default_factory=list)  # (id, asset, owner seed hex)
    opened: int = 0  # accounts[:opened] are open
    minted: int = 0  # accounts[:minted] are funded
    counted_height: int = 0  # blocks 1..counted_height hold counted_txs transactions
    counted_txs: int = 0

    @classmethod
    def load(cls, path: Path, chain_id: str) -> BenchState:
        if not path.exists():
            return cls(chain_id)
        doc = json.loads(path.read_text())
        if doc["chain_id"] != chain_id:
            raise BenchError(f"{path} is for chain {doc['chain_id']}, the consortium is {chain_id}")
        return cls(
            chain_id,
            [(a, asset, seed) for a, asset, seed in doc["accounts"]],
            int(doc["opened"]),
            int(doc["minted"]),
            int(doc["counted_height"]),
            int(doc["counted_txs"]),
        )

    def save(self, path: Path) -> None:
        doc = {
            "chain_id": self.chain_id,
            "opened": self.opened,
            "minted": self.minted,
            "counted_height": self.counted_height,
            "counted_txs": self.counted_txs,
            "accounts": self.accounts,
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)  # a crash leaves the old file or the new one, never half of one

    def add_accounts(self, count: int, banks: Sequence[str], asset_of: dict[str, str]) -> None:
        """Grow the list to ``count`` accounts: account i belongs to bank i mod n."""
        for i in range(len(self.accounts), count):
            bank = banks[i % len(banks)]
            seed = SigningKey.generate().seed.hex()
            self.accounts.append((f"ssb-{bank.lower()}-{i}", asset_of[bank], seed))


# --- signing (worker processes) -------------------------------------------------------------

_W: dict[str, Any] = {}  # the worker's chain, accounts, keys


def _init_signer(chain_id: str, accounts: list[tuple[str, str, str]], operator_seeds: dict[str, str]) -> None:
    by_asset: dict[str, list[int]] = {}
    for i, (_, asset, _) in enumerate(accounts):
        by_asset.setdefault(asset, []).append(i)
    _W.update(
        builder=TxBuilder(chain_id),
        accounts=accounts,
        by_asset=by_asset,
        operators={asset: SigningKey(bytes.fromhex(seed)) for asset, seed in operator_seeds.items()},
        keys={},
    )


def _owner(i: int) -> SigningKey:
    keys: dict[int, SigningKey] = _W["keys"]
    key = keys.get(i)
    if key is None:
        key = keys[i] = SigningKey(bytes.fromhex(_W["accounts"][i][2]))
    return key


def _sign(kind: str, lo: int, hi: int, seed: int) -> list[tuple[bytes, bytes]]:
    """(envelope, tx_id) of: opens or mints of accounts[lo:hi], or hi - lo transfers drawn
    with ``seed``."""
    builder: TxBuilder = _W["builder"]
    accounts: list[tuple[str, str, str]] = _W["accounts"]
    operators: dict[str, SigningKey] = _W["operators"]
    txs: list[Transaction] = []
    if kind == "open":
        for i in range(lo, hi):
            account_id, asset, _ = accounts[i]
            bank = asset.split(".", 1)[1]
            tx = builder.open_account(bank, account_id, _owner(i).public_key)
            txs.append(tx.signed_by(operators[asset]))
    elif kind == "mint":
        for i in range(lo, hi):
            account_id, asset, _ = accounts[i]
            tx = builder.mint(asset, account_id, FUND_MINOR, f"ssb-{account_id}")
            txs.append(tx.signed_by(operators[asset]))
    else:
        rng = random.Random(seed)
        by_asset: dict[str, list[int]] = _W["by_asset"]
        for _ in range(hi - lo):
            src = rng.randrange(len(accounts))
            account_id, asset, _ = accounts[src]
            peers = by_asset[asset]
            dst = src
            while dst == src:
                dst = peers[rng.randrange(len(peers))]
            leg = LegSpec(account_id, accounts[dst][0], asset, rng.randint(1, AMOUNT_MINOR_MAX))
            txs.append(builder.transfer([leg]).signed_by(_owner(src)))
    return [(tx.envelope_bytes(), tx.tx_id) for tx in txs]


# --- the chain's count ------------------------------------------------------------------------


def count_chain(c: Consortium, state: BenchState, reader: SigningKey) -> None:
    """Add the blocks after state.counted_height (headers: tx_count) from the first bank."""
    genesis = c.genesis()
    endpoint = genesis.members[0].api_address
    with LedgerClient(genesis, [endpoint], timeout_s=60.0, reader=reader, insecure=c.insecure) as client:
        while True:
            got = client.blocks(state.counted_height + 1, BLOCKS_PER_SCAN)
            for verified in got.blocks:
                state.counted_txs += int(verified.block.header.tx_count)
                state.counted_height = int(verified.block.header.height)
            if not got.blocks or state.counted_height >= got.last_height:
                return


# --- the load ---------------------------------------------------------------------------------


@dataclass
class Job:
    kind: str  # "open" or "mint"
    signed: list[tuple[bytes, bytes]]  # (envelope, tx_id)
    tries: int = 0


# A receipt with one of these settles an open or a mint: done now, or done before (a resumed
# build sends again what it did not know done; a re-sent envelope answers DUPLICATE).
SETTLED = frozenset({tx_pb2.OK, tx_pb2.ACCOUNT_EXISTS, tx_pb2.DUPLICATE_REFERENCE, tx_pb2.DUPLICATE})


class Loader:
    """Lanes (concurrent batches) against every bank's API port; the phases in turn."""

    def __init__(
        self, c: Consortium, state: BenchState, args: argparse.Namespace, pool: ProcessPoolExecutor
    ) -> None:
        self.genesis = c.genesis()
        self.args = args
        self.pool = pool
        self.target = int(args.txs)
        options = [
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
        ]
        self.channels = [
            tls.aio_channel(self.genesis, m.api_address, options, insecure=c.insecure)
            for m in self.genesis.members
        ]
        self.stubs = [api_pb2_grpc.LedgerServiceStub(ch) for ch in self.channels]
        self.lanes = args.lanes * len(self.stubs)
        self.base_txs = state.counted_txs  # the chain's count when this run started
        self.exec_start: int | None = None  # the first node's executed_txs then
        self.executed = 0  # executed on the first node since
        self.height = state.counted_height
        self.refused = 0
        self.phase = "start"
        self.t0 = time.monotonic()
        self.room = asyncio.Event()  # set at every status poll
        self.stopped = False

    @property
    def chain_txs(self) -> int:
        """The chain's transaction count now, as far as the first node's counter tells."""
        return self.base_txs + self.executed

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close(None)

    async def watch(self) -> None:
        """Poll the first node's executed_txs; print progress every PROGRESS_S."""
        last_print = time.monotonic()
        while not self.stopped:
            try:
                st = await self.stubs[0].GetStatus(api_pb2.GetStatusRequest(), timeout=5)
            except grpc.aio.AioRpcError as exc:
                log(f"build: GetStatus of {self.genesis.members[0].member_id}: {exc.code().name}")
            else:
                executed = int(st.counters["executed_txs"])
                if self.exec_start is None:
                    self.exec_start = executed
                self.executed = executed - self.exec_start
                self.height = int(st.last_executed)
                self.room.set()
            now = time.monotonic()
            if now - last_print >= PROGRESS_S:
                last_print = now
                self.progress()
            await asyncio.sleep(POLL_S)

    def progress(self) -> None:
        elapsed = time.monotonic() - self.t0
        rate = self.executed / elapsed if elapsed > 0 else 0.0
        left = max(0, self.target - self.chain_txs)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        refused = f", {self.refused} refused" if self.refused else ""
        log(
            f"build: {self.phase:<8} chain {self.chain_txs:>9} of {self.target} txs, height {self.height}, "
            f"{rate:6.0f} tx/s this run ({elapsed:.0f}s), ETA {eta}{refused}"
        )

    def _sign(self, kind: str, lo: int, hi: int) -> asyncio.Future[list[tuple[bytes, bytes]]]:
        seed = random.getrandbits(63)
        return asyncio.wrap_future(self.pool.submit(_sign, kind, lo, hi, seed))

    # --- one batch ---------------------------------------------------------------------------

    async def _submit(self, lane: int, envelopes: list[bytes]) -> tuple[list[bytes], int]:
        """SubmitBatch to the lane's node: (accepted tx_ids, how many were refused)."""
        request = api_pb2.SubmitBatchRequest(envelopes=[tx_pb2.Envelope.FromString(e) for e in envelopes])
        try:
            resp = await self.stubs[lane % len(self.stubs)].SubmitBatch(request, timeout=60)
        except grpc.aio.AioRpcError as exc:
            log(
                f"build: SubmitBatch to {self.genesis.members[lane % len(self.stubs)].member_id}: {exc.code().name}"
            )
            return [], len(envelopes)
        accepted = [bytes(item.tx_id) for item in resp.items if item.accepted]
        refused = len(envelopes) - len(accepted)
        self.refused += refused
        if refused:
            await asyncio.sleep(0.5)  # refused (a full queue, most likely): let it drain
        return accepted, refused

    async def _receipted(self, lane: int, job: Job) -> list[tuple[bytes, bytes]]:
        """Send a job and wait for its receipts; what is still without one."""
        accepted, _ = await self._submit(lane, [e for e, _ in job.signed])
        settled: set[bytes] = set()
        if accepted:
            wait = api_pb2.WaitReceiptsRequest(tx_ids=accepted, timeout_ms=RECEIPT_WAIT_MS)
            stub = self.stubs[lane % len(self.stubs)]
            try:
                async for batch in stub.WaitReceiptBatches(wait, timeout=RECEIPT_WAIT_MS / 1000 + 10):
                    for receipt in batch.receipts:
                        if receipt.result.code not in SETTLED:
                            name = tx_pb2.ResultCode.Name(receipt.result.code)
                            raise BenchError(f"{job.kind} refused by the ledger: {name}")
                        settled.add(bytes(receipt.result.tx_id))
            except grpc.aio.AioRpcError as exc:
                log(f"build: WaitReceiptBatches: {exc.code().name}")
        return [(e, tx_id) for e, tx_id in job.signed if tx_id not in settled]

    # --- phases ------------------------------------------------------------------------------

    async def receipted_phase(self, kind: str, lo: int, hi: int) -> None:
        """Opens or mints of accounts[lo:hi], each sent until it has a receipt."""
        self.phase = kind
        ranges = [(a, min(a + self.args.batch, hi)) for a in range(lo, hi, self.args.batch)]
        queue: asyncio.Queue[Job | None] = asyncio.Queue()
        unsettled = len(ranges)

        async def feed() -> None:
            ahead: list[asyncio.Future[list[tuple[bytes, bytes]]]] = []
            for a, b in ranges:
                ahead.append(self._sign(kind, a, b))
                if len(ahead) > 2 * self.args.signers:
                    await queue.put(Job(kind, await ahead.pop(0)))
            for fut in ahead:
                await queue.put(Job(kind, await fut))

        async def lane(n: int) -> None:
            nonlocal unsettled
            while (job := await queue.get()) is not None:
                left = await self._receipted(n, job)
                if left:
                    if job.tries + 1 >= SEND_TRIES:
                        raise BenchError(f"{len(left)} {kind}s without a receipt after {SEND_TRIES} sends")
                    await queue.put(Job(kind, left, job.tries + 1))
                    continue
                unsettled -= 1
                if unsettled == 0:
                    for _ in range(self.lanes):
                        queue.put_nowait(None)

        if ranges:
            await _all(feed(), *(lane(n) for n in range(self.lanes)))

    async def transfer_phase(self) -> None:
        """Fire-and-forget transfers until the chain's count reaches the target: at most
        --pending accepted and not executed at a time (the first node's executed_txs)."""
        self.phase = "transfer"
        exec_before = self.executed
        sent_total = 0  # sent (counted before the call, so lanes do not overshoot) and not refused
        queue: asyncio.Queue[list[bytes]] = asyncio.Queue(maxsize=self.lanes)

        def in_flight() -> int:
            return sent_total - (self.executed - exec_before)

        def wanted() -> int:
            return self.target - self.chain_txs - max(0, in_flight())

        async def feed() -> None:
            ahead: list[asyncio.Future[list[tuple[bytes, bytes]]]] = []
            while True:
                while len(ahead) <= 2 * self.args.signers:
                    ahead.append(self._sign("transfer", 0, self.args.batch))
                await queue.put([e for e, _ in await ahead.pop(0)])

        async def lane(n: int) -> None:
            nonlocal sent_total
            while True:
                envelopes = await queue.get()
                while wanted() > 0 and in_flight() + min(len(envelopes), wanted()) > self.args.pending:
                    self.room.clear()
                    await self.room.wait()
                if wanted() <= 0:
                    return
                batch = envelopes[: wanted()]
                sent_total += len(batch)
                _, refused = await self._submit(n, batch)
                sent_total -= refused

        feeder = asyncio.ensure_future(feed())
        try:
            await _all(*(lane(n) for n in range(self.lanes)))
        finally:
            feeder.cancel()
        # What was accepted executes, or stalls (lost, after a view change say): then stop waiting.
        last, since = in_flight(), time.monotonic()
        while in_flight() > 0 and time.monotonic() - since < DRAIN_STALL_S:
            self.room.clear()
            await self.room.wait()
            if in_flight() != last:
                last, since = in_flight(), time.monotonic()
        if in_flight() > 0:
            log(f"build: {in_flight()} accepted transfers not executed {DRAIN_STALL_S:.0f}s on: lost")


async def _all(*coros: Coroutine[Any, Any, None]) -> None:
    """Run them together; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _load(
    c: Consortium, state: BenchState, args: argparse.Namespace, pool: ProcessPoolExecutor, path: Path
) -> Loader:
    loader = Loader(c, state, args, pool)
    watcher = asyncio.create_task(loader.watch())
    try:
        while loader.exec_start is None:  # the first node's counter, before anything is sent
            await asyncio.sleep(POLL_S)
        n = len(state.accounts)
        if state.opened < n:
            await loader.receipted_phase("open", state.opened, n)
            state.opened = n
            state.save(path)
        if state.minted < n:
            await loader.receipted_phase("mint", state.minted, n)
            state.minted = n
            state.save(path)
        if loader.chain_txs < loader.target:
            await loader.transfer_phase()
        loader.progress()
    finally:
        loader.stopped = True
        watcher.cancel()
        await loader.close()
    return loader


def build(args: argparse.Namespace) -> dict[str, Any]:
    c = Consortium(args.dir)
    if not c.exists():
        log(f"build: new consortium of {args.banks} banks in {c.dir}")
        c.up(args.banks, insecure=args.insecure)
    else:
        down = [b for b in c.banks() if c.pid(b) is None]
        if down:
            log(f"build: starting {', '.join(down)} in {c.dir}")
            for bank in down:
                c.start(bank)
            c.wait_healthy(down)
    genesis = c.genesis()
    banks = c.banks()
    if args.accounts < 2 * len(banks):
        raise BenchError(f"--accounts must be at least 2 per bank ({2 * len(banks)}): transfers need a payee")
    asset_of = {m.member_id: m.assets[0] for m in genesis.members}
    path = c.dir / STATE_FILE
    state = BenchState.load(path, genesis.chain_id)
    if len(state.accounts) < args.accounts:
        state.add_accounts(args.accounts, banks, asset_of)
        state.save(path)  # the keys are on disk before any opening is sent
    operator_seeds = {asset_of[b]: load_key(c.operator_key_path(b)).key.seed.hex() for b in banks}
    operator0 = load_key(c.operator_key_path(banks[0])).key
    reader = SigningKey(bytes.fromhex(state.accounts[0][2])) if state.opened else operator0
    count_chain(c, state, reader)
    state.save(path)
    log(
        f"build: chain holds {state.counted_txs} txs at height {state.counted_height}; "
        f"{len(state.accounts)} accounts ({state.opened} known open, {state.minted} funded); "
        f"target {args.txs} txs"
    )
    t0 = time.monotonic()
    start_txs = state.counted_txs
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        args.signers,
        ctx,
        initializer=_init_signer,
        initargs=(genesis.chain_id, state.accounts, operator_seeds),
    ) as pool:
        while True:
            asyncio.run(_load(c, state, args, pool, path))
            reader = SigningKey(bytes.fromhex(state.accounts[0][2])) if state.opened else operator0
            count_chain(c, state, reader)
            state.save(path)
            if state.counted_txs >= args.txs:
                break
            log(f"build: chain holds {state.counted_txs} of {args.txs} txs; going on")
    seconds = time.monotonic() - t0
    records = c.status_records()
    out = {
        "accounts": len(state.accounts),
        "txs": state.counted_txs,
        "height": state.counted_height,
        "seconds": round(seconds, 1),
        "tx_per_s": round((state.counted_txs - start_txs) / seconds, 1) if seconds > 0 else None,
        "txs_this_run": state.counted_txs - start_txs,
        "disk_bytes": {str(r["bank"]): r["disk_bytes"] for r in records},
        "heights": {str(r["bank"]): r["height"] for r in records},
    }
    if args.stop:
        for line in c.down():
            log(f"build: {line}")
    return out


# --- measure ----------------------------------------------------------------------------------


def _statuses(c: Consortium, banks: Sequence[str]) -> dict[str, api_pb2.NodeStatus]:
    out = {}
    for bank in banks:
        st = c.node_status(bank, timeout_s=5.0)
        if st is not None:
            out[bank] = st
    return out


def idle_target(c: Consortium, others: Sequence[str]) -> tuple[int, bytes]:
    """The others' common (height, state root): they must all answer and agree (idle)."""
    deadline = time.monotonic() + IDLE_WAIT_S
    while True:
        sts = _statuses(c, others)
        points = {(st.last_executed, st.state_root) for st in sts.values()}
        if len(sts) == len(others) and len(points) == 1:
            height, root = points.pop()
            return int(height), bytes(root)
        if time.monotonic() > deadline:
            seen = {b: (st.last_executed, st.state_root.hex()[:16]) for b, st in sts.items()}
            raise BenchError(
                f"the other nodes are not all up at one height and root after {IDLE_WAIT_S:.0f}s "
                f"(is a load running?): {seen}, {len(others) - len(sts)} not answering"
            )
        time.sleep(0.5)


def state_sync_key_known(config_text: str) -> bool:
    """Whether this checkout's node config loader accepts ``"state_sync": false``."""
    doc = json.loads(config_text)
    doc["state_sync"] = False
    with tempfile.TemporaryDirectory(prefix="ssb-config-") as tmp:
        copy = Path(tmp) / "config.json"
        copy.write_text(json.dumps(doc))
        try:
            load_node_config(copy)
        except ConfigError:
            return False
    return True


def state_synced_event(events_log: Path, offset: int) -> dict[str, Any] | None:
    """The fields of the last ``state_synced`` event written past ``offset``, or None."""
    try:
        with events_log.open("rb") as f:
            if f.seek(0, os.SEEK_END) >= offset:
                f.seek(offset)
            else:  # rotated since: the new file is all past the offset
                f.seek(0)
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    found: dict[str, Any] | None = None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "state_synced":
            found = {k: v for k, v in record.items() if k not in ("node", "event")}
    return found


def rejoin(c: Consortium, bank: str, others: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """Wipe, start and time the bank's node until it has rejoined the idle others."""
    target_height, target_root = idle_target(c, others)
    config = c.node_config(bank)
    events_log = config.log_path or c.node_dir(bank) / "events.log"
    log(f"measure: {c.wipe(bank)}; target height {target_height}, root {target_root.hex()[:16]}")
    offset = events_log.stat().st_size if events_log.exists() else 0
    t0 = time.monotonic()
    c.start(bank)
    last_print = t0
    while True:
        now = time.monotonic()
        st = c.node_status(bank, timeout_s=2.0)
        if st is not None and st.last_executed >= target_height:
            if st.last_executed == target_height:
                same_root = st.state_root == target_root
            else:  # the others moved on (they should not: idle); compare at equal height
                ref = [o for o in _statuses(c, others).values() if o.last_executed == st.last_executed]
                same_root = bool(ref) and ref[0].state_root == st.state_root
            if same_root and c.health(bank, timeout_s=2.0):
                seconds = time.monotonic() - t0
                break
        if c.pid(bank) is None:
            raise BenchError(f"{bank} exited while rejoining; its stderr.log ends:\n{c._stderr_tail(bank)}")
        if now - t0 > timeout_s:
            at = "no answer" if st is None else f"height {st.last_executed}"
            raise BenchError(f"{bank} has not rejoined after {timeout_s:.0f}s ({at}, target {target_height})")
        if now - last_print >= MEASURE_PROGRESS_S:
            last_print = now
            at = "not answering" if st is None else f"height {st.last_executed}"
            log(f"measure: {bank} {at} of {target_height} after {now - t0:.0f}s")
        time.sleep(0.2)  # polling a remote node's status: there is no event to await
    return {
        "seconds": round(seconds, 2),
        "height": int(st.last_executed),
        "data_bytes_after": disk_bytes(config.data_dir),
        "state_synced": state_synced_event(events_log, offset),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    c = Consortium(args.dir)
    if not c.exists():
        raise BenchError(f"no consortium in {c.dir}")
    banks = c.banks()
    if args.bank not in banks:
        raise BenchError(f"no bank {args.bank} in {c.dir} (banks: {', '.join(banks)})")
    others = [b for b in banks if b != args.bank]
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"snapshot", "replay"}:
        raise BenchError(f"--modes: snapshot and/or replay, got {args.modes!r}")
    height, _ = idle_target(c, others)
    out: dict[str, Any] = {"bank": args.bank, "height": height, "modes": {}}
    config_path = c.config_path(args.bank)
    for mode in modes:
        original = config_path.read_text()
        switched = False
        try:
            if mode == "replay":
                if state_sync_key_known(original):
                    doc = json.loads(original)
                    doc["state_sync"] = False
                    config_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
                    switched = True
                else:
                    log("measure: node/config.py does not know state_sync: no state sync to switch off")
            log(f"measure: {mode}: wiping and starting {args.bank}")
            result = rejoin(c, args.bank, others, args.timeout)
        finally:
            config_path.write_text(original)
        result["state_sync_off_written"] = switched if mode == "replay" else None
        out["modes"][mode] = result
        log(f"measure: {mode}: {json.dumps(result)}")
    return out


# --- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="create or resume the consortium and load it")
    p_build.add_argument("--dir", type=Path, required=True)
    p_build.add_argument("--accounts", type=int, default=100_000)
    p_build.add_argument("--txs", type=int, default=1_000_000, help="transactions in the chain, at least")
    p_build.add_argument("--banks", type=int, default=4, help="banks of a new consortium")
    p_build.add_argument("--insecure", action="store_true", help="a new consortium runs plaintext")
    p_build.add_argument("--batch", type=int, default=500, help="transactions per SubmitBatch")
    p_build.add_argument("--lanes", type=int, default=2, help="batches in flight per bank's API port")
    p_build.add_argument(
        "--pending", type=int, default=6_000, help="transfers accepted and not executed, at most"
    )
    p_build.add_argument("--signers", type=int, default=1, help="signing processes")
    p_build.add_argument("--stop", action="store_true", help="stop the nodes at the end")
    p_measure = sub.add_parser("measure", help="wipe one node and time its rejoin, per mode")
    p_measure.add_argument("--dir", type=Path, required=True)
    p_measure.add_argument("--bank", required=True)
    p_measure.add_argument("--modes", default="snapshot,replay")
    p_measure.add_argument("--timeout", type=float, default=3600.0, help="per mode, seconds")
    p_measure.add_argument("--json", action="store_true", help="the result on one line")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    try:
        if args.command == "build":
            if args.accounts < 2 or args.txs < 1 or args.batch < 1 or args.lanes < 1 or args.signers < 1:
                parser.error("--accounts >= 2; --txs, --batch, --lanes, --signers >= 1")
            out = build(args)
            print(json.dumps(out), flush=True)
        else:
            out = measure(args)
            print(json.dumps(out) if args.json else json.dumps(out, indent=2), flush=True)
    except (BenchError, ConsortiumError, OSError) as exc:
        log(f"state_sync_bench: {args.command} failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
