"""Method frame codecs built on pamqp.

Decoding fills pamqp's classes with the values pamqp would give them, but with its own
field decoder, which reads RabbitMQ's way: a shortstr that is not UTF-8 is
``FRAME_ERROR - Malformed UTF-8 in shortstr`` (except in basic.publish, whose names are
bytes to RabbitMQ: they are decoded with "surrogateescape" and go out as they came), a field
that runs past the payload, or octets left after the last field, is ``cannot decode``
(quoting the arguments as numbers, as RabbitMQ's ~w does), and field tables are decoded by
``protocol.validate.decode_table``, without recursion, so any depth a frame can hold works.

Encoding bypasses pamqp's ``validate()``: its name checks reject names RabbitMQ accepts (any
UTF-8 up to 255 bytes, such as ``a*b`` or ``ünï``), so replies carrying such names are encoded
here with pamqp's own field encoders. Text is encoded with "surrogateescape", so a name
decoded that way is written back byte for byte.
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import base, commands, encode

from leveret.protocol import constants as c
from leveret.protocol.errors import CommandInvalid, FrameError, SyntaxError_
from leveret.protocol.framing import erlang_octets, method_frame, octets
from leveret.protocol.validate import decode_table

_METHOD_INDEX = struct.Struct(">I")
_FIXED = {"octet": struct.Struct(">B"), "short": struct.Struct(">H"),
          "long": struct.Struct(">I"), "longlong": struct.Struct(">q")}  # as pamqp

Method = base.Frame


def method_index(payload: bytes) -> int:
    """The 32-bit (class_id << 16 | method_id) index at the start of a method payload."""
    if len(payload) < 4:  # the frame reader refuses these already
        raise FrameError(f"type {c.FRAME_METHOD}, {octets(payload)}: unknown_frame")
    return _METHOD_INDEX.unpack_from(payload)[0]


class _MalformedUTF8(Exception):
    """A shortstr that is not UTF-8 (outside basic.publish)."""


# Per method class: its fields as (name, AMQP type), and how its shortstrs decode.
_LAYOUTS: dict[type[Method], tuple[tuple[tuple[str, str], ...], str]] = {}


def _layout(cls: type[Method]) -> tuple[tuple[tuple[str, str], ...], str]:
    layout = _LAYOUTS.get(cls)
    if layout is None:
        fields = tuple((name, cls.amqp_type(name)) for name in cls.__slots__)
        errors = "surrogateescape" if cls.index == c.BASIC_PUBLISH else "strict"
        layout = _LAYOUTS[cls] = (fields, errors)
    return layout


def _unmarshal(method: Method, payload: bytes) -> None:
    """Set ``method``'s fields from ``payload`` (index included), as pamqp's ``unmarshal``
    would, in one pass over offsets, checking in RabbitMQ's order: first that the fields fill
    the payload exactly (IndexError or struct.error), then that every shortstr is UTF-8
    (_MalformedUTF8), then the contents of the field tables (SyntaxError_)."""
    fields, text_errors = _layout(type(method))
    at = 4
    size = len(payload)
    bit = 8  # the next bit in the current bit octet; 8: none started
    malformed_utf8 = False
    tables: list[tuple[str, int]] = []  # (field, offset): decoded once the layout is known
    for name, kind in fields:
        if kind == "bit":
            if bit == 8:
                octet = payload[at]
                at += 1
                bit = 0
            setattr(method, name, bool(octet & (1 << bit)))
            bit += 1
            continue
        bit = 8
        if kind == "shortstr":
            start = at + 1
            at = start + payload[start - 1]
            if at > size:
                raise IndexError("shortstr runs past the end of the payload")
            try:
                value = payload[start:at].decode("utf-8", text_errors)
            except UnicodeDecodeError:
                malformed_utf8 = True
                continue
        elif kind == "table":
            tables.append((name, at))
            at += 4 + _METHOD_INDEX.unpack_from(payload, at)[0]
            if at > size:
                raise IndexError("table runs past the end of the payload")
            continue
        elif kind == "longstr":
            start = at + 4
            at = start + _METHOD_INDEX.unpack_from(payload, at)[0]
            if at > size:
                raise IndexError("longstr runs past the end of the payload")
            raw = payload[start:at]
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                value = raw  # as pamqp: a longstr is bytes unless it is UTF-8
        else:
            unpack = _FIXED[kind]
            value = unpack.unpack_from(payload, at)[0]
            at += unpack.size
        setattr(method, name, value)
    if at != size:  # RabbitMQ's decoder matches the whole payload
        raise IndexError("octets after the last argument")
    if malformed_utf8:
        raise _MalformedUTF8
    for name, offset in tables:
        setattr(method, name, decode_table(payload, offset)[0])


def decode_method(payload: bytes) -> Method:
    """Decode a method frame payload into a pamqp method object."""
    index = method_index(payload)
    cls = commands.INDEX_MAPPING.get(index)
    if cls is None:
        raise CommandInvalid(f"unknown method class {index >> 16} method {index & 0xFFFF}")
    method = cls.__new__(cls)
    try:
        _unmarshal(method, payload)
    except _MalformedUTF8:
        raise FrameError("Malformed UTF-8 in shortstr") from None
    except (struct.error, IndexError, SyntaxError_) as error:
        raise FrameError(
            f"cannot decode {erlang_octets(payload[4:])}",
            class_id=index >> 16,
            method_id=index & 0xFFFF,
        ) from error
    return method


def make(cls: type[Method], **fields: Any) -> Method:
    """Build a pamqp method without running its validation (see module docstring)."""
    method = cls.__new__(cls)
    for name in cls.__slots__:
        setattr(method, name, fields.get(name, _default(cls, name)))
    return method


def _default(cls: type[Method], name: str) -> Any:
    kind = cls.amqp_type(name)
    if kind == "bit":
        return False
    if kind in ("shortstr", "longstr"):
        return ""
    if kind == "table":
        return {}
    return 0


def encode_method(method: Method) -> bytes:
    """Encode a method's payload (index + arguments) exactly as pamqp would, minus validation."""
    parts = [_METHOD_INDEX.pack(method.index)]
    bits = -1
    offset = 0
    for name in method.__slots__:
        kind = method.amqp_type(name)
        value = getattr(method, name)
        if kind == "bit":
            if bits < 0 or offset == 8:
                if bits >= 0:
                    parts.append(bytes((bits,)))
                bits, offset = 0, 0
            if value:
                bits |= 1 << offset
            offset += 1
            continue
        if bits >= 0:
            parts.append(bytes((bits,)))
            bits = -1
        if kind == "shortstr":
            parts.append(shortstr(value))
        else:
            parts.append(encode.by_type(value, kind))
    if bits >= 0:
        parts.append(bytes((bits,)))
    return b"".join(parts)


def shortstr(value: str | bytes | None) -> bytes:
    """Encode a shortstr from text or raw bytes; longer than 255 bytes is a caller's bug."""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else (value or b"")
    if len(raw) > 255:
        raise ValueError("shortstr longer than 255 bytes")
    return bytes((len(raw),)) + raw


def frame(channel: int, method: Method) -> bytes:
    """A whole method frame for ``method`` on ``channel``."""
    return method_frame(channel, encode_method(method))


def ids(method: Method) -> tuple[int, int]:
    """(class_id, method_id) of a pamqp method."""
    return method.index >> 16, method.index & 0xFFFF
