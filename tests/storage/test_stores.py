"""MemoryStore and LmdbStore: the same KVStore semantics, checked on both."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.storage import lmdb_store, memory
from node.storage.kv import InvalidKeyError, KVStore, ScanInvalidatedError
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
        # Read first, then write (writing while a scan is iterated is refused, see below).
        seen = [key for key, _ in w.scan(b"a/")]
        for key in seen:
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
        with pytest.raises(StoreFullError, match="budget"), s.write() as w:
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


def test_writing_while_a_scan_is_iterated_is_refused_the_same_in_both(store: KVStore) -> None:
    with store.write() as w:
        for i in range(5):
            w.put(b"p/%d" % i, b"v")
    for mutate in ("put", "delete"):
        with store.write() as w:
            it = w.scan(b"p/")
            assert next(it)[0] == b"p/0"
            if mutate == "put":
                w.put(b"p/9", b"new")
            else:
                w.delete(b"p/3")
            with pytest.raises(ScanInvalidatedError):
                next(it)
            # A scan abandoned before the write is fine; a fresh scan sees the write.
            keys = [k for k, _ in w.scan(b"p/")]
            assert b"p/9" in keys and (b"p/3" in keys) == (mutate == "put")


class _CountingCursor:
    """An LMDB cursor that counts the records it reads."""

    def __init__(self, inner: object, counter: list[int]) -> None:
        self._inner: Any = inner
        self._counter = counter

    def set_range(self, key: bytes) -> bool:
        return bool(self._inner.set_range(key))

    def key(self) -> bytes:
        return bytes(self._inner.key())

    def value(self) -> bytes:
        self._counter[0] += 1
        return bytes(self._inner.value())

    def next(self) -> bool:
        return bool(self._inner.next())

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        for pair in self._inner:
            self._counter[0] += 1
            yield pair


class _CountingTxn:
    def __init__(self, inner: object, counter: list[int]) -> None:
        self._inner: Any = inner
        self._counter = counter

    def cursor(self) -> _CountingCursor:
        return _CountingCursor(self._inner.cursor(), self._counter)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _CountingDict(dict[bytes, bytes]):
    def __init__(self, data: dict[bytes, bytes], counter: list[int]) -> None:
        super().__init__(data)
        self.counter = counter

    def __getitem__(self, key: bytes) -> bytes:
        self.counter[0] += 1
        return super().__getitem__(key)

    def get(self, key: bytes, default: Any = None) -> Any:
        self.counter[0] += 1
        return super().get(key, default)


def count_reads(store: KVStore, w: Any) -> list[int]:
    """Instrument an open write transaction: the returned counter counts committed records read."""
    counter = [0]
    if isinstance(store, MemoryStore):
        assert isinstance(w, memory._Writer)
        w._snap.data = _CountingDict(w._snap.data, counter)
    else:
        assert isinstance(w, lmdb_store._Writer)
        w._txn = _CountingTxn(w._txn, counter)
    return counter


def test_write_scan_is_lazy_in_both_stores(store: KVStore) -> None:
    """Regression: a write transaction's scan materialized the whole prefix even when the caller
    stopped at the first pair (the ledger's escrow-expiry pre-pass does exactly that)."""
    with store.write() as w:
        for i in range(500):
            w.put(b"x/%04d" % i, b"v")
    with store.write() as w:
        reads = count_reads(store, w)
        w.put(b"x/0000a", b"mine")  # the transaction's own writes merge in order, lazily too
        it = w.scan(b"x/")
        assert [next(it)[0] for _ in range(3)] == [b"x/0000", b"x/0000a", b"x/0001"]
        assert reads[0] <= 5, reads[0]
        del it


def test_both_stores_refuse_empty_and_oversized_keys_on_every_access(store: KVStore) -> None:
    """Regression: MemoryStore accepted get/delete of b"" (and put of b"" raised a different
    error) where LmdbStore raised a bare lmdb error."""
    for bad in (b"", b"k" * 512):
        with store.write() as w:
            with pytest.raises(InvalidKeyError, match="key"):
                w.get(bad)
            with pytest.raises(InvalidKeyError, match="key"):
                w.delete(bad)
            with pytest.raises(InvalidKeyError, match="key"):
                w.put(bad, b"v")
        with store.read() as r, pytest.raises(InvalidKeyError, match="key"):
            r.get(bad)
    assert dump(store) == []


def test_lmdb_map_grows_up_to_its_budget_and_says_when_it_is_near(tmp_path: Path) -> None:
    kib = 1024
    path = tmp_path / "growing"
    s = LmdbStore(path, map_size_bytes=256 * kib, budget_bytes=4096 * kib, headroom_bytes=512 * kib)
    try:
        assert s.space_left(reserve_bytes=512 * kib) is None
        for t in range(25):  # ~1.9 MB of pages in all: seven times the first map
            with s.write() as w:
                for i in range(50):
                    w.put(b"fill/%03d/%03d" % (t, i), b"x" * 1200)
            with s.read() as r:  # readers between writes are fine: they are closed again
                assert r.get(b"fill/%03d/000" % t) is not None
        assert 256 * kib < s.map_size_bytes <= 4096 * kib
        assert s.used_bytes > 1024 * kib
        assert s.space_left(reserve_bytes=4096 * kib - s.used_bytes - 4 * kib) is None
        reason = s.space_left(reserve_bytes=4096 * kib - s.used_bytes)
        assert reason is not None and "budget" in reason
        # Past the budget: a clear error, the transaction aborted, what was there intact.
        with pytest.raises(StoreFullError, match="budget"), s.write() as w:
            for i in range(2000):
                w.put(b"over/%05d" % i, b"y" * 2000)
        assert len(dump(s)) == 25 * 50
    finally:
        s.close()
    # Restart with the same config: the store opens, reads, and takes a small write.
    again = LmdbStore(path, map_size_bytes=256 * kib, budget_bytes=4096 * kib, headroom_bytes=512 * kib)
    try:
        assert again.map_size_bytes > 256 * kib  # the grown map, not the configured start
        with again.write() as w:
            w.put(b"after-restart", b"ok")
        assert len(dump(again)) == 25 * 50 + 1
    finally:
        again.close()
