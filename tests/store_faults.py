"""Fault injection for the message store: a StoreIO whose writes and fsyncs can be slowed or
made to fail, for the brokers that tests start in-process (``EmbeddedBroker(store_io=...)``).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from leveret.broker.store.writer import StoreIO


class FaultyIO(StoreIO):
    """The store's system calls, with faults switched on and off by the test.

    ``affects(path)`` chooses the files a fault applies to (default: all). A failing write
    first puts ``partial`` bytes into the file, as a real short write would.
    """

    synchronous_writes = False  # write, then fsync: the faults below are injected there

    def __init__(self) -> None:
        self.fsync_delay = 0.0
        self.write_error: int | None = None
        self.fsync_error: int | None = None
        self.replace_error: int | None = None
        self.partial = 7
        self.affects: Callable[[Path], bool] = lambda path: True
        self.fsyncs = 0
        self.failures = 0
        self._paths: dict[int, Path] = {}
        self._lock = threading.Lock()

    def open(self, path: Path, sync: bool = False) -> int:
        fd = super().open(path, sync)
        self._paths[fd] = path
        return fd

    def _hit(self, fd: int) -> bool:
        path = self._paths.get(fd)
        return path is not None and self.affects(path)

    def pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        error = self.write_error
        if error is not None and self._hit(fd):
            os.pwrite(fd, bytes(data[: self.partial]), offset)
            with self._lock:
                self.failures += 1
            raise OSError(error, os.strerror(error))
        return super().pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        if self._hit(fd):
            if self.fsync_delay:
                time.sleep(self.fsync_delay)
            error = self.fsync_error
            if error is not None:
                with self._lock:
                    self.failures += 1
                raise OSError(error, os.strerror(error))
        with self._lock:
            self.fsyncs += 1
        super().fsync(fd)

    def replace(self, path: Path, data: bytes) -> None:
        error = self.replace_error
        if error is not None and self.affects(path):
            with self._lock:
                self.failures += 1
            raise OSError(error, os.strerror(error))
        super().replace(path, data)

    def clear(self) -> None:
        self.fsync_delay = 0.0
        self.write_error = self.fsync_error = self.replace_error = None


ENOSPC = errno.ENOSPC
EIO = errno.EIO
