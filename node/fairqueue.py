"""Per-source queues served in turn: one flooding source cannot starve the others.

Every event the node's loop handles comes from a source: its own ticker, the clients (through
the API), or one connection of a peer (a replica stream, a relay of transactions). Each source
has its own FIFO queue, bounded in items and bytes, and the loop takes one item from each
source with work in turn (Aardvark, NSDI 2009: separate, fairly served queues keep a BFT system
live while f members and any number of clients flood it). Within a source the order is kept.

A source with an empty queue may always put one item, whatever its size (it is bounded by the
message limit already): a quiet honest peer is never refused because a noisy one filled the
shared budget. Past its own bounds, or past the shared byte budget once it holds something, a
source must wait (backpressure: a peer stream stops reading, and gRPC's flow control slows its
sender) or drop, as the caller chooses.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Source(Generic[T]):
    items: deque[tuple[T, int]] = field(default_factory=deque)
    bytes: int = 0


class FairQueue(Generic[T]):
    def __init__(self, items_max: int, bytes_max: int, total_bytes_max: int) -> None:
        assert items_max > 0 and bytes_max > 0 and total_bytes_max >= bytes_max
        self.items_max = items_max
        self.bytes_max = bytes_max
        self.total_bytes_max = total_bytes_max
        self._sources: dict[Hashable, _Source[T]] = {}  # only sources with queued items
        self._ring: deque[Hashable] = deque()  # service order of those sources
        self.total_items = 0
        self.total_bytes = 0

    def __len__(self) -> int:
        return self.total_items

    def depth(self, source: Hashable) -> tuple[int, int]:
        """(items, bytes) queued from ``source``."""
        s = self._sources.get(source)
        return (0, 0) if s is None else (len(s.items), s.bytes)

    def has_room(self, source: Hashable, size: int, items_max: int | None = None) -> bool:
        """Whether ``source`` may queue ``size`` more bytes (``items_max``: a lower item bound
        for this source than the queue's)."""
        s = self._sources.get(source)
        if s is None:
            return True  # one item at a time, whatever the others hold
        return (
            len(s.items) < min(self.items_max, items_max or self.items_max)
            and s.bytes + size <= self.bytes_max
            and self.total_bytes + size <= self.total_bytes_max
        )

    def put(self, source: Hashable, item: T, size: int, items_max: int | None = None) -> bool:
        """Queue ``item`` (``size`` bytes) from ``source``; False (nothing queued) when full."""
        if not self.has_room(source, size, items_max):
            return False
        s = self._sources.get(source)
        if s is None:
            s = self._sources[source] = _Source()
            self._ring.append(source)
        s.items.append((item, size))
        s.bytes += size
        self.total_items += 1
        self.total_bytes += size
        return True

    def take(
        self, items_max: int, per_source_max: int | None = None, caps: Mapping[Hashable, int] | None = None
    ) -> list[T]:
        """Up to ``items_max`` items, one from each source in turn, round after round: at most
        ``per_source_max`` from any one source, and at most ``caps[source]`` from a source
        named there (a source the caller has reason to serve less)."""
        out: list[T] = []
        ring, sources = self._ring, self._sources
        parked: list[Hashable] = []  # sources that reached their cap: back in the ring after
        taken: dict[Hashable, int] = {}
        rounds = 0
        while ring and len(out) < items_max:
            if per_source_max is not None:
                rounds += 1
                if rounds > per_source_max:
                    break
            for _ in range(len(ring)):
                if len(out) >= items_max:
                    break
                source = ring.popleft()
                s = sources[source]
                item, size = s.items.popleft()
                s.bytes -= size
                self.total_items -= 1
                self.total_bytes -= size
                out.append(item)
                if not s.items:
                    del sources[source]
                elif caps and source in caps:
                    taken[source] = taken.get(source, 0) + 1
                    (parked if taken[source] >= caps[source] else ring).append(source)
                else:
                    ring.append(source)
        ring.extend(parked)
        return out
