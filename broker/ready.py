"""The ready list of a queue: FIFO, or FIFO within priority levels (x-max-priority).

Entries carry a sequence number; requeued entries go back to their original position
(RabbitMQ's behaviour), which is a merge at the head since they are usually the oldest.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from broker.message import Entry


def _seq(entry: Entry) -> int:
    return entry.seq


def merge_at_head(items: deque[Entry], batch: list[Entry]) -> None:
    """Insert ``batch`` (sorted by seq) into ``items`` (sorted by seq) in order."""
    last = batch[-1].seq
    if not items or items[0].seq > last:
        items.extendleft(reversed(batch))
        return
    head: list[Entry] = []
    while items and items[0].seq < last:
        head.append(items.popleft())
    items.extendleft(reversed(sorted(head + batch, key=_seq)))


def _pop_expired(items: deque[Entry], now: float) -> list[Entry]:
    expired = []
    while items:
        expires_at = items[0].expires_at
        if expires_at is None or expires_at > now:
            break
        expired.append(items.popleft())
    return expired


class FifoReady:
    """First in, first out."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque[Entry] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._items)

    def push(self, entry: Entry) -> None:
        self._items.append(entry)

    def pop(self) -> Entry:
        return self._items.popleft()

    def pop_expired(self, now: float) -> list[Entry]:
        """Remove and return head entries whose expiry time has passed."""
        return _pop_expired(self._items, now)

    def next_expiry(self) -> float | None:
        items = self._items
        return items[0].expires_at if items else None

    def requeue(self, batch: list[Entry]) -> None:
        merge_at_head(self._items, sorted(batch, key=_seq))

    def clear(self) -> list[Entry]:
        items = list(self._items)
        self._items.clear()
        return items


class PriorityReady:
    """Higher priority first; FIFO within a priority. Priorities above the maximum count as it."""

    __slots__ = ("_count", "_levels", "_top")

    def __init__(self, max_priority: int) -> None:
        self._levels: list[deque[Entry]] = [deque() for _ in range(max_priority + 1)]
        self._count = 0
        self._top = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Entry]:
        for level in reversed(self._levels):
            yield from level

    def _level(self, entry: Entry) -> int:
        return min(entry.message.priority, len(self._levels) - 1)

    def push(self, entry: Entry) -> None:
        level = self._level(entry)
        self._levels[level].append(entry)
        self._count += 1
        if level > self._top:
            self._top = level

    def pop(self) -> Entry:
        levels = self._levels
        while not levels[self._top]:
            self._top -= 1
        self._count -= 1
        return levels[self._top].popleft()

    def pop_expired(self, now: float) -> list[Entry]:
        expired: list[Entry] = []
        for level in self._levels:
            expired += _pop_expired(level, now)
        self._count -= len(expired)
        return expired

    def next_expiry(self) -> float | None:
        due = [level[0].expires_at for level in self._levels
               if level and level[0].expires_at is not None]
        return min(due) if due else None

    def requeue(self, batch: list[Entry]) -> None:
        by_level: dict[int, list[Entry]] = {}
        for entry in batch:
            by_level.setdefault(self._level(entry), []).append(entry)
        for level, entries in by_level.items():
            merge_at_head(self._levels[level], sorted(entries, key=_seq))
            if level > self._top:
                self._top = level
        self._count += len(batch)

    def clear(self) -> list[Entry]:
        items = list(self)
        for level in self._levels:
            level.clear()
        self._count = 0
        self._top = 0
        return items
