"""Durable definitions (vhosts and their durable exchanges, queues and bindings; users and
permissions): a log of changes.

Each change is one record appended to ``definitions.<generation>.log`` (the message log's
framing: magic, length, CRC), so a durable declare costs O(1) however many definitions
exist. Now and then the whole state is written as a snapshot, ``definitions.<g+1>.json``
(a header line with its CRC and length, then JSON), and later changes go to the next log.
The previous generation's snapshot and log stay as the fallback: a snapshot that fails its
CRC is passed over for the one before it plus both logs, and a damaged log record costs
that change only. Every loss is reported.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import zlib
from pathlib import Path
from typing import Any

from leveret.broker.store import records
from leveret.protocol import tables, validate

log = logging.getLogger(__name__)

SNAPSHOT_MAGIC = "leveret-definitions"
_NAME = re.compile(r"definitions\.(\d+)\.(json|log)")
MIN_SNAPSHOT_CHANGES = 1000  # log records before a snapshot is considered


def encode_table(table: dict[str, Any]) -> str:
    """Declare arguments as kept in the log: the AMQP field table, base64 (any depth)."""
    return base64.b64encode(tables.encode_table(table)).decode("ascii")


def decode_table(text: str) -> dict[str, Any]:
    data = base64.b64decode(text)
    return validate.decode_table(data)[0] if data else {}  # type: ignore[return-value]


def binding_key(op: dict[str, Any]) -> str:
    return json.dumps([op["source"], op["destination"], op["destination_type"],
                       op["routing_key"], op["arguments"]], sort_keys=True)


def empty_vhost() -> dict[str, Any]:
    return {"exchanges": {}, "queues": {}, "bindings": {}}


def permission_key(user: str, vhost: str) -> str:
    return json.dumps([user, vhost])


def parameter_key(component: str, vhost: str, name: str) -> str:
    return json.dumps([component, vhost, name])


class DefinitionsState:
    """The durable definitions as plain data, changed by ops.

    ``vhosts[name]`` holds ``exchanges`` and ``queues`` (name -> attributes) and
    ``bindings`` (binding_key -> attributes); arguments are JSON-encoded tables.
    ``users`` (name -> RabbitMQ's user fields) and ``permissions`` (permission_key ->
    user, vhost and the three patterns) are kept once ``access`` is true: data directories
    written before users were stored have neither, and get the defaults on their next start.
    ``parameters`` (parameter_key -> component, vhost, name, value) are RabbitMQ's runtime
    parameters, e.g. dynamic shovels.
    """

    def __init__(self, vhosts: dict[str, Any] | None = None,
                 users: dict[str, Any] | None = None,
                 permissions: dict[str, Any] | None = None, access: bool = False,
                 parameters: dict[str, Any] | None = None) -> None:
        self.vhosts: dict[str, dict[str, Any]] = vhosts or {}
        self.users: dict[str, dict[str, Any]] = users or {}
        self.permissions: dict[str, dict[str, Any]] = permissions or {}
        self.access = access  # users, vhosts and permissions are recorded here
        self.parameters: dict[str, dict[str, Any]] = parameters or {}

    def __len__(self) -> int:
        return len(self.users) + len(self.permissions) + len(self.parameters) + sum(
            1 + len(v["exchanges"]) + len(v["queues"]) + len(v["bindings"])
            for v in self.vhosts.values())

    def apply(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind in _ACCESS_OPS:
            self._apply_access(kind, op)
            return
        if kind == "parameter.put":
            self.parameters[parameter_key(op["component"], op["vhost"], op["name"])] = {
                k: op[k] for k in ("component", "vhost", "name", "value")}
            return
        if kind == "parameter.delete":
            self.parameters.pop(parameter_key(op["component"], op["vhost"], op["name"]), None)
            return
        vhost = self.vhosts.setdefault(op["vhost"], empty_vhost())
        if kind == "exchange.declare":
            vhost["exchanges"][op["name"]] = {k: op[k] for k in (
                "type", "auto_delete", "internal", "arguments")}
        elif kind == "exchange.delete":
            vhost["exchanges"].pop(op["name"], None)
        elif kind == "queue.declare":
            vhost["queues"][op["name"]] = {k: op[k] for k in ("auto_delete", "arguments")}
        elif kind == "queue.delete":
            vhost["queues"].pop(op["name"], None)
        elif kind == "bind":
            vhost["bindings"][binding_key(op)] = {k: op[k] for k in (
                "source", "destination", "destination_type", "routing_key", "arguments")}
        elif kind == "unbind":
            vhost["bindings"].pop(binding_key(op), None)
        elif kind == "vhost.put":
            pass  # setdefault above created it
        elif kind == "vhost.limits":
            vhost["limits"] = op["limits"]
        else:
            raise ValueError(f"unknown definitions change {kind!r}")

    def _apply_access(self, kind: str, op: dict[str, Any]) -> None:
        self.access = True
        if kind == "access.init":
            return
        if kind == "vhost.delete":
            self.vhosts.pop(op["vhost"], None)
            for key in [k for k, p in self.permissions.items() if p["vhost"] == op["vhost"]]:
                del self.permissions[key]
            for key in [k for k, p in self.parameters.items() if p["vhost"] == op["vhost"]]:
                del self.parameters[key]
        elif kind == "user.put":
            self.users[op["name"]] = {k: op[k] for k in (
                "name", "password_hash", "hashing_algorithm", "tags")}
        elif kind == "user.delete":
            self.users.pop(op["name"], None)
            for key in [k for k, p in self.permissions.items() if p["user"] == op["name"]]:
                del self.permissions[key]
        elif kind == "permission.put":
            self.permissions[permission_key(op["user"], op["vhost"])] = {k: op[k] for k in (
                "user", "vhost", "configure", "write", "read")}
        elif kind == "permission.delete":
            self.permissions.pop(permission_key(op["user"], op["vhost"]), None)

    def to_json(self) -> dict[str, Any]:
        return {"vhosts": self.vhosts, "users": self.users, "permissions": self.permissions,
                "access": self.access, "parameters": self.parameters}


# Changes that are not about one vhost's exchanges, queues and bindings.
_ACCESS_OPS = frozenset({"access.init", "vhost.delete", "user.put", "user.delete",
                         "permission.put", "permission.delete"})


def encode_snapshot(generation: int, state: DefinitionsState) -> bytes:
    body = json.dumps(state.to_json(), sort_keys=True, separators=(",", ":")).encode()
    head = f"{SNAPSHOT_MAGIC} {generation} {zlib.crc32(body):08x} {len(body)}\n".encode()
    return head + body


def decode_snapshot(data: bytes, generation: int) -> DefinitionsState:
    """The state in a snapshot file; ValueError if it is damaged."""
    head, _, body = data.partition(b"\n")
    parts = head.decode("ascii", "replace").split(" ")
    if len(parts) != 4 or parts[0] != SNAPSHOT_MAGIC or parts[1] != str(generation):
        raise ValueError("bad snapshot header")
    if int(parts[3]) != len(body) or f"{zlib.crc32(body):08x}" != parts[2]:
        raise ValueError("snapshot failed its checksum")
    data = json.loads(body)
    return DefinitionsState(data["vhosts"], data.get("users"), data.get("permissions"),
                            bool(data.get("access")), data.get("parameters"))


def encode_change(op: dict[str, Any]) -> bytes:
    return records.frame(json.dumps(op, sort_keys=True, separators=(",", ":")).encode())


def snapshot_path(directory: Path, generation: int) -> Path:
    return directory / f"definitions.{generation}.json"


def log_path(directory: Path, generation: int) -> Path:
    return directory / f"definitions.{generation}.log"


def generations(directory: Path) -> list[int]:
    found = set()
    for path in directory.glob("definitions.*"):
        match = _NAME.fullmatch(path.name)
        if match:
            found.add(int(match.group(1)))
    return sorted(found)


class Loaded:
    """What ``load`` found: the state, the generation to continue, and what was lost."""

    def __init__(self, state: DefinitionsState, generation: int, log_size: int,
                 changes: int, problems: list[str]) -> None:
        self.state = state
        self.generation = generation
        self.log_size = log_size  # bytes of the current log that are valid
        self.changes = changes  # records in the current log
        self.problems = problems


def load(directory: Path) -> Loaded:
    """Read the newest good snapshot and the logs after it."""
    problems: list[str] = []
    gens = generations(directory)
    state = DefinitionsState()
    base = None
    for generation in reversed(gens):
        path = snapshot_path(directory, generation)
        if not path.exists():
            continue
        try:
            state = decode_snapshot(path.read_bytes(), generation)
        except (ValueError, KeyError, json.JSONDecodeError) as error:
            problems.append(f"{path.name} is damaged ({error}); using an older copy")
            continue
        base = generation
        break
    if base is None and any(snapshot_path(directory, g).exists() for g in gens):
        problems.append("no intact definitions snapshot: replaying the logs alone")
    start = base if base is not None else (gens[0] if gens else 0)
    current = max(gens) if gens else 0
    log_size = 0
    changes = 0
    for generation in [g for g in gens if g >= start]:
        path = log_path(directory, generation)
        if not path.exists():
            continue
        data = path.read_bytes()
        changes = 0
        valid_end = 0
        for offset, body, end in records.scan(data):
            if body is None:
                if end == len(data) and generation == current:
                    problems.append(f"cut off a torn tail of {end - offset} bytes in {path.name}")
                    break
                problems.append(f"lost a damaged change at {path.name}:{offset}")
                valid_end = end
                continue
            try:
                state.apply(json.loads(body))
            except (ValueError, KeyError, TypeError) as error:
                problems.append(f"lost an unreadable change at {path.name}:{offset}: {error}")
            changes += 1
            valid_end = end
        if generation == current:
            log_size = valid_end
    for problem in problems:
        log.warning("definitions: %s", problem)
    return Loaded(state, current, log_size, changes, problems)
