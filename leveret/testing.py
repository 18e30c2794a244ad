"""Test helpers: a vhost of its own on an embedded broker, and a look inside it.

The pytest plugin (``leveret.pytest_plugin``) hands each test a :class:`Sandbox`; without
pytest::

    with EmbeddedBroker() as embedded:
        sandbox = Sandbox.create(embedded)
        ...                          # connect to sandbox.url
        assert sandbox.queue("jobs").messages == 1
        sandbox.delete()

Everything here runs on the broker's event loop through ``EmbeddedBroker.call``.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leveret.broker.embedded import EmbeddedBroker
    from leveret.broker.queue import Queue
    from leveret.broker.server import Broker

FULL_ACCESS = (".*", ".*", ".*")
FORCED_TEXT = "CONNECTION_FORCED - closed by the test"


@dataclass(frozen=True)
class QueueStats:
    """A queue's counts, as ``rabbitmqctl list_queues`` names them."""

    name: str
    messages_ready: int
    messages_unacknowledged: int
    consumers: int
    durable: bool
    exclusive: bool
    auto_delete: bool
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def messages(self) -> int:
        """Ready plus unacknowledged (RabbitMQ's ``messages``)."""
        return self.messages_ready + self.messages_unacknowledged


@dataclass(frozen=True)
class PeekedMessage:
    """A ready message, seen without taking it off its queue."""

    body: bytes
    exchange: str
    routing_key: str
    properties: Any  # pamqp's Basic.Properties
    redelivered: bool

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})


