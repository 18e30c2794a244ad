"""Field tables and content headers as the broker writes them when it must rewrite one.

pamqp encodes an integer in the smallest type that fits (including unsigned types some
clients do not read) and sorts table keys. Here integers go out as RabbitMQ writes them —
signed 32-bit when they fit, else signed 64-bit, and ``Long`` always 64-bit (x-death
``count``, ``x-delivery-count``) — and key order is kept. What ``protocol.validate`` decodes
where pamqp cannot (``bytes`` field names and shortstrs that are not UTF-8, ``Timestamp``) goes
out as it came in, and so does a double (``Double``; a plain float is pamqp's 32-bit 'f', as
a 'f' value decodes to). Everything else is pamqp's.

Nested tables and arrays are written with an explicit stack, not recursion, so a table as
deep as ``protocol.validate`` decodes (RabbitMQ accepts any depth a frame can hold) can be
written back, in time linear in its size.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from pamqp import commands, encode

_I = struct.Struct(">i")
_Q = struct.Struct(">q")
_L = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_D = struct.Struct(">d")
_CONTENT_HEADER = struct.Struct(">HHQ")
_EMPTY = b"\x00\x00\x00\x00"  # an empty table, or a placeholder for a length
_SHORT = tuple(bytes((n,)) for n in range(256))  # the length byte of a field name
# Nesting up to this depth is not checked for a table or array that contains itself: past it,
# the enclosing ones are, and such a cycle is refused before long.
_UNCHECKED_DEPTH = 32


class Long(int):
    """An integer that is always encoded as a signed 64-bit table value ('l')."""


class Double(float):
    """A float that came as a double ('d'); encoded as a double again (pamqp writes every
    float as a 32-bit 'f', which loses precision and cannot hold a double's range)."""


class Timestamp(int):
    """A timestamp (seconds, or milliseconds past 2106 as pamqp reads them) that ``datetime``
    cannot hold; encoded as a timestamp ('T') again, unchanged."""


def encode_value(value: Any) -> bytes:
    """A field value with its type tag."""
    out = [b""]  # where ``_encode`` writes the length of the one-item array
    _encode(out, iter((value,)), False)
    out[0] = b""
    return b"".join(out)


def encode_table(table: dict[str, Any] | None) -> bytes:
    """A field table, keys in their given order."""
    if not table:
        return _EMPTY
    out = [_EMPTY]
    _encode(out, iter(table.items()), True)
    return b"".join(out)


def _encode(out: list[bytes], items: Iterator[Any], table: bool) -> None:
    """Append the encoded fields of a table (``items`` its ``(key, value)`` pairs) or array
    (``items`` its values) to ``out``, and then overwrite ``out[-1]`` as it was on entry with
    their length.

    Nested tables and arrays are written with an explicit stack, not recursion: each gets a
    placeholder in ``out`` that is overwritten with its length when it ends, ``size`` counting
    the bytes written so far. The work is linear in the size of the output at any depth.
    """
    append = out.append
    pack_long, pack_int, pack_longlong = _L.pack, _I.pack, _Q.pack
    short = _SHORT
    # the enclosing containers: (items, table, placeholder index, size at its start, id)
    stack: list[tuple[Iterator[Any], bool, int, int, int]] = []
    open_ids: set[int] = set()  # of the enclosing containers past _UNCHECKED_DEPTH
    header = len(out) - 1
    size = mark = current = 0
    name = b""  # the current field's name with its length byte; none in an array
    piece: bytes | None  # a field as written, None for a table or array to go into
    while True:
        for value in items:
            if table:
                key, value = value
                raw = (key if isinstance(key, bytes) else key.encode("utf-8", "surrogateescape"))[
                    :255]
                name = short[len(raw)] + raw
            # The common exact types first, then the order of the recursive encoder this
            # replaced (``bool``, ``Long``, ``Timestamp``, ``int``, ``dict``, ``list``,
            # ``bytes``, then pamqp), which decides how a subclass of these is written.
            kind = type(value)
            if kind is str:
                raw = value.encode("utf-8", "surrogateescape")
                if len(raw) > 0xFFFFFFFF:
                    encode.encode_table_value(value)  # raises pamqp's TypeError
                piece = name + b"S" + pack_long(len(raw)) + raw
            elif value is None:
                piece = name + b"V"
            elif kind is int:
                if -2147483648 <= value <= 2147483647:
                    piece = name + b"I" + pack_int(value)
                else:
                    piece = name + b"l" + pack_longlong(value)
            elif kind is bool:
                piece = name + (b"t\x01" if value else b"t\x00")
            elif kind is dict:
                piece = None
                nested = True
            elif kind is list:
                piece = None
                nested = False
            elif isinstance(value, Long):
                piece = name + b"l" + pack_longlong(value)
            elif isinstance(value, Timestamp):
                piece = name + b"T" + _U64.pack(value)
            elif isinstance(value, Double):
                piece = name + b"d" + _D.pack(value)
            elif isinstance(value, int):
                if -2147483648 <= value <= 2147483647:
                    piece = name + b"I" + pack_int(value)
                else:
                    piece = name + b"l" + pack_longlong(value)
            elif isinstance(value, dict):
                piece = None
                nested = True
            elif isinstance(value, list):
                piece = None
                nested = False
            elif isinstance(value, bytes):
                piece = name + b"S" + pack_long(len(value)) + value
            else:
                piece = name + encode.encode_table_value(value)
            if piece is not None:
                append(piece)
                size += len(piece)
                continue
            # a nested table or array: its tag, and a placeholder for its length
            if nested:
                if not value:
                    piece = name + b"F" + _EMPTY
                    append(piece)
                    size += len(piece)
                    continue
                piece = name + b"F"
                inner = iter(value.items())
            else:
                piece = name + b"A"
                inner = iter(value)
                name = b""
            stack.append((items, table, header, mark, current))
            if len(stack) > _UNCHECKED_DEPTH:  # only a cycle goes on for ever
                current = id(value)
                if current in open_ids:
                    raise ValueError("cannot encode a field table or array that contains itself")
                open_ids.add(current)
            append(piece)
            append(_EMPTY)
            size += len(piece) + 4
            items, table, header, mark = inner, nested, len(out) - 1, size
            break
        else:  # the container ends
            out[header] = pack_long(size - mark)
            if not stack:
                return
            if current:
                open_ids.discard(current)
            items, table, header, mark, current = stack.pop()
            if not table:
                name = b""


class _Properties(commands.Basic.Properties):
    """pamqp's basic properties, with tables encoded by ``encode_table``."""

    def encode_property(self, name: str, value: Any) -> bytes:
        kind = self.amqp_type(name)
        if kind == "table":
            return encode_table(value)
        if isinstance(value, bytes) and kind == "shortstr":  # not UTF-8 when it arrived
            return bytes((len(value),)) + value
        if isinstance(value, Timestamp):
            return _U64.pack(value)
        return super().encode_property(name, value)


def content_header(body_size: int, properties: commands.Basic.Properties) -> bytes:
    """A basic content header payload for these properties."""
    rewritten = _Properties()
    for name in commands.Basic.Properties.__slots__:
        setattr(rewritten, name, getattr(properties, name))
    return _CONTENT_HEADER.pack(60, 0, body_size) + rewritten.marshal()
