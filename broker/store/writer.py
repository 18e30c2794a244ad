"""The store's writer thread: every write and fsync of the data directory happens here.

The event loop hands over jobs (what one group commit wrote: appends to log files, a
replaced or deleted file) in ticket order. The thread applies them, fsyncs every file they
touched (all the jobs that queued up meanwhile share one fsync), and reports the highest
ticket that is now on disk. A slow disk therefore delays only what waits for durability.

A job is kept until the fsync that covers it succeeded. When a write or an fsync fails
(ENOSPC, EIO...), the file is cut back to where the failed job began, the thread reports the
failure and holds that job and every later one; ``retry`` writes them again, in order, at
the same offsets. After a failed fsync everything since the last good one is written again,
since Linux may have dropped the dirty pages it could not write.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from leveret.broker.store.latency import Histogram

log = logging.getLogger(__name__)


class StoreIO:
    """The system calls the writer makes; fault-injection tests replace some of them.

    With ``synchronous_writes`` the log files are opened ``O_DSYNC``: a write returns once
    its data is on disk, as a write followed by fdatasync would, in one system call (each
    call costs the writer thread the GIL again, which a busy event loop hands over late).
    Without it (tests that inject faults into fsync) the writer fsyncs after writing.
    """

    synchronous_writes = hasattr(os, "O_DSYNC")

    def open(self, path: Path, sync: bool = False) -> int:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_DSYNC if sync else 0)
        return os.open(path, flags, 0o644)

    def pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, path: Path, data: bytes) -> None:
        """Write ``data`` to a temporary file, fsync it and rename it over ``path``."""
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.write_all(fd, data, 0)
            self.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_all(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += self.pwrite(fd, view[written:], offset + written)


@dataclass(slots=True)
class Append:
    """Bytes for ``path`` at ``offset`` (the file is cut back to ``offset`` first)."""

    path: Path
    offset: int
    data: bytes


@dataclass(slots=True)
class Replace:
    """Replace ``path`` atomically with ``data``."""

    path: Path
    data: bytes


@dataclass(slots=True)
class Unlink:
    """Delete ``path``."""

    path: Path


@dataclass(slots=True)
class Seal:
    """No more appends to ``path``: close it once it is synced."""

    path: Path


Op = Append | Replace | Unlink | Seal


@dataclass(slots=True)
class Job:
    """One group commit: its operations and the highest ticket they complete."""

    ticket: int
    ops: list[Op]


DoneCallback = Callable[[int, dict[Path, int]], None]
FailedCallback = Callable[[int, OSError], None]


class Writer:
    """Applies jobs in a thread.

    ``on_done(ticket, synced sizes)`` reports that every job up to ``ticket`` is on disk;
    ``on_failed(durable ticket, error)`` that the jobs after ``durable ticket`` are held
    until ``retry``. Both are called from the writer thread.
    """

    def __init__(self, io: StoreIO, *, fsync: bool, on_done: DoneCallback,
                 on_failed: FailedCallback) -> None:
        self.io = io
        self.fsync = fsync
        self._on_done = on_done
        self._on_failed = on_failed
        self._sync_writes = fsync and io.synchronous_writes  # O_DSYNC: no fsync needed
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._retry_wanted = False
        self._held: list[Job] = []  # not written yet: waiting for a retry (failed mode)
        self._unsynced: list[Job] = []  # written since the last good fsync
        self._durable = 0
        self._fds: dict[Path, int] = {}
        self._sizes: dict[Path, int] = {}
        self._dirty: set[Path] = set()
        self._dirty_dirs: set[Path] = set()
        self._sealed: set[Path] = set()
        # seconds each group commit took to reach disk: its writes and fsyncs (with O_DSYNC
        # the writes are the syncs); filled by this thread only, read by metrics scrapes
        self.sync_latency = Histogram()
        self._thread = threading.Thread(target=self._run, name="leveret-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            self._queue.append(job)
            self._cond.notify()

    def retry(self) -> None:
        """Write the held jobs again (after a failure)."""
        with self._cond:
            self._retry_wanted = True
            self._cond.notify()

    @property
    def failed(self) -> bool:
        return bool(self._held)

    def close(self, timeout: float = 30.0) -> bool:
        """Finish every queued job (one last retry if failed); True if all reached disk."""
        with self._cond:
            self._stopping = True
            self._retry_wanted = True
            self._cond.notify()
        self._thread.join(timeout)
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                self.io.close(fd)
        self._fds.clear()
        return not self._held and not self._unsynced and not self._queue

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._retry_wanted and not self._stopping:
                    self._cond.wait()
                jobs = list(self._queue)
                self._queue.clear()
                retry, self._retry_wanted = self._retry_wanted, False
                stopping = self._stopping
            if self._held:  # failed: nothing new is written before the held jobs
                self._held += jobs
                if retry:
                    held, self._held = self._held, []
                    self._round(held)
            elif jobs:
                self._round(jobs)
            if stopping:
                with self._cond:
                    if not self._queue:
                        return

    def _round(self, jobs: list[Job]) -> None:
        """Write ``jobs`` in order, then fsync what they touched; report the outcome.

        Appends that follow each other in one file are written with one call: each system
        call costs this thread the GIL again, which a busy event loop hands over late."""
        error: OSError | None = None
        started = time.perf_counter()
        done = 0  # jobs whose operations are all written
        for op, first_job, last_job in _coalesce(jobs):
            try:
                self._apply(op)
            except Exception as failure:  # OSError, or a bug: either way, hold and retry
                error = _as_os_error(failure)
                self._held = jobs[first_job:]
                done = first_job
                break
            done = last_job
        else:
            done = len(jobs)
        self._unsynced += jobs[:done]
        synced = bool(self._dirty or self._dirty_dirs)
        try:
            self._sync_files()
            if synced and self.fsync:
                self.sync_latency.observe(time.perf_counter() - started)
        except Exception as failure:
            # The kernel may have dropped what it could not write: write it all again.
            error = _as_os_error(failure)
            self._held = self._unsynced + self._held
            self._unsynced = []
        if self._unsynced:
            self._durable = self._unsynced[-1].ticket
            self._unsynced = []
            self._close_sealed()
            self._on_done(self._durable, dict(self._sizes))
        if error is not None:
            self._on_failed(self._durable, error)

    def _apply(self, op: Op) -> None:
        io = self.io
        if isinstance(op, Append):
            fd = self._fd(op.path)
            if self._sizes[op.path] > op.offset:  # left over by a failed write
                io.ftruncate(fd, op.offset)
                self._sizes[op.path] = op.offset
            self._dirty.add(op.path)
            try:
                io.write_all(fd, op.data, op.offset)
            except OSError:
                try:  # leave no torn record behind
                    io.ftruncate(fd, op.offset)
                    self._sizes[op.path] = op.offset
                except OSError:
                    self._sizes[op.path] = op.offset + len(op.data)  # cut it next time
                raise
            self._sizes[op.path] = op.offset + len(op.data)
        elif isinstance(op, Replace):
            io.replace(op.path, op.data)
            self._dirty_dirs.add(op.path.parent)
        elif isinstance(op, Unlink):
            self._drop_fd(op.path)
            io.unlink(op.path)
            self._dirty_dirs.add(op.path.parent)
        else:
            self._sealed.add(op.path)

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            existed = path.exists()
            fd = self.io.open(path, self._sync_writes)
            self._fds[path] = fd
            self._sizes[path] = os.fstat(fd).st_size
            if not existed:
                self._dirty_dirs.add(path.parent)
        return fd

    def _drop_fd(self, path: Path) -> None:
        fd = self._fds.pop(path, None)
        self._sizes.pop(path, None)
        self._dirty.discard(path)
        self._sealed.discard(path)
        if fd is not None:
            self.io.close(fd)

    def _sync_files(self) -> None:
        for path in list(self._dirty):
            if self.fsync and not self._sync_writes:
                self.io.fsync(self._fds[path])
            self._dirty.discard(path)
        for directory in list(self._dirty_dirs):
            self.io.fsync_dir(directory)
            self._dirty_dirs.discard(directory)

    def _close_sealed(self) -> None:
        for path in list(self._sealed):
            if path not in self._dirty:
                self._drop_fd(path)


def _coalesce(jobs: list[Job]) -> list[tuple[Op, int, int]]:
    """The jobs' operations in order, consecutive appends to one file merged into one:
    (operation, index of the first job it carries, number of jobs complete once it is
    written)."""
    merged: list[list] = []  # [op, first job, pieces of a merged append, their length]
    for index, job in enumerate(jobs):
        for op in job.ops:
            if merged and isinstance(op, Append):
                last = merged[-1]
                previous = last[0]
                if (isinstance(previous, Append) and previous.path == op.path
                        and previous.offset + last[3] == op.offset):
                    last[2].append(op.data)
                    last[3] += len(op.data)
                    continue
            size = len(op.data) if isinstance(op, Append) else 0
            merged.append([op, index, [op.data] if size else [], size])
    result = []
    for position, (op, first, pieces, _size) in enumerate(merged):
        if len(pieces) > 1:
            op = Append(op.path, op.offset, b"".join(pieces))
        # a job is complete once its last operation is written
        complete = merged[position + 1][1] if position + 1 < len(merged) else len(jobs)
        result.append((op, first, complete))
    return result


def _as_os_error(error: Exception) -> OSError:
    if isinstance(error, OSError):
        return error
    log.exception("unexpected error in the store's writer thread")
    return OSError(errno.EIO, f"{type(error).__name__}: {error}")
