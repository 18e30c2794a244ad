"""Content headers checked once per shape, for traffic whose properties change every message.

Task messages (Celery's, kombu's) carry new ids in every content header, so no header repeats
and each would be walked field by field (``validate.check_content_header``). But the header's
*shape* repeats: the property flags, every length, every field name and type tag. Only the
contents of strings differ, and those do not change whether or how a header parses (strings
are bytes: RabbitMQ accepts any octets in them).

``HeaderChecker`` remembers, per header length, one well-formed header as an integer and a
mask of its shape's octets: everything but the body size, and the contents of its shortstr
properties and of the longstr and byte-array values at the top level of its headers table.
A header of that length whose octets agree with it under the mask has the same shape, so it
is well formed too: two big-integer operations instead of a walk. Any other header is
checked in full, and remembered if it is well formed.
"""

from __future__ import annotations

import struct

from leveret.protocol.validate import FIXED_SIZES, PROPERTIES, check_content_header

_L_unpack = struct.Struct(">L").unpack_from

_FIXED = {ord(tag): size for tag, size in FIXED_SIZES.items()}  # by tag byte
_STRINGS = (ord("S"), ord("x"))  # a long string or byte array: its contents are free

MEMO_LENGTHS = 4
"""Header lengths remembered per checker (all forgotten when one more comes)."""
MEMO_MAX = 2048
"""Longer headers are always checked in full (a checker holds at most 16 KB)."""
MEMO_BACKOFF_MAX = 64
"""At most this many headers are checked in full, without the memory, after a remembered
shape failed to repeat (the wait doubles with each such miss)."""


def string_spans(payload: bytes) -> list[tuple[int, int]]:
    """The (start, end) spans of a **well-formed** content header (checked before) whose
    octets are string contents: its shortstr properties and the longstr and byte-array
    values at the top level of its headers table."""
    spans = []
    flags = (payload[12] << 8) | payload[13]
    at = 14
    for flag, _name, kind in PROPERTIES:
        if not flags & flag:
            continue
        if kind == -1:  # a shortstr
            size = payload[at]
            if size:
                spans.append((at + 1, at + 1 + size))
            at += 1 + size
        elif kind == -2:  # the headers table
            end = at + 4 + _L_unpack(payload, at)[0]
            at += 4
            while at < end:
                at += 1 + payload[at]  # the field name: shape
                tag = payload[at]
                fixed = _FIXED.get(tag)
                if fixed is not None:
                    at += 1 + fixed
                else:  # S, x, F or A: a 4-byte length, then the value
                    size = _L_unpack(payload, at + 1)[0]
                    if tag in _STRINGS and size:
                        spans.append((at + 5, at + 5 + size))
                    at += 5 + size
        else:  # fixed size: delivery-mode, priority, timestamp
            at += kind
    return spans


def shape_mask(length: int, spans: list[tuple[int, int]]) -> int:
    """The mask, over a header of ``length`` octets read as a big-endian integer, of every
    octet outside ``spans``."""
    mask = (1 << (8 * length)) - 1
    for start, end in spans:
        mask ^= ((1 << (8 * (end - start))) - 1) << (8 * (length - end))
    return mask


class HeaderChecker:
    """``check_content_header`` with a memory of the shapes it found well formed."""

    __slots__ = ("_backoff", "_known", "_wait")

    def __init__(self) -> None:
        self._known: dict[int, tuple[int, int]] = {}  # length -> (a header, its shape mask)
        self._backoff = 0  # headers checked in full after a shape that did not repeat...
        self._wait = 0  # ...and how many of those are still to come

    def check(self, payload: bytes) -> None:
        """Raise ``SyntaxError_`` unless ``payload`` is a well-formed basic content header."""
        if self._wait:  # remembered shapes have not been repeating: check in full a while
            self._wait -= 1
            check_content_header(payload)
            return
        length = len(payload)
        known = self._known.get(length)
        if known is not None and not (int.from_bytes(payload, "big") ^ known[0]) & known[1]:
            self._backoff = 0
            return  # the shape of a header already checked
        check_content_header(payload)
        if known is not None:
            # A shape that did not repeat (a client whose headers table is a hash map sends
            # its fields in a new order every time): try the memory less and less often.
            self._backoff = self._wait = min(2 * self._backoff + 1, MEMO_BACKOFF_MAX)
        if length <= MEMO_MAX:
            if len(self._known) >= MEMO_LENGTHS and known is None:
                self._known.clear()
            # the body size (octets 4-12) is the caller's to check: free, like the strings
            spans = [(4, 12), *string_spans(payload)]
            self._known[length] = (int.from_bytes(payload, "big"), shape_mask(length, spans))
