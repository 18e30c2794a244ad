"""The message log's record format.

    record  = length:u32  crc32:u32  body          (crc32 of body; length of body)
    body    = type:u8  fields

    PUBLISH    msg_id:u64 published_ms:u64 route(shortstr exchange, shortstr key)
               header_len:u32 header body_len:u32 body queue_count:u16 queue*
    REMOVE     queue  count:u32  msg_id:u64*
    DELIVERED  queue  count:u32  msg_id:u64*
    PURGE      queue
    queue      = shortstr vhost  shortstr name

A message's id is its record's position in the log: segment number << 32 | offset.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

PUBLISH = 1
REMOVE = 2
DELIVERED = 3
PURGE = 4

RECORD_HEADER = struct.Struct(">II")
_PUBLISH_FIXED = struct.Struct(">BQQ")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_COUNT = struct.Struct(">I")

SEGMENT_SHIFT = 32


class CorruptRecord(Exception):
    """A record failed its CRC or could not be parsed."""


def frame(body: bytes) -> bytes:
    return RECORD_HEADER.pack(len(body), zlib.crc32(body)) + body


QueueKey = tuple[str, str]
"""(vhost, queue name)."""


def _sstr(text: str) -> bytes:
    raw = text.encode("utf-8")
    return bytes((len(raw),)) + raw


def _queue(key: QueueKey) -> bytes:
    return _sstr(key[0]) + _sstr(key[1])


def _read_queue(data: bytes, at: int) -> tuple[QueueKey, int]:
    vhost, at = _read_sstr(data, at)
    name, at = _read_sstr(data, at)
    return (vhost, name), at


def publish(msg_id: int, published_ms: int, route_raw: bytes, header: bytes, body: bytes,
            queues: list[QueueKey]) -> bytes:
    return frame(b"".join((
        _PUBLISH_FIXED.pack(PUBLISH, msg_id, published_ms), route_raw,
        _U32.pack(len(header)), header, _U32.pack(len(body)), body,
        _U16.pack(len(queues)), *(_queue(q) for q in queues),
    )))


def id_list(kind: int, queue: QueueKey, ids: list[int]) -> bytes:
    return frame(b"".join((bytes((kind,)), _queue(queue), _COUNT.pack(len(ids)),
                           struct.pack(f">{len(ids)}Q", *ids))))


def purge(queue: QueueKey) -> bytes:
    return frame(bytes((PURGE,)) + _queue(queue))


@dataclass(slots=True)
class Published:
    msg_id: int
    published_ms: int
    route_raw: bytes
    header: bytes
    body: bytes
    queues: list[QueueKey]


def _read_sstr(data: memoryview | bytes, at: int) -> tuple[str, int]:
    size = data[at]
    return bytes(data[at + 1 : at + 1 + size]).decode("utf-8"), at + 1 + size


def parse_publish(body: bytes) -> Published:
    try:
        _kind, msg_id, published_ms = _PUBLISH_FIXED.unpack_from(body)
        at = _PUBLISH_FIXED.size
        route_start = at
        at += 1 + body[at]
        at += 1 + body[at]
        route_raw = body[route_start:at]
        (header_len,) = _U32.unpack_from(body, at)
        header = body[at + 4 : at + 4 + header_len]
        at += 4 + header_len
        (body_len,) = _U32.unpack_from(body, at)
        payload = body[at + 4 : at + 4 + body_len]
        at += 4 + body_len
        (count,) = _U16.unpack_from(body, at)
        at += 2
        queues = []
        for _ in range(count):
            key, at = _read_queue(body, at)
            queues.append(key)
    except (struct.error, IndexError, UnicodeDecodeError) as error:
        raise CorruptRecord(f"bad publish record: {error}") from error
    return Published(msg_id, published_ms, route_raw, header, payload, queues)


def parse_publish_queues(body: bytes) -> list[QueueKey]:
    """Only the queues of a PUBLISH record (recovery reads no header or body)."""
    try:
        at = _PUBLISH_FIXED.size
        at += 1 + body[at]
        at += 1 + body[at]
        at += 4 + _U32.unpack_from(body, at)[0]
        at += 4 + _U32.unpack_from(body, at)[0]
        (count,) = _U16.unpack_from(body, at)
        at += 2
        queues = []
        for _ in range(count):
            key, at = _read_queue(body, at)
            queues.append(key)
    except (struct.error, IndexError, UnicodeDecodeError) as error:
        raise CorruptRecord(f"bad publish record: {error}") from error
    return queues


def parse_id_list(body: bytes) -> tuple[QueueKey, list[int]]:
    try:
        queue, at = _read_queue(body, 1)
        (count,) = _COUNT.unpack_from(body, at)
        ids = list(struct.unpack_from(f">{count}Q", body, at + 4))
    except (struct.error, IndexError, UnicodeDecodeError) as error:
        raise CorruptRecord(f"bad id-list record: {error}") from error
    return queue, ids


def parse_purge(body: bytes) -> QueueKey:
    try:
        return _read_queue(body, 1)[0]
    except (IndexError, UnicodeDecodeError) as error:
        raise CorruptRecord(f"bad purge record: {error}") from error


def scan(data: bytes) -> Iterator[tuple[int, bytes | None, int]]:
    """Yield (offset, record body or None if corrupt, end offset) for each record in ``data``.

    A record whose length runs past the end is a torn tail: scanning stops before it.
    A record whose CRC fails is yielded as None with its end, so the caller may skip it.
    """
    offset = 0
    size = len(data)
    header = RECORD_HEADER.size
    while offset + header <= size:
        length, crc = RECORD_HEADER.unpack_from(data, offset)
        end = offset + header + length
        if length == 0 or end > size:
            return
        body = data[offset + header : end]
        yield offset, (body if zlib.crc32(body) == crc else None), end
        offset = end
