"""Content headers checked and decoded without recursion, accepting what RabbitMQ accepts.

``check_content_header`` walks a basic content header payload once, without building values,
and raises ``SyntaxError_`` unless it is well formed the way RabbitMQ's parser requires
(``rabbit_framing_amqp_0_9_1:decode_properties/2`` and ``rabbit_binary_parser:parse_table/1``):

* the 14 basic property flags; the two low bits of the flags word (bit 0 is the spec's
  "another flags word follows") are ignored, as RabbitMQ does (``_:2``);
* every length stays inside its property, table or array, and the properties end exactly
  where the payload ends: no trailing bytes;
* field values carry one of RabbitMQ's type tags: ``t b B s u I i l L f d D T S x F A V``
  (not the spec's ``U``, nor the ``0x00`` pamqp reads as void);
* a float (``f``) or double (``d``) is finite: Erlang's ``Value:32/float`` binary match fails
  on NaN and infinities, so RabbitMQ refuses those too;
* strings are bytes: invalid UTF-8 in a shortstr, a longstr or a field name is accepted.

Nested tables and arrays are walked with an explicit stack, so any depth the payload can
hold is accepted, and the work is linear in the payload size.

``decode_table`` and ``decode_properties`` accept exactly what ``check_content_header``
accepts and return what pamqp's decoder returns for the same bytes, with the same types and
field order, again without recursion. Where pamqp raises on bytes RabbitMQ accepts, they
return a value instead: a shortstr or field name that is not UTF-8 becomes ``bytes`` (as
pamqp does for a longstr), and a timestamp ``datetime`` cannot hold becomes a
``tables.Timestamp`` (an int of the wire's seconds, encoded back as a timestamp). A double
('d') becomes a ``tables.Double``, a float that is encoded back as a double (pamqp would
write it as a 32-bit 'f', losing precision or failing).
"""

from __future__ import annotations

import datetime
import struct
from decimal import Decimal
from math import isfinite as _isfinite
from typing import Any

from pamqp import commands

from leveret.protocol.errors import SyntaxError_
from leveret.protocol.tables import Double, Timestamp

_L = struct.Struct(">L")
_L_unpack = _L.unpack_from
_Q_unpack = struct.Struct(">Q").unpack_from
_i_unpack = struct.Struct(">i").unpack_from
_UTC = datetime.UTC
_fromtimestamp = datetime.datetime.fromtimestamp
_Properties = commands.Basic.Properties

# The value types RabbitMQ parses, with the bytes a value takes after its type tag.
FIXED_SIZES = {"t": 1, "b": 1, "B": 1, "s": 2, "u": 2, "I": 4, "i": 4, "l": 8, "L": 8,
               "f": 4, "d": 8, "D": 5, "T": 8, "V": 0}
# Codes for the other types: a 4-byte length and that many bytes (S, x), or of items (F, A);
# floats, which must also be finite; and the tags RabbitMQ refuses.
_UNKNOWN, _LONGSTR, _TABLE, _ARRAY, _FLOAT, _DOUBLE = -1, -2, -3, -4, -5, -6
_CODES = {"S": _LONGSTR, "x": _LONGSTR, "F": _TABLE, "A": _ARRAY, "f": _FLOAT, "d": _DOUBLE}
# Per tag byte: the value size of a fixed-size type, else its code.
_SIZE = tuple(_CODES.get(chr(tag), FIXED_SIZES.get(chr(tag), _UNKNOWN)) for tag in range(256))
# Per tag byte: the bytes a fixed-size value takes with its tag, else the code.
_STEP = tuple(size + 1 if size >= 0 else size for size in _SIZE)
# Value structs of the numeric types, as pamqp decodes them ('L' is signed, as in RabbitMQ).
_NUMERIC = {ord(tag): struct.Struct(fmt).unpack_from for tag, fmt in (
    ("b", ">b"), ("B", ">B"), ("s", ">h"), ("u", ">H"), ("I", ">l"), ("i", ">L"), ("l", ">q"),
    ("L", ">q"), ("f", ">f"), ("d", ">d"))}


