"""A batch interrupted before commit leaves the store byte-for-byte as before: an exception
injected on the Nth write (abort path), and a process that dies mid-transaction (no abort runs
at all; LMDB must simply never have committed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.app.ledger import Ledger
from node.storage.kv import KVStore, KVWriter
from node.storage.lmdb_store import LmdbStore
from node.storage.memory import MemoryStore
from sim.factory import Factory
from tests.app.helpers import Chain

REPO = Path(__file__).resolve().parents[2]


class InjectedCrash(Exception):
    pass


class CrashingWriter:
    """Passes everything to the real writer, and raises on the Nth put."""

    def __init__(self, inner: KVWriter, crash_on_put: int) -> None:
        self.inner = inner
        self.crash_on_put = crash_on_put
        self.puts = 0

    def get(self, key: bytes) -> bytes | None:
        return self.inner.get(key)

    def scan(self, prefix: bytes, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return self.inner.scan(prefix, start)

    def put(self, key: bytes, value: bytes) -> None:
        self.puts += 1
        if self.puts == self.crash_on_put:
            raise InjectedCrash(f"put #{self.puts}")
        self.inner.put(key, value)

    def delete(self, key: bytes) -> None:
        self.inner.delete(key)


def full_scan(store: KVStore) -> list[tuple[bytes, bytes]]:
    with store.read() as r:
        return list(r.scan(b""))


def setup_and_batch(fx: Factory) -> tuple[list[bytes], list[bytes]]:
    setup = [fx.open_account("BANK-A", f"acct-{i}", fx.client(f"c{i}")) for i in range(4)]
    setup += [fx.mint("USD.BANK-A", f"acct-{i}", 1_000, f"d-{i}") for i in range(4)]
    setup.append(fx.escrow_create("esc-old", "acct-0", "acct-1", "USD.BANK-A", 100, 2_000))
    batch = [
        fx.transfer([("acct-0", "acct-1", "USD.BANK-A", 10), ("acct-2", "acct-3", "USD.BANK-A", 20)]),
        fx.redeem("acct-1", "USD.BANK-A", 5),
        fx.escrow_create("esc-new", "acct-2", "acct-0", "USD.BANK-A", 30, 50_000),
        fx.mint("USD.BANK-A", "acct-3", 7, "d-new"),
        fx.transfer([("acct-3", "acct-0", "USD.BANK-A", 1_000_000)]),  # fails: records a result
    ]
    return setup, batch


@pytest.fixture(params=["lmdb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KVStore]:
    s: KVStore = (
        LmdbStore(tmp_path / "db", map_size_bytes=1 << 24) if request.param == "lmdb" else MemoryStore()
    )
    try:
        yield s
    finally:
        s.close()


def test_exception_on_any_put_leaves_the_store_unchanged(store: KVStore) -> None:
    fx = Factory()
    setup, batch = setup_and_batch(fx)
    chain = Chain(Ledger(fx.genesis), store)
    chain.run(setup, time_ms=1_000)
    before = full_scan(store)

    # Count the puts of the whole batch (escrow expiry at block start included) on a copy.
    reference = MemoryStore()
    ref_chain = Chain(Ledger(fx.genesis), reference)
    ref_chain.run(setup, time_ms=1_000)
    with reference.write() as w:
        counter = CrashingWriter(w, crash_on_put=-1)
        expected = ref_chain.ledger.execute(counter, 2, 3_000, batch)
    total_puts = counter.puts  # one per key the block changes (repeated writes coalesce)
    assert total_puts > 15 and expected.expired_escrows == ("esc-old",)

    for n in sorted({1, 2, total_puts // 2, total_puts - 1, total_puts}):
        with pytest.raises(InjectedCrash), store.write() as w:
            chain.ledger.execute(CrashingWriter(w, n), 2, 3_000, batch)
        assert full_scan(store) == before, f"crash on put {n} left a trace"

    # After all the aborted attempts the same batch executes exactly as on the untouched copy.
    out = chain.run(batch, time_ms=3_000)
    assert out.state_root == expected.state_root and out.results == expected.results
    assert full_scan(store) == full_scan(reference)
    assert chain.violations() == []


CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from node.app.ledger import Ledger
    from node.storage.lmdb_store import LmdbStore
    from sim.factory import Factory
    from tests.app.test_crash_atomicity import setup_and_batch

    fx = Factory()
    setup, batch = setup_and_batch(fx)
    store = LmdbStore(Path(sys.argv[2]), map_size_bytes=1 << 24)
    ledger = Ledger(fx.genesis)
    if sys.argv[3] == "setup":
        with store.write() as w:
            ledger.execute(w, 1, 1_000, setup)
        sys.exit(0)

    class DieOnPut:
        def __init__(self, inner, n):
            self.inner, self.n, self.puts = inner, n, 0
        def get(self, k):
            return self.inner.get(k)
        def scan(self, p):
            return self.inner.scan(p)
        def delete(self, k):
            self.inner.delete(k)
        def put(self, k, v):
            self.puts += 1
            if self.puts == self.n:
                os._exit(42)  # no abort, no cleanup: as close to kill -9 as a test can get
            self.inner.put(k, v)

    with store.write() as w:
        ledger.execute(DieOnPut(w, int(sys.argv[3])), 2, 3_000, batch)
    sys.exit(0)
    """
)


def run_child(db: Path, arg: str) -> int:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(REPO), str(db), arg])
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_process_death_mid_batch_leaves_lmdb_as_before(tmp_path: Path) -> None:
    db = tmp_path / "node"
    assert run_child(db, "setup") == 0
    with LmdbStore(db, map_size_bytes=1 << 24) as store:
        before = full_scan(store)
    assert len(before) > 10
    assert run_child(db, "15") == 42
    with LmdbStore(db, map_size_bytes=1 << 24) as store:
        assert full_scan(store) == before
        chain = Chain(Ledger(Factory().genesis), store)
        assert chain.height == 1
        _, batch = setup_and_batch(Factory())
        assert len(chain.run(batch, time_ms=3_000).results) == len(batch)  # and it is still writable
