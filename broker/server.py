"""The broker process: listener, vhosts, the message store, resource alarms, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from array import array
from typing import TYPE_CHECKING

from leveret.broker import __version__, delayed, tls
from leveret.broker.administration import Administration
from leveret.broker.allocator import release_free_memory
from leveret.broker.auth import FailedLogins
from leveret.broker.config import BrokerConfig
from leveret.broker.connection import Connection
from leveret.broker.dispatcher import Dispatcher
from leveret.broker.message import stored_message
from leveret.broker.shovels import DynamicShovels
from leveret.broker.stats import Statistics
from leveret.broker.store import MessageStore
from leveret.broker.store.records import CorruptRecord
from leveret.broker.store.store import Recovered
from leveret.broker.vhost import VirtualHost
from leveret.protocol import constants as c
from leveret.protocol.framing import RECEIVE_BUFFER

if TYPE_CHECKING:
    from leveret.broker.management.server import HttpListener

log = logging.getLogger(__name__)

SHUTDOWN_TEXT = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
DISK_ALARM = "low on disk"
MEMORY_ALARM = "low on memory"


def _bound_port(server: asyncio.Server, asked: int) -> int:
    sockets = server.sockets or []
    return sockets[0].getsockname()[1] if sockets else asked


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def resident_memory() -> int | None:
    """This process's resident set size in bytes (Linux), or None where unknown."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _peers(connections: set[Connection], shown: int = 5) -> str:
    peers = sorted(connection.peer for connection in connections)
    more = f" and {len(peers) - shown} more" if len(peers) > shown else ""
    return ", ".join(peers[:shown]) + more


