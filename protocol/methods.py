"""Method frame codecs built on pamqp.

Decoding uses pamqp's classes as they are. Encoding bypasses pamqp's ``validate()``: its
name checks reject names RabbitMQ accepts (any UTF-8 up to 255 bytes, such as ``a*b`` or
``ünï``), so replies carrying such names are encoded here with pamqp's own field encoders.
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import base, commands, encode

from protocol.errors import CommandInvalid, FrameError
from protocol.framing import erlang_binary, method_frame

_METHOD_INDEX = struct.Struct(">I")

Method = base.Frame


def method_index(payload: bytes) -> int:
    """The 32-bit (class_id << 16 | method_id) index at the start of a method payload."""
    if len(payload) < 4:
        raise FrameError("method frame too short")
    return _METHOD_INDEX.unpack_from(payload)[0]


def decode_method(payload: bytes) -> Method:
    """Decode a method frame payload into a pamqp method object."""
    index = method_index(payload)
    cls = commands.INDEX_MAPPING.get(index)
    if cls is None:
        raise CommandInvalid(f"unknown method class {index >> 16} method {index & 0xFFFF}")
    method = cls.__new__(cls)
    try:
        method.unmarshal(payload[4:])
    except (struct.error, ValueError, TypeError, IndexError) as error:
        raise FrameError(
            f"cannot decode {erlang_binary(payload[4:])}",
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
    raw = value.encode("utf-8") if isinstance(value, str) else (value or b"")
    if len(raw) > 255:
        raise ValueError("shortstr longer than 255 bytes")
    return bytes((len(raw),)) + raw


def frame(channel: int, method: Method) -> bytes:
    """A whole method frame for ``method`` on ``channel``."""
    return method_frame(channel, encode_method(method))


def ids(method: Method) -> tuple[int, int]:
    """(class_id, method_id) of a pamqp method."""
    return method.index >> 16, method.index & 0xFFFF