def _finite(buf: bytes, at: int, code: int) -> bool:
    """Whether the float (``_FLOAT``) or double at ``buf[at:]`` is finite (its exponent bits
    are not all ones)."""
    mask = 0x80 if code == _FLOAT else 0xF0
    return (buf[at] & 0x7F) != 0x7F or (buf[at + 1] & mask) != mask


def _tag_text(tag: int) -> str:
    return chr(tag) if 0x21 <= tag < 0x7F else f"0x{tag:02x}"


def _table_error(where: str, problem: str) -> SyntaxError_:
    return SyntaxError_(f"malformed field table{where}: {problem}")


def _item_error(buf: bytes, at: int, end: int, item: int, table: bool, where: str) -> SyntaxError_:
    """The error for the table or array item at ``item`` that failed at ``at``."""
    container = "table" if table else "array"
    if table and at >= end:
        return _table_error(where, f"field name at byte {item} runs past the end of the table")
    tag = buf[at]
    code = _SIZE[tag]
    if code == _UNKNOWN:
        return _table_error(where, f"unknown field type '{_tag_text(tag)}' at byte {at}")
    if code <= _FLOAT and at + FIXED_SIZES[chr(tag)] < end and not _finite(buf, at + 1, code):
        return _table_error(where, f"value of type '{chr(tag)}' at byte {at} is not finite")
    return _table_error(
        where, f"value of type '{chr(tag)}' at byte {at} runs past the end of the {container}"
    )


def _items_ok(buf: bytes, at: int, end: int) -> bool:
    """Whether the fields in ``buf[at:end]`` (a table's bytes after its length) are well
    formed. The hot path: lengths are checked once per table, array or longstr, not per
    field, so it may also raise IndexError or struct.error for a malformed table."""
    steps = _STEP
    unpack = _L_unpack
    stack: list[int] = []  # the enclosing containers' ends, negated for arrays
    table = True
    while True:
        if table:
            while at < end:
                at += 1 + buf[at]  # the field name
                step = steps[buf[at]]
                if step > 0:
                    at += step
                elif step == _LONGSTR:
                    at += 5 + unpack(buf, at + 1)[0]
                elif step <= _FLOAT:  # f, d
                    if not _finite(buf, at + 1, step):
                        return False
                    at += 5 if step == _FLOAT else 9
                elif step == _UNKNOWN:
                    return False
                else:
                    break
            else:
                if at != end:
                    return False
                if not stack:
                    return True
                end = stack.pop()
                if end < 0:
                    end, table = -end, False
                continue
        else:
            while at < end:
                step = steps[buf[at]]
                if step > 0:
                    at += step
                elif step == _LONGSTR:
                    at += 5 + unpack(buf, at + 1)[0]
                elif step <= _FLOAT:  # f, d
                    if not _finite(buf, at + 1, step):
                        return False
                    at += 5 if step == _FLOAT else 9
                elif step == _UNKNOWN:
                    return False
                else:
                    break
            else:
                if at != end:
                    return False
                if not stack:
                    return True
                end = stack.pop()
                if end >= 0:
                    table = True
                else:
                    end = -end
                continue
        # a nested table or array starts at ``at``
        start = at + 5
        stop = start + unpack(buf, at + 1)[0]
        if stop > end:
            return False
        stack.append(end if table else -end)
        table = step == _TABLE
        at, end = start, stop


