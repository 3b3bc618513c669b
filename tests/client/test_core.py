"""The client core (client/core.py) driven directly: a fake transport carries out its effects
against in-process fake nodes (tests/client/fakes.py: real keys, signatures and receipts) on a
fake clock. No network, no threads, no sleeps: every run is the same."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest

from client import core
from client.history import FeedBlock
from client.models import (
    Committed,
    Indefinite,
    NotAuthorized,
    NotFound,
    Pending,
    Rejected,
    Unreachable,
    Unverified,
)
from client.policy import UNRESPONSIVE_S
from client.tx import LegSpec, Transaction
from ledger import readtoken
from ledger.crypto import SigningKey
from ledger.v1 import api_pb2, tx_pb2
from tests.client.fakes import FakeChain, FakeNode, forge_certificate, lie_about_result

T = TypeVar("T")
Handler = Callable[[Any], Any]


def rpc_error(code: grpc.StatusCode, details: str = "from a test") -> grpc.RpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


class _Context:
    """What a FakeNode servicer aborts through: an abort raises the RpcError a client sees."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise rpc_error(code, details)


@dataclass
class _Stream:
    start: Callable[[], Iterator[Any]]
    messages: Iterator[Any] | None = None
    cancelled: bool = False


@dataclass
class Transport:
    """Carries out a core's effects against fake nodes by endpoint. ``overrides`` replace a
    node's method: (endpoint, method) -> handler(request). Every call costs ``latency_s`` of
    the fake clock; a Sleep moves it on."""

    nodes: dict[str, FakeNode]
    latency_s: float = 0.01
    now: float = 1000.0
    overrides: dict[tuple[str, str], Handler] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    effects: list[core.Effect] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    emitted: list[Any] = field(default_factory=list)
    gathers: list[int] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def _method(self, endpoint: str, method: str) -> Handler:
        override = self.overrides.get((endpoint, method))
        if override is not None:
            return override
        node = getattr(self.nodes[endpoint], method)
        return lambda request: node(request, _Context())

    def perform(self, effect: core.Effect) -> Any:
        self.effects.append(effect)
        if isinstance(effect, core.Call):
            self.calls.append((effect.endpoint, effect.method))
            self.now += self.latency_s
            return self._method(effect.endpoint, effect.method)(effect.request)
        if isinstance(effect, core.Open):
            self.calls.append((effect.endpoint, effect.method))
            handler = self._method(effect.endpoint, effect.method)
            request = iter(effect.request) if isinstance(effect.request, tuple) else effect.request
            return _Stream(lambda: iter(handler(request)))  # as gRPC: errors come with the reads
        if isinstance(effect, core.Next):
            stream: _Stream = effect.stream
            assert not stream.cancelled, "read after cancel"
            self.now += self.latency_s
            if stream.messages is None:
                stream.messages = stream.start()
            return next(stream.messages, core.END)
        if isinstance(effect, core.Cancel):
            effect.stream.cancelled = True
        elif isinstance(effect, core.Sleep):
            self.sleeps.append(effect.seconds)
            self.now += effect.seconds
        elif isinstance(effect, core.Gather):
            self.gathers.append(len(effect.ops))
            return [self.run(op) for op in effect.ops]
        elif isinstance(effect, core.Emit):
            self.emitted.append(effect.value)
        return None

    def run(self, op: core.Op[T], emits_max: int | None = None) -> T | None:
        """Drive ``op`` to its end (or until it emitted ``emits_max`` values)."""
        value: Any = None
        error: grpc.RpcError | None = None
        while not isinstance(effect := core.step(op, value, error), core.Done):
            value, error = None, None
            try:
                value = self.perform(effect)
            except grpc.RpcError as exc:
                error = exc
            if emits_max is not None and len(self.emitted) >= emits_max:
                op.close()
                return None
        return effect.value


def _setup(
    modes: list[str], tamper: list[Any] | None = None, **kwargs: Any
) -> tuple[FakeChain, Transport, core.ClientCore, list[str]]:
    chain = FakeChain()
    endpoints = [f"node-{chr(97 + i)}:1" for i in range(len(modes))]
    tampers = tamper or [None] * len(modes)
    nodes = {e: FakeNode(chain, mode=m, tamper=t) for e, m, t in zip(endpoints, modes, tampers, strict=True)}
    transport = Transport(nodes)
    client = core.ClientCore(
        chain.genesis,
        endpoints,
        timeout_s=kwargs.pop("timeout_s", 5.0),
        call_timeout_s=1.0,
        receipt_wait_s=0.5,
        clock=transport.clock,
        **kwargs,
    )
    return chain, transport, client, endpoints


