"""Dynamic shovels: shovels that run inside the broker, as RabbitMQ's shovel plugin runs them.

A dynamic shovel is a runtime parameter of component ``shovel`` (RabbitMQ's format:
``PUT /api/parameters/shovel/{vhost}/{name}`` with ``{"value": {"src-uri": ...}}``), declared
in the config file (``[shovels.NAME]``), a definitions file or the management API. It is
kept in the definitions log, so it survives a restart of this broker, and it reconnects with
back-off (1 s doubling to 30 s) when either side goes away, so it survives theirs.

Each attempt is one :class:`~leveret.broker.shovel.Shovel` run (the one-shot command's
mover: confirms at the destination before acks at the source, at least once). A run ends
when a side is lost or the destination refuses a message (a full queue with
``x-overflow=reject-publish``, say): the message goes back to the source queue and the
shovel waits before it tries again, so nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from leveret.broker.shovel import DEFAULT_PREFETCH, Shovel, ShovelError, redact

if TYPE_CHECKING:
    from leveret.broker.server import Broker

log = logging.getLogger(__name__)

COMPONENT = "shovel"
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
# RabbitMQ's value keys that Leveret honours; others are refused, not ignored.
KNOWN_KEYS = frozenset({
    "src-uri", "src-queue", "dest-uri", "dest-queue", "dest-exchange", "dest-exchange-key",
    "prefetch-count", "src-protocol", "dest-protocol", "ack-mode", "reconnect-delay",
    "add-forward-headers", "dest-add-forward-headers", "src-delete-after",
})


class ShovelDefinitionError(ValueError):
    """A shovel's value that cannot be run; the message says why."""


def _uri(value: Any, key: str) -> str:
    if isinstance(value, list):  # RabbitMQ allows a list of URIs; Leveret takes the first
        value = value[0] if value else None
    if not isinstance(value, str) or not value.startswith(("amqp://", "amqps://")):
        raise ShovelDefinitionError(f"{key}: expected an amqp:// or amqps:// URI")
    if value.split("://", 1)[1] in ("", "/"):
        raise ShovelDefinitionError(f"{key}: give the broker's address and credentials "
                                    "(Leveret has no internal connection)")
    return value


@dataclass(frozen=True)
class ShovelSpec:
    """What one dynamic shovel moves, from where to where."""

    vhost: str
    name: str
    src_uri: str
    src_queue: str
    dest_uri: str
    dest_queue: str | None = None
    dest_exchange: str | None = None
    dest_key: str | None = None
    prefetch: int = DEFAULT_PREFETCH
    reconnect_delay: float = FIRST_BACKOFF
    value: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_value(cls, vhost: str, name: str, value: dict[str, Any]) -> ShovelSpec:
        """Read RabbitMQ's shovel parameter value (``src-uri``, ``src-queue`` ...)."""
        if not isinstance(value, dict):
            raise ShovelDefinitionError("the value must be a JSON object")
        unknown = set(value) - KNOWN_KEYS
        if unknown:
            raise ShovelDefinitionError(f"unsupported keys {sorted(unknown)}")
        for key in ("src-protocol", "dest-protocol"):
            if value.get(key, "amqp091") != "amqp091":
                raise ShovelDefinitionError(f"{key}: only amqp091 is supported")
        if value.get("ack-mode", "on-confirm") != "on-confirm":
            raise ShovelDefinitionError("ack-mode: only on-confirm is supported (at least "
                                        "once)")
        if value.get("src-delete-after", "never") != "never":
            raise ShovelDefinitionError("src-delete-after: only never is supported "
                                        "(use `leveret shovel --drain` for a one-shot move)")
        src_queue = value.get("src-queue")
        if not isinstance(src_queue, str) or not src_queue:
            raise ShovelDefinitionError("src-queue: required (a queue name)")
        dest_queue = value.get("dest-queue")
        dest_exchange = value.get("dest-exchange")
        if (dest_queue is None) == (dest_exchange is None):
            raise ShovelDefinitionError("give exactly one of dest-queue and dest-exchange")
        for key in ("dest-queue", "dest-exchange", "dest-exchange-key"):
            if value.get(key) is not None and not isinstance(value[key], str):
                raise ShovelDefinitionError(f"{key}: expected a string")
        prefetch = value.get("prefetch-count", DEFAULT_PREFETCH)
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not (
                0 < prefetch <= 65535):
            raise ShovelDefinitionError("prefetch-count: expected an integer from 1 to 65535")
        delay = value.get("reconnect-delay", FIRST_BACKOFF)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise ShovelDefinitionError("reconnect-delay: expected seconds >= 0")
        return cls(vhost, name, _uri(value.get("src-uri"), "src-uri"), src_queue,
                   _uri(value.get("dest-uri"), "dest-uri"), dest_queue, dest_exchange,
                   value.get("dest-exchange-key"), prefetch, float(delay) or FIRST_BACKOFF,
                   dict(value))


