"""An embedded broker for tests and tools: runs Leveret on its own thread and event loop.

    with EmbeddedBroker(port=0) as broker:          # or: async with EmbeddedBroker() as broker
        pika.BlockingConnection(pika.URLParameters(broker.url))

``start``, ``stop`` and ``restart`` may be repeated on one instance. Each start builds a fresh
:class:`~leveret.broker.server.Broker` from ``config``, listening on the port bound by the
first start (so URLs stay valid) with the same data directory (so durable state survives;
without one, the default, nothing is kept and a restart starts empty). The broker logs
through :mod:`logging` under ``leveret``; it adds no handlers, so the host process decides
where its lines go.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import quote

from leveret.broker.config import BrokerConfig
from leveret.broker.server import Broker

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # seconds; recovering a large data directory takes a while
SHUTDOWN_GRACE = 0.5  # seconds clients get to answer the broker's connection.close


class EmbeddedBroker:
    """A Leveret broker on a background thread; ``port=0`` picks a free port.

    ``settings`` are :class:`~leveret.broker.config.BrokerConfig` fields. ``url`` names the
    first configured user (``users``; else ``default_user``) and ``default_vhost``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **settings: Any) -> None:
        self.config = BrokerConfig(host=host, port=port, **settings)
        self.broker = Broker(self.config)
        self.user, self.password = _login(self.config)
        self.vhost = self.config.default_vhost
        self.starts = 0  # how many times it started
        self._bound: dict[str, int | None] = {}  # ports the first start bound, kept after
        self._used = False  # whether self.broker was started (successfully or not)
        self._grace = SHUTDOWN_GRACE
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- where it listens -----------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def url(self) -> str:
        """``amqp://user:password@host:port/vhost`` for the configured user and vhost."""
        return self.url_for()

    def url_for(self, vhost: str | None = None, user: str | None = None,
                password: str | None = None, scheme: str = "amqp") -> str:
        """A URL for another vhost or user; the parts are quoted (``/`` is ``%2F``)."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        vhost = self.vhost if vhost is None else vhost
        login = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
        return f"{scheme}://{login}@{_connect_host(self.config.host)}:{self.port}/" + quote(
            vhost, safe="")

    # -- life cycle -----------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> EmbeddedBroker:
        """Start listening (in a fresh Broker when this instance ran before)."""
        if self.running:
            raise RuntimeError("the embedded broker is running already")
        if self._used:  # a Broker starts once: build a fresh one from the config
            self.broker = Broker(dataclasses.replace(self.config, **self._bound))
        self._used = True
        ready = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(target=self._run, args=(self.broker, ready, failure),
                                  name=f"leveret-{id(self):x}", daemon=True)
        self._thread = thread
        thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"the embedded broker did not start within {timeout:.0f}s")
        if failure:
            thread.join(timeout)
            self._thread = self._loop = None
            raise RuntimeError("the embedded broker failed to start") from failure[0]
        if not self._bound:
            self._bound = {"port": self.broker.port}
            if self.broker.tls_port is not None:
                self._bound["tls_port"] = self.broker.tls_port
            if self.broker.metrics_port is not None:
                self._bound["metrics_port"] = self.broker.metrics_port
        self.starts += 1
        return self

    def _run(self, broker: Broker, ready: threading.Event,
             failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        try:
            try:
                loop.run_until_complete(broker.start())
            except BaseException as error:
                failure.append(error)
                _quietly(loop, broker.stop())  # release what it took (the data directory)
                return
            self._loop = loop
            ready.set()
            loop.run_forever()
            loop.run_until_complete(_shutdown(broker, self._grace))
        finally:
            _close_loop(loop)
            ready.set()

    def stop(self, timeout: float = 30.0, grace: float = SHUTDOWN_GRACE) -> None:
        """Close every client (320 CONNECTION_FORCED), flush the store, stop the thread.

        Clients get ``grace`` seconds to answer the close (one that is not reading, such
        as an idle pika BlockingConnection, never does) before their sockets are cut.
        """
        loop, thread = self._loop, self._thread
        if thread is None:
            return
        self._grace = grace
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the embedded broker did not stop within {timeout:.0f}s")
        self._loop = self._thread = None

    def restart(self, grace: float = SHUTDOWN_GRACE) -> EmbeddedBroker:
        """Stop and start again on the same port and data directory."""
        self.stop(grace=grace)
        return self.start()

    # -- running code on the broker's loop --------------------------------------------------
    def call(self, func: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run ``func(*args)`` on the broker's loop and return its result (awaited when it
        is awaitable). Broker state may only be read or changed this way."""
        loop = self._running_loop()
        return asyncio.run_coroutine_threadsafe(_call(func, *args), loop).result(timeout)

    async def acall(self, func: Callable[..., Any], *args: Any) -> Any:
        """``call`` for coroutines on another event loop: awaits instead of blocking."""
        loop = self._running_loop()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_call(func, *args),
                                                                          loop))

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or not self.running:
            raise RuntimeError("the embedded broker is not running")
        return loop

    # -- context managers -----------------------------------------------------------------
    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedBroker:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedBroker {state} on {self.config.host}:{self.port}>"


async def _call(func: Callable[..., Any], *args: Any) -> Any:
    result = func(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _shutdown(broker: Broker, grace: float) -> None:
    """``broker.stop()``, waiting at most ``grace`` seconds for clients' close-ok."""
    config = broker.config
    saved = config.close_timeout
    config.close_timeout = min(saved, grace)
    try:
        await broker.stop()
    finally:
        config.close_timeout = saved


def _login(config: BrokerConfig) -> tuple[str, str]:
    """The user and password ``url`` names: the first configured user, else the default."""
    if config.users:
        name, spec = next(iter(config.users.items()))
        password = spec if isinstance(spec, str) else (spec or {}).get("password")
        return name, password or ""
    return config.default_user, config.default_pass


def _connect_host(host: str) -> str:
    """The address a client on this machine connects to for a listener on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _quietly(loop: asyncio.AbstractEventLoop, coroutine: Any) -> None:
    try:
        loop.run_until_complete(coroutine)
    except Exception:
        log.exception("cleaning up after a failed start")


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on the loop (connection tasks), then close it."""
    try:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
