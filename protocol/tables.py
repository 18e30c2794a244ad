"""Field tables and content headers as the broker writes them when it must rewrite one.

pamqp encodes an integer in the smallest type that fits (including unsigned types some
clients do not read) and sorts table keys. Here integers go out as RabbitMQ writes them —
signed 32-bit when they fit, else signed 64-bit, and ``Long`` always 64-bit (x-death
``count``, ``x-delivery-count``) — and key order is kept. What ``protocol.validate`` decodes
where pamqp cannot (``bytes`` field names and shortstrs that are not UTF-8, ``Timestamp``) goes
out as it came in. Everything else is pamqp's.
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import commands, encode

_I = struct.Struct(">i")
_Q = struct.Struct(">q")
_L = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_CONTENT_HEADER = struct.Struct(">HHQ")


class Long(int):
    """An integer that is always encoded as a signed 64-bit table value ('l')."""


class Timestamp(int):
    """A timestamp (seconds, or milliseconds past 2106 as pamqp reads them) that ``datetime``
    cannot hold; encoded as a timestamp ('T') again, unchanged."""


def encode_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"t" + (b"\x01" if value else b"\x00")
    if isinstance(value, Long):
        return b"l" + _Q.pack(value)
    if isinstance(value, Timestamp):
        return b"T" + _U64.pack(value)
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + _I.pack(value)
        return b"l" + _Q.pack(value)
    if isinstance(value, dict):
        return b"F" + encode_table(value)
    if isinstance(value, list):
        body = b"".join(encode_value(item) for item in value)
        return b"A" + _L.pack(len(body)) + body
    if isinstance(value, bytes):
        return b"S" + _L.pack(len(value)) + value
    return encode.encode_table_value(value)


def encode_table(table: dict[str, Any] | None) -> bytes:
    """A field table, keys in their given order."""
    if not table:
        return b"\x00\x00\x00\x00"
    parts = []
    for key, value in table.items():
        raw = (key if isinstance(key, bytes) else key.encode("utf-8"))[:255]
        parts += (bytes((len(raw),)), raw, encode_value(value))
    body = b"".join(parts)
    return _L.pack(len(body)) + body


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