class RunningShovel:
    """One dynamic shovel's task: run, and after a failure wait and run again."""

    def __init__(self, spec: ShovelSpec) -> None:
        self.spec = spec
        self.state = "starting"  # RabbitMQ's: starting, running, terminated
        self.reason: str | None = None  # why the last run ended, while waiting to retry
        self.moved = 0
        self.failed = 0
        self.since = time.time()
        self._current: Shovel | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop cleanly: the current run settles what it has in flight."""
        if self._task is None:
            return
        if self._current is not None:
            self._current.stop()
        try:
            async with asyncio.timeout(10):
                await asyncio.shield(self._task)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._task = None

    def _set(self, state: str, reason: str | None = None) -> None:
        self.state, self.reason, self.since = state, reason, time.time()

    async def _loop(self) -> None:
        spec = self.spec
        backoff = spec.reconnect_delay
        stopped = False
        while not stopped:
            shovel = self._current = Shovel(
                spec.src_uri, spec.src_queue, spec.dest_uri, dest_queue=spec.dest_queue,
                dest_exchange=spec.dest_exchange, dest_key=spec.dest_key,
                prefetch=spec.prefetch)
            self._set("starting")
            watch = asyncio.get_running_loop().create_task(self._mark_running(shovel))
            try:
                summary = await shovel.run()
                stopped = shovel.stopped_by_request
                reason = None if stopped else (
                    f"the destination refused {summary.failed} message(s); they are back "
                    "in the source queue")
            except ShovelError as error:
                reason = str(error)
            except Exception as error:  # a bug must not end the shovel for good
                log.exception("shovel '%s' in vhost '%s' failed", spec.name, spec.vhost)
                reason = f"{type(error).__name__}: {error}"
            finally:
                watch.cancel()
                self.moved += shovel.summary.moved
                self.failed += shovel.summary.failed
                self._current = None
            if stopped:
                break
            if self.state == "running":
                backoff = spec.reconnect_delay  # it worked for a while: start over
            self._set("terminated", reason)
            log.warning("shovel '%s' in vhost '%s' stopped: %s; retrying in %.1fs",
                        spec.name, spec.vhost, reason, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _mark_running(self, shovel: Shovel) -> None:
        while not shovel.consuming:
            await asyncio.sleep(0.05)
        self._set("running")
        log.info("shovel '%s' in vhost '%s' running: %s queue '%s' -> %s", self.spec.name,
                 self.spec.vhost, redact(self.spec.src_uri), self.spec.src_queue,
                 redact(self.spec.dest_uri))

    def status(self) -> dict[str, Any]:
        """RabbitMQ's ``GET /api/shovels`` entry, with Leveret's counts."""
        spec = self.spec
        out: dict[str, Any] = {
            "name": spec.name, "vhost": spec.vhost, "type": "dynamic", "node":
            "leveret@localhost", "state": self.state,
            "timestamp": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)),
            "src_uri": redact(spec.src_uri), "src_protocol": "amqp091",
            "src_queue": spec.src_queue, "dest_uri": redact(spec.dest_uri),
            "dest_protocol": "amqp091", "messages_moved": self.moved,
            "messages_failed": self.failed,
        }
        current = self._current
        if current is not None:  # the run in progress counts too
            out["messages_moved"] += current.summary.moved
            out["messages_failed"] += current.summary.failed
        if spec.dest_queue is not None:
            out["dest_queue"] = spec.dest_queue
        else:
            out["dest_exchange"] = spec.dest_exchange
            if spec.dest_key is not None:
                out["dest_exchange_key"] = spec.dest_key
        if self.reason:
            out["reason"] = self.reason
        return out


class DynamicShovels:
    """The broker's dynamic shovels, keyed by (vhost, name)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.running: dict[tuple[str, str], RunningShovel] = {}
        self._started = False

    def put(self, spec: ShovelSpec) -> None:
        """Add or replace a shovel; it runs once the broker serves."""
        key = (spec.vhost, spec.name)
        old = self.running.pop(key, None)
        if old is not None:
            asyncio.get_running_loop().create_task(old.stop())
        shovel = self.running[key] = RunningShovel(spec)
        if self._started:
            shovel.start()

    def delete(self, vhost: str, name: str) -> bool:
        old = self.running.pop((vhost, name), None)
        if old is not None:
            asyncio.get_running_loop().create_task(old.stop())
        return old is not None

    def forget_vhost(self, vhost: str) -> None:
        for key in [key for key in self.running if key[0] == vhost]:
            self.delete(*key)

    def start(self) -> None:
        """Start every shovel (the broker serves clients now)."""
        self._started = True
        for shovel in self.running.values():
            shovel.start()

    async def stop(self) -> None:
        self._started = False
        await asyncio.gather(*(shovel.stop() for shovel in self.running.values()))

    def status(self, vhost: str | None = None) -> list[dict[str, Any]]:
        return [shovel.status() for (v, _), shovel in sorted(self.running.items())
                if vhost is None or v == vhost]
