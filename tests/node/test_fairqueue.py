from __future__ import annotations

from node.fairqueue import FairQueue


def test_sources_are_served_in_turn_and_each_keeps_its_order() -> None:
    q: FairQueue[str] = FairQueue(items_max=100, bytes_max=1000, total_bytes_max=10_000)
    for i in range(50):
        assert q.put("flood", f"f{i}", 1)
    assert q.put("honest", "h0", 1) and q.put("honest", "h1", 1)
    assert q.put("tick", "t0", 0)
    first = q.take(6)
    assert first == ["f0", "h0", "t0", "f1", "h1", "f2"]
    assert q.take(100) == [f"f{i}" for i in range(3, 50)]
    assert len(q) == 0 and q.total_bytes == 0 and q.take(5) == []


def test_a_full_source_is_refused_but_others_still_get_in() -> None:
    q: FairQueue[int] = FairQueue(items_max=3, bytes_max=100, total_bytes_max=150)
    assert all(q.put("a", i, 40) for i in range(2))
    assert not q.put("a", 2, 40)  # its own byte bound
    assert q.put("b", 0, 40) and q.put("b", 1, 30)
    assert not q.put("b", 2, 1)  # the shared budget, once b holds something
    assert q.put("c", 0, 500)  # an empty source may always put one item
    assert not q.put("c", 1, 1)
    assert q.depth("a") == (2, 80) and q.depth("c") == (1, 500)
    assert q.take(3) == [0, 0, 0]
    assert q.put("a", 9, 40)


def test_items_bound_per_source() -> None:
    q: FairQueue[int] = FairQueue(items_max=2, bytes_max=1000, total_bytes_max=1000)
    assert q.put("a", 1, 0) and q.put("a", 2, 0) and not q.put("a", 3, 0)
    assert q.take(1) == [1] and q.put("a", 3, 0)


def test_take_stops_after_per_source_max_rounds() -> None:
    q: FairQueue[str] = FairQueue(items_max=100, bytes_max=1000, total_bytes_max=10_000)
    for i in range(10):
        q.put("a", f"a{i}", 1)
    q.put("b", "b0", 1)
    assert q.take(100, per_source_max=3) == ["a0", "b0", "a1", "a2"]
    assert q.take(2) == ["a3", "a4"]


def test_a_capped_source_gives_at_most_its_cap_per_take_and_keeps_its_place() -> None:
    q: FairQueue[str] = FairQueue(items_max=100, bytes_max=1000, total_bytes_max=10_000)
    for i in range(5):
        q.put("liar", f"l{i}", 1)
        q.put("honest", f"h{i}", 1)
    assert q.take(100, caps={"liar": 1}) == ["l0", "h0", "h1", "h2", "h3", "h4"]
    assert q.take(100, caps={"liar": 1}) == ["l1"]
    assert q.take(100) == ["l2", "l3", "l4"]