def _open(client: core.ClientCore, chain: FakeChain, account: str) -> Transaction:
    return client.tx.open_account("BANK-A", account, bytes(32)).signed_by(chain.banks[0].operator_key)


def test_submit_retries_at_the_next_node_on_unavailable_and_asks_that_node_last_for_a_while() -> None:
    chain, transport, client, (a, b, c) = _setup(["down", "honest", "honest"])
    out = transport.run(client.op_submit(_open(client, chain, "x0"), None))
    assert isinstance(out, Committed) and out.ok and out.endpoint == b
    assert transport.calls == [(a, "Submit"), (b, "Submit"), (b, "WaitReceipt")]
    firsts = []
    for i in range(1, 4):  # the rotation would start at b, c, a: a goes last
        transport.calls.clear()
        out = transport.run(client.op_submit(_open(client, chain, f"x{i}"), None))
        assert isinstance(out, Committed)
        firsts.append(transport.calls[0][0])
    assert firsts == [b, c, b]
    transport.now += UNRESPONSIVE_S  # its spell is over: back in its place (and down again)
    client._first = 0
    transport.calls.clear()
    out = transport.run(client.op_submit(_open(client, chain, "x4"), None))
    assert isinstance(out, Committed) and out.endpoint == b and transport.calls[0] == (a, "Submit")


def test_submit_goes_round_again_with_backoff_until_the_deadline_then_is_indefinite() -> None:
    chain, transport, client, _ = _setup(["down", "down", "down"], timeout_s=1.0)
    transport.latency_s = 0.0
    tx = _open(client, chain, "x")
    out = transport.run(client.op_submit(tx, None))
    assert isinstance(out, Indefinite) and out.tx_id == tx.tx_id and out.envelope == tx.envelope_bytes()
    assert out.reason == "deadline passed before a verified receipt"
    assert transport.sleeps[:4] == pytest.approx([0.05, 0.1, 0.2, 0.4])  # doubling backoff
    assert sum(transport.sleeps) == pytest.approx(1.0)  # never past the deadline
    calls = [m for _, m in transport.calls]
    assert calls == ["Submit"] * len(calls) and len(calls) >= 3 * len(transport.sleeps)
    assert all("UNAVAILABLE" in e for e in out.errors) and len(out.errors) == len(calls)


def test_a_receipt_that_does_not_verify_is_refused_and_its_node_not_asked_again() -> None:
    chain, transport, client, (liar, honest) = _setup(
        ["honest", "honest"], tamper=[lie_about_result, None], timeout_s=2.0
    )
    out = transport.run(client.op_submit(_open(client, chain, "x"), None))
    assert isinstance(out, Committed) and out.endpoint == honest
    assert transport.calls == [
        (liar, "Submit"),
        (liar, "WaitReceipt"),
        (honest, "Submit"),
        (honest, "WaitReceipt"),
    ]
    # Only liars: each asked once, then no verifiable receipt (no rounds: nobody left to ask).
    chain, transport, client, _ = _setup(["honest", "honest"], tamper=[forge_certificate, lie_about_result])
    out = transport.run(client.op_submit(_open(client, chain, "y"), None))
    assert isinstance(out, Indefinite) and out.reason == "no verifiable receipt"
    assert transport.sleeps == [] and len(transport.calls) == 4
    assert any("bad_signature" in e for e in out.errors) and any("bad_result_proof" in e for e in out.errors)


def test_f_plus_1_refusals_make_a_rejection_and_one_does_not() -> None:
    chain, transport, client, (a, b, _) = _setup(["refuse", "refuse", "honest"])
    out = transport.run(client.op_submit(_open(client, chain, "x"), None))
    assert isinstance(out, Rejected) and [r[0] for r in out.refusals] == [a, b]
    assert transport.calls == [(a, "Submit"), (b, "Submit")]
    chain, transport, client, (a, b) = _setup(["refuse", "honest"])
    out = transport.run(client.op_submit(_open(client, chain, "y"), None))
    assert isinstance(out, Committed) and out.endpoint == b


def _alice(chain: FakeChain) -> SigningKey:
    """alice (BANK-A) with 100.00 USD.BANK-A, bob (BANK-B), in blocks 1..3."""
    alice = SigningKey.generate()
    op_a, op_b = chain.banks[0].operator_key, chain.banks[1].operator_key
    from client.tx import TxBuilder

    b = TxBuilder(chain.genesis.chain_id, chain.genesis.limits)
    for tx in (
        b.open_account("BANK-A", "alice", alice.public_key).signed_by(op_a),
        b.open_account("BANK-B", "bob", bytes(32)).signed_by(op_b),
        b.mint("USD.BANK-A", "alice", 10000, "dep-1").signed_by(op_a),
    ):
        chain.commit([tx.envelope_bytes()])
    return alice


