"""The shared client policy's endpoint order: a node that just timed out goes last, for a while."""

import grpc
import grpc.aio

from client.policy import UNRESPONSIVE_S, Unresponsive, rotated


def _error(code: grpc.StatusCode) -> grpc.RpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "from a test", None)


def test_a_node_that_timed_out_or_was_unreachable_goes_last_until_its_spell_ends() -> None:
    now = [100.0]
    nodes = ("a", "b", "c", "d")
    slow = Unresponsive(clock=lambda: now[0])
    slow.failed("a", _error(grpc.StatusCode.DEADLINE_EXCEEDED))
    slow.failed("c", _error(grpc.StatusCode.UNAVAILABLE))
    slow.failed("b", _error(grpc.StatusCode.INVALID_ARGUMENT))  # it answered: a refusal, not a hang
    assert slow.last(rotated(nodes, 0)) == ["b", "d", "a", "c"]  # never dropped, only last
    assert slow.last(rotated(nodes, 3)) == ["d", "b", "a", "c"]
    now[0] += UNRESPONSIVE_S - 0.001
    assert slow.last(rotated(nodes, 0)) == ["b", "d", "a", "c"]
    slow.answered("c")  # it answered since: back in its place at once
    assert slow.last(rotated(nodes, 0)) == ["b", "c", "d", "a"]
    now[0] += 0.001
    assert slow.last(rotated(nodes, 0)) == ["a", "b", "c", "d"]
