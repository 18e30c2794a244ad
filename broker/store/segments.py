"""The segmented, append-only message log on disk."""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

from broker.store import records

log = logging.getLogger(__name__)

SEGMENT_LIMIT = 64 * 1024 * 1024  # start a new segment file past this size


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:08d}.log"


class SegmentLog:
    """Appends records to the newest segment; reads any record back by its position."""

    def __init__(self, directory: Path, segment_limit: int = SEGMENT_LIMIT) -> None:
        self.directory = directory
        self.segment_limit = segment_limit
        directory.mkdir(parents=True, exist_ok=True)
        self.numbers = sorted(int(p.stem) for p in directory.glob("*.log") if p.stem.isdigit())
        self._readers: dict[int, int] = {}  # segment number -> fd for reading
        self.current = 0
        self._fd = -1
        self._retired: list[int] = []  # full segments' descriptors, closed once unused
        self.size = 0

    def open_for_append(self) -> None:
        """Continue the newest segment (or start the first one)."""
        if not self.numbers:
            self.numbers.append(1)
        self.current = self.numbers[-1]
        path = segment_path(self.directory, self.current)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self._fd).st_size

    def position(self) -> int:
        """The id the next record will have: segment << 32 | offset."""
        return (self.current << records.SEGMENT_SHIFT) | self.size

    def append(self, data: bytes) -> None:
        """Write ``data`` (whole records) to the current segment; no fsync here."""
        written = 0
        view = memoryview(data)
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError:
            # Leave no torn record behind (ENOSPC and the like): cut back to the last one.
            os.ftruncate(self._fd, self.size)
            raise
        self.size += written

    def sync(self) -> None:
        """fsync the current segment (safe from a worker thread: see ``roll_if_full``)."""
        os.fsync(self._fd)

    def roll_if_full(self) -> bool:
        """Start a new segment when the current one is past the limit.

        The full segment is fsynced here; its descriptor is closed later, by
        ``close_retired``, once no worker can still be fsyncing it.
        """
        if self.size < self.segment_limit:
            return False
        os.fsync(self._fd)
        self._retired.append(self._fd)
        self.numbers.append(self.current + 1)
        self.open_for_append()
        return True

    def close_retired(self) -> None:
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def read(self, position: int) -> bytes:
        """The body of the record at ``position``; raises CorruptRecord if damaged."""
        number = position >> records.SEGMENT_SHIFT
        offset = position & ((1 << records.SEGMENT_SHIFT) - 1)
        fd = self._readers.get(number)
        if fd is None:
            fd = os.open(segment_path(self.directory, number), os.O_RDONLY)
            self._readers[number] = fd
        head = os.pread(fd, records.RECORD_HEADER.size, offset)
        if len(head) < records.RECORD_HEADER.size:
            raise records.CorruptRecord(f"short read at {number}:{offset}")
        length, crc = records.RECORD_HEADER.unpack(head)
        body = os.pread(fd, length, offset + records.RECORD_HEADER.size)
        if len(body) != length or zlib.crc32(body) != crc:
            raise records.CorruptRecord(f"record at {number}:{offset} failed its CRC")
        return body

    def delete(self, number: int) -> None:
        """Remove a fully dead segment file."""
        fd = self._readers.pop(number, None)
        if fd is not None:
            os.close(fd)
        segment_path(self.directory, number).unlink(missing_ok=True)
        self.numbers.remove(number)

    def truncate(self, number: int, size: int) -> None:
        """Cut a segment back to ``size`` bytes (a torn tail found at recovery)."""
        with open(segment_path(self.directory, number), "r+b") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        self.close_retired()
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()