def test_confirmations_need_f_plus_1_equal_answers_and_a_split_is_unverified() -> None:
    chain, transport, client, (a, b, c) = _setup(["inflate", "honest", "honest"])
    _alice(chain)
    got = transport.run(client.op_account("alice", 2, 0, None, None))
    assert got is not None and got.balance("USD.BANK-A").available_minor == 10000
    assert [e for e, _ in transport.calls] == [a, b, c]  # the liar's answer matched nobody's
    chain, transport, client, (a, b) = _setup(["inflate", "honest"], timeout_s=0.5)
    _alice(chain)
    with pytest.raises(Unverified, match="2 nodes answered but fewer than 2 agree"):
        transport.run(client.op_account("alice", 2, 0, None, None))
    assert len(transport.sleeps) >= 2  # rounds: nodes at different heights may come to agree
    with pytest.raises(NotFound, match="not found at 2 nodes"):
        transport.run(client.op_account("nobody", 2, 0, None, None))
    with pytest.raises(ValueError, match="3 confirmations"):
        transport.run(client.op_account("alice", 3, 0, None, None))


def test_reads_carry_a_fresh_token_for_their_method_and_scope_and_rotate() -> None:
    reader = SigningKey.generate()
    chain, transport, client, (a, b, c) = _setup(["honest", "honest", "honest"], reader=reader)
    _alice(chain)
    for _ in range(3):
        transport.run(client.op_account("alice", 1, 0, None, None))
    assert [e for e, _ in transport.calls] == [a, b, c]
    call = transport.effects[0]
    assert isinstance(call, core.Call) and call.method == "GetAccount"
    ((key, raw),) = call.metadata
    token = readtoken.decode(raw)
    assert key == readtoken.METADATA_KEY and token.public_key == reader.public_key
    assert (token.method, token.scope) == ("GetAccount", "alice")
    other = SigningKey.generate()
    transport.run(client.op_supply(0, other, None))  # as_key: another key for this call
    last = transport.effects[-1]
    assert (
        isinstance(last, core.Call) and readtoken.decode(last.metadata[0][1]).public_key == other.public_key
    )
    transport.effects.clear()
    transport.run(client.op_status(None, None))
    status = transport.effects[0]
    assert isinstance(status, core.Call) and status.metadata == ()  # GetStatus needs none


def test_query_outcomes_not_found_pending_unverified_unreachable() -> None:
    chain, transport, client, (a, _) = _setup(["hold", "honest"])
    tx = _open(client, chain, "held")
    transport.nodes[a].held.append(tx.envelope_bytes())
    with pytest.raises(Pending, match=f"pending .* at {a}"):
        transport.run(client.op_transaction(tx.tx_id, None, None))
    assert transport.run(client.op_wait(b"\x01" * 32, None, None)) is None
    chain, transport, client, _ = _setup(["honest", "honest"], tamper=[lie_about_result] * 2)
    out = transport.run(client.op_submit(_open(client, chain, "x"), 0.5))
    assert isinstance(out, Indefinite)
    with pytest.raises(Unverified, match="bad_result_proof"):
        transport.run(client.op_transaction(out.tx_id, None, None))
    chain, transport, client, _ = _setup(["down", "down"])
    with pytest.raises(Unreachable, match="UNAVAILABLE"):
        transport.run(client.op_block(1, None, None))


def test_submit_many_falls_back_from_the_stream_to_batches_then_to_one_by_one() -> None:
    chain, transport, client, (a, b, _) = _setup(["honest", "honest", "honest"])
    alice = _alice(chain)
    pays = [
        client.tx.transfer([LegSpec("alice", "bob", "USD.BANK-A", i + 1)]).signed_by(alice) for i in range(5)
    ]
    bad = Transaction(pays[0].chain_id, client.tx.escrow_void("e").body, pays[0].signatures)
    unserved = frozenset({grpc.StatusCode.UNIMPLEMENTED})
    outcomes = transport.run(client.op_submit_many([*pays, bad], None, 3, unserved))
    assert outcomes is not None
    assert all(isinstance(o, Committed) and o.ok and o.endpoint == a for o in outcomes[:5])
    assert [o.height for o in outcomes[:5] if isinstance(o, Committed)] == [4, 4, 4, 5, 5]
    assert isinstance(outcomes[5], Rejected)  # the careful path: f+1 nodes refused it
    assert transport.calls[:5] == [
        (a, "SubmitStream"),  # UNIMPLEMENTED: chunks by SubmitBatch
        (a, "SubmitBatch"),
        (a, "WaitReceiptBatches"),
        (a, "SubmitBatch"),
        (a, "WaitReceiptBatches"),
    ]
    assert transport.gathers == [1] and [m for _, m in transport.calls[5:]] == ["Submit", "Submit"]
    # A node that answers the stream with another code before anything: no batches, one by one.
    transport.calls.clear()
    client._first = 1  # the stream goes to b
    transport.overrides[(b, "SubmitStream")] = lambda requests: iter(())  # took none, said nothing
    more = [client.tx.transfer([LegSpec("alice", "bob", "USD.BANK-A", 1)]).signed_by(alice) for _ in range(2)]
    outcomes = transport.run(client.op_submit_many(more, None, 3, unserved))
    assert outcomes is not None and all(isinstance(o, Committed) and o.ok for o in outcomes)
    assert transport.calls[0] == (b, "SubmitStream") and (b, "SubmitBatch") not in transport.calls
    assert transport.gathers == [1, 2]


