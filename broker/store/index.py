"""Where each stored message lives, and how many queues still hold it.

The store's own bookkeeping, kept in compact arrays (about 20 bytes per record, no object
per message): for each log file, the ids of its PUBLISH records in ascending order, their
offsets and sizes, and a reference count (the queues that still hold the message). A file's
live bytes decide when the log is worth compacting; a message held by some but not all of
its queues remembers which ones let it go, so a merge can rewrite its queue list.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field

from leveret.broker.store.records import SEGMENT_SHIFT, QueueKey


@dataclass(eq=False)
class FileIndex:
    """The PUBLISH records of one log file."""

    number: int
    ids: array = field(default_factory=lambda: array("Q"))
    offsets: array = field(default_factory=lambda: array("I"))
    sizes: array = field(default_factory=lambda: array("I"))
    refs: array = field(default_factory=lambda: array("I"))
    size: int = 0  # bytes in the file (records of every kind)
    live: int = 0  # records some queue still holds
    live_bytes: int = 0
    kill_ticket: int = 0  # the store ticket that made its last record dead

    def add(self, msg_id: int, offset: int, size: int, refs: int) -> None:
        self.ids.append(msg_id)
        self.offsets.append(offset)
        self.sizes.append(size)
        self.refs.append(refs)
        if refs:
            self.live += 1
            self.live_bytes += size

    def ordinal(self, msg_id: int) -> int:
        ids = self.ids
        index = bisect_left(ids, msg_id)
        if index == len(ids) or ids[index] != msg_id:
            return -1
        return index

    @property
    def dead_bytes(self) -> int:
        return self.size - self.live_bytes


class Index:
    """Every log file's records; ``home`` maps a merged file's old numbers to it."""

    def __init__(self) -> None:
        self.files: dict[int, FileIndex] = {}
        self.home: dict[int, int] = {}  # segment number of an id -> file that holds it now
        # Messages that some of their queues have let go: id -> those queues.
        self.partial: dict[int, set[QueueKey]] = {}
        # Messages handed out (unacknowledged) by durable queues: id -> that queue, or the
        # set of them when several did (the common case costs no set).
        self.delivered: dict[int, QueueKey | set[QueueKey]] = {}

    def mark_delivered(self, msg_id: int, queue: QueueKey) -> None:
        found = self.delivered.get(msg_id)
        if found is None:
            self.delivered[msg_id] = queue
        elif isinstance(found, set):
            found.add(queue)
        elif found != queue:
            self.delivered[msg_id] = {found, queue}

    def delivered_to(self, msg_id: int) -> set[QueueKey]:
        found = self.delivered.get(msg_id)
        if found is None:
            return set()
        return set(found) if isinstance(found, set) else {found}

    def file_of(self, msg_id: int) -> FileIndex | None:
        number = msg_id >> SEGMENT_SHIFT
        return self.files.get(self.home.get(number, number))

    def locate(self, msg_id: int) -> tuple[FileIndex, int] | None:
        """(file, ordinal) of a message's record, or None if no file holds it."""
        found = self.file_of(msg_id)
        if found is None:
            return None
        ordinal = found.ordinal(msg_id)
        return None if ordinal < 0 else (found, ordinal)

    def locate_ascending(self, msg_ids: array) -> Iterator[tuple[FileIndex, int] | None]:
        """``locate`` for each id of an ascending run (a queue's ids at recovery): the next
        record of the same file is tried before a search, so a run costs O(n), not
        O(n log n). A generator: a million ids make no list of a million tuples."""
        current: FileIndex | None = None
        ids: array = array("Q")
        position = 0
        for msg_id in msg_ids:
            if current is not None and position < len(ids) and ids[position] == msg_id:
                yield current, position
                position += 1
                continue
            located = self.locate(msg_id)
            yield located
            if located is not None:
                current, position = located
                ids = current.ids
                position += 1

    def offset_of(self, msg_id: int) -> tuple[int, int] | None:
        """(file number, offset) of a message's record."""
        located = self.locate(msg_id)
        if located is None:
            return None
        found, ordinal = located
        return found.number, found.offsets[ordinal]

    def release(self, msg_id: int, queue: QueueKey, ticket: int) -> bool:
        """``queue`` let the message go; False if no such live reference was known."""
        number = msg_id >> SEGMENT_SHIFT  # (locate, inlined: once per ack)
        found = self.files.get(self.home.get(number, number) if self.home else number)
        if found is None:
            return False
        ids = found.ids
        ordinal = bisect_left(ids, msg_id)
        if ordinal == len(ids) or ids[ordinal] != msg_id:
            return False
        refs = found.refs[ordinal]
        if not refs:
            return False
        refs -= 1
        found.refs[ordinal] = refs
        delivered = self.delivered.get(msg_id) if self.delivered else None
        if delivered is not None:
            if isinstance(delivered, set):
                delivered.discard(queue)
                if not delivered:
                    del self.delivered[msg_id]
            elif delivered == queue:
                del self.delivered[msg_id]
        if refs:
            partial = self.partial.get(msg_id)
            if partial is None:
                self.partial[msg_id] = {queue}
            else:
                partial.add(queue)
        else:
            if self.partial:
                self.partial.pop(msg_id, None)
            found.live -= 1
            found.live_bytes -= found.sizes[ordinal]
            found.kill_ticket = ticket
        return True
