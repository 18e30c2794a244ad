"""MessageStore: the broker's durable state, with group commit and crash recovery.

Persistent messages routed to durable queues are appended to the log once (whatever the
number of queues), their removals (ack, reject, expiry, drop) recorded per queue. Writes
from one event-loop iteration are written and fsynced together (group commit), then the
publisher confirms that waited on them go out. A message published and settled inside one
batch is never written at all. Bodies of durable messages beyond a resident budget are
dropped from memory once on disk and read back when delivered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import mmap
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.store import definitions, records
from broker.store.records import QueueKey
from broker.store.segments import SegmentLog

if TYPE_CHECKING:
    from broker.message import Message

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FORMAT_TEXT = f"leveret-store {FORMAT_VERSION}\n"


class StoreError(Exception):
    """The data directory cannot be used (locked, wrong format version, unreadable)."""


@dataclass
class RecoveredQueue:
    """What the log holds for one queue: live message ids in publish order."""

    ids: array[int] = field(default_factory=lambda: array("Q"))
    delivered: set[int] = field(default_factory=set)  # ids handed out before the restart
    removed: set[int] = field(default_factory=set)


@dataclass
class Recovered:
    definitions: dict[str, Any]
    queues: dict[QueueKey, RecoveredQueue]
    corrupt_records: int = 0
    truncated_bytes: int = 0

    @property
    def message_count(self) -> int:
        return sum(len(q.ids) for q in self.queues.values())


class MessageStore:
    """Durable definitions and persistent messages in a data directory."""

    def __init__(self, data_dir: Path, loop: asyncio.AbstractEventLoop, *, fsync: bool = True,
                 sync_interval: float = 0.0, resident_budget: int = 64 * 1024 * 1024,
                 segment_limit: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.loop = loop
        self.fsync = fsync
        self.sync_interval = sync_interval
        self.resident_budget = resident_budget
        self._segment_limit = segment_limit
        self.log: SegmentLog | None = None
        self._lock_fd = -1
        self._pending: dict[Message, list[QueueKey]] = {}  # published, not yet written
        self._removes: dict[QueueKey, list[Message]] = {}
        self._delivered: dict[QueueKey, list[Message]] = {}
        self._removed_ids: dict[QueueKey, list[int]] = {}  # disk-only messages removed
        self._purges: list[QueueKey] = []
        self._sync_waiters: dict[Any, None] = {}  # channels: .publish_seq, .on_synced(seq)
        self._sync_future: concurrent.futures.Future | None = None
        self._syncer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fsync")
        self._sync_again = False
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._live: dict[int, int] = {}  # segment -> queue references still live
        self._deps: dict[int, set[int]] = {}  # segment -> older segments its removals name
        self.resident_bytes = 0
        self.definitions_source: Callable[[], dict[str, Any]] | None = None
        self._definitions_dirty = False
        self.failed: str | None = None  # set when a write failed (e.g. disk full)

    # -- opening and recovery -------------------------------------------------------------
    def open(self) -> Recovered:
        """Lock the directory, check its format, and read back what it holds."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        self._check_format()
        self.log = SegmentLog(self.data_dir / "segments", **(
            {"segment_limit": self._segment_limit} if self._segment_limit else {}))
        recovered = self._recover()
        self.log.open_for_append()
        return recovered

    def _lock(self) -> None:
        path = self.data_dir / "LOCK"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreError(
                f"data directory {self.data_dir} is in use by another Leveret (pid {holder}); "
                "two brokers cannot share a data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _check_format(self) -> None:
        path = self.data_dir / "FORMAT"
        if not path.exists():
            if any((self.data_dir / name).exists() for name in ("segments", "definitions.json")):
                raise StoreError(
                    f"data directory {self.data_dir} has no FORMAT file: it was written by an "
                    "unknown or older version of Leveret and cannot be read"
                )
            path.write_text(FORMAT_TEXT)
            return
        text = path.read_text()
        if text != FORMAT_TEXT:
            raise StoreError(
                f"data directory {self.data_dir} holds store format {text.strip()!r}; this "
                f"Leveret reads {FORMAT_TEXT.strip()!r} only. Move it away or use an "
                "older Leveret to drain it"
            )

    def _recover(self) -> Recovered:
        assert self.log is not None
        started = time.monotonic()
        result = Recovered(definitions.read(self.data_dir / "definitions.json"), {})
        queues = result.queues
        for number in list(self.log.numbers):
            path = self.log.directory / f"{number:08d}.log"
            data = _map(path)
            good_end = 0
            for offset, body, end in records.scan(data):
                good_end = end
                if body is None:
                    result.corrupt_records += 1
                    log.warning("skipping a corrupt record at %s:%d", path.name, offset)
                    continue
                try:
                    self._replay((number << records.SEGMENT_SHIFT) | offset, body, queues)
                    if body[0] in (records.REMOVE, records.PURGE):
                        self._note_dependencies(number, body)
                except records.CorruptRecord as error:
                    result.corrupt_records += 1
                    log.warning("skipping an unreadable record at %s:%d: %s",
                                path.name, offset, error)
            if isinstance(data, mmap.mmap):
                data.close()
            if good_end < path.stat().st_size:
                cut = path.stat().st_size - good_end
                result.truncated_bytes += cut
                log.warning("cutting off a torn tail of %d bytes in %s (a crash mid-write)",
                            cut, path.name)
                self.log.truncate(number, good_end)
        for recovered in queues.values():
            if recovered.removed:
                removed = recovered.removed
                recovered.ids = array("Q", (i for i in recovered.ids if i not in removed))
                recovered.removed = set()
            for msg_id in recovered.ids:
                segment = msg_id >> records.SEGMENT_SHIFT
                self._live[segment] = self._live.get(segment, 0) + 1
        log.info("recovered %d messages in %d queue(s) from %d segment(s) in %.2fs",
                 result.message_count, sum(1 for q in queues.values() if q.ids),
                 len(self.log.numbers), time.monotonic() - started)
        return result

    def _note_dependencies(self, number: int, body: bytes) -> None:
        deps = self._deps.setdefault(number, set())
        if body[0] == records.PURGE:
            deps.update(n for n in self.log.numbers if n < number)  # type: ignore[union-attr]
        else:
            deps.update(i >> records.SEGMENT_SHIFT for i in records.parse_id_list(body)[1])
        deps.discard(number)

    @staticmethod
    def _replay(msg_id: int, body: bytes, queues: dict[QueueKey, RecoveredQueue]) -> None:
        kind = body[0]
        if kind == records.PUBLISH:
            for key in records.parse_publish_queues(body):
                found = queues.get(key)
                if found is None:
                    queues[key] = found = RecoveredQueue()
                found.ids.append(msg_id)
        elif kind == records.REMOVE:
            key, ids = records.parse_id_list(body)
            if key in queues:
                queues[key].removed.update(ids)
        elif kind == records.DELIVERED:
            key, ids = records.parse_id_list(body)
            if key in queues:
                queues[key].delivered.update(ids)
        elif kind == records.PURGE:
            queues.pop(records.parse_purge(body), None)
        else:
            raise records.CorruptRecord(f"unknown record type {kind}")

    # -- definitions ----------------------------------------------------------------------
    def definitions_changed(self) -> None:
        """Durable definitions changed: rewrite the file in this loop iteration's flush."""
        self._definitions_dirty = True
        self._schedule()

    def _write_definitions(self) -> None:
        self._definitions_dirty = False
        if self.definitions_source is not None:
            definitions.write_atomically(self.data_dir / "definitions.json",
                                         self.definitions_source())

    # -- messages -------------------------------------------------------------------------
    def publish(self, message: Message, queues: list[QueueKey]) -> None:
        """Store a persistent message for these durable queues (written at the next flush)."""
        message.refs = len(queues)
        self._pending[message] = list(queues)
        self.resident_bytes += len(message.body) + len(message.header)
        self._schedule()

    def remove(self, queue: QueueKey, message: Message) -> None:
        """``message`` left durable ``queue`` for good (ack, reject, expiry, drop...)."""
        pending = self._pending.get(message)
        if pending is not None:
            if queue not in pending:
                return  # the queue was purged away meanwhile
            pending.remove(queue)
            if not pending:
                del self._pending[message]
        elif message.msg_id is not None:
            self._removes.setdefault(queue, []).append(message)
            self._live[message.msg_id >> records.SEGMENT_SHIFT] -= 1
            self._schedule()
        message.refs -= 1
        if message.refs == 0 and message.body is not None:
            self.resident_bytes -= len(message.body) + len(message.header or b"")

    def delivered(self, queue: QueueKey, message: Message) -> None:
        """``message`` was handed to an acknowledging consumer (for redelivered at restart)."""
        self._delivered.setdefault(queue, []).append(message)
        self._schedule()

    def remove_all(self, queue: QueueKey, messages: list[Message], spilled: list[int]) -> None:
        """Many messages left ``queue`` at once (queue.purge): in memory and disk-only ones."""
        for message in messages:
            if message.refs:
                self.remove(queue, message)
        if spilled:
            self._removed_ids.setdefault(queue, []).extend(spilled)
            for msg_id in spilled:
                self._live[msg_id >> records.SEGMENT_SHIFT] -= 1
            self._schedule()

    def purge(self, queue: QueueKey, messages: list[Message], spilled: list[int]) -> None:
        """The queue was deleted: everything it held so far is gone, unacked included."""
        for message in messages:
            if message.refs and message.msg_id is not None and message not in self._pending:
                self._live[message.msg_id >> records.SEGMENT_SHIFT] -= 1
                message.refs -= 1
        for message, queues in list(self._pending.items()):
            if queue in queues:
                queues.remove(queue)
                message.refs -= 1
                if not queues:
                    del self._pending[message]
        for msg_id in spilled:
            self._live[msg_id >> records.SEGMENT_SHIFT] -= 1
        self._removes.pop(queue, None)
        self._removed_ids.pop(queue, None)
        self._delivered.pop(queue, None)
        self._purges.append(queue)
        self._schedule()

    def read(self, msg_id: int) -> records.Published:
        """The stored message with this id, read from its segment."""
        assert self.log is not None
        return records.parse_publish(self.log.read(msg_id))

    def load(self, message: Message) -> None:
        """Read back a message whose header and body were dropped from memory."""
        assert self.log is not None and message.msg_id is not None
        published = records.parse_publish(self.log.read(message.msg_id))
        message.body = published.body
        self.resident_bytes += len(published.body) + len(published.header)

    def when_synced(self, waiter: Any) -> None:
        """Call ``waiter.on_synced(seq)`` once what it published up to ``seq`` is on disk."""
        self._sync_waiters[waiter] = None
        self._schedule()

    # -- group commit ---------------------------------------------------------------------
    def _schedule(self) -> None:
        if self._flush_handle is None:
            if self.sync_interval > 0:
                self._flush_handle = self.loop.call_later(self.sync_interval, self.flush)
            else:
                self._flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what this iteration produced, fsync once, then release the waiters."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._definitions_dirty:
            self._write_definitions()
        assert self.log is not None
        written: list[Message] = []
        parts: list[bytes] = []
        if (self._pending or self._removes or self._delivered or self._purges
                or self._removed_ids):
            self.log.roll_if_full()
            position = self.log.position()
            parts = [records.purge(queue) for queue in self._purges]
            position += sum(len(p) for p in parts)
            now_ms = int(time.time() * 1000)
            segment = position >> records.SEGMENT_SHIFT
            for message, queues in self._pending.items():
                message.msg_id = position
                record = records.publish(position, now_ms, message.route_raw, message.header,
                                         message.body, queues)
                parts.append(record)
                position += len(record)
                self._live[segment] = self._live.get(segment, 0) + len(queues)
                written.append(message)
            deps = self._deps.setdefault(segment, set())
            if self._purges:  # a purge speaks of every older segment
                deps.update(n for n in self.log.numbers if n != segment)
            for kind, lists in ((records.REMOVE, self._removes),
                                (records.DELIVERED, self._delivered)):
                for queue, messages in lists.items():
                    ids = [m.msg_id for m in messages if m.msg_id is not None]
                    if kind == records.REMOVE:
                        ids += self._removed_ids.pop(queue, [])
                        deps.update(i >> records.SEGMENT_SHIFT for i in ids)
                    if ids:
                        parts.append(records.id_list(kind, queue, ids))
            for queue, ids in self._removed_ids.items():
                deps.update(i >> records.SEGMENT_SHIFT for i in ids)
                parts.append(records.id_list(records.REMOVE, queue, ids))
            self._removed_ids.clear()
            deps.discard(segment)
            self._pending.clear()
            self._removes.clear()
            self._delivered.clear()
            self._purges.clear()
        try:
            if parts:
                self.log.append(b"".join(parts))
        except OSError as error:
            self._write_failed(error, written)
            return
        if not self.fsync:
            self._release_waiters(self._snapshot_waiters())
        elif self._sync_waiters or parts:
            self._start_sync()
        if self.resident_bytes > self.resident_budget:
            self._evict(written)
        if self._sync_future is None:
            self.log.close_retired()
            self._drop_dead_segments()

    # -- fsync off the event loop -----------------------------------------------------------
    def _snapshot_waiters(self) -> dict[Any, int]:
        """Each waiter with what it has published so far: what the next fsync will cover."""
        waiters, self._sync_waiters = self._sync_waiters, {}
        return {waiter: waiter.publish_seq for waiter in waiters}

    def _release_waiters(self, covered: dict[Any, int]) -> None:
        for waiter, seq in covered.items():
            waiter.on_synced(seq)

    def _start_sync(self) -> None:
        """fsync in a worker thread (the loop goes on); one at a time, the next one queued."""
        if self._sync_future is not None:
            self._sync_again = True
            return
        assert self.log is not None
        covered = self._snapshot_waiters()
        self._sync_future = self._syncer.submit(self.log.sync)
        asyncio.wrap_future(self._sync_future, loop=self.loop).add_done_callback(
            lambda future: self._sync_done(future, covered)
        )

    def _sync_done(self, future: asyncio.Future, covered: dict[Any, int]) -> None:
        self._sync_future = None
        error = future.exception()
        if error is not None:
            self.failed = f"fsync failed: {error}"
            log.error("message store fsync failed (%s); the publishes it covered are nacked",
                      error)
            for waiter in covered:
                waiter.on_sync_failed()
        else:
            self._release_waiters(covered)
        if self._sync_again or self._sync_waiters:
            self._sync_again = False
            self._start_sync()
        elif self.log is not None:
            self.log.close_retired()
            self._drop_dead_segments()

    def _write_failed(self, error: OSError, written: list[Message]) -> None:
        self.failed = f"{type(error).__name__}: {error}"
        log.error("message store write failed (%s); publishers are blocked and the "
                  "unwritten publishes are not confirmed", self.failed)
        for message in written:
            message.msg_id = None
        waiters, self._sync_waiters = self._sync_waiters, {}
        for waiter in waiters:
            waiter.on_sync_failed()

    def _evict(self, written: list[Message]) -> None:
        """Drop bodies of just-written messages from memory while over the budget."""
        for message in reversed(written):
            if self.resident_bytes <= self.resident_budget:
                return
            if message.refs > 0 and message.body is not None:
                self.resident_bytes -= len(message.body) + len(message.header)
                message.body = None  # the header stays: routing and policies read it

    def _drop_dead_segments(self) -> None:
        """Delete segment files that no longer hold anything a restart would need.

        A segment can go once it has no live message and every older segment its REMOVE or
        PURGE records speak of is gone already (else those removals would be forgotten and
        the older messages come back). So one long-lived message pins only its own segment
        and the few that settle messages in it, not the whole log after it.
        """
        assert self.log is not None
        numbers = self.log.numbers
        current = self.log.current
        changed = True
        while changed:
            changed = False
            present = set(numbers)
            for number in list(numbers):
                if number == current or self._live.get(number):
                    continue
                if any(dep in present for dep in self._deps.get(number, ())):
                    continue
                self._live.pop(number, None)
                self._deps.pop(number, None)
                self.log.delete(number)
                present.discard(number)
                changed = True
                log.debug("deleted fully acknowledged segment %d", number)

    def close(self) -> None:
        """Flush everything and release the directory."""
        if self.log is not None:
            self.flush()
            if self._sync_future is not None:
                with contextlib.suppress(OSError):
                    self._sync_future.result()  # the worker's fsync ends before its file
            self._syncer.shutdown(wait=True)
            self.log.close()
            self.log = None
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1


def _map(path: Path) -> mmap.mmap | bytes:
    """A segment's bytes without reading it all into memory (page cache only)."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return b""
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
