"""Small helpers shared by the messaging-model conformance tests (pika and py-amqp).

Every expectation in the tests that use these helpers was agreed with RabbitMQ 3.10.8.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol
from urllib.parse import urlparse

import amqp
import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

#: Seconds any single blocking socket operation may take before the test fails.
SOCKET_TIMEOUT = 5.0


def connect(url: str, **overrides: Any) -> pika.BlockingConnection:
    """Open a pika BlockingConnection with short, bounded timeouts."""
    params = pika.URLParameters(url)
    params.socket_timeout = SOCKET_TIMEOUT
    params.blocked_connection_timeout = SOCKET_TIMEOUT
    params.stack_timeout = SOCKET_TIMEOUT * 2
    params.connection_attempts = 1
    for key, value in overrides.items():
        setattr(params, key, value)
    return pika.BlockingConnection(params)


@contextlib.contextmanager
def pika_channel(url: str) -> Iterator[tuple[pika.BlockingConnection, BlockingChannel]]:
    """A connection and one channel on it, closed afterwards (whatever state they are in)."""
    conn = connect(url)
    try:
        yield conn, conn.channel()
    finally:
        if conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()


def amqp_connect(url: str) -> amqp.Connection:
    """Open a py-amqp connection (used where pika refuses to send what we need)."""
    parsed = urlparse(url)
    conn = amqp.Connection(
        f"{parsed.hostname}:{parsed.port or 5672}",
        userid=parsed.username or "guest",
        password=parsed.password or "guest",
        virtual_host="/",
        connect_timeout=SOCKET_TIMEOUT,
        read_timeout=SOCKET_TIMEOUT,
        write_timeout=SOCKET_TIMEOUT,
    )
    conn.connect()
    return conn


def amqp_drain(conn: amqp.Connection, seconds: float) -> None:
    """Dispatch incoming py-amqp frames for about ``seconds`` seconds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.05)
        except TimeoutError:
            continue


def amqp_drain_until(conn: amqp.Connection, predicate: Callable[[], bool], timeout: float) -> None:
    """Dispatch incoming py-amqp frames until ``predicate()`` holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.05)
        except TimeoutError:
            continue


def pump_until(
    conn: pika.BlockingConnection, predicate: Callable[[], bool], timeout: float = 3.0
) -> bool:
    """Run pika's I/O loop until ``predicate()`` holds; return whether it did."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        conn.process_data_events(time_limit=0.02)
    return True


def pump(conn: pika.BlockingConnection, seconds: float) -> None:
    """Run pika's I/O loop for ``seconds`` seconds (to see that nothing more arrives)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=min(0.05, max(0.0, deadline - time.monotonic())))


def drain_queue(ch: BlockingChannel, queue: str) -> list[tuple[bytes, bool]]:
    """basic.get (auto-ack) until get-empty; return ``(body, redelivered)`` pairs in order."""
    out: list[tuple[bytes, bool]] = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((body, bool(method.redelivered)))


def bodies(ch: BlockingChannel, queue: str) -> list[bytes]:
    """The bodies of every ready message in ``queue``, consumed, in queue order."""
    return [body for body, _ in drain_queue(ch, queue)]


def message_count(ch: BlockingChannel, queue: str) -> int:
    """Ready-message count from a passive queue.declare."""
    return int(ch.queue_declare(queue, passive=True).method.message_count)


def wait_for_count(ch: BlockingChannel, queue: str, expected: int, timeout: float = 3.0) -> int:
    """Poll a queue's ready count until it equals ``expected`` (or time runs out); return it."""
    deadline = time.monotonic() + timeout
    count = message_count(ch, queue)
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        count = message_count(ch, queue)
    return count


def queue_exists(url: str, queue: str) -> bool:
    """Whether a queue exists (checked with a passive declare on a throwaway channel)."""
    with pika_channel(url) as (_conn, ch):
        try:
            ch.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404, exc
            return False
        return True


def exchange_exists(url: str, exchange: str) -> bool:
    """Whether an exchange exists (checked with a passive declare on a throwaway channel)."""
    with pika_channel(url) as (_conn, ch):
        try:
            ch.exchange_declare(exchange, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404, exc
            return False
        return True


def wait_gone(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll ``check()`` (an "exists" probe) until it is False; return True once gone."""
    deadline = time.monotonic() + timeout
    while check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


class Broker(Protocol):
    """What tests need from the ``broker`` fixture (conftest's BrokerAddress)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def url(self) -> str: ...


MARKER = b"__end-of-batch__"


def drain_until_marker(ch: BlockingChannel, queue: str, timeout: float = 3.0) -> list[bytes]:
    """Publish a marker to ``queue`` via the default exchange and get everything before it.

    Anything routed to the queue on this channel before the marker is enqueued before it, so
    this collects exactly what earlier publishes routed there.
    """
    ch.basic_publish("", queue, MARKER)
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            assert time.monotonic() < deadline, f"marker never reached {queue!r}; got {out!r}"
            time.sleep(0.01)
            continue
        if body == MARKER:
            return out
        out.append(body)
