"""Durable definitions (exchanges, queues, bindings) in one JSON file, replaced atomically."""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import os
from pathlib import Path
from typing import Any


def _encode_value(value: Any) -> Any:
    """AMQP field values as JSON (bytes, timestamps and decimals tagged so they round-trip)."""
    if isinstance(value, dict):
        return {"t": {k: _encode_value(v) for k, v in value.items()}}
    if isinstance(value, list):
        return {"a": [_encode_value(v) for v in value]}
    if isinstance(value, bytes | bytearray):
        return {"b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime.datetime):
        return {"ts": value.timestamp()}
    if isinstance(value, decimal.Decimal):
        return {"d": str(value)}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if "t" in value:
            return {k: _decode_value(v) for k, v in value["t"].items()}
        if "a" in value:
            return [_decode_value(v) for v in value["a"]]
        if "b" in value:
            return base64.b64decode(value["b"])
        if "ts" in value:
            return datetime.datetime.fromtimestamp(value["ts"], datetime.UTC)
        if "d" in value:
            return decimal.Decimal(value["d"])
    return value


def encode_table(table: dict[str, Any]) -> dict[str, Any]:
    return {k: _encode_value(v) for k, v in table.items()}


def decode_table(table: dict[str, Any]) -> dict[str, Any]:
    return {k: _decode_value(v) for k, v in table.items()}


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON: to a temporary file, fsync, rename over, fsync the directory."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"vhosts": {}}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
