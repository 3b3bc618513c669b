"""MemoryStore and LmdbStore: the same KVStore semantics, checked on both."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.storage.kv import KVStore
from node.storage.lmdb_store import LmdbStore, StoreError, StoreFullError
from node.storage.memory import MemoryStore


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KVStore]:
    s: KVStore = (
        MemoryStore() if request.param == "memory" else LmdbStore(tmp_path / "db", map_size_bytes=1 << 24)
    )
    try:
        yield s
    finally:
        s.close()


def dump(store: KVStore) -> list[tuple[bytes, bytes]]:
    with store.read() as r:
        return list(r.scan(b""))


def test_write_commits_on_normal_exit(store: KVStore) -> None:
    with store.write() as w:
        w.put(b"s/b", b"2")
        w.put(b"s/a", b"1")
        assert w.get(b"s/a") == b"1"  # a transaction reads its own writes
    with store.read() as r:
        assert r.get(b"s/a") == b"1"
        assert r.get(b"s/missing") is None
    assert dump(store) == [(b"s/a", b"1"), (b"s/b", b"2")]


def test_write_aborts_on_exception(store: KVStore) -> None:
    with store.write() as w:
        w.put(b"k1", b"v1")
    with pytest.raises(RuntimeError, match="boom"), store.write() as w:
        w.put(b"k2", b"v2")
        w.delete(b"k1")
        raise RuntimeError("boom")
    assert dump(store) == [(b"k1", b"v1")]


def test_scan_is_prefix_bounded_and_ordered_and_sees_own_writes(store: KVStore) -> None:
    with store.write() as w:
        for key in (b"a/2", b"a/1", b"a0", b"a/\xff\xff", b"b/1", b"a", b"\xff\xff"):
            w.put(key, key)
    with store.write() as w:
        w.put(b"a/15", b"new")
        w.delete(b"a/2")
        w.put(b"a/1", b"changed")
        assert list(w.scan(b"a/")) == [
            (b"a/1", b"changed"),
            (b"a/15", b"new"),
            (b"a/\xff\xff", b"a/\xff\xff"),
        ]
        # Writing while iterating a scan must not disturb it.
        seen = []
        for key, _ in w.scan(b"a/"):
            seen.append(key)
            w.put(key + b"x", b"")
        assert seen == [b"a/1", b"a/15", b"a/\xff\xff"]
    with store.read() as r:
        assert [k for k, _ in r.scan(b"a/")] == [
            b"a/1",
            b"a/15",
            b"a/15x",
            b"a/1x",
            b"a/\xff\xff",
            b"a/\xff\xffx",
        ]
        assert [k for k, _ in r.scan(b"\xff")] == [b"\xff\xff"]
        assert list(r.scan(b"zzz")) == []
        assert len(list(r.scan(b""))) == 10


def test_delete_of_missing_key_is_a_no_op(store: KVStore) -> None:
    with store.write() as w:
        w.delete(b"nothing")
        w.put(b"k", b"v")
        w.delete(b"k")
        assert w.get(b"k") is None
    assert dump(store) == []


def test_reader_sees_a_snapshot(store: KVStore) -> None:
    with store.write() as w:
        w.put(b"k", b"old")
    with store.read() as r:
        with store.write() as w:
            w.put(b"k", b"new")
            w.put(b"k2", b"x")
        assert r.get(b"k") == b"old"
        assert list(r.scan(b"k")) == [(b"k", b"old")]
    with store.read() as r:
        assert r.get(b"k") == b"new"


def test_nested_write_in_one_thread_is_refused_not_a_hang(store: KVStore) -> None:
    with store.write() as w:
        w.put(b"outer", b"1")
        with pytest.raises((RuntimeError, StoreError)), store.write():
            pass
    assert dump(store) == [(b"outer", b"1")]
    with store.write() as w:  # the store is usable afterwards
        w.put(b"after", b"2")
    assert len(dump(store)) == 2


def test_closed_store_refuses_use(store: KVStore) -> None:
    store.close()
    with pytest.raises((RuntimeError, StoreError)), store.read():
        pass


def test_lmdb_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "node"
    s = LmdbStore(path, map_size_bytes=1 << 24)
    with s.write() as w:
        for i in range(500):
            w.put(b"s/%05d" % i, bytes([i % 256]) * (i % 40))
    with pytest.raises(ValueError), s.write() as w:
        w.put(b"s/aborted", b"x")
        raise ValueError("abort this one")
    before = dump(s)
    s.close()
    again = LmdbStore(path, map_size_bytes=1 << 24)
    try:
        assert dump(again) == before
        assert len(before) == 500
        with again.read() as r:
            assert r.get(b"s/00042") == bytes([42]) * 2
            assert r.get(b"s/aborted") is None
    finally:
        again.close()


def test_lmdb_full_map_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    s = LmdbStore(tmp_path / "small", map_size_bytes=64 * 1024)
    try:
        with s.write() as w:
            w.put(b"keep", b"v")
        with pytest.raises(StoreFullError, match="map_size_bytes"), s.write() as w:
            for i in range(10_000):
                w.put(b"fill/%06d" % i, b"x" * 200)
        assert dump(s) == [(b"keep", b"v")]
    finally:
        s.close()


def test_both_stores_refuse_the_same_bad_keys(store: KVStore) -> None:
    for bad in (b"", b"k" * 512):
        with pytest.raises(ValueError, match="key"), store.write() as w:
            w.put(b"fine", b"v")
            w.put(bad, b"v")
    with store.write() as w:
        w.put(b"k" * 511, b"longest")
    assert dump(store) == [(b"k" * 511, b"longest")]


def test_lmdb_bad_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    with pytest.raises(StoreError, match="cannot open"):
        LmdbStore(blocker / "db")


def test_memory_store_rejects_non_bytes() -> None:
    s = MemoryStore()
    with pytest.raises(TypeError), s.write() as w:
        w.put(b"k", "v")  # type: ignore[arg-type]
    assert dump(s) == []


def test_lmdb_readers_in_other_threads_never_see_half_a_commit(tmp_path: Path) -> None:
    """The node's API threads read while the driver writes: each read sees whole commits only."""
    with LmdbStore(tmp_path / "mt", map_size_bytes=1 << 24, sync=False) as s:
        with s.write() as w:
            w.put(b"x", b"0")
            w.put(b"y", b"0")
        done = threading.Event()
        seen: list[int] = []
        errors: list[str] = []

        def reader() -> None:
            while not done.is_set():
                with s.read() as r:
                    x, y = r.get(b"x"), r.get(b"y")
                    scanned = dict(r.scan(b""))
                if x != y or scanned.get(b"x") != x:
                    errors.append(f"torn read x={x!r} y={y!r}")
                seen.append(int(x or b"0"))

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for i in range(1, 201):
                with s.write() as w:
                    w.put(b"x", str(i).encode())
                    w.put(b"y", str(i).encode())
        finally:
            done.set()
            for t in threads:
                t.join(timeout=30)
        assert errors == []
        assert seen and all(0 <= v <= 200 for v in seen)
        with s.read() as r:
            assert r.get(b"x") == b"200"


def test_a_read_inside_an_open_write_sees_only_committed_data(store: KVStore) -> None:
    with store.write() as w:
        w.put(b"a", b"1")
    with store.write() as w:
        w.put(b"a", b"2")
        w.put(b"b", b"new")
        with store.read() as r:
            assert r.get(b"a") == b"1" and r.get(b"b") is None
            assert list(r.scan(b"")) == [(b"a", b"1")]
    assert dump(store) == [(b"a", b"2"), (b"b", b"new")]