def _check_items(buf: bytes, at: int, end: int, where: str) -> None:
    """Check the fields of the table in ``buf[at:end]`` (the bytes after its length) one by
    one, raising ``SyntaxError_`` that says where the first problem is."""
    sizes = _SIZE
    unpack = _L_unpack
    stack: list[int] = []  # the enclosing containers' ends, negated for arrays
    table = True
    while True:
        if at < end:
            item = at
            if table:
                at += 1 + buf[at]  # the field name, a shortstr
                if at >= end:
                    raise _item_error(buf, at, end, item, table, where)
            size = sizes[buf[at]]
            if size >= 0:
                at += 1 + size
                if at > end:
                    raise _item_error(buf, at - 1 - size, end, item, table, where)
            elif size == _LONGSTR:
                start = at + 5
                if start > end or start + unpack(buf, at + 1)[0] > end:
                    raise _item_error(buf, at, end, item, table, where)
                at = start + unpack(buf, at + 1)[0]
            elif size <= _FLOAT:  # f, d
                size = 4 if size == _FLOAT else 8
                if at + 1 + size > end or not _finite(buf, at + 1, _SIZE[buf[at]]):
                    raise _item_error(buf, at, end, item, table, where)
                at += 1 + size
            elif size == _UNKNOWN:
                raise _item_error(buf, at, end, item, table, where)
            else:  # a nested table or array
                start = at + 5
                if start > end or start + unpack(buf, at + 1)[0] > end:
                    raise _item_error(buf, at, end, item, table, where)
                stack.append(end if table else -end)
                end = start + unpack(buf, at + 1)[0]
                table = size == _TABLE
                at = start
        elif stack:
            end = stack.pop()
            table = end >= 0
            if not table:
                end = -end
        else:
            return


# (flag bit, property name, size): size >= 0 a fixed size, -1 a shortstr, -2 the table.
PROPERTIES = (
    (0x8000, "content_type", -1),
    (0x4000, "content_encoding", -1),
    (0x2000, "headers", -2),
    (0x1000, "delivery_mode", 1),
    (0x0800, "priority", 1),
    (0x0400, "correlation_id", -1),
    (0x0200, "reply_to", -1),
    (0x0100, "expiration", -1),
    (0x0080, "message_id", -1),
    (0x0040, "timestamp", 8),
    (0x0020, "type", -1),
    (0x0010, "user_id", -1),
    (0x0008, "app_id", -1),
    (0x0004, "cluster_id", -1),
)


def _header_error(payload: bytes) -> SyntaxError_:
    """The error for a malformed content header of at least 14 bytes: the first property
    that overruns it or holds a malformed table, or the bytes after the last property."""
    size = len(payload)
    flags = (payload[12] << 8) | payload[13]
    at, last = 14, None
    for flag, name, kind in PROPERTIES:
        if not flags & flag:
            continue
        start = at
        if kind == -1:
            at += 1 + payload[at] if at < size else 1
        elif kind == -2:
            at += 4 + _L_unpack(payload, at)[0] if at + 4 <= size else 4
            if at <= size:
                _check_items(payload, start + 4, at, " in property 'headers'")
        else:
            at += kind
        if at > size:
            return SyntaxError_(
                f"malformed content header: property '{name}' at byte {start} runs past the "
                f"end of the header ({size} bytes)"
            )
        last = name
    after = f"after property '{last}'" if last else "after the property flags"
    extra = size - at
    return SyntaxError_(
        f"malformed content header: {extra} unexpected byte{'s' * (extra != 1)} {after}"
    )


def check_content_header(payload: bytes) -> None:
    """Raise ``SyntaxError_`` unless ``payload`` is a well-formed basic content header.

    The class id, weight and body size are the caller's to check (RabbitMQ answers a wrong
    class or a non-zero weight with UNEXPECTED_FRAME).
    """
    size = len(payload)
    if size < 14:
        raise SyntaxError_(
            f"malformed content header: {size} bytes, fewer than the 14 of its fixed fields "
            "and property flags"
        )
    flags = (payload[12] << 8) | payload[13]
    at = 14
    try:
        if flags & 0x8000:
            at += 1 + payload[at]
        if flags & 0x4000:
            at += 1 + payload[at]
        if flags & 0x2000:
            start = at + 4
            at = start + _L_unpack(payload, at)[0]
            if start < at <= size and not _items_ok(payload, start, at):
                _check_items(payload, start, at, " in property 'headers'")  # raises
                raise SyntaxError_("malformed field table in property 'headers'")
        if flags & 0x1000:
            at += 1
        if flags & 0x0800:
            at += 1
        if flags & 0x07FC:
            if flags & 0x0400:
                at += 1 + payload[at]
            if flags & 0x0200:
                at += 1 + payload[at]
            if flags & 0x0100:
                at += 1 + payload[at]
            if flags & 0x0080:
                at += 1 + payload[at]
            if flags & 0x0040:
                at += 8
            if flags & 0x0020:
                at += 1 + payload[at]
            if flags & 0x0010:
                at += 1 + payload[at]
            if flags & 0x0008:
                at += 1 + payload[at]
            if flags & 0x0004:
                at += 1 + payload[at]
    except (IndexError, struct.error):
        at = -1
    if at != size:
        raise _header_error(payload)


