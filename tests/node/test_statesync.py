"""State sync in one process (issue 18 item 4): real snapshot sources over a real store, a
syncing node's checks, and peers that lie in each way a chunk can: every lie is rejected with
its reason, the chunk is fetched from the next peer, and the installed store is the certified
state; with no honest peer left nothing is installed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import pytest

from ledger.statetree import EMPTY_ROOT, encode_node
from ledger.v1 import api_pb2, consensus_pb2, tx_pb2
from node import history as node_history
from node.app import queries
from node.app import state as st
from node.app import statetree as tree
from node.app.ledger import Ledger
from node.config import NodeLimits
from node.log import EventLog
from node.pbft import journal
from node.pbft.crypto import Ed25519Crypto
from node.pbft.verify import Verifier
from node.snapshot import SnapshotSource, SnapshotUnavailable
from node.statesync import COMPLETE, SnapshotCheck, StateSync, SyncRejected, swap_in
from node.storage import blocks, prune
from node.storage.lmdb_store import LmdbStore
from node.storage.prune import synced_at
from node.votes import RESTORED
from sim.factory import Factory
from tests.app.helpers import Chain

INTERVAL = 5
HEIGHT = 10  # a checkpoint height: the tree and the certificate are there
Part = consensus_pb2.SnapshotRequest.Part
Tamper = Callable[[consensus_pb2.SnapshotRequest, consensus_pb2.SnapshotChunk], None]


def _source_store(path: Path, fx: Factory, empty: bool = False) -> tuple[LmdbStore, bytes, bytes]:
    """A store run to HEIGHT by the real ledger (accounts, mints, transfers; ``empty``: empty
    blocks), with the checkpoint certificate of HEIGHT in its journal: (store, state root, tree
    root)."""
    store = LmdbStore(path, map_size_bytes=64 << 20, sync=False)
    chain = Chain(Ledger(fx.genesis, tree_interval=INTERVAL), store)
    out = None
    while empty and chain.height < HEIGHT:
        out = chain.run([])
    names = [f"acct-{i}" for i in range(40)]
    if not empty:
        chain.run(
            [fx.open_account("BANK-A" if i % 2 else "BANK-B", n, fx.client(n)) for i, n in enumerate(names)]
        )
        chain.run([fx.mint("USD.BANK-A", n, 1_000 + i, f"dep-{i}") for i, n in enumerate(names)])
    while chain.height < HEIGHT:
        i = chain.height
        out = chain.run(
            [
                fx.transfer([(names[(i + k) % 40], names[(i + 3 * k + 1) % 40], "USD.BANK-A", 7)])
                for k in range(6)
            ]
        )
    assert out is not None and out.tree_root
    proof = []
    for replica, key in enumerate(fx.node_keys.values()):
        body = consensus_pb2.ConsensusMessage(
            checkpoint=consensus_pb2.Checkpoint(
                sequence=HEIGHT, state_root=out.state_root, replica=replica, tree_root=out.tree_root
            )
        ).SerializeToString()
        signed = consensus_pb2.SignedMessage(
            body=body, signer=replica, signature=Ed25519Crypto(key, [], fx.genesis.chain_id).sign(body)
        )
        proof.append(signed.SerializeToString())
    with store.write() as w:
        w.put(blocks.JOURNAL + journal.STABLE, journal.encode_signed_list(proof[:3]))
        w.put(blocks.LAST_EXECUTED, HEIGHT.to_bytes(8, "big"))
        w.put(blocks.STATE_ROOT, out.state_root)
    return store, out.state_root, out.tree_root


class Peers:
    """Three peers serving one store, each through its own SnapshotSource; ``tamper[p]`` changes
    what peer p answers."""

    def __init__(self, store: LmdbStore, log: EventLog, tamper: dict[int, Tamper] | None = None) -> None:
        self.sources = {
            p: SnapshotSource(store, _stable, log, chunk_bytes_max=600, session_idle_s=30, session_s_max=600)
            for p in (1, 2, 3)
        }
        self.tamper = tamper or {}
        self.asked: list[tuple[int, int]] = []

    @property
    def peers(self) -> Sequence[int]:
        return list(self.sources)

    async def ask(
        self, peer: int, request: consensus_pb2.SnapshotRequest, timeout_s: float
    ) -> consensus_pb2.SnapshotChunk:
        self.asked.append((peer, request.part))
        chunk = consensus_pb2.SnapshotChunk()
        chunk.CopyFrom(await self.sources[peer].fetch(request))
        if peer in self.tamper:
            self.tamper[peer](request, chunk)
        return chunk


async def _stable(sequence: int, timeout_s: float) -> bool:
    return True


@pytest.fixture
def fx() -> Factory:
    return Factory(banks=4, seed=7)


@pytest.fixture
def source(tmp_path: Path, fx: Factory) -> tuple[LmdbStore, bytes, bytes]:
    return _source_store(tmp_path / "source", fx)


def _sync(tmp_path: Path, fx: Factory, peers: Peers, log: EventLog) -> StateSync:
    cfg = NodeLimits().replica_config(4, 1, 0, fx.genesis.chain_id)
    keys = list(fx.node_keys.values())
    verifier = Verifier(cfg, Ed25519Crypto(keys[0], [k.public_key for k in keys], fx.genesis.chain_id))
    return StateSync(
        fx.genesis,
        tmp_path / "node" / "data",
        peers,
        verifier.checkpoint_proof,
        log,
        lag_min=1_000,
        timeout_s=60,
        map_size_bytes=64 << 20,
        budget_bytes=1 << 30,
    )


def _state(store: LmdbStore) -> dict[bytes, bytes]:
    with store.read() as r:
        return dict(r.scan(st.PREFIX))


def _events(log_path: Path, name: str) -> list[dict[str, object]]:
    return [e for e in map(json.loads, log_path.read_text().splitlines()) if e["event"] == name]


def _check_installed(data_dir: Path, source: LmdbStore, state_root: bytes, tree_root: bytes) -> None:
    synced = LmdbStore(data_dir, map_size_bytes=64 << 20)
    try:
        assert _state(synced) == _state(source)  # every state key, results included, equal
        with synced.read() as r:
            assert blocks.read_head(r, b"").last_executed == HEIGHT
            assert blocks.read_head(r, b"").state_root == state_root
            assert tree.tree_root(r) == (HEIGHT, tree_root)
            assert synced_at(r) == HEIGHT and r.get(RESTORED) is not None
            assert len(journal.restore(blocks.read_journal(r)).stable_proof) == 3
    finally:
        synced.close()


def test_an_empty_node_syncs_to_the_certified_checkpoint(
    tmp_path: Path, fx: Factory, source: tuple[LmdbStore, bytes, bytes]
) -> None:
    store, state_root, tree_root = source
    log = EventLog("BANK-A", tmp_path / "events.log")
    peers = Peers(store, log)
    report = asyncio.run(_sync(tmp_path, fx, peers, log).run(head=0, empty=True))
    assert report is not None and report.sequence == HEIGHT and report.rejected == 0
    assert report.results == 40 + 40 + 6 * (HEIGHT - 2) and report.leaves > 80 and report.chunks > 10
    assert {p for p, _ in peers.asked} == {1, 2, 3}  # chunks spread over the peers
    _check_installed(tmp_path / "node" / "data", store, state_root, tree_root)
    assert not (tmp_path / "node" / "data.sync").exists()
    log.close()
    assert _events(tmp_path / "events.log", "state_synced")[0]["sequence"] == HEIGHT


def test_a_checkpoint_before_any_transaction_installs_too(tmp_path: Path, fx: Factory) -> None:
    store, state_root, tree_root = _source_store(tmp_path / "source", fx, empty=True)
    log = EventLog("BANK-A", None)
    report = asyncio.run(_sync(tmp_path, fx, Peers(store, log), log).run(head=0, empty=True))
    assert report is not None and report.results == 0 and report.rejected == 0
    _check_installed(tmp_path / "node" / "data", store, state_root, tree_root)


def _lie_leaf_value(req: consensus_pb2.SnapshotRequest, chunk: consensus_pb2.SnapshotChunk) -> None:
    if req.part == Part.LEAVES and chunk.leaves:
        chunk.leaves[-1].value = chunk.leaves[-1].value + b"\x01"


def _drop_leaf(req: consensus_pb2.SnapshotRequest, chunk: consensus_pb2.SnapshotChunk) -> None:
    if req.part == Part.LEAVES and len(chunk.leaves) > 1:
        del chunk.leaves[0]


def _foreign_leaf(req: consensus_pb2.SnapshotRequest, chunk: consensus_pb2.SnapshotChunk) -> None:
    if req.part == Part.LEAVES and chunk.leaves:
        chunk.leaves.add(key=b"m/last_executed", salt=bytes(16), value=b"\x00" * 8)


def _lie_node(req: consensus_pb2.SnapshotRequest, chunk: consensus_pb2.SnapshotChunk) -> None:
    if req.part == Part.NODES and chunk.nodes:
        record = bytearray(chunk.nodes[-1])
        record[-1] ^= 1
        chunk.nodes[-1] = bytes(record)


def _skip_node(req: consensus_pb2.SnapshotRequest, chunk: consensus_pb2.SnapshotChunk) -> None:
    if req.part == Part.NODES and len(chunk.nodes) > 2:
        del chunk.nodes[1]
        del chunk.paths[1]


def _lie_result(req: consensus_pb2.SnapshotRequest, chunk: consensus_pb2.SnapshotChunk) -> None:
    if req.part == Part.RESULTS and chunk.results:
        item = chunk.results[0]
        result = tx_pb2.TxResult.FromString(item[32:])
        result.code = tx_pb2.INSUFFICIENT_FUNDS if result.code == tx_pb2.OK else tx_pb2.OK
        chunk.results[0] = item[:32] + result.SerializeToString()


def _drop_result(req: consensus_pb2.SnapshotRequest, chunk: consensus_pb2.SnapshotChunk) -> None:
    if req.part == Part.RESULTS and len(chunk.results) > 1:
        del chunk.results[1]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_lie_leaf_value, "leaf_value"),
        (_drop_leaf, "missing_leaf"),
        (_foreign_leaf, "unexpected_leaf"),
        (_lie_node, "node_hash"),
        (_skip_node, "missing_node"),
        (_lie_result, "results"),
        (_drop_result, "results"),
    ],
)
def test_a_lying_peer_is_rejected_and_its_chunk_fetched_elsewhere(
    tmp_path: Path, fx: Factory, source: tuple[LmdbStore, bytes, bytes], tamper: Tamper, reason: str
) -> None:
    store, state_root, tree_root = source
    log = EventLog("BANK-A", tmp_path / "events.log")
    peers = Peers(store, log, {1: tamper})
    report = asyncio.run(_sync(tmp_path, fx, peers, log).run(head=0, empty=True))
    assert report is not None and report.rejected == 1
    _check_installed(tmp_path / "node" / "data", store, state_root, tree_root)
    log.close()
    dropped = _events(tmp_path / "events.log", "state_sync_peer_dropped")
    assert [(e["peer"], e["reason"]) for e in dropped] == [(1, reason)]


def test_with_every_peer_lying_nothing_is_installed(
    tmp_path: Path, fx: Factory, source: tuple[LmdbStore, bytes, bytes]
) -> None:
    store, _, _ = source
    log = EventLog("BANK-A", tmp_path / "events.log")
    peers = Peers(store, log, dict.fromkeys((1, 2, 3), _lie_leaf_value))
    data_dir = tmp_path / "node" / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "marker").write_text("the old store")
    assert asyncio.run(_sync(tmp_path, fx, peers, log).run(head=0, empty=True)) is None
    assert (data_dir / "marker").read_text() == "the old store"
    assert not (tmp_path / "node" / "data.sync").exists()
    log.close()
    assert _events(tmp_path / "events.log", "state_sync_failed")


def test_a_forged_certificate_is_no_offer_and_a_near_head_needs_no_sync(
    tmp_path: Path, fx: Factory, source: tuple[LmdbStore, bytes, bytes]
) -> None:
    store, _, _ = source

    def forge(req: consensus_pb2.SnapshotRequest, chunk: consensus_pb2.SnapshotChunk) -> None:
        if req.part == Part.DESCRIBE:
            chunk.checkpoints[0].signature = bytes(64)

    log = EventLog("BANK-A", tmp_path / "events.log")
    sync = _sync(tmp_path, fx, Peers(store, log, {1: forge}), log)
    offers = asyncio.run(sync.offers())
    assert sorted(o.peer for o in offers) == [2, 3] and log.counters["state_sync_bad_offer"] == 1
    assert sync.needed(0, offers, empty=True)  # a new or wiped store: always
    assert not sync.needed(0, offers)  # no block executed yet, but a journal: replay
    assert not sync.needed(HEIGHT - 3, offers)  # close behind: replay the blocks
    assert sync.needed(HEIGHT - 3, [o.__class__(**{**o.__dict__, "first_block": HEIGHT}) for o in offers])
    assert not sync.needed(HEIGHT, offers)


def test_a_session_ends_when_the_store_must_grow(tmp_path: Path, fx: Factory) -> None:
    store, _, _ = _source_store(tmp_path / "source", fx)
    store.close()
    small = LmdbStore(
        tmp_path / "source", map_size_bytes=64 << 20, budget_bytes=1 << 30, headroom_bytes=8 << 20
    )
    log = EventLog("BANK-A", None)
    source = SnapshotSource(small, _stable, log, chunk_bytes_max=600, session_idle_s=30, session_s_max=600)

    async def scenario() -> None:
        described = await source.fetch(consensus_pb2.SnapshotRequest(part=Part.DESCRIBE))
        nodes = consensus_pb2.SnapshotRequest(part=Part.NODES, sequence=described.sequence)
        assert (await source.fetch(nodes)).nodes
        for i in range(20):  # fill the map past its headroom: a write then grows it
            with small.write() as w:
                for j in range(4):
                    w.put(b"z/%d/%d" % (i, j), bytes(1 << 20))
        with pytest.raises(SnapshotUnavailable):
            await source.fetch(nodes)

    asyncio.run(scenario())
    assert small.map_size_bytes > 64 << 20
    small.close()


def test_a_rejected_chunk_leaves_the_check_as_it_was() -> None:
    empty = encode_node([None] * 16)
    one_leaf = encode_node([bytes(64)] + [None] * 15)
    check = SnapshotCheck(5, EMPTY_ROOT)
    for bad, reason in (
        (consensus_pb2.SnapshotChunk(paths=[b""], nodes=[one_leaf], done=True), "node_hash"),
        (consensus_pb2.SnapshotChunk(paths=[b"0"], nodes=[empty], done=True), "unexpected_node"),
        (consensus_pb2.SnapshotChunk(paths=[b"", b"0"], nodes=[empty], done=True), "malformed_chunk"),
        (consensus_pb2.SnapshotChunk(done=False), "malformed_chunk"),
        (consensus_pb2.SnapshotChunk(paths=[b"X"], nodes=[empty], done=True), "malformed_chunk"),
    ):
        with pytest.raises(SyncRejected) as exc:
            check.nodes(bad)
        assert exc.value.reason == reason
    check.nodes(consensus_pb2.SnapshotChunk(paths=[b""], nodes=[empty], done=True))
    assert check.node_count == 1 and check.leaf_count == 0


def test_swap_in_finishes_a_complete_sync_and_drops_a_partial_one(tmp_path: Path) -> None:
    data, sync = tmp_path / "data", tmp_path / "data.sync"
    data.mkdir()
    (data / "old").write_text("old")
    sync.mkdir()
    (sync / "new").write_text("new")
    assert not swap_in(data)  # no COMPLETE mark: a crash mid-sync; the old store stays
    assert not sync.exists() and (data / "old").exists()
    sync.mkdir()
    (sync / "new").write_text("new")
    (sync / COMPLETE).write_text("")
    assert swap_in(data)
    assert (data / "new").exists() and not (data / "old").exists() and not (data / COMPLETE).exists()
    assert not (tmp_path / "data.old").exists() and not sync.exists()


def test_the_synced_history_starts_at_the_snapshot_with_its_balances(
    tmp_path: Path, fx: Factory, source: tuple[LmdbStore, bytes, bytes]
) -> None:
    store, _, _ = source
    log = EventLog("BANK-A", None)
    assert asyncio.run(_sync(tmp_path, fx, Peers(store, log), log).run(head=0, empty=True)) is not None
    synced = LmdbStore(tmp_path / "node" / "data", map_size_bytes=64 << 20)
    try:
        with synced.read() as r, store.read() as src:
            since = prune.synced_time_ms(r)
            assert since is not None and since == queries.consensus_time(src)
            for account in ("acct-0", "acct-7"):
                balance = queries.account(src, account)
                assert balance is not None
                request = api_pb2.GetAccountHistoryRequest(account_id=account, from_time_ms=since, limit=100)
                reply = api_pb2.GetAccountHistoryResponse.FromString(
                    node_history.account_history(fx.genesis, r, request.SerializeToString())
                )
                [entry] = reply.entries
                assert entry.kind == api_pb2.POSTING_KIND_SNAPSHOT and entry.height == HEIGHT
                [usd] = [b for b in balance.balances if b.asset == "USD.BANK-A"]
                assert entry.delta_available == 0 and entry.available_after == usd.available > 0
                request.from_time_ms = since - 1
                with pytest.raises(node_history.QueryError) as exc:
                    node_history.account_history(fx.genesis, r, request.SerializeToString())
                assert exc.value.code == grpc.StatusCode.FAILED_PRECONDITION
                assert f"from_time_ms >= {since}" in str(exc.value)
    finally:
        synced.close()