class Sandbox:
    """A vhost of its own on an embedded broker, with permissions for the broker's user.

    ``url`` connects to it. ``delete()`` removes the vhost with its queues and closes its
    connections; the broker keeps running.
    """

    def __init__(self, embedded: EmbeddedBroker, vhost: str) -> None:
        self.embedded = embedded
        self.vhost = vhost
        self._blocked = False

    @classmethod
    def create(cls, embedded: EmbeddedBroker, vhost: str | None = None,
               label: str = "test") -> Sandbox:
        """A new vhost (``<label>-<random>`` unless named) where the broker's user
        (``embedded.user``) may configure, write and read everything."""
        sandbox = cls(embedded, vhost or new_vhost_name(label))
        sandbox._provision()
        return sandbox

    def _provision(self) -> None:
        name, user = self.vhost, self.embedded.user

        def provision(broker: Broker) -> None:
            broker.admin.add_vhost(name)
            broker.admin.set_permissions(user, name, *FULL_ACCESS)

        self._on_broker(provision)

    @property
    def url(self) -> str:
        """``amqp://user:password@host:port/<vhost>``."""
        return self.embedded.url_for(vhost=self.vhost)

    def url_for(self, scheme: str = "amqp") -> str:
        """The URL with another scheme (``pyamqp`` for Celery's py-amqp transport)."""
        return self.embedded.url_for(vhost=self.vhost, scheme=scheme)

    def delete(self) -> None:
        """Delete the vhost (its connections are closed with 320, its queues removed)."""
        if self._blocked:
            self.unblock_publishers()
        if self.embedded.running:
            self._on_broker(lambda broker: broker.admin.delete_vhost(self.vhost))

    # -- looking inside -------------------------------------------------------------------
    def queues(self) -> dict[str, QueueStats]:
        """Every queue of the vhost by name (server-named and exclusive ones too)."""
        return self._on_broker(lambda broker: {
            name: _stats(queue) for name, queue in self._vhost(broker).queues.items()})

    def queue(self, name: str) -> QueueStats:
        """One queue's counts; ``LookupError`` when the vhost has no such queue."""
        found = self.queues()
        if name not in found:
            raise LookupError(f"no queue '{name}' in vhost '{self.vhost}' "
                              f"(it has {sorted(found) or 'none'})")
        return found[name]

    def exchanges(self) -> list[str]:
        """The names of the vhost's exchanges (the predeclared ones included)."""
        return self._on_broker(lambda broker: sorted(self._vhost(broker).exchanges))

    def peek(self, queue: str, count: int = 1) -> list[PeekedMessage]:
        """The first ``count`` ready messages of ``queue``, in delivery order, left in place
        (unacknowledged deliveries are not ready, so they are not among them)."""

        def peek(broker: Broker) -> list[PeekedMessage]:
            found = self._vhost(broker).queues.get(queue)
            if found is None:
                raise LookupError(f"no queue '{queue}' in vhost '{self.vhost}'")
            return [_peeked(found, item) for item in found.ready.peek(count)]

        return self._on_broker(peek)

    def connection_count(self) -> int:
        """Client connections open on the vhost."""
        return self._on_broker(lambda broker: len(self._connections(broker)))

    # -- making things happen -------------------------------------------------------------
    def restart(self) -> None:
        """Restart the broker, same port. With a data directory durable exchanges, queues
        and persistent messages come back; without one (in memory) everything is lost, and
        the vhost and its permissions are created again so ``url`` stays valid."""
        self._blocked = False
        self.embedded.restart()
        if not self._on_broker(lambda broker: self.vhost in broker.vhosts):
            self._provision()

    def block_publishers(self, reason: str = "low on memory") -> None:
        """Send ``connection.blocked`` to every client, as a RabbitMQ resource alarm does,
        and hold their publishes until :meth:`unblock_publishers`."""
        self._blocked = True
        self._on_broker(lambda broker: broker.block_publishers(reason))

    def unblock_publishers(self) -> None:
        self._blocked = False
        self._on_broker(lambda broker: broker.unblock_publishers())

    @contextlib.contextmanager
    def publishers_blocked(self, reason: str = "low on memory") -> Iterator[None]:
        """``with sandbox.publishers_blocked(): ...``: blocked inside, unblocked after."""
        self.block_publishers(reason)
        try:
            yield
        finally:
            self.unblock_publishers()

    def drop_connections(self) -> int:
        """Cut the vhost's client connections without a word, as a network failure does;
        returns how many were cut."""

        def drop(broker: Broker) -> int:
            connections = self._connections(broker)
            for connection in connections:
                connection.transport.abort()
            return len(connections)

        return self._on_broker(drop)

    def close_connections(self, text: str = FORCED_TEXT) -> int:
        """Close the vhost's client connections with ``320 CONNECTION_FORCED``, as
        ``rabbitmqctl close_connection`` does; returns how many were closed."""
        from leveret.protocol import constants

        def close(broker: Broker) -> int:
            connections = self._connections(broker)
            for connection in connections:
                connection.close(constants.CONNECTION_FORCED, text, 0, 0)
            return len(connections)

        return self._on_broker(close)

    # -- plumbing -------------------------------------------------------------------------
    def _on_broker(self, func: Any) -> Any:
        embedded = self.embedded
        return embedded.call(lambda: func(embedded.broker))

    def _vhost(self, broker: Broker) -> Any:
        vhost = broker.vhosts.get(self.vhost)
        if vhost is None:
            raise LookupError(f"vhost '{self.vhost}' does not exist (any more)")
        return vhost

    def _connections(self, broker: Broker) -> list[Any]:
        vhost = broker.vhosts.get(self.vhost)
        return [conn for conn in broker.connections
                if vhost is not None and conn.vhost is vhost and conn.transport is not None]

    def __repr__(self) -> str:
        return f"<Sandbox vhost {self.vhost!r} on {self.embedded!r}>"


def new_vhost_name(label: str = "test") -> str:
    """``<label>-<10 hex digits>``, the label cut to letters, digits, ``-``, ``_``, ``.``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")[:48] or "test"
    return f"{slug}-{uuid.uuid4().hex[:10]}"


def _stats(queue: Queue) -> QueueStats:
    return QueueStats(
        name=queue.name, messages_ready=len(queue.ready),
        messages_unacknowledged=queue.unacked, consumers=len(queue.consumers),
        durable=queue.durable, exclusive=queue.exclusive_owner is not None,
        auto_delete=queue.auto_delete, arguments=dict(queue.arguments))


def _peeked(queue: Queue, item: Any) -> PeekedMessage:
    from leveret.broker.message import copy_properties, stored_message

    if isinstance(item, int):  # a message that lives on disk only
        store = queue.vhost.store
        found = store.read(item)
        message, redelivered = stored_message(found.route_raw, found.header, found.body), False
    else:
        message, redelivered = item.message, item.redelivered
    return PeekedMessage(body=bytes(message.body), exchange=message.exchange,
                         routing_key=message.routing_key,
                         properties=copy_properties(message.properties),
                         redelivered=redelivered)
