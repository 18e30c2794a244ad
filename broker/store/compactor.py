"""Compaction: disk use follows the live data, not the traffic.

Two rules, applied after each durable step, one job at a time, in a thread of their own:

- The oldest segment files are deleted once every message in them is settled and those
  settlements are on disk. A file's removal records only ever name messages in it or in
  older files, so deleting from the front forgets nothing a restart needs.
- When the sealed files hold more garbage than live data (and at least a segment's worth),
  they are merged into one file that keeps only the live messages, each with the queues
  that still hold it (so no removal record is needed for them), behind a MERGED record that
  marks every older file stale. The merged file replaces the newest of them only once
  everything the store had written when the merge was planned is on disk, so the merged
  file never claims a settlement a crash could still undo. Message ids do not change.

Disk use thus stays below about twice the live data plus the segment being written.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from leveret.broker.store import records
from leveret.broker.store.index import FileIndex
from leveret.broker.store.records import QueueKey
from leveret.broker.store.segments import merge_path, read_at, segment_path

if TYPE_CHECKING:
    from leveret.broker.store.store import MessageStore

log = logging.getLogger(__name__)

_WRITE_CHUNK = 1024 * 1024
RETRY_DELAY = 30  # seconds after a failed compaction job


@dataclass
class _Source:
    number: int
    fd: int
    ids: array
    offsets: array
    refs: array


@dataclass
class _Plan:
    target: int  # the merged file replaces this segment number
    sources: list[_Source]
    partial: dict[int, set[QueueKey]]
    delivered: dict[int, set[QueueKey]]
    ticket: int  # everything issued before the plan must be durable before the swap


@dataclass
class _Kept:
    msg_id: int
    offset: int
    size: int
    source: int  # position in plan.sources
    ordinal: int


class Compactor:
    """Runs the compaction rules for one store."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="leveret-compact")
        self.busy = False
        self._resume_at = 0.0  # after a failed job, the next waits a while
        self.merges = 0
        self.deleted_files = 0
        self.reclaimed_bytes = 0  # segment bytes freed by deletes and merges
        self.lost_records = 0

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    # -- deciding --------------------------------------------------------------------------
    def check(self, force: bool = False) -> None:
        """Start the next compaction job if one is due (cheap: a pass over the files);
        ``force`` merges the sealed files whatever their garbage (tests)."""
        store = self.store
        if self.busy or store.closing or store.loop.time() < self._resume_at:
            return
        index = store.index
        # Only files the writer has finished with: it already wrote into a later segment.
        sealed = sorted(n for n in index.files if n < store.written_segment)
        if not sealed:
            return
        dead_front = []
        for number in sealed:
            found = index.files[number]
            if found.live or found.kill_ticket > store.durable:
                break
            dead_front.append(number)
        if dead_front:
            self._delete(dead_front)
            return
        garbage = sum(index.files[n].dead_bytes for n in sealed)
        live = sum(index.files[n].live_bytes for n in sealed)
        if force or garbage > max(live, store.segment_limit):
            self._merge(sealed)

    def _run(self, work: Callable[[], object], then: Callable[[object], None],
             last: bool = True) -> None:
        """Run ``work`` in the thread, then ``then(result)`` on the loop. The compactor
        stays busy until the ``last`` phase of a job has finished."""
        self.busy = True
        future = self._executor.submit(work)
        loop = self.store.loop

        def finished(done: concurrent.futures.Future) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
                loop.call_soon_threadsafe(self._finished, done, then, last)

        future.add_done_callback(finished)

    def _finished(self, done: concurrent.futures.Future, then: Callable[[object], None],
                  last: bool) -> None:
        error = done.exception()
        if error is not None:
            self.busy = False
            log.error("store compaction failed (%s); trying again in %ds", error, RETRY_DELAY)
            self._resume_at = self.store.loop.time() + RETRY_DELAY
            return
        then(done.result())
        if last:
            self.busy = False
            self.check()

    # -- deleting dead files at the front ---------------------------------------------------
    def _delete(self, numbers: list[int]) -> None:
        store = self.store
        freed = sum(store.index.files[number].size for number in numbers)
        for number in numbers:
            store.forget_file(number)
        directory = store.segment_dir

        def work() -> None:
            for number in numbers:  # oldest first: a crash leaves a suffix of the log
                segment_path(directory, number).unlink(missing_ok=True)
            _fsync_dir(directory)

        def then(_result: object) -> None:
            self.deleted_files += len(numbers)
            self.reclaimed_bytes += freed
            log.debug("deleted settled segment(s) %s", numbers)

        self._run(work, then)

    # -- merging the sealed files ------------------------------------------------------------
    def _merge(self, numbers: list[int]) -> None:
        store = self.store
        index = store.index
        sources = []
        low = numbers[0] << records.SEGMENT_SHIFT
        for number in numbers:
            found = index.files[number]
            if found.ids:
                low = min(low, found.ids[0])
            sources.append(_Source(number, store.reader.open(number), array("Q", found.ids),
                                   array("I", found.offsets), array("I", found.refs)))
        high = (numbers[-1] + 1) << records.SEGMENT_SHIFT
        plan = _Plan(
            target=numbers[-1],
            sources=sources,
            partial={i: set(q) for i, q in index.partial.items() if low <= i < high},
            delivered={i: index.delivered_to(i) for i in index.delivered if low <= i < high},
            ticket=store.issued,
        )
        directory = store.segment_dir
        self._run(lambda: _write_merged(directory, plan),
                  lambda kept: store.when_durable(plan.ticket,
                                                  lambda: self._commit(plan, kept)),  # type: ignore[arg-type]
                  last=False)  # busy until the merged file is in place

    def _commit(self, plan: _Plan, written: tuple[list[_Kept], int, int]) -> None:
        """Everything the merge reflects is durable: put the merged file in place."""
        if self.store.closing:
            self.busy = False
            return
        directory = self.store.segment_dir

        def work() -> None:
            os.replace(merge_path(directory, plan.target), segment_path(directory, plan.target))
            _fsync_dir(directory)
            for source in plan.sources:
                if source.number != plan.target:
                    segment_path(directory, source.number).unlink(missing_ok=True)
            _fsync_dir(directory)

        self._run(work, lambda _r: self._swap(plan, *written))

    def _swap(self, plan: _Plan, kept: list[_Kept], size: int, lost: int) -> None:
        store = self.store
        index = store.index
        olds = [index.files.pop(source.number) for source in plan.sources]
        for source in plan.sources:
            store.reader.forget(source.number)
        merged = FileIndex(plan.target)
        for item in kept:  # reference counts as they are now, not as planned
            merged.add(item.msg_id, item.offset, item.size, olds[item.source].refs[item.ordinal])
        merged.size = size
        merged.kill_ticket = max(old.kill_ticket for old in olds)
        index.files[plan.target] = merged
        numbers = {source.number for source in plan.sources}
        for segment, home in list(index.home.items()):
            if home in numbers:
                index.home[segment] = plan.target
        for item in kept:
            segment = item.msg_id >> records.SEGMENT_SHIFT
            if segment != plan.target:
                index.home[segment] = plan.target
        self.merges += 1
        self.reclaimed_bytes += max(sum(old.size for old in olds) - size, 0)
        self.lost_records += lost
        if lost:
            log.error("compaction found %d damaged record(s); those messages are lost", lost)
        log.info("merged %d segment file(s) into %s: %d live messages, %d bytes",
                 len(plan.sources), segment_path(store.segment_dir, plan.target).name,
                 len(kept), size)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_merged(directory: Path, plan: _Plan) -> tuple[list[_Kept], int, int]:
    """Write the live records of ``plan.sources`` into the merge file (in the thread)."""
    path = merge_path(directory, plan.target)
    kept: list[_Kept] = []
    lost = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        first = records.merged(plan.target)
        pending = [first]
        pending_size = len(first)
        offset = len(first)
        for position, source in enumerate(plan.sources):
            for ordinal, msg_id in enumerate(source.ids):
                if not source.refs[ordinal]:
                    continue
                try:
                    body = read_at(source.fd, source.offsets[ordinal])
                    found = records.parse_publish(body)
                except (records.CorruptRecord, OSError):
                    lost += 1
                    continue
                gone = plan.partial.get(msg_id, ())
                queues = [q for q in found.queues if q not in gone]
                if not queues:
                    continue
                handed = plan.delivered.get(msg_id, ())
                record = records.publish(msg_id, found.published_ms, found.route_raw,
                                         found.header, found.body, queues,
                                         [q for q in queues if q in handed])
                kept.append(_Kept(msg_id, offset, len(record), position, ordinal))
                offset += len(record)
                pending.append(record)
                pending_size += len(record)
                if pending_size >= _WRITE_CHUNK:
                    _write_all(fd, b"".join(pending))
                    pending.clear()
                    pending_size = 0
        if pending:
            _write_all(fd, b"".join(pending))
        os.fsync(fd)
    finally:
        os.close(fd)
    return kept, offset, lost


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