class Broker:
    """Owns the listening socket and the broker state; one per process (or per test)."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.dispatcher: Dispatcher = None  # type: ignore[assignment]  # set by start()
        self.connections: set[Connection] = set()
        self.vhosts: dict[str, VirtualHost] = {}
        self.shovels = DynamicShovels(self)  # shovels running inside the broker
        self.admin = Administration(self)  # users, permissions, vhosts at run time
        self.failed_logins = FailedLogins()
        self.statistics = Statistics(self)  # message counters and rates (broker/stats.py)
        # Every connection reads into this and copies out what it got (as uvloop does with a
        # buffer of its own), unless the read goes straight into a large body's place.
        self.receive_buffer = bytearray(RECEIVE_BUFFER)
        self.started_at = time.time()
        self.blocked_reason: str | None = None
        self.store: MessageStore | None = None
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self.tls_port: int | None = self.config.tls_port
        self._alarm_timer: asyncio.TimerHandle | None = None
        self.alarms: set[str] = set()
        self.port = self.config.port
        self.management: HttpListener | None = None  # the management API and dashboard
        self.metrics: HttpListener | None = None  # Prometheus metrics

    async def start(self) -> None:
        """Open the data directory, recover durable state, and start listening."""
        self.loop = asyncio.get_running_loop()
        config = self.config
        # Bind first, accept last: a busy port, a bad host name or an unusable certificate
        # fails before the data directory is created; clients wait until the state is
        # recovered.
        self._server = await self.loop.create_server(
            lambda: Connection(self), config.host, config.port, backlog=1024,
            start_serving=False,
        )
        if config.tls_port is not None:
            self._tls_server = await self.loop.create_server(
                lambda: Connection(self, tls=True), config.host, config.tls_port, backlog=1024,
                ssl=tls.server_context(config), ssl_handshake_timeout=config.handshake_timeout,
                start_serving=False,
            )
        self.dispatcher = Dispatcher(self.loop)
        if config.data_dir is not None:
            self.store = MessageStore(
                config.data_dir, self.loop, fsync=config.fsync,
                sync_interval=config.sync_interval, segment_limit=config.segment_limit,
                io=config.store_io, audit=config.store_audit,
            )
            recovered = self.store.open()
            self.admin.bootstrap(recovered.definitions)
            self._restore(recovered)
        else:
            self.admin.bootstrap(None)
        self.admin.load_configured_definitions()
        self._check_resources()
        self.statistics.start(self.loop)
        await self._start_http()
        await self._server.start_serving()
        self.shovels.start()  # once serving: a shovel may connect to this very broker
        self.port = _bound_port(self._server, config.port)
        log.info("Leveret %s listening on amqp://%s:%d (data dir: %s)", __version__,
                 _url_host(config.host), self.port, config.data_dir or "none, nothing is kept")
        if self._tls_server is not None:
            await self._tls_server.start_serving()
            self.tls_port = _bound_port(self._tls_server, config.tls_port)
            log.info("listening on amqps://%s:%d", _url_host(config.host), self.tls_port)

    async def _start_http(self) -> None:
        """The management API (and dashboard) and the metrics listeners, when configured."""
        config = self.config
        if config.management_port is not None:
            from leveret.broker.management.server import HttpListener, application

            self.management = HttpListener(application(self), "management API")
            await self.management.start(config.host, config.management_port)
        if config.metrics_port is not None:
            from leveret.broker.management import metrics
            from leveret.broker.management.server import HttpListener

            self.metrics = HttpListener(metrics.application(self), "Prometheus metrics")
            await self.metrics.start(config.host, config.metrics_port)

    @property
    def management_port(self) -> int | None:
        """Where the management API listens (None: it does not)."""
        return self.management.port if self.management is not None else None

    @property
    def metrics_port(self) -> int | None:
        """Where the Prometheus metrics are served (None: they are not)."""
        return self.metrics.port if self.metrics is not None else None

    def _restore(self, recovered: Recovered) -> None:
        saved = recovered.definitions.vhosts
        for name, vhost in self.vhosts.items():
            vhost.restore_definitions(saved.get(name, {}))
        store = self.store
        assert store is not None
        # Messages of a queue the definitions do not know are purged, unless the
        # definitions lost something: then the queue is recreated rather than emptied.
        trust_definitions = not recovered.definitions_problems
        for (vhost_name, queue_name), found in recovered.queues.items():
            key = (vhost_name, queue_name)
            vhost = self.vhosts.get(vhost_name)
            if vhost is not None and queue_name.startswith(delayed.STORE_PREFIX):
                self._restore_delayed(vhost, queue_name, found.ids)
                continue
            queue = vhost.queues.get(queue_name) if vhost else None
            if queue is None and vhost is not None and found.ids and not trust_definitions:
                log.warning("queue '%s' in vhost '%s' holds %d stored messages but its "
                            "definition was lost: recreated as a durable queue", queue_name,
                            vhost_name, len(found.ids))
                queue = vhost.restore_orphan(queue_name)
            if queue is None or not queue.persists:
                if found.ids:
                    log.warning("dropping %d stored messages of queue '%s' in vhost '%s', "
                                "which no longer exists", len(found.ids), queue_name,
                                vhost_name)
                store.purge(key, list(found.ids))
                continue
            queue.restore_stored(found.ids, found.delivered)
        if recovered.message_count:
            log.info("restored %d queued messages", recovered.message_count)

    def _restore_delayed(self, vhost: VirtualHost, key_name: str, ids: array[int]) -> None:
        """Messages a durable delayed-message exchange held: schedule them again."""
        store = self.store
        assert store is not None
        key = (vhost.name, key_name)
        exchange = vhost.exchanges.get(key_name[len(delayed.STORE_PREFIX) :])
        if exchange is None or not exchange.delayed:
            store.purge(key, list(ids))
            return
        held = []
        for msg_id in ids:
            try:
                found = store.read(msg_id)
            except (CorruptRecord, OSError) as error:
                log.error("lost a delayed message of exchange '%s': %s", exchange.name, error)
                store.remove(key, msg_id)
                continue
            message = stored_message(found.route_raw, found.header, found.body)
            held.append((found.published_ms + delayed.delay_of(message), message, msg_id))
        vhost.delayed.restore(exchange, held)
        log.info("rescheduled %d delayed messages of exchange '%s'", len(held), exchange.name)

    # -- resource alarms ------------------------------------------------------------------
    def _check_resources(self) -> None:
        """RabbitMQ's alarms: block publishers while disk or memory is short.

        It re-arms itself first, so an error here cannot switch the alarms off for good.
        """
        self._alarm_timer = self.loop.call_later(self.config.resource_check_interval,
                                                 self._check_resources)
        try:
            self._check_disk_and_memory()
        except Exception:
            log.exception("resource check failed; trying again in %.1fs",
                          self.config.resource_check_interval)

    def _check_disk_and_memory(self) -> None:
        config = self.config
        low_disk = False
        if config.data_dir is not None:
            try:
                free = shutil.disk_usage(config.data_dir).free
            except OSError:
                free = None
            store = self.store
            if store is not None and store.failed:
                store.retry()  # the writer tries its held writes again
            low_disk = (free is not None and free < config.disk_free_limit) or bool(
                store is not None and store.failed)
            self._set_alarm(DISK_ALARM, low_disk, f"{free} bytes free, limit "
                            f"{config.disk_free_limit}")
        limit = config.memory_high_watermark
        rss = resident_memory()
        if limit and rss is not None:
            if rss > limit:  # what the allocator keeps for reuse is not in use: give it back
                release_free_memory()
                rss = resident_memory() or rss
            self._set_alarm(MEMORY_ALARM, rss > limit,
                            f"resident memory {rss} bytes, limit {limit}")

    def _set_alarm(self, alarm: str, on: bool, detail: str) -> None:
        if on and alarm not in self.alarms:
            log.warning("%s alarm set (%s): blocking publishers", alarm, detail)
            self.alarms.add(alarm)
        elif not on and alarm in self.alarms:
            log.info("%s alarm cleared (%s)", alarm, detail)
            self.alarms.discard(alarm)
        else:
            return
        if self.alarms:
            self.block_publishers(sorted(self.alarms)[0])
        else:
            self.unblock_publishers()

    _hurried = False  # hurry() was called: stop() waits for no client

    def hurry(self) -> None:
        """Make stop() drop the clients it waits for at once (a second SIGINT/SIGTERM)."""
        self._hurried = True

    async def stop(self) -> None:
        """Stop accepting, close every client with 320 CONNECTION_FORCED, flush the store."""
        await self.shovels.stop()  # they settle what they hold while connections are up
        for server in (self._server, self._tls_server):
            if server is not None:
                server.close()
        if self._alarm_timer is not None:
            self._alarm_timer.cancel()
        self.statistics.stop()
        for listener in (self.management, self.metrics):
            if listener is not None:
                await listener.stop()
        for connection in list(self.connections):
            connection.close(c.CONNECTION_FORCED, SHUTDOWN_TEXT, 0, 0)
        deadline = self.loop.time() + self.config.close_timeout
        if self.connections:
            log.info("waiting up to %gs for %d client(s) to answer connection.close: %s",
                     self.config.close_timeout, len(self.connections), _peers(self.connections))
        while self.connections and not self._hurried and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.connections:
            log.warning("dropping %d client(s) that did not answer connection.close%s: %s",
                        len(self.connections), " (second signal)" if self._hurried else "",
                        _peers(self.connections))
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        for server in (self._server, self._tls_server):
            if server is not None:
                await server.wait_closed()
        for vhost in self.vhosts.values():
            vhost.delayed.cancel_all()
        if self.store is not None:
            self.store.close()
        log.info("Leveret stopped")

    def block_publishers(self, reason: str) -> None:
        """Raise an alarm: connection.blocked to every client (RabbitMQ's resource alarms)."""
        if self.blocked_reason is not None and self.blocked_reason != reason:
            self.unblock_publishers()
        self.blocked_reason = reason
        for connection in self.connections:
            connection.block(reason)

    def unblock_publishers(self) -> None:
        self.blocked_reason = None
        for connection in self.connections:
            connection.unblock()
