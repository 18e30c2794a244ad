"""An embedded broker for tests and tools: runs Leveret on its own thread and event loop.

with EmbeddedBroker(port=0) as broker:
    pika.BlockingConnection(pika.URLParameters(broker.url))
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

from leveret.broker.config import BrokerConfig
from leveret.broker.server import Broker


class EmbeddedBroker:
    """A Leveret broker on a background thread; ``port=0`` picks a free port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **settings: object) -> None:
        self.config = BrokerConfig(host=host, port=port, **settings)  # type: ignore[arg-type]
        self.broker = Broker(self.config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.config.host}:{self.port}/%2F"

    def start(self) -> EmbeddedBroker:
        self._thread = threading.Thread(target=self._run, name="leveret", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise RuntimeError("embedded broker failed to start") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.broker.start())
        except BaseException as error:
            self._error = error
            self._started.set()
            return
        self._started.set()
        loop.run_forever()
        loop.run_until_complete(self.broker.stop())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def call(self, func, *args):  # type: ignore[no-untyped-def]
        """Run ``func(*args)`` on the broker's loop and return its result (for tests)."""
        assert self._loop is not None
        future: asyncio.Future = asyncio.run_coroutine_threadsafe(_call(func, *args), self._loop)
        return future.result(10)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _call(func, *args):  # type: ignore[no-untyped-def]
    return func(*args)
