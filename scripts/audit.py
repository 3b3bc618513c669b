#!/usr/bin/env python3
"""Audit a running consortium without trusting any node's own claims.

For every node: fetch every block it has (GetBlocks, a range per call), verify each commit certificate and the
batch against the genesis keys (client.verify), and compare block digests across nodes. Then
replay the certified chain through a fresh in-memory ledger (node.app) and check that the
results the nodes served and the state roots they attested are the ones the replay computes,
that no transaction id executed twice, and that per asset balances plus held funds equal minted
minus redeemed with no balance below zero. Given the acknowledged transactions of a load run,
check that each one is on every node with the result its client was shown.

    scripts/audit.py --dir ./consortium [--operator-key FILE] [--json]

The auditor reads whole blocks, which nodes serve only to a member's operator (or node) key
(docs/ARCHITECTURE.md, "Who may read"): --operator-key, by default BANK-A's operator key in the
consortium directory (banks/BANK-A/BANK-A.operator.key).

Exit status: 0 when every check passes, 1 when any fails, 2 when the audit could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client.verify import ReceiptError, VerifiedBlock, verify_block  # noqa: E402
from ledger import readtoken, tls  # noqa: E402
from ledger.crypto import SigningKey, load_key  # noqa: E402
from ledger.genesis import Genesis, load_genesis  # noqa: E402
from ledger.v1 import api_pb2, api_pb2_grpc, tx_pb2  # noqa: E402
from node.app.ledger import Ledger  # noqa: E402
from node.storage.memory import MemoryStore  # noqa: E402

RPC_TIMEOUT_S = 10.0
BLOCKS_PER_CALL = 512  # GetBlocks: what a node serves at most per reply
MESSAGE_BYTES_MAX = 64 << 20


@dataclass
class AuditReport:
    heights: dict[str, int]  # last executed height each node reported
    audited_height: int  # blocks replayed (the longest verified chain)
    divergent_nodes: int = 0  # nodes whose chain or final state differs from the reference
    lost: int = 0  # acknowledged transactions missing, or with another result
    duplicated: int = 0  # transaction ids executed (not just answered) more than once
    conservation_violations: int = 0
    replay_mismatches: int = 0  # served results or attested roots the replay disagrees with
    certificate_failures: int = 0
    unreachable: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the first few, for people

    @property
    def ok(self) -> bool:
        return not (
            self.divergent_nodes
            or self.lost
            or self.duplicated
            or self.conservation_violations
            or self.replay_mismatches
            or self.certificate_failures
            or self.unreachable
        )

    def note(self, problem: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(problem)


def fetch_chain(
    genesis: Genesis,
    stub: api_pb2_grpc.LedgerServiceStub,
    report: AuditReport,
    name: str,
    reader: SigningKey,
) -> list[VerifiedBlock] | None:
    """Every block a node has (GetBlocks, a range per call, read with ``reader``: an
    operator's key), verified; None when the node cannot be reached."""
    try:
        status = stub.GetStatus(api_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT_S)
    except grpc.RpcError as exc:
        report.note(f"{name}: unreachable ({exc.code().name})")
        return None
    last = int(status.last_executed)
    report.heights[name] = last
    chain: list[VerifiedBlock] = []
    while len(chain) < last:
        height = len(chain) + 1
        try:
            response = stub.GetBlocks(
                api_pb2.GetBlocksRequest(from_height=height, max_blocks=BLOCKS_PER_CALL),
                timeout=RPC_TIMEOUT_S,
                metadata=readtoken.metadata(reader, genesis.chain_id, "GetBlocks", readtoken.SCOPE_ALL),
            )
        except grpc.RpcError as exc:
            report.note(f"{name}: blocks from {height} not served ({exc.code().name})")
            return chain
        if not response.blocks:
            report.note(f"{name}: served no block from {height} (it reported height {last})")
            return chain
        for block in response.blocks:
            try:
                verified = verify_block(genesis, block)
            except ReceiptError as exc:
                report.certificate_failures += 1
                report.note(f"{name}: block {height} does not verify: {exc}")
                return chain
            if not verified.bodies:
                report.note(
                    f"{name}: served block {height} without bodies: the audit key is not an operator's"
                )
                return None
            if verified.block.header.height != height:
                report.certificate_failures += 1
                report.note(f"{name}: asked for block {height}, got {verified.block.header.height}")
                return chain
            chain.append(verified)
            height += 1
    return chain[:last]


def compare_chains(chains: Mapping[str, list[VerifiedBlock]], report: AuditReport) -> list[VerifiedBlock]:
    """The reference chain (the longest agreed by the most nodes); counts divergent nodes."""
    height_max = max((len(c) for c in chains.values()), default=0)
    reference: list[VerifiedBlock] = []
    divergent: set[str] = set()
    for i in range(height_max):
        votes = Counter(c[i].block.digest for c in chains.values() if len(c) > i)
        digest, _ = votes.most_common(1)[0]
        for name, chain in chains.items():
            if len(chain) > i and chain[i].block.digest != digest:
                if name not in divergent:
                    report.note(f"{name}: block {i + 1} differs from the other nodes'")
                divergent.add(name)
        reference.append(next(c[i] for c in chains.values() if len(c) > i and c[i].block.digest == digest))
    for name, chain in chains.items():
        if len(chain) < height_max and name not in divergent:
            report.note(f"{name}: at height {len(chain)}, the others at {height_max}")
            divergent.add(name)
    report.divergent_nodes = len(divergent)
    return reference


def replay(
    genesis: Genesis, reference: list[VerifiedBlock], report: AuditReport
) -> dict[bytes, tx_pb2.TxResult]:
    """Re-execute the chain; return the first result of every transaction id."""
    ledger = Ledger(genesis)
    store = MemoryStore()
    first: dict[bytes, tx_pb2.TxResult] = {}
    for block in reference:
        header = block.block.header
        with store.write() as w:
            out = ledger.execute(w, int(header.height), int(header.timestamp_ms), block.envelopes)
        if block.attested is not None and block.attested.state_root != out.state_root:
            report.replay_mismatches += 1
            report.note(f"block {header.height}: attested state root differs from the replay's")
        if block.results:
            served = [r.SerializeToString(deterministic=True) for r in block.results]
            if list(out.results) != served:
                report.replay_mismatches += 1
                report.note(f"block {header.height}: served results differ from the replay's")
        for raw in out.results:
            result = tx_pb2.TxResult.FromString(raw)
            fresh = result.height == header.height
            if fresh and result.final:
                if result.tx_id in first and first[result.tx_id].height != header.height:
                    report.duplicated += 1
                    report.note(f"tx {result.tx_id.hex()[:16]} executed again at block {header.height}")
                first.setdefault(bytes(result.tx_id), result)
    with store.read() as r:
        violations = ledger.check_invariants(r)
    report.conservation_violations = len(violations)
    for v in violations[:5]:
        report.note(f"invariant: {v}")
    return first


def audit(
    genesis: Genesis,
    endpoints: Mapping[str, str],
    reader: SigningKey,
    acknowledged: Mapping[bytes, int] | None = None,
    insecure: bool = False,
) -> AuditReport:
    """Audit the nodes at endpoints (name -> host:port), reading blocks with ``reader`` (a
    member's operator key). acknowledged: tx_id -> result code. Over TLS, each node verified
    against genesis, unless ``insecure`` (plaintext nodes)."""
    report = AuditReport(heights={}, audited_height=0)
    chains: dict[str, list[VerifiedBlock]] = {}
    options = [("grpc.max_receive_message_length", MESSAGE_BYTES_MAX)]
    for name, address in sorted(endpoints.items()):
        with tls.channel(genesis, address, options, insecure=insecure) as channel:
            chain = fetch_chain(genesis, api_pb2_grpc.LedgerServiceStub(channel), report, name, reader)
        if chain is None:
            report.unreachable.append(name)
        else:
            chains[name] = chain
    reference = compare_chains(chains, report)
    report.audited_height = len(reference)
    first = replay(genesis, reference, report)
    for tx_id, code in (acknowledged or {}).items():
        got = first.get(tx_id)
        if got is None or int(got.code) != code:
            report.lost += 1
            what = "missing" if got is None else f"{tx_pb2.ResultCode.Name(got.code)} on the nodes"
            report.note(f"acknowledged tx {tx_id.hex()[:16]} (code {code}) is {what}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=Path("consortium"), help="consortium directory")
    parser.add_argument(
        "--operator-key",
        type=Path,
        default=None,
        help="a member's operator key file to read blocks with (default: DIR/banks/BANK-A/BANK-A.operator.key)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    parser.add_argument("--insecure", action="store_true", help="plaintext nodes (debugging only)")
    args = parser.parse_args(argv)
    try:
        genesis = load_genesis(args.dir / "genesis.json")
        reader = load_key(args.operator_key or args.dir / "banks" / "BANK-A" / "BANK-A.operator.key").key
    except Exception as exc:  # any failure to load is reported, not traced
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    endpoints = {m.member_id: m.api_address for m in genesis.members}
    report = audit(genesis, endpoints, reader, insecure=args.insecure)
    if args.json:
        print(
            json.dumps({**asdict(report), "ok": report.ok, "seconds": round(time.monotonic() - started, 2)})
        )
    else:
        for problem in report.problems:
            print(f"  ! {problem}")
        print(
            f"audited {report.audited_height} blocks on {len(report.heights)} nodes: "
            f"divergent={report.divergent_nodes} duplicated={report.duplicated} "
            f"conservation_violations={report.conservation_violations} "
            f"replay_mismatches={report.replay_mismatches} certificate_failures={report.certificate_failures} "
            f"unreachable={len(report.unreachable)} -> {'OK' if report.ok else 'FAILED'}"
        )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
