"""The node core and its asyncio shell in-process: a scripted replica, the real Ledger, an
in-memory store that logs every commit, and a transport that logs every send, all in one ordered
trace. The core's decisions that depend on time run on a fake clock, without asyncio."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from ledger.v1 import api_pb2, tx_pb2
from node.api import LedgerApi
from node.app import queries
from node.app.codec import decode_envelope
from node.app.ledger import Ledger
from node.app.validate import CheckCache
from node.config import NodeLimits
from node.core import FETCH_HEDGE_S, CoreConfig, NodeCore
from node.driver import Driver
from node.log import EventLog
from node.pbft import actions as act
from node.pbft import wire
from node.pbft.crypto import Ed25519Crypto
from node.receipts import AttestationBackfill
from node.security import NodeSecurity
from node.storage import blocks
from node.storage.kv import KVReader, KVWriter
from node.storage.memory import MemoryStore
from sim.factory import Factory


class TracingStore:
    """MemoryStore that appends ("commit", keys) to a shared trace when a write commits."""

    def __init__(self, trace: list[tuple[str, Any]]) -> None:
        self.inner = MemoryStore()
        self.trace = trace

    @contextmanager
    def read(self) -> Iterator[KVReader]:
        with self.inner.read() as r:
            yield r

    @contextmanager
    def write(self) -> Iterator[KVWriter]:
        with self.inner.write() as w:
            keys: list[bytes] = []
            original_put = w.put

            def put(key: bytes, value: bytes) -> None:
                keys.append(key)
                original_put(key, value)

            w.put = put  # type: ignore[method-assign]
            yield w
        self.trace.append(("commit", tuple(keys)))

    def close(self) -> None:
        self.inner.close()


class TracingTransport:
    def __init__(self, trace: list[tuple[str, Any]]) -> None:
        self.trace = trace
        self.on_send: Callable[[], None] | None = None  # called after each send is traced

    def send(self, to: int, message: bytes) -> None:
        self.trace.append(("send", (to, message)))
        if self.on_send is not None:
            self.on_send()

    def broadcast(self, message: bytes) -> None:
        self.trace.append(("broadcast", message))

    def forward(self, to: int, envelopes: Sequence[bytes]) -> None:
        self.trace.append(("forward", (to, len(envelopes))))

    def is_up(self, replica: int) -> bool:
        return True

    async def fetch_blocks(self, peer_id: int, from_height: int) -> tuple[list[bytes], int] | None:
        return None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0  # seconds, on both clocks

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


class FakeFetcher:
    def __init__(self) -> None:
        self.asked: list[tuple[int, int, int]] = []  # (peer, from_height, round)
        self.cancelled = 0

    def fetch(self, peer: int, from_height: int, round: int) -> None:
        self.asked.append((peer, from_height, round))

    def cancel_fetches(self) -> None:
        self.cancelled += 1


class ScriptedReplica:
    """Returns the scripted action lists; records on_executed calls in the trace."""

    def __init__(self, trace: list[tuple[str, Any]]) -> None:
        self.trace = trace
        self.pending: dict[bytes, bytes] = {}
        self.script: list[list[act.Action]] = []
        self.after_executed: list[act.Action] = []
        self.primary = 0  # the driver under test is replica 1
        self.rejected = 0
        self.tree_roots: dict[int, bytes] = {}  # sequence -> the tree root on_executed was given
        self.stable_seq = 0

    def on_request(self, tx_id: bytes, envelope: bytes) -> list[act.Action]:
        self.pending[tx_id] = envelope
        return [] if self.primary == 1 else [act.ForwardRequests(self.primary, (envelope,))]

    def on_message(self, peer_message: bytes) -> list[act.Action]:
        return self.script.pop(0)

    def on_tick(self, now_ms: int) -> list[act.Action]:
        return []

    def on_executed(
        self, sequence: int, state_root: bytes, results_root: bytes, tree_root: bytes = b""
    ) -> list[act.Action]:
        self.trace.append(("on_executed", sequence))
        self.tree_roots[sequence] = tree_root
        return self.after_executed

    def on_blocks(self, blocks: Sequence[bytes]) -> list[act.Action]:
        return []

    def on_peer_up(self, peer: int) -> list[act.Action]:
        self.trace.append(("on_peer_up", peer))
        return [act.Send(peer, b"latest-votes")]


CONFIG = CoreConfig(tick_ms=1000, pending_requests_max=2, pending_ttl_ms=60_000, relay_delay_ms=400)


def make(fx: Factory) -> tuple[Driver, ScriptedReplica, list[tuple[str, Any]]]:
    trace: list[tuple[str, Any]] = []
    replica = ScriptedReplica(trace)
    driver = Driver(
        fx.genesis,
        TracingStore(trace),
        Ledger(fx.genesis),
        replica,
        TracingTransport(trace),
        EventLog("BANK-B"),
        CONFIG,
        queries.genesis_state_root(fx.genesis),
        1,
    )
    return driver, replica, trace


def make_core(fx: Factory) -> tuple[NodeCore, ScriptedReplica, list[tuple[str, Any]], FakeClock, FakeFetcher]:
    """The core alone, on a fake clock: no asyncio."""
    trace: list[tuple[str, Any]] = []
    replica = ScriptedReplica(trace)
    clock, fetcher = FakeClock(), FakeFetcher()
    core = NodeCore(
        fx.genesis.n,
        TracingStore(trace),
        Ledger(fx.genesis),
        replica,
        TracingTransport(trace),
        fetcher,
        EventLog("BANK-B"),
        clock,
        CONFIG,
        queries.genesis_state_root(fx.genesis),
        1,
    )
    return core, replica, trace, clock, fetcher


def test_persists_commit_in_one_txn_before_the_sends_that_follow() -> None:
    driver, _, trace = make(Factory())
    driver.run(
        [
            act.Persist(b"a", b"1"),
            act.Persist(b"b", b"2"),
            act.Broadcast(b"prepare"),
            act.Persist(b"a", None),
            act.Send(2, b"commit"),
            act.Note("view_change", {"view": 1}),
        ]
    )
    # Every record of the step (the delete of j/a too) in one transaction, then the sends.
    assert trace == [
        ("commit", (b"j/a", b"j/b")),
        ("broadcast", b"prepare"),
        ("send", (2, b"commit")),
    ]
    with driver.store.read() as r:
        assert blocks.read_journal(r) == {b"b": b"2"}
    assert driver.log.counters["note_view_change"] == 1


def test_queued_events_share_one_journal_commit_before_any_of_their_sends() -> None:
    # Group commit: three peer messages already queued when the consumer wakes are one group.
    driver, replica, trace = make(Factory())
    replica.script = [[act.Persist(k, b"v"), act.Send(2, b"vote-" + k)] for k in (b"1", b"2", b"3")]

    async def scenario() -> None:
        three_sent = asyncio.Event()
        transport = driver.transport
        assert isinstance(transport, TracingTransport)

        def on_send() -> None:
            if [t[0] for t in trace].count("send") == 3:
                three_sent.set()

        transport.on_send = on_send
        assert await driver.on_peer_messages("peer", [b"msg"] * 3)
        driver.start()
        await asyncio.wait_for(three_sent.wait(), timeout=5)
        await driver.stop()

    asyncio.run(scenario())
    assert trace == [
        ("commit", (b"j/1", b"j/2", b"j/3")),
        ("send", (2, b"vote-1")),
        ("send", (2, b"vote-2")),
        ("send", (2, b"vote-3")),
    ]
    assert driver.stats.persist_txns == 1


def test_a_link_coming_up_reaches_the_replica_and_its_resends_go_to_that_peer() -> None:
    driver, _, trace = make(Factory())

    async def scenario() -> None:
        sent = asyncio.Event()
        transport = driver.transport
        assert isinstance(transport, TracingTransport)
        transport.on_send = sent.set
        driver.on_peer_up(2)
        driver.start()
        await asyncio.wait_for(sent.wait(), timeout=5)
        await driver.stop()

    asyncio.run(scenario())
    assert trace == [("on_peer_up", 2), ("send", (2, b"latest-votes"))]


def _block(fx: Factory, height: int, envelopes: Sequence[bytes]) -> act.Execute:
    canonical = tuple(wire.canonical_envelope(e)[1] for e in envelopes)
    header = wire.build_header(fx.chain_id, height, 1_000 * height, canonical)
    commits = tuple(wire.encode_signed(b"commit-body", i, bytes(64)) for i in range(3))  # not checked here
    return act.Execute(height, header, canonical, commits)


def test_execute_stores_block_and_state_in_one_txn_then_runs_follow_ups_in_order() -> None:
    fx = Factory()
    driver, replica, trace = make(fx)
    alice = fx.client("alice")
    opened = fx.open_account("BANK-A", "alice", alice)
    replica.after_executed = [act.Broadcast(b"attestation")]
    driver.run([_block(fx, 1, [opened]), act.Send(3, b"after")])
    commit = trace[0]
    assert commit[0] == "commit"
    keys = commit[1]
    assert any(k.startswith(b"s/a/") for k in keys), "ledger state written in the block's txn"
    assert any(k.startswith(b"b/h/") for k in keys) and b"m/last_executed" in keys
    # on_executed's own actions run right after the Execute, before the rest of the list.
    assert trace[1:] == [("on_executed", 1), ("broadcast", b"attestation"), ("send", (3, b"after"))]
    assert driver.head.last_executed == 1
    with driver.store.read() as r:
        loc = blocks.find_tx(r, fx.tx_id(opened))
        assert loc == blocks.TxLocation(1, 0, True)
        (result,) = blocks.get_results(r, 1)
    assert tx_pb2.TxResult.FromString(result).code == tx_pb2.OK


def test_attested_wakes_receipt_waiters_and_pending_is_bounded() -> None:
    fx = Factory()
    driver, _, _ = make(fx)
    opened = fx.open_account("BANK-A", "alice", fx.client("alice"))
    tx_id = fx.tx_id(opened)

    async def scenario() -> int | None:
        assert driver.submit(tx_id, opened)
        assert driver.submit(b"\x01" * 32, opened) and not driver.submit(b"\x02" * 32, opened)  # max 2
        waiters = driver.receipt_waiters([tx_id])
        waiter = waiters[tx_id]
        driver.run([_block(fx, 1, [opened])])
        assert not waiter.done(), "executed but not attested: no receipt yet"
        driver.run([act.Attested(1, (b"att1", b"att2"))])
        height = await waiter
        driver.drop_waiters(waiters)
        return height

    assert asyncio.run(scenario()) == 1
    assert tx_id not in driver.pending
    with driver.store.read() as r:
        assert blocks.get_attestations(r, 1) == (b"att1", b"att2")


def test_pending_requests_expire_oldest_first_after_their_ttl() -> None:
    fx = Factory()
    core, _, _, clock, _ = make_core(fx)
    opened = fx.open_account("BANK-A", "alice", fx.client("alice"))
    assert core.submit(b"\x01" * 32, opened)
    clock.now += 30  # half the 60 s ttl
    assert core.submit(b"\x02" * 32, opened)
    clock.now += 30.001  # the first is past its ttl, the second is not
    core.tick()
    assert list(core.pending) == [b"\x02" * 32]
    assert core.log.counters["pending_expired"] == 1
    clock.now += 30
    core.tick()
    assert not core.pending and core.log.counters["pending_expired"] == 2


def make_api(fx: Factory, driver: Driver, limits: NodeLimits | None = None) -> LedgerApi:
    backfill = AttestationBackfill(
        fx.genesis,
        1,
        Ed25519Crypto(fx.client("node"), [], fx.chain_id),
        driver.store,
        driver.log,
        dial=NodeSecurity(fx.genesis, None).dial,  # never dials in these tests
        put=driver.put_attestations,
    )
    assert isinstance(driver.core.ledger, Ledger)
    return LedgerApi(
        fx.genesis, "BANK-B", 1, limits or NodeLimits(), driver, driver.core.ledger, dict, driver.log, backfill,
        CheckCache(fx.genesis),
    )  # fmt: skip


def test_relayed_copies_skip_the_signature_check_only_when_held_byte_for_byte_or_final() -> None:
    fx = Factory()
    driver, replica, _ = make(fx)
    api = make_api(fx, driver)
    alice, bob = fx.client("alice"), fx.client("bob")
    genuine = fx.open_account("BANK-A", "alice", alice)
    stripped = fx.sign(decode_envelope(genuine).body, [alice])  # same tx_id, no operator signature
    executed = fx.open_account("BANK-A", "bob", bob)
    driver.run([_block(fx, 1, [executed])])
    replica.pending[fx.tx_id(genuine)] = stripped  # a stranger's copy got here first
    relayed = api.admission.admit_forwarded([stripped, genuine, executed])
    # The genuine copy still reaches the replica (which keeps it as a variant); the exact copy
    # of what it holds and the executed transaction are dropped unchecked.
    assert relayed == [(fx.tx_id(genuine), genuine)]
    assert driver.log.counters["peer_forward_already_pending"] == 1
    assert driver.log.counters["peer_forward_already_final"] == 1


def test_a_receipt_woken_for_an_unrecorded_copy_waits_for_the_recorded_one() -> None:
    # Regression (review of WaitReceiptBatches): a copy of the body without the operator's
    # signature executes at 1, unrecorded; block 1's attestations wake the waiter; before the
    # stream handler runs, the genuine copy executes at 2 (recorded, not attested yet). The
    # handler used to assert that every woken tx has a receipt, and the stream died.
    fx = Factory()
    driver, _, _ = make(fx)
    api = make_api(fx, driver)
    alice = fx.client("alice")
    genuine = fx.open_account("BANK-A", "alice", alice)
    stripped = fx.sign(decode_envelope(genuine).body, [alice])  # no BANK-A operator signature
    tx_id = fx.tx_id(genuine)
    assert fx.tx_id(stripped) == tx_id
    attestation = wire.encode_signed(b"attestation-body", 0, bytes(64))  # not checked here

    async def scenario() -> api_pb2.ReceiptBatch:
        registered: asyncio.Queue[list[bytes]] = asyncio.Queue()  # each receipt_waiters call
        register = driver.receipt_waiters

        def recording(tx_ids: Sequence[bytes]) -> dict[bytes, asyncio.Future[int]]:
            futures = register(tx_ids)
            registered.put_nowait(list(tx_ids))
            return futures

        driver.receipt_waiters = recording  # type: ignore[method-assign]
        driver.run([_block(fx, 1, [stripped])])
        request = api_pb2.WaitReceiptsRequest(tx_ids=[tx_id], timeout_ms=5_000).SerializeToString()
        stream = cast(AsyncGenerator[bytes, None], api.streams.wait_receipt_batches(request))
        first = asyncio.ensure_future(anext(stream))
        assert await asyncio.wait_for(registered.get(), 5) == [tx_id]  # the handler waits
        driver.run([act.Attested(1, (attestation,))])
        driver.run([_block(fx, 2, [genuine])])  # same loop turn: the handler has not run yet
        # Woken for block 1, the handler finds the recorded copy at 2, not attested: it waits
        # again, for that block.
        assert await asyncio.wait_for(registered.get(), 5) == [tx_id]
        assert not first.done(), "the handler answered (or failed) before block 2 was attested"
        driver.run([act.Attested(2, (attestation,))])
        batch = api_pb2.ReceiptBatch.FromString(await first)
        await stream.aclose()
        return batch

    batch = asyncio.run(scenario())
    assert [(r.result.height, r.result.final) for r in batch.receipts] == [(2, True)]
    assert not driver._waiters, "the stream released every waiter"


def test_submit_stream_answers_first_caps_what_waits_and_drops_what_never_commits() -> None:
    fx = Factory()
    driver, _, _ = make(fx)
    api = make_api(fx, driver, NodeLimits(pending_requests_max=1, receipt_wait_ms_max=300))
    a, b, c = (fx.open_account("BANK-A", name, fx.client(name)) for name in ("alice", "bob", "carol"))
    attestation = wire.encode_signed(b"attestation-body", 0, bytes(64))  # not checked here

    def request(*envelopes: bytes) -> bytes:
        return api_pb2.SubmitBatchRequest(
            envelopes=[tx_pb2.Envelope.FromString(e) for e in envelopes]
        ).SerializeToString()

    async def scenario() -> None:
        more = asyncio.Event()

        async def requests() -> AsyncGenerator[bytes, None]:
            yield request(a, b)
            await more.wait()
            yield request(c)  # then the client half-closes

        stream = cast(AsyncGenerator[bytes, None], api.streams.submit_stream(requests()))
        answer = api_pb2.SubmitStreamReply.FromString(await anext(stream)).submitted
        # One transaction may wait per stream here: b is refused, and says why.
        assert [i.accepted for i in answer.items] == [True, False]
        refused = answer.items[1]
        assert refused.status_code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "wait for receipts" in refused.error
        driver.run([_block(fx, 1, [a])])
        driver.run([act.Attested(1, (attestation,))])
        receipts = api_pb2.SubmitStreamReply.FromString(await anext(stream)).receipts.receipts
        assert [(bytes(r.result.tx_id), r.result.height) for r in receipts] == [(fx.tx_id(a), 1)]
        more.set()  # a's receipt came: room for one again
        answer = api_pb2.SubmitStreamReply.FromString(await anext(stream)).submitted
        assert [i.accepted for i in answer.items] == [True]
        # c never commits: the stream drops it after receipt_wait_ms_max, then ends.
        loop = asyncio.get_running_loop()
        started = loop.time()
        ended = False
        try:
            await asyncio.wait_for(anext(stream), 5)
        except StopAsyncIteration:
            ended = True
        assert ended and loop.time() - started >= 0.25

    asyncio.run(scenario())
    assert not driver._waiters, "the stream released every waiter"


def test_a_submit_stream_the_client_abandons_releases_its_waiters_and_stops_reading() -> None:
    fx = Factory()
    driver, _, _ = make(fx)
    api = make_api(fx, driver)
    a = fx.open_account("BANK-A", "alice", fx.client("alice"))
    reading = [0]

    async def scenario() -> None:
        async def requests() -> AsyncGenerator[bytes, None]:
            yield api_pb2.SubmitBatchRequest(envelopes=[tx_pb2.Envelope.FromString(a)]).SerializeToString()
            reading[0] += 1
            await asyncio.Event().wait()  # the client never half-closes

        stream = cast(AsyncGenerator[bytes, None], api.streams.submit_stream(requests()))
        answer = api_pb2.SubmitStreamReply.FromString(await anext(stream)).submitted
        assert [i.accepted for i in answer.items] == [True]
        assert fx.tx_id(a) in driver._waiters
        await stream.aclose()  # what gRPC does when the call is cancelled
        assert not driver._waiters

    asyncio.run(scenario())
    assert reading == [1]


def test_receipt_waiters_resolve_at_the_height_of_the_recorded_result_once_it_is_attested() -> None:
    fx = Factory()
    driver, _, _ = make(fx)
    a, b = (fx.open_account("BANK-A", name, fx.client(name)) for name in ("alice", "bob"))
    attestation = wire.encode_signed(b"attestation-body", 0, bytes(64))  # not checked here

    async def scenario() -> tuple[int, int, int, bool]:
        driver.run([_block(fx, 1, [a])])
        early = driver.receipt_waiters([fx.tx_id(a)])[fx.tx_id(a)]
        assert not early.done(), "block 1 is not attested yet"
        driver.run([act.Attested(1, (attestation,))])
        # a again (a retry: its first result stands, at height 1) and b, in block 2.
        driver.run([_block(fx, 2, [a, b])])
        waiters = driver.receipt_waiters([fx.tx_id(a), fx.tx_id(b)])
        at_once = waiters[fx.tx_id(a)].done()
        b_before = waiters[fx.tx_id(b)].done()
        driver.run([act.Attested(2, (attestation,))])
        heights = (await early, await waiters[fx.tx_id(a)], await waiters[fx.tx_id(b)])
        driver.drop_waiters({fx.tx_id(a): early})
        driver.drop_waiters(waiters)
        assert at_once and not b_before
        return (*heights, not driver._waiters)

    assert asyncio.run(scenario()) == (1, 1, 2, True)


def test_client_requests_go_to_the_primary_at_once_and_to_the_other_peers_later_if_still_pending(
    monkeypatch: Any,
) -> None:
    fx = Factory()
    driver, replica, trace, clock, _ = make_core(fx)
    delay_s = driver.relay_delay_ms / 1000
    envs = [fx.open_account("BANK-A", f"acct{i}", fx.client(f"c{i}")) for i in range(6)]

    def forwards() -> list[tuple[int, int]]:
        return [t[1] for t in trace if t[0] == "forward"]

    def request(env: bytes) -> None:
        assert driver._client_request(fx.tx_id(env), env) == []  # its ForwardRequests is the relay's
        driver._flush_relay()  # as at the end of every group

    request(envs[0])
    assert forwards() == [(0, 1)], "the primary at once, the other peers later"
    clock.now += delay_s / 2
    request(envs[1])
    request(envs[2])
    assert forwards() == [(0, 1), (0, 1), (0, 1)]
    del replica.pending[fx.tx_id(envs[1])]  # executed here before its copies were due
    clock.now += delay_s / 2
    driver._flush_relay()
    assert forwards()[3:] == [(2, 1), (3, 1)], "envs[0] is due; the others are not"
    clock.now += delay_s / 2
    driver._flush_relay()
    assert forwards()[5:] == [(2, 1), (3, 1)], "envs[2] goes; envs[1] executed, so it never does"
    assert driver.log.counters["relay_not_needed"] == 1
    driver._flush_relay()
    assert len(forwards()) == 7, "nothing is relayed twice"

    replica.primary = 1  # we are the primary now: nobody gets a copy at once
    request(envs[3])
    assert len(forwards()) == 7
    clock.now += delay_s
    monkeypatch.setattr("node.core.FORWARD_BATCH_MAX", 1)
    request(envs[4])  # envs[3] is due: to every peer, as we are the primary
    assert sorted(forwards()[7:]) == [(0, 1), (2, 1), (3, 1)]
    monkeypatch.setattr("node.core.RELAY_WAITING_MAX", 1)
    replica.primary = 0
    request(envs[5])  # two copies wait, past the bound: the oldest (envs[4]) goes at once
    assert sorted(forwards()[10:]) == [(0, 1), (0, 1), (2, 1), (3, 1)]
    assert [e for _, _, _, e in driver._relay_later] == [envs[5]], "its copies for the other peers wait"


def test_backfilled_attestations_must_match_our_outcome_and_verify() -> None:
    from ledger.crypto import SigningKey
    from node.pbft.crypto import Ed25519Crypto
    from node.receipts import matching_attestations

    fx = Factory()
    digest, results_root, state_root = b"d" * 32, b"r" * 32, b"s" * 32

    def crypto_for(key: SigningKey) -> Ed25519Crypto:
        return Ed25519Crypto(key, fx.genesis.node_keys(), fx.genesis.chain_id)

    def att(signer: int, key: SigningKey, *, replica: int | None = None, state: bytes = state_root) -> bytes:
        body = wire.encode_body(
            wire.Attestation(7, digest, results_root, state, signer if replica is None else replica)
        )
        return wire.encode_signed(body, signer, crypto_for(key).sign(body))

    crypto = crypto_for(fx.node_keys["BANK-A"])

    keys = [fx.node_keys[m] for m in ("BANK-A", "BANK-B", "BANK-C", "BANK-D")]
    good_b, good_c = att(1, keys[1]), att(2, keys[2])
    candidates = [
        att(3, keys[3], state=b"x" * 32),  # a different state root: not our outcome
        att(3, SigningKey(b"\x09" * 32)),  # claims BANK-D, signed by an outsider
        att(2, keys[2], replica=1),  # body names another replica than the signer
        good_c,
        good_b,
        good_b,  # the same member twice counts once
        b"\xff garbage",
    ]
    got = matching_attestations(fx.genesis, crypto, 7, digest, results_root, state_root, candidates)
    assert got == [good_b, good_c]
    assert matching_attestations(fx.genesis, crypto, 8, digest, results_root, state_root, candidates) == []


def test_catch_up_asks_a_different_peer_first_each_time() -> None:
    # Regression (node review): a byzantine low-id peer answering every fetch first with junk
    # stalled a lagging node for good, since the first non-empty answer ended the search.
    fx = Factory()
    driver, _, _ = make(fx)
    asked: list[int] = []
    answered = asyncio.Event()

    async def junk_first(peer_id: int, from_height: int) -> tuple[list[bytes], int]:
        asked.append(peer_id)
        answered.set()
        return [b"junk"], 99  # non-empty and useless: the replica's on_blocks makes nothing of it

    driver.transport.fetch_blocks = junk_first  # type: ignore[method-assign]

    async def scenario() -> None:
        driver.start()
        for _ in range(3):
            answered.clear()
            driver.run([act.FetchBlocks(5, (0, 2, 3))])
            await answered.wait()
            while driver.core.fetching:  # the round ends with the answer
                await asyncio.sleep(0)
        await driver.stop()

    asyncio.run(scenario())
    assert asked == [0, 2, 3], asked


def test_catch_up_asks_the_next_peer_too_when_one_does_not_answer() -> None:
    # Regression (chaos seed 7): a paused primary's link stayed up, and every backup's catch-up
    # waited on it for the whole pause; one silent peer must cost FETCH_HEDGE_S, not the timeout.
    fx = Factory()
    core, replica, _, clock, fetcher = make_core(fx)
    replayed: list[list[bytes]] = []

    def on_blocks(fetched: Sequence[bytes]) -> list[act.Action]:
        replayed.append(list(fetched))
        return []

    replica.on_blocks = on_blocks  # type: ignore[assignment,method-assign]
    core.run([act.FetchBlocks(5, (0, 2, 3))])
    assert fetcher.asked == [(0, 5, 1)]
    clock.now += FETCH_HEDGE_S * 0.9
    core.tick()
    assert fetcher.asked == [(0, 5, 1)], "not yet: peer 0 may still answer"
    clock.now += FETCH_HEDGE_S * 0.1
    core.tick()
    assert fetcher.asked == [(0, 5, 1), (2, 5, 1)], "peer 0 silent for the hedge delay: ask peer 2 too"
    core.on_fetched(1, 2, ([b"block-from-2"], 9))
    assert fetcher.cancelled == 1 and not core.fetching, "the call to the silent peer is cancelled"
    core.on_fetched(1, 0, ([b"late"], 9))  # a late answer of the ended round is not used
    while core.run_group():
        pass
    assert replayed == [[b"block-from-2"]]
    assert core.stats.fetched_blocks == 1


def test_catch_up_asks_the_next_peer_at_once_when_one_cannot_answer() -> None:
    fx = Factory()
    core, _, _, _, fetcher = make_core(fx)
    core.run([act.FetchBlocks(5, (0, 2))])
    core.on_fetched(1, 0, None)
    assert fetcher.asked == [(0, 5, 1), (2, 5, 1)]
    core.on_fetched(1, 2, ([], 4))  # nothing new there either: the round ends
    assert not core.fetching
    core.run([act.FetchBlocks(5, (0, 2))])  # the replica asks again: the next peer first
    assert fetcher.asked[2:] == [(2, 5, 2)]


def test_the_first_block_after_a_quiet_spell_is_logged_with_the_gap(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fx = Factory()
    driver, _, _, clock, _ = make_core(fx)  # its EventLog writes JSON lines to stderr
    alice, bob, carol = fx.client("alice"), fx.client("bob"), fx.client("carol")
    driver.run([_block(fx, 1, [fx.open_account("BANK-A", "alice", alice)])])
    clock.now += 0.2
    driver.run([_block(fx, 2, [fx.open_account("BANK-A", "bob", bob)])])
    clock.now += 0.7  # commits stalled, then resumed
    driver.run([_block(fx, 3, [fx.open_account("BANK-A", "carol", carol)])])
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    executed = [(e["height"], e["after_ms"]) for e in logged if e["event"] == "executed"]
    assert executed[0] == (1, None), "the first block after start is logged"
    assert executed[1:] == [(3, 700)], "a block 200 ms after the last is not; one 700 ms after is"


def test_a_connection_flooding_the_loop_waits_its_turn_and_does_not_hold_up_another() -> None:
    # Issue 16: one FIFO queue for every source let 4 streams of forged votes starve the
    # honest peers (8 of 9 canary transfers failed). Each source now has its own bounded queue.
    from node.core import PEER_STREAM_EVENTS_MAX as SOURCE_EVENTS_MAX

    driver, replica, _ = make(Factory())
    seen: list[bytes] = []

    def on_message(raw: bytes) -> list[act.Action]:
        seen.append(raw)
        return []

    replica.on_message = on_message  # type: ignore[assignment,method-assign]

    async def scenario() -> None:
        flood = asyncio.ensure_future(driver.on_peer_messages("flood", [b"f"] * (SOURCE_EVENTS_MAX + 500)))
        while driver.core._events.depth("flood")[0] < SOURCE_EVENTS_MAX:
            await asyncio.sleep(0)
        assert not flood.done()  # its queue is full: it waits (backpressure), nothing dropped
        assert await driver.on_peer_messages("honest", [b"h"])
        driver.start()
        await asyncio.wait_for(flood, timeout=30)
        # Until the replica has seen all of it: an empty queue is not enough, the last group
        # taken from it may still be in the loop's hands (a race seen under load).
        deadline = asyncio.get_running_loop().time() + 30
        while seen.count(b"f") < SOURCE_EVENTS_MAX + 500:
            assert asyncio.get_running_loop().time() < deadline, seen.count(b"f")
            await asyncio.sleep(0.01)
        await driver.stop()

    asyncio.run(scenario())
    assert seen.index(b"h") <= 1  # served in the first round, not after 50,000 forged votes
    assert seen.count(b"f") == SOURCE_EVENTS_MAX + 500
    assert driver.log.counters["events_dropped_full"] == 0


def test_a_source_whose_messages_the_replica_rejects_is_logged_and_then_served_slowly(tmp_path: Path) -> None:
    from node.core import PENALTY_REJECTED_MIN, PENALTY_UNITS_PER_S

    driver, replica, _ = make(Factory())
    driver.core.log = EventLog("BANK-B", tmp_path / "events.log")
    seen: list[bytes] = []

    def on_message(raw: bytes) -> list[act.Action]:
        seen.append(raw)
        if raw == b"forged":
            replica.rejected += 1
        return []

    replica.on_message = on_message  # type: ignore[assignment,method-assign]
    forged = 3 * PENALTY_REJECTED_MIN

    async def scenario() -> None:
        driver.start()
        assert await driver.on_peer_messages("liar", [b"forged"] * forged)
        while seen.count(b"forged") < PENALTY_REJECTED_MIN:  # until the liar is judged
            await asyncio.sleep(0.01)
        assert await driver.on_peer_messages("honest", [b"fine"] * 50)
        while seen.count(b"fine") < 50:
            await asyncio.sleep(0.01)
        await driver.stop()

    asyncio.run(scenario())
    driver.log.close()
    logged = [json.loads(line) for line in (tmp_path / "events.log").read_text().splitlines()]
    flagged = [(e["source"], e["rejected"]) for e in logged if e["event"] == "peer_source_rejected"]
    assert flagged == [("liar", 100)]
    assert driver.core.sources["honest"].rejected_total == 0
    # Most of what the liar sent was rejected: from then on it is served at PENALTY_UNITS_PER_S,
    # so the honest source's 50 went ahead of most of its backlog.
    assert "liar" in driver.core._penalized and "honest" not in driver.core._penalized
    assert driver.log.counters["peer_sources_penalized"] == 1
    served_after = seen.count(b"forged") - PENALTY_REJECTED_MIN
    assert served_after < forged - PENALTY_REJECTED_MIN, (served_after, PENALTY_UNITS_PER_S)
