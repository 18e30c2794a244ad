"""Reading the message log back after a restart or a crash.

Recovery is conservative: a damaged stretch in the middle of a file costs the records in it
(scanning resumes at the next valid record); only an invalid tail of the newest segment (a
crash mid-write) is cut off; every loss is logged with its size. Only queue lists and ids
are read, never bodies, so a large backlog comes back quickly.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from leveret.broker.store import records
from leveret.broker.store.index import FileIndex, Index
from leveret.broker.store.records import QueueKey
from leveret.broker.store.segments import list_segments, segment_path

log = logging.getLogger(__name__)


@dataclass
class RecoveredQueue:
    """What the log holds for one queue: live message ids in publish order."""

    ids: array = field(default_factory=lambda: array("Q"))
    delivered: set[int] = field(default_factory=set)  # ids handed out before the restart
    removed: set[int] = field(default_factory=set)


@dataclass
class RecoveredLog:
    """The queues' messages and the index of the files that hold them."""

    queues: dict[QueueKey, RecoveredQueue]
    index: Index
    lost_records: int = 0
    lost_bytes: int = 0
    truncated_bytes: int = 0

    @property
    def message_count(self) -> int:
        return sum(len(q.ids) for q in self.queues.values())


def _map(path: Path) -> mmap.mmap | bytes:
    """A segment's bytes without reading it all into memory (page cache only)."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return b""
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


def _merged_below(path: Path) -> int:
    """The ``below`` of a merged file's MERGED record, or 0."""
    with open(path, "rb") as handle:
        head = handle.read(records.HEADER_SIZE + 5)
    for _offset, body, _end in records.scan(head):
        if body is not None and body[0] == records.MERGED:
            return records.parse_merged(body)
        break
    return 0


def drop_stale_files(directory: Path) -> list[int]:
    """Delete what an interrupted merge left behind; returns the segments that remain."""
    for leftover in directory.glob("*.merge"):
        leftover.unlink()
    numbers = list_segments(directory)
    below = max((_merged_below(segment_path(directory, n)) for n in numbers), default=0)
    for number in numbers:
        if number < below:  # merged into a later file whose rename survived the crash
            segment_path(directory, number).unlink()
    return [n for n in numbers if n >= below]


class _Replayer:
    def __init__(self) -> None:
        self.queues: dict[QueueKey, RecoveredQueue] = {}
        # messages of several queues: id -> [(queue, its RecoveredQueue then)]
        self.multi: dict[int, list[tuple[QueueKey, RecoveredQueue]]] = {}

    def queue(self, key: QueueKey) -> RecoveredQueue:
        found = self.queues.get(key)
        if found is None:
            self.queues[key] = found = RecoveredQueue()
        return found

    def replay(self, body: bytes) -> int | None:
        """Apply one record; returns the id of a PUBLISH record."""
        kind = body[0]
        if kind == records.PUBLISH:
            msg_id, queues, delivered, moved = records.parse_publish_meta(body)
            for key, old_id in moved:
                found = self.queues.get(key)
                if found is not None:
                    found.removed.add(old_id)
            holders = []
            for key in queues:
                found = self.queue(key)
                found.ids.append(msg_id)
                holders.append((key, found))
            for key in delivered:
                self.queue(key).delivered.add(msg_id)
            if len(holders) > 1:
                self.multi[msg_id] = holders
            return msg_id
        if kind == records.REMOVE:
            key, ids = records.parse_id_list(body)
            found = self.queues.get(key)
            if found is not None:
                found.removed.update(ids)
        elif kind == records.DELIVERED:
            key, ids = records.parse_id_list(body)
            found = self.queues.get(key)
            if found is not None:
                found.delivered.update(ids)
        elif kind == records.PURGE:
            self.queues.pop(records.parse_purge(body), None)
        elif kind == records.MERGED:
            records.parse_merged(body)
        else:
            raise records.CorruptRecord(f"unknown record type {kind}")
        return None


def recover(directory: Path) -> RecoveredLog:
    """Replay every segment file of ``directory`` in order."""
    started = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    numbers = drop_stale_files(directory)
    replayer = _Replayer()
    index = Index()
    result = RecoveredLog(replayer.queues, index)
    for number in numbers:
        path = segment_path(directory, number)
        data = _map(path)
        found = FileIndex(number)
        index.files[number] = found
        valid_end = 0
        try:
            for offset, body, end in records.scan(data):
                if body is None:
                    if end == len(data) and number == numbers[-1]:
                        break  # the torn tail of the newest segment: cut below
                    result.lost_records += 1
                    result.lost_bytes += end - offset
                    log.warning("lost %d damaged bytes at %s:%d (the records in them are "
                                "gone)", end - offset, path.name, offset)
                    valid_end = end
                    continue
                try:
                    msg_id = replayer.replay(body)
                except records.CorruptRecord as error:
                    result.lost_records += 1
                    log.warning("lost an unreadable record at %s:%d: %s", path.name, offset,
                                error)
                    msg_id = None
                if msg_id is not None:
                    found.add(msg_id, offset, end - offset, 0)
                    segment = msg_id >> records.SEGMENT_SHIFT
                    if segment != number:
                        index.home[segment] = number
                valid_end = end
        finally:
            if isinstance(data, mmap.mmap):
                data.close()
        size = path.stat().st_size
        if valid_end < size and number == numbers[-1]:
            result.truncated_bytes += size - valid_end
            log.warning("cutting off a torn tail of %d bytes in %s (a crash mid-write)",
                        size - valid_end, path.name)
            with open(path, "r+b") as handle:
                handle.truncate(valid_end)
                handle.flush()
                os.fsync(handle.fileno())
            size = valid_end
        found.size = size
    _count_references(replayer, index)
    log.info("recovered %d messages in %d queue(s) from %d segment(s) in %.2fs",
             result.message_count, sum(1 for q in replayer.queues.values() if q.ids),
             len(numbers), time.monotonic() - started)
    if result.lost_records:
        log.error("recovery lost %d damaged record(s) (%d bytes)", result.lost_records,
                  result.lost_bytes)
    return result


def _count_references(replayer: _Replayer, index: Index) -> None:
    """Keep each queue's live ids; count each record's holders into the index."""
    queues = replayer.queues
    for msg_id, holders in replayer.multi.items():
        gone = {key for key, found in holders
                if queues.get(key) is not found or msg_id in found.removed}
        if gone and len(gone) < len(holders):
            index.partial[msg_id] = gone
    for key, found in queues.items():
        removed = found.removed
        if removed:
            found.ids = array("Q", (i for i in found.ids if i not in removed))
            found.removed = set()
        live = found.ids
        for located in index.locate_ascending(live):
            if located is None:  # its record was lost
                continue
            file_index, ordinal = located
            refs = file_index.refs[ordinal]
            if not refs:
                file_index.live += 1
                file_index.live_bytes += file_index.sizes[ordinal]
            file_index.refs[ordinal] = refs + 1
        if found.delivered:
            found.delivered.intersection_update(live)
            for msg_id in found.delivered:
                index.mark_delivered(msg_id, key)
