#!/usr/bin/env python3
"""Measure the local 4-node consortium in one run and print the figures:

  1. committed tx/s and p50/p99 submit-to-commit latency (receipt attested) under load
  2. time from SIGKILL of the primary to the first commit in the new view
  3. catch-up speed of a node restarted after missing many blocks (blocks/s, tx/s)

    python scripts/node_figures.py [--txs 6000] [--batch 200] [--clients 4] [--dir PATH]

Starts its own consortium in a temp dir (or --dir, which must not exist) and always stops it.
Transactions are signed up front (sim/factory.py) so client-side signing is not measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from consortium import Consortium  # noqa: E402

from ledger import readtoken  # noqa: E402
from ledger.crypto import load_key  # noqa: E402
from ledger.v1 import api_pb2, api_pb2_grpc, tx_pb2  # noqa: E402
from sim.factory import Factory  # noqa: E402


def _factory(c: Consortium) -> Factory:
    g = c.genesis()
    fx = Factory(banks=g.n, chain_id=g.chain_id, seed=time.time_ns() % 1_000_000)
    fx.genesis = g
    fx.operators = {b: load_key(c.operator_key_path(b)).key for b in c.banks()}
    return fx


def _stub(c: Consortium, bank: str) -> api_pb2_grpc.LedgerServiceStub:
    return api_pb2_grpc.LedgerServiceStub(c.ledger_channel(bank))


def _commit(
    c: Consortium, bank: str, envs: list[bytes], timeout_s: float = 30
) -> list[tuple[api_pb2.Receipt, float]]:
    """Submit a batch; (receipt, seconds from submit to receipt) for each."""
    s = _stub(c, bank)
    t0 = time.perf_counter()
    resp = s.SubmitBatch(
        api_pb2.SubmitBatchRequest(envelopes=[tx_pb2.Envelope.FromString(e) for e in envs]), timeout=timeout_s
    )
    ids = [i.tx_id for i in resp.items if i.accepted]
    out = []
    for r in s.WaitReceipts(
        api_pb2.WaitReceiptsRequest(tx_ids=ids, timeout_ms=int(timeout_s * 1000)), timeout=timeout_s + 5
    ):
        out.append((r, time.perf_counter() - t0))
    if len(out) != len(envs):
        raise SystemExit(f"only {len(out)} of {len(envs)} committed at {bank}")
    return out


def _pay(fx: Factory, n: int) -> list[bytes]:
    return [fx.transfer([("alice", "bob", "USD.BANK-A", 1)]) for _ in range(n)]


def _status(c: Consortium, bank: str) -> api_pb2.NodeStatus:
    st = c.node_status(bank)
    if st is None:
        raise SystemExit(f"{bank} does not answer GetStatus")
    return st


def throughput(c: Consortium, fx: Factory, txs: int, batch: int, clients: int) -> None:
    banks = c.banks()
    work = [_pay(fx, batch) for _ in range(txs // batch)]
    latencies: list[float] = []
    lock = threading.Lock()
    h0 = _status(c, banks[0]).last_executed

    def client(k: int) -> None:
        for i in range(k, len(work), clients):
            got = _commit(c, banks[k % len(banks)], work[i])
            with lock:
                latencies.extend(t for _, t in got)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    blocks = _status(c, banks[0]).last_executed - h0
    q = statistics.quantiles(latencies, n=100)
    print(
        f"throughput: {len(latencies)} tx in {elapsed:.2f}s = {len(latencies) / elapsed:.0f} tx/s committed "
        f"({blocks} blocks, {clients} clients x SubmitBatch({batch}), round-robin over {len(banks)} nodes)"
    )
    print(f"latency submit->attested receipt: p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms")


def idle_latency(c: Consortium, fx: Factory, count: int = 100) -> None:
    """One transaction at a time: the latency floor without queueing."""
    latencies = [_commit(c, c.banks()[i % 4], _pay(fx, 1))[0][1] for i in range(count)]
    q = statistics.quantiles(latencies, n=100)
    print(
        f"latency, one tx at a time ({count} sequential): p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms"
    )


def primary_failover(c: Consortium, fx: Factory) -> tuple[str, int]:
    """Kill the primary; returns it and the height it had reached."""
    banks = c.banks()
    st = _status(c, banks[0])
    primary = c.genesis().members[st.primary].member_id
    primary_height = _status(c, primary).last_executed
    backup = next(b for b in banks if b != primary)
    env = _pay(fx, 1)
    t0 = time.perf_counter()
    c.kill(primary)
    ((receipt, _),) = _commit(c, backup, env)
    t_commit = time.perf_counter()
    new = _status(c, backup)
    print(
        f"primary failover: SIGKILL {primary} (view {st.view}) -> first commit in view {new.view} "
        f"(height {receipt.result.height}) {t_commit - t0:.2f}s later "
        f"(view_change_timeout_ms={c.node_limits().view_change_timeout_ms})"
    )
    return primary, primary_height


def catch_up(c: Consortium, fx: Factory, victim: str, victim_height: int, blocks_target: int) -> None:
    live = [b for b in c.banks() if b != victim]
    while _status(c, live[0]).last_executed - victim_height < blocks_target:
        _commit(c, live[0], _pay(fx, 20))  # small batches, one after another: many blocks
    top = _status(c, live[0]).last_executed
    missed_txs = 0
    s = _stub(c, live[0])
    h = victim_height + 1
    while h <= top:  # the missed blocks, a range per call
        md = readtoken.metadata(fx.operators[live[0]], fx.chain_id, "GetBlocks", readtoken.SCOPE_ALL)
        reply = s.GetBlocks(
            api_pb2.GetBlocksRequest(from_height=h, max_blocks=top - h + 1), timeout=5, metadata=md
        )
        if not reply.blocks:
            raise SystemExit(f"{live[0]} served no block from {h} (its last: {reply.last_height})")
        for block in reply.blocks:
            missed_txs += tx_pb2.BlockHeader.FromString(block.block.header).tx_count
        h = reply.next_height
    t0 = time.perf_counter()
    c.start(victim)
    c.wait_healthy([victim])
    t_healthy = time.perf_counter()
    nudges = 0
    while True:
        st = c.node_status(victim)
        if st is not None and st.last_executed >= top:
            break
        if time.perf_counter() - t0 > 120:
            raise SystemExit(f"{victim} did not catch up to {top}")
        if nudges < 3:  # a little traffic shows the restarted node that the others moved on
            nudges += 1
            _commit(c, live[1], _pay(fx, 1))
        time.sleep(0.01)  # polling a remote process's status
    elapsed = time.perf_counter() - t_healthy
    blocks = top - victim_height
    print(
        f"catch-up: {victim} restarted {blocks} blocks / {missed_txs} tx behind; caught up "
        f"{elapsed:.2f}s after it was healthy ({t_healthy - t0:.2f}s process start to healthy): "
        f"{blocks / elapsed:.0f} blocks/s, {missed_txs / elapsed:.0f} tx/s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--txs", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--catch-up-blocks", type=int, default=300)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        c = Consortium(args.dir or Path(tmp) / "consortium")
        try:
            c.up(4)
            fx = _factory(c)
            _commit(c, "BANK-A", [fx.open_account("BANK-A", "alice", fx.client("alice"))])
            _commit(c, "BANK-B", [fx.open_account("BANK-B", "bob", fx.client("bob"))])
            _commit(c, "BANK-A", [fx.mint("USD.BANK-A", "alice", 10**12)])
            idle_latency(c, fx)
            throughput(c, fx, args.txs, args.batch, args.clients)
            killed, height = primary_failover(c, fx)
            catch_up(c, fx, killed, height, args.catch_up_blocks)
        finally:
            for line in c.down():
                print(f"down: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
