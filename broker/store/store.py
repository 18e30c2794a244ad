"""MessageStore: the broker's durable state, with group commit, tickets and recovery.

The contract with the model (queues, exchanges, channels):

- ``publish(message, queues)`` stores a persistent message once for the durable queues it
  reached and returns its id; ``remove``/``delivered``/``purge`` record what happened to it
  in a queue. The store counts each message's holders itself (``index``): the model keeps
  nothing of the store's but the ids.
- Every change is given a ticket (``issued``) when it is written into the current group
  commit. At the end of the event-loop iteration (or of ``sync_interval``) the group commit
  goes to the writer thread, which writes and fsyncs it and reports the highest ticket now
  on disk (``durable``). A publisher confirm, a ``tx.commit-ok`` or a ``declare-ok`` waits
  for the tickets its work produced, and for nothing else (``watch``, ``when_durable``).
- ``define(change)`` appends a durable definition change (see ``definitions``) in the same
  ticket order, so a message is never durable before the queue that holds it.

Compaction (``compactor``) keeps disk use near the live data.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import heapq
import itertools
import logging
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from leveret.broker.store import definitions as defs
from leveret.broker.store import records
from leveret.broker.store.compactor import Compactor
from leveret.broker.store.index import FileIndex, Index
from leveret.broker.store.records import QueueKey
from leveret.broker.store.recovery import RecoveredQueue, recover
from leveret.broker.store.segments import SEGMENT_LIMIT, SegmentReader, segment_path
from leveret.broker.store.writer import Append, Job, Op, Replace, Seal, StoreIO, Unlink, Writer

if TYPE_CHECKING:
    from leveret.broker.message import Message

log = logging.getLogger(__name__)
READ_SPAN_MAX = 1 << 20  # bytes read back in one system call at most
UNWATCHED_SYNC_DELAY = 0.02
"""How long a step nobody waits for (a publish without confirms, an ack) may gather others
before its group commit goes to the writer: Celery's one-task-per-write traffic then costs
one write and fsync per 20 ms, not one per task. A waiter (a confirm, a transaction, a
durable declare) sends it at once."""

FORMAT_VERSION = 2
FORMAT_TEXT = f"leveret-store {FORMAT_VERSION}\n"


class StoreError(Exception):
    """The data directory cannot be used (locked, wrong format version, unreadable)."""


class DurabilityWaiter(Protocol):
    """Something that waits for tickets (a channel with publisher confirms pending)."""

    def on_durable(self, durable: int) -> bool:
        """Tickets up to ``durable`` are on disk; return True while still waiting."""

    def on_store_failed(self, durable: int) -> None:
        """Writes after ticket ``durable`` failed (they are retried later)."""


@dataclass
class Recovered:
    """What a data directory held at start-up."""

    definitions: defs.DefinitionsState
    definitions_problems: list[str]
    queues: dict[QueueKey, RecoveredQueue]
    lost_records: int = 0
    truncated_bytes: int = 0

    @property
    def message_count(self) -> int:
        return sum(len(q.ids) for q in self.queues.values())


@dataclass(frozen=True, slots=True)
class Usage:
    """The message log's size (for metrics)."""

    segments: int  # segment files
    disk_bytes: int  # their bytes, counting what is handed to the writer
    live_bytes: int  # bytes of records some queue still holds
    messages: int  # stored messages some queue still holds


