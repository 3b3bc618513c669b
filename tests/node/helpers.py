"""Shared pieces of the multi-process node tests: start a consortium in a temp dir (always
stopped by pid afterwards), sign transactions with its keys, submit, and await conditions by
polling node status against a bounded deadline."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import grpc

from ledger import readtoken
from ledger.crypto import SigningKey, load_key
from ledger.v1 import api_pb2, api_pb2_grpc, tx_pb2
from node.storage.prune import Retention
from sim.factory import Factory

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

from consortium import Consortium  # noqa: E402

__all__ = ["Consortium"]

T = TypeVar("T")
WAIT_S = 20.0


@contextmanager
def running_consortium(
    directory: Path, limits: dict[str, int] | None = None, retention: Retention | None = None
) -> Iterator[Consortium]:
    """A 4-bank consortium; every node it started is stopped by pid on exit, even on failure."""
    c = Consortium(directory)
    try:
        if retention is not None:
            c.init(4, limits=limits)
            c.set_retention(retention)
        c.up(4, limits=limits)
        yield c
    finally:
        report = c.down()
        # down() stops what its pid files name; also make sure no child we spawned survives.
        for proc in list(c._procs.values()):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert all("SIGKILL" not in line for line in report), f"a node ignored SIGTERM: {report}"


def factory_for(c: Consortium) -> Factory:
    """sim/factory.py's signer, re-keyed to the consortium's chain and operator keys."""
    genesis = c.genesis()
    fx = Factory(banks=genesis.n, chain_id=genesis.chain_id, seed=int(time.time_ns() % 1_000_000))
    fx.genesis = genesis
    fx.operators = {b: load_key(c.operator_key_path(b)).key for b in c.banks()}
    return fx


def stub(c: Consortium, bank: str) -> api_pb2_grpc.LedgerServiceStub:
    return api_pb2_grpc.LedgerServiceStub(c.ledger_channel(bank))


def read_md(
    c: Consortium, method: str, scope: str = readtoken.SCOPE_ALL, key: SigningKey | None = None
) -> tuple[tuple[str, bytes], ...]:
    """gRPC metadata with a fresh read token for one call: by ``key``, else BANK-A's operator
    (who may read blocks, supply, any transaction and BANK-A's accounts)."""
    reader = key or load_key(c.operator_key_path("BANK-A")).key
    return readtoken.metadata(reader, c.genesis().chain_id, method, scope)


def envelope(raw: bytes) -> tx_pb2.Envelope:
    return tx_pb2.Envelope.FromString(raw)


def tx_id(raw: bytes) -> bytes:
    return Factory.tx_id(raw)


def submit_all(
    c: Consortium, bank: str, envelopes: Sequence[bytes], timeout_s: float = WAIT_S
) -> list[api_pb2.Receipt]:
    """SubmitBatch to one node and stream back every receipt (in commit order)."""
    s = stub(c, bank)
    resp = s.SubmitBatch(
        api_pb2.SubmitBatchRequest(envelopes=[envelope(e) for e in envelopes]), timeout=timeout_s
    )
    bad = [i for i in resp.items if not i.accepted]
    assert not bad, f"refused: {bad[:3]}"
    ids = [i.tx_id for i in resp.items]
    receipts = list(
        s.WaitReceipts(
            api_pb2.WaitReceiptsRequest(tx_ids=ids, timeout_ms=int(timeout_s * 1000)), timeout=timeout_s + 5
        )
    )
    assert {r.result.tx_id for r in receipts} == set(ids), f"{len(receipts)} of {len(ids)} receipts"
    return receipts


def submit_one(c: Consortium, bank: str, raw: bytes, timeout_s: float = WAIT_S) -> api_pb2.Receipt:
    s = stub(c, bank)
    resp = s.Submit(api_pb2.SubmitRequest(envelope=envelope(raw)), timeout=timeout_s)
    receipt: api_pb2.Receipt = s.WaitReceipt(
        api_pb2.WaitReceiptRequest(tx_id=resp.tx_id, timeout_ms=int(timeout_s * 1000)), timeout=timeout_s + 5
    )
    return receipt


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = WAIT_S) -> T:
    """Poll probe until it returns a value (not None/False); fail naming `what` past the bound."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)  # polling remote processes' status: there is no event to subscribe to


def statuses(c: Consortium, banks: Sequence[str]) -> dict[str, api_pb2.NodeStatus]:
    out = {}
    for bank in banks:
        st = c.node_status(bank)
        if st is not None:
            out[bank] = st
    return out


def wait_converged(
    c: Consortium, banks: Sequence[str], min_height: int, timeout_s: float = WAIT_S
) -> dict[str, api_pb2.NodeStatus]:
    """All banks at the same height >= min_height with the same state root and block hash."""

    def probe() -> dict[str, api_pb2.NodeStatus] | None:
        sts = statuses(c, banks)
        if len(sts) != len(banks):
            return None
        heads = {(s.last_executed, s.state_root, s.last_block_hash) for s in sts.values()}
        if len(heads) == 1 and next(iter(heads))[0] >= min_height:
            return sts
        return None

    return wait_for(f"{list(banks)} to converge at height >= {min_height}", probe, timeout_s)


def primary_of(c: Consortium, banks: Sequence[str]) -> str:
    """The primary of the view that a quorum (2f+1) of the given live nodes are in. A lone
    replica may sit in a higher view it asked for alone (a timer that fired while it was
    catching up); PBFT needs only a quorum in one view to make progress."""
    genesis = c.genesis()

    def probe() -> str | None:
        sts = statuses(c, banks)
        views = Counter(s.view for s in sts.values())
        if not views:
            return None
        view, count = views.most_common(1)[0]
        if count >= genesis.quorum:
            return genesis.members[view % genesis.n].member_id
        return None

    return wait_for("a quorum of live nodes to agree on a view", probe)


def rpc_code(call: Callable[[], object]) -> grpc.StatusCode:
    """The status code a call fails with (AssertionError if it succeeds)."""
    try:
        call()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    raise AssertionError("call succeeded; expected an error status")
