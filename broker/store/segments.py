"""The message log's files: naming, and reading a record back by its position.

Writing is the writer thread's job (``broker.store.writer``); this side only reads, with one
descriptor per file kept open, so a file renamed or deleted by compaction stays readable
until the index stops pointing at it.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from leveret.broker.store import records

SEGMENT_LIMIT = 64 * 1024 * 1024  # start a new segment file past this size


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:08d}.log"


def merge_path(directory: Path, number: int) -> Path:
    """Where a merge writes the file that will replace segment ``number``."""
    return directory / f"{number:08d}.merge"


def list_segments(directory: Path) -> list[int]:
    return sorted(int(p.stem) for p in directory.glob("*.log") if p.stem.isdigit())


def read_at(fd: int, offset: int) -> bytes:
    """The body of the record at ``offset`` of an open file; CorruptRecord if damaged."""
    head = os.pread(fd, records.HEADER_SIZE, offset)
    if len(head) < records.HEADER_SIZE or head[:4] != records.MAGIC:
        raise records.CorruptRecord("no record there")
    length = int.from_bytes(head[4:8], "big")
    body = os.pread(fd, length, offset + records.HEADER_SIZE)
    if len(body) != length or zlib.crc32(body, zlib.crc32(head[4:8])) != int.from_bytes(
            head[8:12], "big"):
        raise records.CorruptRecord("failed its CRC")
    return body


class SegmentReader:
    """Reads records from the segment files of one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fds: dict[int, int] = {}

    def open(self, number: int) -> int:
        fd = self._fds.get(number)
        if fd is None:
            fd = os.open(segment_path(self.directory, number), os.O_RDONLY)
            self._fds[number] = fd
        return fd

    def read(self, number: int, offset: int) -> bytes:
        """The body of the record at ``offset`` in segment ``number``."""
        try:
            return read_at(self.open(number), offset)
        except records.CorruptRecord as error:
            raise records.CorruptRecord(f"record at {number}:{offset}: {error}") from None

    def read_span(self, number: int, offset: int, length: int) -> bytes:
        """``length`` bytes of segment ``number`` from ``offset`` (several records)."""
        return os.pread(self.open(number), length, offset)

    def forget(self, number: int) -> None:
        """Close the descriptor of a segment that was deleted or replaced."""
        fd = self._fds.pop(number, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
