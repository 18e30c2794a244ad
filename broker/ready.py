"""The ready list of a queue: FIFO, or FIFO within priority levels (x-max-priority).

Entries carry a sequence number; requeued entries go back to their original position
(RabbitMQ's behaviour), which is a merge at the head since they are usually the oldest.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice

from leveret.broker.message import Entry


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


SpillLoader = Callable[[list[tuple[int, int]]], list[Entry]]
"""Turns (seq, msg_id) pairs back into entries, reading the messages from the store."""

REFILL_BATCH = 512
SPILL_CHUNK = 16 * REFILL_BATCH  # triples per chunk of a restored spill


def spillable(entry: Entry) -> bool:
    """Whether an entry may live on disk only: stored, and nothing about it only in RAM."""
    return entry.msg_id is not None and not entry.redelivered and entry.delivery_count == 0


class FifoReady:
    """First in, first out; a long backlog of stored messages can live on disk.

    Three regions, in order: ``_items`` (entries in memory, the head), ``_spill`` (only the
    (seq, msg_id, size) of stored messages, 24 bytes each) and ``_tail`` (entries in memory
    that arrived while the spill was not empty). Popping refills the head from the spill.
    ``can_spill`` says whether an entry's record can be read back yet.
    """

    __slots__ = ("_items", "_spill", "_spill_len", "_tail", "can_spill", "loader",
                 "spilled_bytes")

    def __init__(self) -> None:
        self._items: deque[Entry] = deque()
        self._spill: deque[array[int]] = deque()  # flattened (seq, msg_id, size) triples
        self._spill_len = 0
        self._tail: deque[Entry] = deque()
        self.loader: SpillLoader | None = None
        self.can_spill: Callable[[Entry], bool] = spillable
        self.spilled_bytes = 0  # body sizes of the spilled messages

    def __len__(self) -> int:
        return len(self._items) + self._spill_len + len(self._tail)

    def __bool__(self) -> bool:
        return bool(self._items) or bool(self._spill_len) or bool(self._tail)

    @property
    def in_memory(self) -> int:
        return len(self._items) + len(self._tail)

    def push(self, entry: Entry) -> None:
        if self._spill_len:
            self._tail.append(entry)
        else:
            self._items.append(entry)

    def pop(self) -> Entry:
        if not self._items:
            self._refill()
        return self._items.popleft()

    def _refill(self) -> None:
        """Bring the next batch of spilled messages (or the tail) into the head."""
        if self._spill_len:
            assert self.loader is not None
            pairs: list[tuple[int, int]] = []
            while self._spill and len(pairs) < REFILL_BATCH:
                chunk = self._spill[0]
                take = min(len(chunk) // 3, REFILL_BATCH - len(pairs))
                for k in range(take):
                    pairs.append((chunk[3 * k], chunk[3 * k + 1]))
                    self.spilled_bytes -= chunk[3 * k + 2]
                if take * 3 == len(chunk):
                    self._spill.popleft()
                else:
                    self._spill[0] = chunk[3 * take :]
            self._spill_len -= len(pairs)
            self._items.extend(self.loader(pairs))
            if not self._spill_len:
                self.spilled_bytes = 0
        if not self._spill_len and self._tail:
            self._items.extend(self._tail)
            self._tail.clear()

    def spill(self, keep: int, keep_bytes: int) -> int:
        """Move stored entries beyond the first ``keep`` (and ``keep_bytes`` of bodies) to
        disk only; returns how many moved."""
        moved: list[Entry] = []
        can_spill = self.can_spill
        if not self._spill_len:  # then the tail is empty too: split the head after `keep`
            items = self._items
            kept = kept_bytes = 0
            for entry in items:
                if kept >= keep or kept_bytes >= keep_bytes:
                    break
                kept += 1
                kept_bytes += len(entry.message.body)
            if len(items) <= kept:
                return 0
            rest = [items.pop() for _ in range(len(items) - kept)]
            rest.reverse()
            count = 0
            while count < len(rest) and can_spill(rest[count]):
                count += 1
            if not count:  # nothing readable yet right after the kept head: try later
                items.extend(rest)
                return 0
            moved = rest[:count]
            self._tail.extend(rest[count:])  # not yet written: stays in memory, after the spill
        else:  # the spill grows at its end, from the front of the tail
            tail = self._tail
            while tail and can_spill(tail[0]):
                moved.append(tail.popleft())
        if moved:
            chunk = array("Q")
            for entry in moved:
                size = len(entry.message.body)
                chunk.append(entry.seq)
                chunk.append(entry.msg_id)  # type: ignore[arg-type]
                chunk.append(size)
                self.spilled_bytes += size
            self._spill.append(chunk)
            self._spill_len += len(moved)
        return len(moved)

    def restore_spilled(self, triples: array[int]) -> None:
        """Recovery: (seq, msg_id, size) triples of stored messages after the in-memory head."""
        # in chunks: a refill slices its chunk, which must not copy a whole backlog each time
        step = 3 * SPILL_CHUNK
        for start in range(0, len(triples), step):
            self._spill.append(triples[start : start + step])
        self._spill_len += len(triples) // 3
        self.spilled_bytes += sum(triples[2::3])

    def pop_expired(self, now: float) -> list[Entry]:
        """Remove and return head entries whose expiry time has passed."""
        expired = _pop_expired(self._items, now)
        while not self._items and (self._spill_len or self._tail):
            self._refill()
            more = _pop_expired(self._items, now)
            if not more:
                break
            expired += more
        return expired

    def next_expiry(self) -> float | None:
        """When the head expires; the head is read back from disk if it was spilled."""
        if not self._items and (self._spill_len or self._tail):
            self._refill()
        items = self._items
        return items[0].expires_at if items else None

    def peek(self, count: int) -> list[Entry | int]:
        """The first ``count`` messages in order, left in place: entries, or the message
        ids of those that live on disk only (the caller reads them from the store)."""
        found: list[Entry | int] = list(islice(self._items, count))
        for chunk in self._spill:
            if len(found) >= count:
                break
            found += islice(chunk[1::3], count - len(found))
        found += islice(self._tail, max(count - len(found), 0))
        return found

    def requeue(self, batch: list[Entry]) -> None:
        merge_at_head(self._items, sorted(batch, key=_seq))

    def clear(self) -> tuple[list[Entry], list[int]]:
        """Empty the list; returns the in-memory entries and the disk-only message ids."""
        entries = [*self._items, *self._tail]
        spilled = [chunk[k] for chunk in self._spill for k in range(1, len(chunk), 3)]
        self._items.clear()
        self._spill.clear()
        self._spill_len = 0
        self._tail.clear()
        self.spilled_bytes = 0
        return entries, spilled


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

    def peek(self, count: int) -> list[Entry | int]:
        """The first ``count`` messages in delivery order, left in place."""
        return list(islice(self, count))

    def requeue(self, batch: list[Entry]) -> None:
        by_level: dict[int, list[Entry]] = {}
        for entry in batch:
            by_level.setdefault(self._level(entry), []).append(entry)
        for level, entries in by_level.items():
            merge_at_head(self._levels[level], sorted(entries, key=_seq))
            if level > self._top:
                self._top = level
        self._count += len(batch)

    @property
    def in_memory(self) -> int:
        return self._count

    spilled_bytes = 0

    def spill(self, keep: int, keep_bytes: int) -> int:
        return 0  # priority levels stay in memory

    def clear(self) -> tuple[list[Entry], list[int]]:
        entries = list(self)
        for level in self._levels:
            level.clear()
        self._count = 0
        self._top = 0
        return entries, []
