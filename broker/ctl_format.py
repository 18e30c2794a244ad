"""How ``leveret ctl`` shows what the management API answered: aligned tables of
rabbitmqctl's info items, key-value blocks, message bodies."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# An info item's value in an API object: a key, a dotted path, or a function of the object.
Item = str | Callable[[Mapping[str, Any]], Any]


def lookup(obj: Mapping[str, Any], item: Item) -> Any:
    """The value of ``item`` in ``obj``; None when the API did not send it."""
    if callable(item):
        return item(obj)
    value: Any = obj
    for key in item.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def cell(value: Any) -> str:
    """One value as rabbitmqctl shows it: true/false, [a, b] for lists of names, compact
    JSON for tables."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(value) + "]"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A header row and rows, in columns two spaces apart (the last one not padded)."""
    lines = [list(header), *([cell(v) for v in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in lines)


def pairs(values: Sequence[tuple[str, Any]]) -> str:
    """``key  value`` lines, the values aligned."""
    width = max((len(key) for key, _ in values), default=0)
    return "\n".join(f"{key.ljust(width)}  {cell(value)}".rstrip() for key, value in values)


def body(payload: str, encoding: str) -> str:
    """A message body for a terminal: text as it is (control characters escaped), binary as
    a Python bytes literal."""
    if encoding == "base64":
        return repr(base64.b64decode(payload))
    if all(ch.isprintable() or ch in "\n\t" for ch in payload):
        return payload
    return repr(payload)[1:-1]


def size(count: float) -> str:
    """Bytes in binary units: 512 B, 1.5 KiB, 3.2 GiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while count >= 1024 and power < len(units) - 1:
        count /= 1024
        power += 1
    return f"{count:.0f} B" if power == 0 else f"{count:.1f} {units[power]}"


def duration(seconds: float) -> str:
    """5d 3h 2m 1s, leaving out the leading zero units."""
    left = int(seconds)
    parts = []
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= length or parts:
            parts.append(f"{left // length}{unit}")
            left %= length
    return " ".join([*parts, f"{left}s"])
