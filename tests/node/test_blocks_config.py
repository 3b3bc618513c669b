"""Unit tests of the block store and the node config loader (no processes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from node.app.codec import encode_result
from node.app.state import result_key
from node.app.tx import Code, TxResult
from node.config import ConfigError, NodeLimits, load_node_config
from node.storage import blocks
from node.storage.kv import KVWriter
from node.storage.memory import MemoryStore

GENESIS_ROOT = hashlib.sha256(b"genesis").digest()


def _h(x: bytes) -> bytes:
    return hashlib.sha256(x).digest()


def _record(w: KVWriter, tx_id: bytes, height: int, index: int) -> bytes:
    """What the ledger writes for a recorded (final) result in the same write transaction."""
    result = encode_result(TxResult(tx_id, Code.OK, "", height, index, final=True))
    w.put(result_key(tx_id), result)
    return result


def test_head_starts_at_genesis_and_advances_with_each_block() -> None:
    store = MemoryStore()
    with store.read() as r:
        assert blocks.read_head(r, GENESIS_ROOT) == blocks.Head(0, GENESIS_ROOT, b"")
    t1, t2 = _h(b"t1"), _h(b"t2")
    with store.write() as w:
        r1 = _record(w, t1, 1, 0)
        blocks.put_executed_block(
            w, 1, b"block1", _h(b"h1"), [t1, t2], [r1, b"r2"], [True, False], _h(b"rr"), _h(b"s1")
        )
    with store.read() as r:
        assert blocks.read_head(r, GENESIS_ROOT) == blocks.Head(1, _h(b"s1"), _h(b"h1"))
        assert blocks.get_block(r, 1) == b"block1"
        assert blocks.get_results(r, 1) == (r1, b"r2")
        assert blocks.get_outcome(r, 1) == (_h(b"rr"), _h(b"s1"))
        assert blocks.find_tx(r, t1) == blocks.TxLocation(1, 0, True)
        assert blocks.find_tx(r, t2) == blocks.TxLocation(1, 1, False)
        assert blocks.get_block(r, 2) is None


def test_executing_out_of_order_is_a_bug() -> None:
    store = MemoryStore()
    with pytest.raises(AssertionError), store.write() as w:
        blocks.put_executed_block(w, 2, b"b", _h(b"h"), [], [], [], _h(b"r"), _h(b"s"))


def test_recorded_result_is_final_and_unrecorded_is_superseded() -> None:
    store = MemoryStore()
    forged, genuine = _h(b"forged"), _h(b"genuine")
    with store.write() as w:
        # height 1: a forged copy of `forged` (unrecorded) and the genuine `genuine` (recorded)
        y = _record(w, genuine, 1, 1)
        blocks.put_executed_block(
            w, 1, b"b1", _h(b"1"), [forged, genuine], [b"x", y], [False, True], _h(b"r"), _h(b"s")
        )
    with store.read() as r:
        assert blocks.find_tx(r, forged) == blocks.TxLocation(1, 0, False)
    with store.write() as w:
        # height 2: a retry of `genuine` (the ledger returns its first result) and the genuine
        # `forged` tx; then at height 3 another forged copy, which changes nothing
        z = _record(w, forged, 2, 1)
        blocks.put_executed_block(
            w, 2, b"b2", _h(b"2"), [genuine, forged], [y, z], [True, True], _h(b"r"), _h(b"s")
        )
    with store.write() as w:
        blocks.put_executed_block(w, 3, b"b3", _h(b"3"), [forged], [b"x"], [False], _h(b"r"), _h(b"s"))
    with store.read() as r:
        assert blocks.find_tx(r, forged) == blocks.TxLocation(2, 1, True)
        assert blocks.find_tx(r, genuine) == blocks.TxLocation(1, 1, True)


def test_journal_round_trip_with_deletes_and_prefix_isolation() -> None:
    store = MemoryStore()
    with store.write() as w:
        blocks.apply_journal(w, [(b"v", b"1"), (b"p/1", b"a"), (b"p/2", b"b")])
        w.put(b"m/other", b"not journal")
    with store.write() as w:
        blocks.apply_journal(w, [(b"p/1", None), (b"v", b"2")])
    with store.read() as r:
        assert blocks.read_journal(r) == {b"v": b"2", b"p/2": b"b"}


def test_attestations_and_lists_round_trip() -> None:
    store = MemoryStore()
    items = (b"", b"a", b"\x00" * 300)
    assert blocks.unpack_list(blocks.pack_list(items)) == items
    with store.write() as w:
        blocks.put_attestations(w, 7, items)
    with store.read() as r:
        assert blocks.get_attestations(r, 7) == items
        assert blocks.get_attestations(r, 8) == ()


def _write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return path


BASE = {
    "genesis_path": "genesis.json",
    "member_id": "BANK-A",
    "key_path": "/abs/node.key",
    "data_dir": "data",
    "api_listen": "127.0.0.1:7001",
    "replica_listen": "127.0.0.1:7000",
    "tls_cert_path": "BANK-A.tls.pem",
    "tls_key_path": "BANK-A.tls-key.pem",
}


def test_config_loads_with_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_node_config(_write(tmp_path, {**BASE, "limits": {"batch_size_max": 7}}))
    assert cfg.genesis_path == tmp_path / "genesis.json"
    assert cfg.key_path == Path("/abs/node.key")
    assert cfg.limits.batch_size_max == 7
    assert cfg.limits.pending_requests_max == NodeLimits().pending_requests_max
    assert load_node_config(_write(tmp_path, json.loads(cfg.to_json()))) == cfg


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({k: v for k, v in BASE.items() if k != "member_id"}, "member_id"),
        ({**BASE, "api_listen": "127.0.0.1"}, "api_listen"),
        ({**BASE, "api_listen": "127.0.0.1:70000"}, "api_listen"),
        ({**BASE, "surprise": 1}, "unknown field"),
        ({**BASE, "limits": {"batch_size_max": 0}}, "batch_size_max"),
        ({**BASE, "limits": {"batch_size_max": True}}, "batch_size_max"),
        ({**BASE, "limits": {"nope": 1}}, "nope"),
        ({**BASE, "limits": {"log_window": 30, "checkpoint_interval": 20}}, "log_window"),
        ({**BASE, "retention": {"blocks": 0}}, "retention.blocks"),
        ({**BASE, "retention": {"days": 3}}, "retention: unknown field"),
        ({**BASE, "retention": 5}, "retention: an object"),
        ({**BASE, "vote_record_path": ""}, "vote_record_path"),
        ([1, 2], "JSON object"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, doc: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_node_config(_write(tmp_path, doc))


def test_config_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_node_config(tmp_path / "absent.json")


def test_event_log_lines_are_json_and_fixed_fields_win(tmp_path: Path) -> None:
    from node.log import EventLog

    log = EventLog("BANK-A", tmp_path / "events.log")
    log.event("view_change", view=3, node="spoofed", event="x")
    log.count("peer_garbage")
    log.count("peer_garbage", 2)
    log.close()
    (line,) = (tmp_path / "events.log").read_text().splitlines()
    record = json.loads(line)
    assert record["event"] == "view_change" and record["node"] == "BANK-A" and record["view"] == 3
    assert record["detail_node"] == "spoofed"
    assert log.counters["peer_garbage"] == 3


def test_scoped_reads_free_lmdb_reader_slots_held_by_suspended_coroutines(tmp_path: Path) -> None:
    import asyncio

    from node.storage.lmdb_store import LmdbStore

    store = blocks.ScopedReads(LmdbStore(tmp_path / "db"))
    with store.write() as w:
        w.put(b"k", b"v")

    async def hold(release: asyncio.Event) -> bytes | None:
        with store.read() as r:
            value = r.get(b"k")
        await release.wait()  # `r` is still a local of this suspended frame
        return value

    async def scenario() -> list[bytes | None]:
        release = asyncio.Event()
        tasks = [asyncio.ensure_future(hold(release)) for _ in range(300)]  # LMDB default: 126 slots
        await asyncio.sleep(0)
        with store.read() as r:
            assert r.get(b"k") == b"v"
        release.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(scenario()) == [b"v"] * 300
    store.close()


def test_retention_and_vote_record_round_trip(tmp_path: Path) -> None:
    from node.storage.prune import Retention

    cfg = load_node_config(_write(tmp_path, {**BASE, "retention": {"blocks": 100, "hours": 2}}))
    assert cfg.retention == Retention(blocks=100, hours=2) and not cfg.retention.archive
    assert load_node_config(_write(tmp_path, json.loads(cfg.to_json()))) == cfg
    assert load_node_config(_write(tmp_path, BASE)).retention.archive  # no field: keep everything
    assert cfg.votes_path == cfg.data_dir.with_name(cfg.data_dir.name + ".votes.json")  # beside it
    moved = load_node_config(_write(tmp_path, {**BASE, "vote_record_path": "votes/a.json"}))
    assert moved.votes_path == tmp_path / "votes" / "a.json"


def test_event_log_rotates_by_size_and_keeps_n_files(tmp_path: Path) -> None:
    from node.log import EventLog

    path = tmp_path / "events.log"
    log = EventLog("BANK-A", path, file_bytes_max=2_000, files_kept=2)
    for i in range(200):
        log.event("tick", i=i)
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["events.log", "events.log.1", "events.log.2"]
    assert all(p.stat().st_size <= 2_000 for p in tmp_path.iterdir())
    lines = [
        json.loads(x)
        for n in ("events.log.2", "events.log.1", "events.log")
        for x in (tmp_path / n).read_text().splitlines()
    ]
    assert [x["i"] for x in lines] == list(range(200 - len(lines), 200))  # the newest, in order
    assert log.counters["log_rotations"] > 2
    reopened = EventLog("BANK-A", path, file_bytes_max=2_000, files_kept=2)  # appends, counts what is there
    reopened.event("again")
    reopened.close()
    assert (tmp_path / "events.log").stat().st_size <= 2_000