def test_submit_many_stops_reading_a_stream_at_the_first_receipt_that_does_not_verify() -> None:
    chain, transport, client, (liar, honest) = _setup(["honest", "honest"], tamper=[lie_about_result, None])
    alice = _alice(chain)
    pays = [
        client.tx.transfer([LegSpec("alice", "bob", "USD.BANK-A", i + 1)]).signed_by(alice) for i in range(3)
    ]

    def stream(requests: Iterator[api_pb2.SubmitBatchRequest]) -> Iterator[api_pb2.SubmitStreamReply]:
        envelopes = [e.SerializeToString() for r in requests for e in r.envelopes]
        for tx_id in chain.commit(envelopes).tx_ids:
            receipt = api_pb2.Receipt()
            receipt.CopyFrom(chain.receipts[tx_id])
            yield api_pb2.SubmitStreamReply(
                receipts=api_pb2.ReceiptBatch(receipts=[lie_about_result(receipt)])
            )

    transport.overrides[(liar, "SubmitStream")] = stream
    outcomes = transport.run(client.op_submit_many(pays, None, 10, frozenset()))
    assert outcomes is not None and all(isinstance(o, Committed) and o.endpoint == honest for o in outcomes)
    cancels = [e for e in transport.effects if isinstance(e, core.Cancel)]
    assert len(cancels) == 1 and transport.calls.count((liar, "SubmitStream")) == 1


def _feed_message(node: FakeNode, height: int, last: int) -> api_pb2.FeedMessage:
    block = node.GetBlock(api_pb2.GetBlockRequest(height=height), _Context())  # type: ignore[arg-type]
    count = len(node.chain.blocks[height - 1].envelopes)
    return api_pb2.FeedMessage(height=height, block=block, matches=list(range(count)), last_height=last)


def test_the_feed_goes_on_from_the_next_height_at_the_next_node_and_refusals_end_it() -> None:
    chain, transport, client, (a, b, c) = _setup(["honest", "honest", "honest"])
    _alice(chain)
    node = transport.nodes[a]

    def breaks_after_one(request: api_pb2.FeedRequest) -> Iterator[api_pb2.FeedMessage]:
        yield _feed_message(node, request.from_height, 3)
        raise rpc_error(grpc.StatusCode.UNAVAILABLE)

    def lies(request: api_pb2.FeedRequest) -> Iterator[api_pb2.FeedMessage]:
        msg = _feed_message(node, request.from_height, 3)
        msg.block.results[0].code = tx_pb2.MALFORMED  # not what f+1 members attested
        yield msg

    def honest(request: api_pb2.FeedRequest) -> Iterator[api_pb2.FeedMessage]:
        for height in range(request.from_height, 4):
            yield _feed_message(node, height, 3)

    transport.overrides.update({(a, "Feed"): breaks_after_one, (b, "Feed"): lies, (c, "Feed"): honest})
    transport.run(client.op_feed(1, (), (), (), None), emits_max=3)
    blocks: list[FeedBlock] = transport.emitted
    assert [fb.height for fb in blocks] == [1, 2, 3] and all(fb.block is not None for fb in blocks)
    assert [e for e, m in transport.calls if m == "Feed"] == [a, b, c]
    opened = [e.request for e in transport.effects if isinstance(e, core.Open)]
    assert [r.from_height for r in opened if isinstance(r, api_pb2.FeedRequest)] == [1, 2, 2]
    assert sum(isinstance(e, core.Cancel) for e in transport.effects) == 2  # each failed stream ended
    transport.overrides[(a, "Feed")] = lambda request: _Context().abort(
        grpc.StatusCode.PERMISSION_DENIED, "no"
    )
    client._first = 0
    transport.emitted.clear()
    with pytest.raises(NotAuthorized, match="refused the read: no"):
        transport.run(client.op_feed(1, (), (), (), None), emits_max=1)
