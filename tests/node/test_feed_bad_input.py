"""The feed's and its SDK consumer's answers to bad input, without processes (issue 19 item 5):
a height past the node's head, a height whose block the node no longer keeps, a node that
answers OUT_OF_RANGE, each a clear, bounded answer. Live cases: tests/node/test_history_live.py."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import grpc
import pytest

from client.history import FeedFailover
from client.models import LedgerError, NotFound, Unreachable
from ledger.genesis import Genesis, load_genesis
from ledger.v1 import api_pb2
from node.feed import feed
from node.history import QueryError
from node.storage import blocks, prune
from node.storage.kv import KVReader
from node.storage.memory import MemoryStore


@pytest.fixture
def genesis() -> Genesis:
    return load_genesis(Path(__file__).resolve().parents[1] / "vectors" / "genesis.json")


class Node:
    """A node at ``last`` whose store holds no block (all pruned, as far as the feed can tell)."""

    def __init__(self, last: int) -> None:
        self.head = blocks.Head(last, b"\0" * 32, b"")
        self.store = MemoryStore()
        with self.store.write() as w:  # as the pruner leaves it: every block pruned
            w.put(prune.FIRST_BLOCK, struct.pack(">Q", last + 1))

    def retention(self) -> prune.Retention:
        return prune.Retention(blocks=10)

    def read(self) -> AbstractContextManager[KVReader]:
        return self.store.read()

    async def wait_height(self, height: int, timeout_s: float) -> bool:
        return self.head.last_executed >= height  # the head does not move here

    async def wait_attested(self, height: int, timeout_s: float) -> bool:
        return True

    def unlikely_to_be_attested(self, height: int) -> bool:
        return False


class NoBackfill:
    async def fill(self, height: int) -> bool:
        return False


def _run(genesis: Genesis, node: Node, req: api_pb2.FeedRequest) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [m async for m in feed(genesis, node, NoBackfill(), req.SerializeToString())]

    return asyncio.run(asyncio.wait_for(collect(), timeout=10))


def _refusal(genesis: Genesis, node: Node, req: api_pb2.FeedRequest) -> QueryError:
    with pytest.raises(QueryError) as err:
        _run(genesis, node, req)
    return err.value


def test_a_height_below_what_the_node_keeps_is_refused_and_says_so(genesis: Genesis) -> None:
    err = _refusal(genesis, Node(last=50), api_pb2.FeedRequest(from_height=3))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "block 3 was pruned: this node keeps blocks from height 51 on" in err.message


def test_a_height_past_the_head_is_out_of_range_after_a_bounded_wait(genesis: Genesis) -> None:
    err = _refusal(genesis, Node(last=5), api_pb2.FeedRequest(from_height=100))
    assert err.code == grpc.StatusCode.OUT_OF_RANGE and "past this node's next height 6" in err.message


def test_bad_filters_and_heights_are_refused_before_any_block(genesis: Genesis) -> None:
    node = Node(last=5)
    assert (
        _refusal(genesis, node, api_pb2.FeedRequest(from_height=0)).code == grpc.StatusCode.INVALID_ARGUMENT
    )
    unknown = _refusal(genesis, node, api_pb2.FeedRequest(from_height=1, accounts=["nobody"]))
    assert unknown.code == grpc.StatusCode.NOT_FOUND and "nobody" in unknown.message
    bank = _refusal(genesis, node, api_pb2.FeedRequest(from_height=1, banks=["BANK-Z"]))
    assert bank.code == grpc.StatusCode.NOT_FOUND


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


def _fail(failover: FeedFailover, errors: Iterator[grpc.aio.AioRpcError]) -> Exception:
    with pytest.raises(LedgerError) as err:
        for i, exc in enumerate(errors):
            failover.failed(f"node-{i}", exc)
    return err.value


def test_the_sdk_ends_a_feed_every_node_refuses_as_out_of_range() -> None:
    # One round of OUT_OF_RANGE from every node: a definite answer, not a retry for ever.
    out = _fail(
        FeedFailover(4), iter([_error(grpc.StatusCode.OUT_OF_RANGE, "past this node's next height")] * 4)
    )
    assert (
        type(out) is LedgerError and "no node serves that height" in str(out) and "OUT_OF_RANGE" in str(out)
    )
    # One node that pruned the block is not the answer: the feed goes on at the next node.
    failover = FeedFailover(4)
    failover.failed("node-0", _error(grpc.StatusCode.FAILED_PRECONDITION, "block 3 was pruned"))
    failover.failed("node-1", _error(grpc.StatusCode.UNAVAILABLE, "down"))
    failover.progressed()  # node-2 served the height
    for i in range(3):
        failover.failed(f"node-{i}", _error(grpc.StatusCode.OUT_OF_RANGE, "x"))
    # An unknown filter id is NOT_FOUND at once; nodes that keep failing end as Unreachable.
    assert isinstance(
        _fail(FeedFailover(4), iter([_error(grpc.StatusCode.NOT_FOUND, "no account")])), NotFound
    )
    down = _fail(FeedFailover(2), iter([_error(grpc.StatusCode.UNAVAILABLE, "down")] * 4))
    assert isinstance(down, Unreachable)
