#!/usr/bin/env python3
"""Time reading a whole chain from one node: one GetBlocks range call per reply against one
GetBlock call per block (issue 21). Starts a 4-bank consortium in a temporary directory (or
uses --dir), commits until the chain has --blocks blocks (one transaction per block), then reads
blocks 1..N from one node each way, --rounds times, interleaved. Prints one JSON line.

    scripts/read_figures.py --blocks 2000 [--bank BANK-A] [--rounds 3] [--dir ./consortium]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from consortium import Consortium  # noqa: E402

from client.models import Committed  # noqa: E402
from client.sdk import LedgerClient  # noqa: E402
from client.verify import verify_block  # noqa: E402
from ledger import readtoken  # noqa: E402
from ledger.crypto import SigningKey, load_key  # noqa: E402
from ledger.v1 import api_pb2, api_pb2_grpc  # noqa: E402

MESSAGE_BYTES_MAX = 64 << 20
TIMEOUT_S = 30.0


def fill(c: Consortium, blocks: int) -> int:
    """Commit one account opening at a time until the chain is ``blocks`` high; its height."""
    bank = c.banks()[0]
    operator = load_key(c.operator_key_path(bank)).key
    owner = SigningKey.generate().public_key
    with LedgerClient(c.genesis_path, timeout_s=TIMEOUT_S) as client:
        height = client.status().last_executed
        i = 0
        while height < blocks:
            i += 1
            tx = client.tx.open_account(bank, f"fill-{time.time_ns()}-{i}", owner).signed_by(operator)
            outcome = client.submit(tx)
            if not isinstance(outcome, Committed):
                raise RuntimeError(f"fill: {outcome}")
            height = max(height, outcome.height)
    return height


def read_md(c: Consortium, method: str) -> tuple[tuple[str, bytes], ...]:
    """A read token by the first bank's operator key: whole blocks are for operators."""
    operator = load_key(c.operator_key_path(c.banks()[0])).key
    return readtoken.metadata(operator, c.genesis().chain_id, method, readtoken.SCOPE_ALL)


def per_block(stub: api_pb2_grpc.LedgerServiceStub, last: int, verify: bool, c: Consortium) -> float:
    started = time.perf_counter()
    genesis = c.genesis() if verify else None
    md = read_md(c, "GetBlock")  # one token for the run (valid a minute)
    for height in range(1, last + 1):
        resp = stub.GetBlock(api_pb2.GetBlockRequest(height=height), timeout=TIMEOUT_S, metadata=md)
        if genesis is not None:
            verify_block(genesis, resp)
    return time.perf_counter() - started


def ranged(stub: api_pb2_grpc.LedgerServiceStub, last: int, verify: bool, c: Consortium) -> tuple[float, int]:
    started = time.perf_counter()
    genesis = c.genesis() if verify else None
    height, calls = 1, 0
    md = read_md(c, "GetBlocks")
    while height <= last:
        req = api_pb2.GetBlocksRequest(from_height=height, max_blocks=512)
        resp = stub.GetBlocks(req, timeout=TIMEOUT_S, metadata=md)
        calls += 1
        if genesis is not None:
            for block in resp.blocks:
                verify_block(genesis, block)
        if resp.next_height == height:
            raise RuntimeError(f"no block from {height}")
        height = resp.next_height
    return time.perf_counter() - started, calls


def measure(c: Consortium, bank: str, last: int, rounds: int) -> dict[str, object]:
    options = [("grpc.max_receive_message_length", MESSAGE_BYTES_MAX)]
    out: dict[str, list[float]] = {
        "get_block_s": [],
        "get_blocks_s": [],
        "get_block_verified_s": [],
        "get_blocks_verified_s": [],
    }
    calls = 0
    with c.channel(c.member(bank).api_address, options) as channel:
        stub = api_pb2_grpc.LedgerServiceStub(channel)
        for _ in range(rounds):  # interleaved, so a noisy spell hits both
            out["get_block_s"].append(per_block(stub, last, False, c))
            seconds, calls = ranged(stub, last, False, c)
            out["get_blocks_s"].append(seconds)
        out["get_block_verified_s"].append(per_block(stub, last, True, c))
        out["get_blocks_verified_s"].append(ranged(stub, last, True, c)[0])
    figures: dict[str, object] = {k: [round(v, 3) for v in vs] for k, vs in out.items()}
    figures.update(bank=bank, blocks=last, get_blocks_calls=calls)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=2000)
    parser.add_argument("--bank", default="BANK-A")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="an existing consortium (else a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="read-figures-") as tmp:
        c = Consortium(args.dir or Path(tmp) / "consortium")
        try:
            if not c.exists() or any(c.pid(b) is None for b in c.banks()):
                c.up(4)
            last = fill(c, args.blocks)
            print(json.dumps(measure(c, args.bank, last, args.rounds)), flush=True)
        finally:
            if args.dir is None:
                c.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