# ------------------------------------------------------------------------------- decoding
def _timestamp(seconds: int) -> datetime.datetime | Timestamp:
    """pamqp's timestamp value: a UTC datetime, read as milliseconds past the year 2106."""
    try:
        return _fromtimestamp(seconds if seconds <= 0xFFFFFFFF else seconds / 1000.0, tz=_UTC)
    except (OverflowError, ValueError, OSError):
        return Timestamp(seconds)


def _text(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


# How each type tag decodes: (kind, bytes after the tag or -1 for a 4-byte length and that
# many bytes, a struct unpack_from for the numeric kind); None for an unknown tag.
_STR, _VOID, _NUM, _BOOL, _NEST, _STAMP, _DEC, _BYTES, _REAL = range(9)
_KIND: tuple[tuple[int, int, Any] | None, ...] = tuple(
    (_REAL, FIXED_SIZES[chr(tag)], _NUMERIC[tag]) if tag in (0x66, 0x64)  # f d
    else (_NUM, _SIZE[tag], _NUMERIC[tag]) if tag in _NUMERIC
    else (_STR, -1, None) if tag == 0x53  # S
    else (_VOID, 0, None) if tag == 0x56  # V
    else (_BOOL, 1, None) if tag == 0x74  # t
    else (_NEST, -1, None) if tag in (0x41, 0x46)  # A F
    else (_STAMP, 8, None) if tag == 0x54  # T
    else (_DEC, 5, None) if tag == 0x44  # D
    else (_BYTES, -1, None) if tag == 0x78  # x
    else None
    for tag in range(256)
)


def _decode_items(buf: bytes, at: int, end: int, where: str) -> dict[str | bytes, Any]:
    """The table whose fields are ``buf[at:end]``, decoded as pamqp decodes it."""
    kinds = _KIND
    unpack = _L_unpack
    root: dict[str | bytes, Any] = {}
    container: Any = root
    table = True
    key: str | bytes = ""
    stack: list[tuple[Any, bool, int]] = []
    while True:
        if at < end:
            item = at
            if table:
                start = at + 1
                at = start + buf[at]
                if at >= end:
                    raise _item_error(buf, at, end, item, table, where)
                raw = buf[start:at]
                try:
                    key = raw.decode("utf-8")
                except UnicodeDecodeError:
                    key = raw
            tag = buf[at]
            if tag == 0x56:  # V, the most common value in task headers, with S
                value: Any = None
                at += 1
                if table:
                    container[key] = value
                else:
                    container.append(value)
                continue
            spec = kinds[tag]
            if spec is None:
                raise _item_error(buf, at, end, item, table, where)
            kind, size, unpack_value = spec
            if size < 0:  # a length and that many bytes
                start = at + 5
                stop = start + unpack(buf, at + 1)[0] if start <= end else start
                if stop > end:
                    raise _item_error(buf, at, end, item, table, where)
                at = stop
                if kind == _STR:
                    raw = buf[start:stop]
                    try:
                        value = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        value = raw
                elif kind == _NEST:
                    value = {} if buf[start - 5] == 0x46 else []
                    if table:
                        container[key] = value
                    else:
                        container.append(value)
                    stack.append((container, table, end))
                    container, table, at, end = value, type(value) is dict, start, stop
                    continue
                else:
                    value = bytearray(buf[start:stop])
            else:
                start = at + 1
                at = start + size
                if at > end:
                    raise _item_error(buf, start - 1, end, item, table, where)
                if kind == _VOID:
                    value = None
                elif kind == _NUM:
                    value = unpack_value(buf, start)[0]
                elif kind == _REAL:
                    value = unpack_value(buf, start)[0]
                    if not _isfinite(value):
                        raise _item_error(buf, start - 1, end, item, table, where)
                    if size == 8:  # a double stays one when the table is written again
                        value = Double(value)
                elif kind == _BOOL:
                    value = buf[start] != 0
                elif kind == _STAMP:
                    value = _timestamp(_Q_unpack(buf, start)[0])
                else:
                    value = Decimal(_i_unpack(buf, start + 1)[0]) * (Decimal(10) ** -buf[start])
            if table:
                container[key] = value
            else:
                container.append(value)
        elif stack:
            container, table, end = stack.pop()
        else:
            return root


def decode_table(data: bytes, offset: int = 0) -> tuple[dict[str | bytes, Any], int]:
    """(the field table at ``data[offset:]``, the offset after it), decoded as pamqp does.

    Raises ``SyntaxError_`` where ``check_content_header`` would reject the table.
    """
    buf = data if isinstance(data, bytes) else bytes(data)
    start = offset + 4
    if start > len(buf) or start + _L_unpack(buf, offset)[0] > len(buf):
        raise _table_error("", f"table at byte {offset} runs past the end of the data")
    end = start + _L_unpack(buf, offset)[0]
    return _decode_items(buf, start, end, ""), end


def decode_properties(payload: bytes) -> commands.Basic.Properties:
    """The properties of a basic content header payload: what
    ``ContentHeader().unmarshal(payload)`` leaves in ``.properties``, decoded without
    recursion. Raises ``SyntaxError_`` wherever ``check_content_header`` does.
    """
    buf = payload if isinstance(payload, bytes) else bytes(payload)
    size = len(buf)
    if size < 14:
        check_content_header(buf)  # raises
    flags = (buf[12] << 8) | buf[13]
    p = _Properties.__new__(_Properties)
    p.content_type = p.content_encoding = p.headers = p.delivery_mode = p.priority = None
    p.correlation_id = p.reply_to = p.expiration = p.message_id = p.timestamp = None
    p.message_type = p.user_id = p.app_id = None
    p.cluster_id = ""  # pamqp's default
    at = 14
    text = _text
    try:  # a shortstr past the end is caught by the final length check
        if flags & 0x8000:
            start = at + 1
            at = start + buf[at]
            p.content_type = text(buf[start:at])
        if flags & 0x4000:
            start = at + 1
            at = start + buf[at]
            p.content_encoding = text(buf[start:at])
        if flags & 0x2000:
            start = at + 4
            at = start + _L_unpack(buf, at)[0]
            if at > size:
                raise _header_error(buf)
            p.headers = _decode_items(buf, start, at, " in property 'headers'")
        if flags & 0x1000:
            p.delivery_mode = buf[at]
            at += 1
        if flags & 0x0800:
            p.priority = buf[at]
            at += 1
        if flags & 0x07FC:
            if flags & 0x0400:
                start = at + 1
                at = start + buf[at]
                p.correlation_id = text(buf[start:at])
            if flags & 0x0200:
                start = at + 1
                at = start + buf[at]
                p.reply_to = text(buf[start:at])
            if flags & 0x0100:
                start = at + 1
                at = start + buf[at]
                p.expiration = text(buf[start:at])
            if flags & 0x0080:
                start = at + 1
                at = start + buf[at]
                p.message_id = text(buf[start:at])
            if flags & 0x0040:
                p.timestamp = _timestamp(_Q_unpack(buf, at)[0])
                at += 8
            if flags & 0x0020:
                start = at + 1
                at = start + buf[at]
                p.message_type = text(buf[start:at])
            if flags & 0x0010:
                start = at + 1
                at = start + buf[at]
                p.user_id = text(buf[start:at])
            if flags & 0x0008:
                start = at + 1
                at = start + buf[at]
                p.app_id = text(buf[start:at])
            if flags & 0x0004:
                start = at + 1
                at = start + buf[at]
                p.cluster_id = text(buf[start:at])
    except (IndexError, struct.error):
        at = -1
    if at != size:
        raise _header_error(buf)
    return p
