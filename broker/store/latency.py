"""A latency histogram that one thread fills and another reads, without a lock.

The store's writer thread is the only writer (``observe``: a bisect and two additions per
group commit, never per message); a metrics scrape on the event loop reads ``snapshot``.
Copying the bucket list is atomic under the GIL, and the count is the copy's total, so a
snapshot's buckets always agree with its count; its sum may include an observation the
copy missed, which is harmless for a latency histogram.
"""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds in seconds: from a RAM-backed fsync (~0.1 ms) to a stalled disk (10 s).
BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
          0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts per bucket (``le`` semantics, the last one unbounded) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = BOUNDS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def snapshot(self) -> tuple[list[tuple[float, int]], float]:
        """(cumulative count per upper bound, inf last: the count; sum)."""
        counts = list(self.counts)
        cumulative = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return cumulative, self.sum
