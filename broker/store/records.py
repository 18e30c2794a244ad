"""The message log's record format (store format 2).

    record  = MAGIC  length:u32  crc32:u32  body    (crc32 of the length field and the body)
    body    = type:u8  fields

    PUBLISH    msg_id:u64 published_ms:u64 route(shortstr exchange, shortstr key)
               header_len:u32 header body_len:u32 body
               queue_count:u16 queue*  delivered_count:u16 queue*
               moved_count:u16 (queue msg_id:u64)*
    REMOVE     queue  count:u32  msg_id:u64*
    DELIVERED  queue  count:u32  msg_id:u64*
    PURGE      queue
    MERGED     below:u32      (first record of a merged file: files numbered below are stale)
    queue      = shortstr vhost  shortstr name

A message's id is the position its PUBLISH record was first written at (segment number << 32
| offset). A merged file keeps the ids of the records it carries. ``moved`` names the stored
copies this message replaces (dead-lettering, a delayed message coming due): the removal and
the new copy are one record, so no crash can keep one without the other. ``delivered``
names the queues that had handed the message out (only merged records carry it).

The magic lets recovery find the next record after a damaged one; the CRC covers the
length, so a damaged length is detected rather than followed.
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
MERGED = 5

MAGIC = b"\xc3LV2"
_HEADER = struct.Struct(">4sII")
HEADER_SIZE = _HEADER.size
_LENGTH = struct.Struct(">I")
_HEAD = struct.Struct(">4s4sI")  # magic, the packed length, CRC
_PUBLISH_FIXED = struct.Struct(">BQQ")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")

SEGMENT_SHIFT = 32
OFFSET_MASK = (1 << SEGMENT_SHIFT) - 1

QueueKey = tuple[str, str]
"""(vhost, queue name)."""


class CorruptRecord(Exception):
    """A record failed its CRC or could not be parsed."""


def frame(body: bytes) -> bytes:
    """A whole record around ``body``."""
    length = _LENGTH.pack(len(body))
    return MAGIC + length + _U32.pack(zlib.crc32(body, zlib.crc32(length))) + body


def _sstr(text: str) -> bytes:
    raw = text.encode("utf-8")
    return bytes((len(raw),)) + raw


def encode_queue(key: QueueKey) -> bytes:
    return _sstr(key[0]) + _sstr(key[1])


def _queue_list(keys: list[QueueKey] | tuple[QueueKey, ...]) -> bytes:
    return _U16.pack(len(keys)) + b"".join(encode_queue(q) for q in keys)


_NO_QUEUES = _U16.pack(0)


_QUEUE_LISTS: dict[tuple[QueueKey, ...], bytes] = {}  # encoded queue lists, reused


def _cached_queue_list(keys: list[QueueKey]) -> bytes:
    key = tuple(keys)
    found = _QUEUE_LISTS.get(key)
    if found is None:
        if len(_QUEUE_LISTS) >= 4096:
            _QUEUE_LISTS.clear()
        found = _QUEUE_LISTS[key] = _queue_list(keys)
    return found


def publish_parts(msg_id: int, published_ms: int, route_raw: bytes, header: bytes,
                  body: bytes, queues: list[QueueKey], delivered: list[QueueKey] | tuple = (),
                  moved: list[tuple[QueueKey, int]] | tuple = ()) -> tuple[bytes, bytes]:
    """A PUBLISH record as (record header, record body): written one after the other, so
    the message body is copied once."""
    tail = _NO_QUEUES if not delivered else _queue_list(delivered)
    if moved:
        tail += _U16.pack(len(moved)) + b"".join(encode_queue(q) + _U64.pack(i)
                                                 for q, i in moved)
    else:
        tail += _NO_QUEUES
    content = b"".join((
        _PUBLISH_FIXED.pack(PUBLISH, msg_id, published_ms), route_raw,
        _U32.pack(len(header)), header, _U32.pack(len(body)), body,
        _cached_queue_list(queues), tail,
    ))
    length = _LENGTH.pack(len(content))
    return _HEAD.pack(MAGIC, length, zlib.crc32(content, zlib.crc32(length))), content


def publish(msg_id: int, published_ms: int, route_raw: bytes, header: bytes, body: bytes,
            queues: list[QueueKey], delivered: list[QueueKey] | tuple = (),
            moved: list[tuple[QueueKey, int]] | tuple = ()) -> bytes:
    head, content = publish_parts(msg_id, published_ms, route_raw, header, body, queues,
                                  delivered, moved)
    return head + content


def id_list(kind: int, queue: QueueKey, ids: list[int]) -> bytes:
    return frame(b"".join((bytes((kind,)), encode_queue(queue), _U32.pack(len(ids)),
                           struct.pack(f">{len(ids)}Q", *ids))))


def purge(queue: QueueKey) -> bytes:
    return frame(bytes((PURGE,)) + encode_queue(queue))


def merged(below: int) -> bytes:
    return frame(bytes((MERGED,)) + _U32.pack(below))


@dataclass(slots=True)
class Published:
    """A PUBLISH record, parsed."""

    msg_id: int
    published_ms: int
    route_raw: bytes
    header: bytes
    body: bytes
    queues: list[QueueKey]
    delivered: list[QueueKey]
    moved: list[tuple[QueueKey, int]]


def _read_sstr(data: memoryview | bytes, at: int) -> tuple[str, int]:
    size = data[at]
    end = at + 1 + size
    if end > len(data):
        raise IndexError("shortstr past the end")
    return bytes(data[at + 1 : end]).decode("utf-8"), end


def _read_queue(data: bytes, at: int) -> tuple[QueueKey, int]:
    vhost, at = _read_sstr(data, at)
    name, at = _read_sstr(data, at)
    return (vhost, name), at


def _read_queues(data: bytes, at: int) -> tuple[list[QueueKey], int]:
    (count,) = _U16.unpack_from(data, at)
    at += 2
    queues = []
    for _ in range(count):
        key, at = _read_queue(data, at)
        queues.append(key)
    return queues, at


def _skip_payload(body: bytes) -> int:
    """Offset of the queue list in a PUBLISH body (past route, header and message body)."""
    at = _PUBLISH_FIXED.size
    at += 1 + body[at]
    at += 1 + body[at]
    at += 4 + _U32.unpack_from(body, at)[0]
    at += 4 + _U32.unpack_from(body, at)[0]
    if at > len(body):
        raise IndexError("payload past the end")
    return at


def _read_tail(body: bytes, at: int) -> tuple[list[QueueKey], list[QueueKey],
                                              list[tuple[QueueKey, int]]]:
    queues, at = _read_queues(body, at)
    delivered, at = _read_queues(body, at)
    (count,) = _U16.unpack_from(body, at)
    at += 2
    moved = []
    for _ in range(count):
        key, at = _read_queue(body, at)
        moved.append((key, _U64.unpack_from(body, at)[0]))
        at += 8
    if at != len(body):
        raise CorruptRecord("trailing bytes in a publish record")
    return queues, delivered, moved


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
        queues, delivered, moved = _read_tail(body, at)
    except (struct.error, IndexError, UnicodeDecodeError) as error:
        raise CorruptRecord(f"bad publish record: {error}") from error
    return Published(msg_id, published_ms, bytes(route_raw), bytes(header), bytes(payload),
                     queues, delivered, moved)


_TAILS_MAX = 4096
_tails: dict[bytes, tuple[list[QueueKey], list[QueueKey], list]] = {}


def parse_publish_meta(body: bytes) -> tuple[int, list[QueueKey], list[QueueKey],
                                             list[tuple[QueueKey, int]]]:
    """(msg_id, queues, delivered, moved) of a PUBLISH record, without copying its payload.

    Recovery reads millions of these, and most of a queue's records end in the same queue
    lists: a tail without ``moved`` ids is parsed once and its lists are shared (callers
    must not change them).
    """
    try:
        msg_id = _U64.unpack_from(body, 1)[0]
        at = _skip_payload(body)
        tail = body[at:]
        parsed = _tails.get(tail)
        if parsed is None:
            parsed = _read_tail(body, at)
            if not parsed[2]:
                if len(_tails) >= _TAILS_MAX:
                    _tails.clear()
                _tails[tail] = parsed
        return msg_id, parsed[0], parsed[1], parsed[2]
    except (struct.error, IndexError, UnicodeDecodeError) as error:
        raise CorruptRecord(f"bad publish record: {error}") from error


def parse_id_list(body: bytes) -> tuple[QueueKey, list[int]]:
    try:
        queue, at = _read_queue(body, 1)
        (count,) = _U32.unpack_from(body, at)
        if at + 4 + 8 * count != len(body):
            raise CorruptRecord("id list of the wrong length")
        ids = list(struct.unpack_from(f">{count}Q", body, at + 4))
    except (struct.error, IndexError, UnicodeDecodeError) as error:
        raise CorruptRecord(f"bad id-list record: {error}") from error
    return queue, ids


def parse_purge(body: bytes) -> QueueKey:
    try:
        queue, at = _read_queue(body, 1)
    except (IndexError, UnicodeDecodeError) as error:
        raise CorruptRecord(f"bad purge record: {error}") from error
    if at != len(body):
        raise CorruptRecord("trailing bytes in a purge record")
    return queue


def parse_merged(body: bytes) -> int:
    if len(body) != 5:
        raise CorruptRecord("bad merged record")
    return _U32.unpack_from(body, 1)[0]


def body_at(data: bytes, offset: int) -> bytes:
    """The body of the record at ``offset`` of ``data``; CorruptRecord if it is damaged."""
    end = _valid_at(data, offset, len(data))
    if end < 0:
        raise CorruptRecord("no intact record there")
    return data[offset + HEADER_SIZE : end]


def _valid_at(data: bytes, offset: int, size: int) -> int:
    """End of a valid record at ``offset``, or -1."""
    if offset + HEADER_SIZE > size:
        return -1
    magic, length, crc = _HEADER.unpack_from(data, offset)
    end = offset + HEADER_SIZE + length
    if magic != MAGIC or length == 0 or end > size:
        return -1
    start = offset + HEADER_SIZE
    if zlib.crc32(data[start:end], zlib.crc32(data[offset + 4 : offset + 8])) != crc:
        return -1
    return end


def scan(data: bytes) -> Iterator[tuple[int, bytes | None, int]]:
    """Yield (offset, body, end) for each record of ``data`` in order.

    A damaged stretch (bad magic, length or CRC) is yielded once as (offset, None, end),
    where ``end`` is the start of the next valid record, found by its magic and CRC; a
    damaged stretch that runs to the end of ``data`` has ``end == len(data)``.
    """
    offset = 0
    size = len(data)
    while offset < size:
        end = _valid_at(data, offset, size)
        if end > 0:
            yield offset, data[offset + HEADER_SIZE : end], end
            offset = end
            continue
        candidate = offset
        while True:
            candidate = data.find(MAGIC, candidate + 1)
            if candidate < 0:
                yield offset, None, size
                return
            if _valid_at(data, candidate, size) > 0:
                break
        yield offset, None, candidate
        offset = candidate
