"""The broker process: listener, vhosts, connections, and a clean shutdown."""

from __future__ import annotations

import asyncio
import logging

from broker import __version__
from broker.config import BrokerConfig
from broker.connection import Connection
from broker.dispatcher import Dispatcher
from broker.vhost import VirtualHost
from protocol import constants as c

log = logging.getLogger(__name__)

SHUTDOWN_TEXT = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"


class Broker:
    """Owns the listening socket and the broker state; one per process (or per test)."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.connections: set[Connection] = set()
        self.vhosts: dict[str, VirtualHost] = {}
        self.blocked_reason: str | None = None
        self._server: asyncio.Server | None = None
        self.port = self.config.port

    async def start(self) -> None:
        """Create the vhosts and start listening."""
        self.loop = asyncio.get_running_loop()
        dispatcher = Dispatcher(self.loop)
        for name in self.config.vhosts:
            self.vhosts[name] = VirtualHost(name, dispatcher, self.config.consumer_timeout)
        self._server = await self.loop.create_server(
            lambda: Connection(self),
            self.config.host,
            self.config.port,
            backlog=1024,
        )
        sockets = self._server.sockets or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("Leveret %s listening on amqp://%s:%d", __version__, self.config.host, self.port)

    async def stop(self) -> None:
        """Stop accepting, close every client with 320 CONNECTION_FORCED, and wait briefly."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close(c.CONNECTION_FORCED, SHUTDOWN_TEXT, 0, 0)
        deadline = self.loop.time() + self.config.close_timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
        log.info("Leveret stopped")

    def block_publishers(self, reason: str) -> None:
        """Raise an alarm: connection.blocked to every client (RabbitMQ's resource alarms)."""
        self.blocked_reason = reason
        for connection in self.connections:
            connection.block(reason)

    def unblock_publishers(self) -> None:
        self.blocked_reason = None
        for connection in self.connections:
            connection.unblock()


__all__ = ["Broker", "BrokerConfig"]