class MessageStore:
    """Durable definitions and persistent messages in a data directory."""

    def __init__(self, data_dir: Path, loop: asyncio.AbstractEventLoop, *, fsync: bool = True,
                 sync_interval: float = 0.0, segment_limit: int = SEGMENT_LIMIT,
                 io: StoreIO | None = None, audit: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.segment_dir = self.data_dir / "segments"
        self.loop = loop
        self.fsync = fsync
        self.sync_interval = sync_interval
        self.segment_limit = segment_limit
        self.io = io or StoreIO()
        self.index = Index()
        self.reader = SegmentReader(self.segment_dir)
        self.definitions = defs.DefinitionsState()
        self.issued = 0  # tickets handed out
        self.durable = 0  # tickets on disk
        self.failed: str | None = None  # why writes are failing (they are retried)
        self.closing = False
        self.head = 1  # the segment being appended to
        self._head_index = FileIndex(1)
        self._head_path = segment_path(self.segment_dir, 1)
        self._head_size = 0  # its size once everything handed out is written
        self._parts: list[bytes] = []  # this group commit's bytes for the head segment
        self._parts_base = 0
        self._ops: list[Op] = []  # this group commit's other operations, in order
        self._removes: dict[QueueKey, list[int]] = {}
        self._delivered: dict[QueueKey, list[int]] = {}
        self._def_parts: list[bytes] = []
        self._def_generation = 0
        self._def_log_size = 0
        self._def_changes = 0
        self._written = 0  # ids below this position are in a file (readable)
        self._watchers: dict[DurabilityWaiter, None] = {}
        self._callbacks: list[tuple[int, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._unwatched = False  # the flush scheduled is the unhurried one (nobody waits)
        self._lock_fd = -1
        self._last_failure_log = 0.0
        self.writer: Writer | None = None
        self.compactor = Compactor(self)
        # audit (tests): ticket -> (segment path, end of its record); checked at confirm
        self.audit: dict[int, tuple[Path, int]] | None = {} if audit else None
        self.audit_checked = 0
        self.audit_violations: list[str] = []
        self._synced_sizes: dict[Path, int] = {}
        self._segment_numbers: dict[Path, int] = {}  # see _segment_number

    # -- opening and recovery -------------------------------------------------------------
    def open(self) -> Recovered:
        """Lock the directory, check its format, read back what it holds, start writing."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        self._check_format()
        loaded = defs.load(self.data_dir)
        self.definitions = loaded.state
        self._def_generation = loaded.generation
        self._def_log_size = loaded.log_size
        self._def_changes = loaded.changes
        recovered = recover(self.segment_dir)
        self.index = recovered.index
        if self.index.files:
            self.head = max(self.index.files)
            self._head_size = self.index.files[self.head].size
        else:
            self.index.files[self.head] = FileIndex(self.head)
        self._head_index = self.index.files[self.head]
        self._head_path = segment_path(self.segment_dir, self.head)
        self._parts_base = self._head_size
        self._written = (self.head << records.SEGMENT_SHIFT) | self._head_size
        self.writer = Writer(self.io, fsync=self.fsync, on_done=self._done_from_thread,
                             on_failed=self._failed_from_thread)
        self.writer.start()
        return Recovered(self.definitions, loaded.problems, recovered.queues,
                         recovered.lost_records, recovered.truncated_bytes)

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
                f"Leveret reads {FORMAT_TEXT.strip()!r} only. Move it away, or drain it with "
                "the Leveret that wrote it (e.g. shovel its queues to this broker)"
            )

    # -- messages -------------------------------------------------------------------------
    def publish(self, message: Message, queues: list[QueueKey],
                moved: list[tuple[QueueKey, int]] | tuple = ()) -> int:
        """Store a persistent message for these durable queues; returns its id.

        ``moved`` names stored copies it replaces (queue, id): they are released in the
        same record, so a crash keeps either the old copies or the new one.
        """
        if self._head_size >= self.segment_limit:
            self._roll()
        offset = self._head_size
        msg_id = (self.head << records.SEGMENT_SHIFT) | offset
        head, content = records.publish_parts(msg_id, int(time.time() * 1000),
                                              message.route_raw, message.header, message.body,
                                              queues, (), moved)
        parts = self._parts
        parts.append(head)
        parts.append(content)
        size = len(head) + len(content)
        self._head_size = offset + size
        self.issued = ticket = self.issued + 1
        self._head_index.add(msg_id, offset, size, len(queues))
        for queue, old_id in moved:
            self.index.release(old_id, queue, ticket)
        if self.audit is not None:
            self.audit[ticket] = (self._head_path, self._head_size)
        if self._flush_handle is None:
            self._schedule()
        return msg_id

    def remove(self, queue: QueueKey, msg_id: int) -> None:
        """``queue`` let the message go for good (ack, reject, expiry, drop...)."""
        if self.index.release(msg_id, queue, self.issued + 1):
            self.issued += 1
            found = self._removes.get(queue)
            if found is None:
                self._removes[queue] = [msg_id]
            else:
                found.append(msg_id)
            if self._flush_handle is None:
                self._schedule()

    def delivered(self, queue: QueueKey, msg_id: int) -> None:
        """The message was handed to an acknowledging consumer (redelivered after a restart)."""
        self.index.mark_delivered(msg_id, queue)
        self.issued += 1
        found = self._delivered.get(queue)
        if found is None:
            self._delivered[queue] = [msg_id]
        else:
            found.append(msg_id)
        if self._flush_handle is None:
            self._schedule()

    def purge(self, queue: QueueKey, ids: list[int]) -> None:
        """The queue was deleted: it lets go of ``ids`` (all it held) and of its name."""
        self._encode_id_lists()
        ticket = self.issued = self.issued + 1
        for msg_id in ids:
            self.index.release(msg_id, queue, ticket)
        if self._head_size >= self.segment_limit:
            self._roll()
        record = records.purge(queue)
        self._parts.append(record)
        self._head_size += len(record)
        self._schedule()

    def read(self, msg_id: int) -> records.Published:
        """The stored message with this id, read from its file."""
        location = self.index.offset_of(msg_id)
        if location is None:
            raise records.CorruptRecord(f"message {msg_id:#x} is not in the store")
        return records.parse_publish(self.reader.read(*location))

    def read_many(self, msg_ids: list[int]) -> list[records.Published | Exception]:
        """``read`` for each id, in order, an error in place of a record that cannot be
        read; records that lie one after another in a file are read with one system call
        (a queue's spilled backlog is read back in publish order)."""
        out: list[records.Published | Exception] = []
        span: list[tuple[int, int]] = []  # (offset, size) of adjacent records
        span_file = -1

        def read_span() -> None:
            start = span[0][0]
            try:
                data = self.reader.read_span(span_file, start, span[-1][0] + span[-1][1] - start)
            except OSError as error:
                out.extend(error for _ in span)
                return
            for offset, size in span:
                try:
                    body = records.body_at(data[offset - start : offset - start + size], 0)
                    out.append(records.parse_publish(body))
                except records.CorruptRecord as error:
                    out.append(records.CorruptRecord(f"record at {span_file}:{offset}: {error}"))

        index = self.index
        for msg_id in msg_ids:
            located = index.locate(msg_id)
            if located is None:
                if span:
                    read_span()
                    span = []
                out.append(records.CorruptRecord(f"message {msg_id:#x} is not in the store"))
                continue
            found, ordinal = located
            offset, size = found.offsets[ordinal], found.sizes[ordinal]
            if span and (found.number != span_file or offset != span[-1][0] + span[-1][1]
                         or offset + size - span[0][0] > READ_SPAN_MAX):
                read_span()
                span = []
            span_file = found.number
            span.append((offset, size))
        if span:
            read_span()
        return out

    def sizes_of(self, msg_ids: array) -> array:
        """``size_of`` for an ascending run of ids (a queue's messages at recovery)."""
        return array("Q", (located[0].sizes[located[1]] if located is not None else 0
                           for located in self.index.locate_ascending(msg_ids)))

    def size_of(self, msg_id: int) -> int:
        """The size of a message's record (an estimate of its body's size)."""
        located = self.index.locate(msg_id)
        return located[0].sizes[located[1]] if located is not None else 0

    @property
    def written_segment(self) -> int:
        """The newest segment the writer has written into (older ones are complete)."""
        return self._written >> records.SEGMENT_SHIFT

    def is_written(self, msg_id: int) -> bool:
        """Whether the message's record is in its file (so it can be read back)."""
        return msg_id < self._written

    def usage(self) -> Usage:
        """Segment files, their bytes, live bytes and live messages: O(files), no I/O."""
        files = self.index.files.values()
        disk = sum(found.size for found in files if found is not self._head_index)
        return Usage(len(self.index.files), disk + self._head_size,
                     sum(found.live_bytes for found in files),
                     sum(found.live for found in files))

    # -- definitions ----------------------------------------------------------------------
    def define(self, change: dict[str, Any]) -> int:
        """Append a durable definition change; returns its ticket."""
        self.definitions.apply(change)
        self._def_parts.append(defs.encode_change(change))
        self._def_changes += 1
        self.issued += 1
        self._schedule()
        return self.issued

    # -- waiting for durability -----------------------------------------------------------
    def watch(self, waiter: DurabilityWaiter) -> None:
        """Call ``waiter.on_durable`` after each durable step until it returns False."""
        self._watchers[waiter] = None
        self._hurry()

    def unwatch(self, waiter: DurabilityWaiter) -> None:
        self._watchers.pop(waiter, None)

    def when_durable(self, ticket: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once ticket ``ticket`` is on disk (at once if it is)."""
        if ticket <= self.durable:
            callback()
            return
        heapq.heappush(self._callbacks, (ticket, next(self._counter), callback))
        self._hurry()

    def audit_confirm(self, ticket: int) -> None:
        """Check that a confirmed publish's record lies within what was fsynced."""
        assert self.audit is not None
        found = self.audit.pop(ticket, None)
        if found is None:
            return
        self.audit_checked += 1
        path, end = found
        synced = self._synced_sizes.get(path, 0)
        if synced < end:
            self.audit_violations.append(f"ticket {ticket}: {path.name} synced to {synced}, "
                                         f"record ends at {end}")

    # -- group commit ---------------------------------------------------------------------
    def _schedule(self) -> None:
        if self._flush_handle is None:
            if self.sync_interval > 0:
                self._flush_handle = self.loop.call_later(self.sync_interval, self.flush)
            elif self._watchers or self._callbacks:
                self._flush_handle = self.loop.call_soon(self.flush)
            else:
                self._unwatched = True
                self._flush_handle = self.loop.call_later(UNWATCHED_SYNC_DELAY, self.flush)

    def _hurry(self) -> None:
        """Someone now waits: the unhurried group commit goes this loop iteration."""
        if self._unwatched and self._flush_handle is not None:
            self._flush_handle.cancel()
            self._unwatched = False
            self._flush_handle = self.loop.call_soon(self.flush)

    def _roll(self) -> None:
        """Start a new segment: this group commit's bytes so far go to the old one."""
        old = self._head_path
        if self._parts:
            self._ops.append(Append(old, self._parts_base, b"".join(self._parts)))
            self._parts = []
        self._ops.append(Seal(old))
        self._head_index.size = self._head_size
        self.head += 1
        self._head_size = self._parts_base = 0
        self._head_index = self.index.files[self.head] = FileIndex(self.head)
        self._head_path = segment_path(self.segment_dir, self.head)

    def _encode_id_lists(self) -> None:
        for kind, lists in ((records.REMOVE, self._removes), (records.DELIVERED, self._delivered)):
            for queue, ids in lists.items():
                record = records.id_list(kind, queue, ids)
                self._parts.append(record)
                self._head_size += len(record)
            lists.clear()

    def flush(self) -> None:
        """Hand this group commit to the writer thread."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._unwatched = False
        if self.writer is None:
            return
        self._encode_id_lists()
        ops = self._ops
        self._ops = []
        if self._parts:
            ops.append(Append(self._head_path, self._parts_base, b"".join(self._parts)))
            self._parts = []
            self._parts_base = self._head_size
        self._head_index.size = self._head_size
        if self._def_parts:
            data = b"".join(self._def_parts)
            self._def_parts = []
            ops.append(Append(defs.log_path(self.data_dir, self._def_generation),
                              self._def_log_size, data))
            self._def_log_size += len(data)
            # a snapshot once most of the log is superseded changes (amortised O(1) each)
            if self._def_changes > 2 * len(self.definitions) + defs.MIN_SNAPSHOT_CHANGES:
                ops += self._snapshot_definitions()
        if ops:
            self.writer.submit(Job(self.issued, ops))
        if self.failed:
            for waiter in list(self._watchers):
                waiter.on_store_failed(self.durable)

    def _snapshot_definitions(self) -> list[Op]:
        """Start a new definitions generation from a snapshot; drop the one before last."""
        old = self._def_generation
        self._def_generation = new = old + 1
        self._def_log_size = 0
        self._def_changes = 0
        ops: list[Op] = [Replace(defs.snapshot_path(self.data_dir, new),
                                 defs.encode_snapshot(new, self.definitions))]
        for gone in range(max(old - 1, 0), old):
            ops += [Unlink(defs.snapshot_path(self.data_dir, gone)),
                    Unlink(defs.log_path(self.data_dir, gone))]
        return ops

    # -- the writer's reports (on the event loop) -----------------------------------------
    def _done_from_thread(self, ticket: int, sizes: dict[Path, int]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
            self.loop.call_soon_threadsafe(self._done, ticket, sizes)

    def _failed_from_thread(self, durable: int, error: OSError) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._write_failed, durable, error)

    def _done(self, ticket: int, sizes: dict[Path, int]) -> None:
        if ticket > self.durable:
            self.durable = ticket
        self._synced_sizes = sizes
        written = 0
        for path, size in sizes.items():
            number = self._segment_numbers.get(path)
            if number is None:
                number = self._segment_number(path)
            if number >= 0:
                written = max(written, (number << records.SEGMENT_SHIFT) | size)
        self._written = max(self._written, written)
        if self.failed is not None and self.writer is not None and not self.writer.failed:
            log.warning("message store writes succeed again")
            self.failed = None
        for waiter in list(self._watchers):
            if not waiter.on_durable(self.durable):
                self._watchers.pop(waiter, None)
        callbacks = self._callbacks
        while callbacks and callbacks[0][0] <= self.durable:
            _ticket, _n, callback = heapq.heappop(callbacks)
            try:
                callback()
            except Exception:
                log.exception("error in a durability callback")
        self.compactor.check()

    def _segment_number(self, path: Path) -> int:
        """The number of the segment file ``path``, -1 for any other file (remembered: a
        group commit reports the same few files every time)."""
        number = -1
        if path.parent == self.segment_dir:
            with contextlib.suppress(ValueError):
                number = int(path.stem)
        if len(self._segment_numbers) >= 64:
            self._segment_numbers.clear()
        self._segment_numbers[path] = number
        return number

    def _write_failed(self, durable: int, error: OSError) -> None:
        if durable > self.durable:
            self._done(durable, self._synced_sizes)
        self.failed = f"{type(error).__name__}: {error}"
        now = time.monotonic()
        if now - self._last_failure_log > 10:
            self._last_failure_log = now
            log.error("message store write failed (%s); publishers are blocked, the "
                      "publishes waiting for it are nacked, and the writes are retried",
                      self.failed)
        for waiter in list(self._watchers):
            waiter.on_store_failed(self.durable)

    def retry(self) -> None:
        """Try the failed writes again (the resource check calls this while failed)."""
        if self.writer is not None and self.failed:
            self.writer.retry()

    def forget_file(self, number: int) -> None:
        """A dead segment file is about to be deleted: drop it from the index."""
        self.index.files.pop(number, None)
        self.reader.forget(number)

    # -- closing --------------------------------------------------------------------------
    def close(self) -> None:
        """Write and fsync everything, then release the directory."""
        if self.writer is not None:
            self.flush()
            self.closing = True
            if not self.writer.close():
                log.error("message store: some changes could not be written before shutdown "
                          "(%s)", self.failed or "writer did not finish")
            self.writer = None
            self.compactor.close()
            self.reader.close()
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1
