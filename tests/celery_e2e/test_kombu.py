"""kombu alone on Leveret: Producer/Consumer, SimpleQueue, ConsumerMixin, and Connection.ensure
and ensure_connection across a broker restart."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.mixins import ConsumerMixin

from .conftest import Leveret, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.leveret_only, pytest.mark.timeout(60)]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def drain(connection: Connection, received: list[Any], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(received) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"received {len(received)} of {count} messages")
        try:
            connection.drain_events(timeout=min(remaining, 1))
        except TimeoutError:
            continue


@pytest.mark.parametrize("scheme", ["pyamqp", "amqp"])
def test_producer_consumer(leveret: Leveret, scheme: str) -> None:
    exchange = Exchange(unique("kx"), type="direct", durable=False)
    queue = Queue(unique("kq"), exchange, routing_key="work", durable=False, auto_delete=True)
    with Connection(leveret.url(scheme), connect_timeout=5) as connection:
        producer = Producer(connection.channel(), exchange=exchange, serializer="json")
        for i in range(10):
            producer.publish({"n": i}, routing_key="work", declare=[queue],
                             headers={"x-index": i}, correlation_id=f"c{i}",
                             reply_to="nowhere", priority=3)
        received: list[Any] = []

        def on_message(body: Any, message: Any) -> None:
            received.append((body, message))
            message.ack()

        with Consumer(connection.channel(), [queue], callbacks=[on_message], accept=["json"]):
            drain(connection, received, 10, 10)
    assert [body["n"] for body, _ in received] == list(range(10))
    _, message = received[3]
    assert message.headers == {"x-index": 3}
    assert message.properties["correlation_id"] == "c3"
    assert message.properties["reply_to"] == "nowhere"
    assert message.properties["priority"] == 3
    assert message.content_type == "application/json"
    assert message.delivery_info["routing_key"] == "work"
    assert message.delivery_info["exchange"] == exchange.name


def test_simple_queue(leveret: Leveret) -> None:
    name = unique("simple")
    with Connection(leveret.url(), connect_timeout=5) as connection:
        simple = connection.SimpleQueue(name)
        try:
            for i in range(5):
                simple.put({"i": i})
            wait_until(lambda: simple.qsize() == 5, 5, lambda: f"qsize {simple.qsize()}")
            bodies = []
            for _ in range(5):
                message = simple.get(block=True, timeout=5)
                bodies.append(message.payload["i"])
                message.ack()
            assert bodies == list(range(5))
            with pytest.raises(simple.Empty):
                simple.get(block=True, timeout=0.5)
            assert simple.qsize() == 0
        finally:
            simple.close()


class Collector(ConsumerMixin):
    def __init__(self, connection: Connection, queue: Queue) -> None:
        self.connection = connection
        self.queue = queue
        self.bodies: list[Any] = []
        self.consuming = threading.Event()

    def get_consumers(self, consumer_cls: Any, channel: Any) -> list[Any]:
        return [consumer_cls(queues=[self.queue], callbacks=[self.on_message],
                             accept=["json"])]

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any,
                         **kwargs: Any) -> None:
        self.consuming.set()

    def on_message(self, body: Any, message: Any) -> None:
        self.bodies.append(body)
        message.ack()


def test_consumer_mixin(leveret: Leveret) -> None:
    queue = Queue(unique("mixin"), Exchange(unique("mx"), type="fanout", durable=False),
                  durable=False, auto_delete=True)
    with Connection(leveret.url(), connect_timeout=5) as consumer_connection:
        collector = Collector(consumer_connection, queue)
        thread = threading.Thread(target=collector.run, kwargs={"_tokens": 1}, daemon=True)
        thread.start()
        try:
            assert collector.consuming.wait(10), "ConsumerMixin never started consuming"
            with Connection(leveret.url(), connect_timeout=5) as connection:
                producer = connection.Producer(serializer="json")
                for i in range(20):
                    producer.publish({"i": i}, exchange=queue.exchange, routing_key="")
            wait_until(lambda: len(collector.bodies) == 20, 10,
                       lambda: f"{len(collector.bodies)} of 20 messages")
            assert [body["i"] for body in collector.bodies] == list(range(20))
        finally:
            collector.should_stop = True
            thread.join(10)
        assert not thread.is_alive(), "ConsumerMixin did not stop"


def _restart_later(leveret: Leveret, down_for: float) -> threading.Thread:
    """Stop Leveret now; start it again on the same port after ``down_for`` seconds."""
    assert leveret.stop() == 0, leveret.log()

    def start() -> None:
        time.sleep(down_for)
        leveret.start()

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    return thread


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def test_ensure_connection_across_restart(leveret: Leveret) -> None:
    with Connection(leveret.url(), connect_timeout=2) as connection:
        connection.ensure_connection(max_retries=3)
        assert connection.connected
        restarter = _restart_later(leveret, 1.5)
        assert not _port_open(leveret.port)
        # The broker closed the connection with 320 CONNECTION_FORCED on its way down.
        with pytest.raises(connection.recoverable_connection_errors) as closed:
            connection.drain_events(timeout=2)
        assert "CONNECTION_FORCED" in str(closed.value)
        errors: list[Exception] = []
        connection.ensure_connection(
            errback=lambda error, interval: errors.append(error), max_retries=40,
            interval_start=0.1, interval_step=0.1, interval_max=0.5, timeout=20)
        restarter.join(15)
        assert connection.connected
        connection.default_channel.queue_declare(unique("alive"), auto_delete=True)
    assert errors, "ensure_connection never had to retry: was the broker down?"

    # A new Connection waits for a broker that is not there yet, too.
    restarter = _restart_later(leveret, 1.5)
    with Connection(leveret.url(), connect_timeout=2) as fresh:
        fresh.ensure_connection(max_retries=40, interval_start=0.1, interval_step=0.1,
                                interval_max=0.5, timeout=20)
        restarter.join(15)
        fresh.default_channel.queue_declare(unique("fresh"), auto_delete=True)


def test_connection_ensure_publish_across_restart(leveret: Leveret) -> None:
    # Transient: whatever the broker had goes with it, so only what ensure() published after
    # the restart can arrive.
    queue = Queue(unique("ensured"), Exchange(unique("ex"), type="direct", durable=False),
                  routing_key="ensured", durable=False)
    revived: list[Any] = []
    with Connection(leveret.url(), connect_timeout=2) as connection:
        producer = Producer(connection, serializer="json")
        publish = connection.ensure(producer, producer.publish, max_retries=40,
                                    interval_start=0.1, interval_step=0.1, interval_max=0.5,
                                    on_revive=revived.append)
        publish({"n": 0}, exchange=queue.exchange, routing_key="ensured", declare=[queue],
                delivery_mode=1)
        restarter = _restart_later(leveret, 1.5)
        # Published while the broker is down: ensure retries until it is back, revives the
        # producer on a new channel, declares the queue again and publishes.
        publish({"n": 1}, exchange=queue.exchange, routing_key="ensured", declare=[queue],
                delivery_mode=1)
        restarter.join(15)
        assert revived, "the producer was never revived"
        received: list[Any] = []
        with Consumer(connection, [queue], accept=["json"],
                      callbacks=[lambda body, message: (received.append(body), message.ack())]):
            drain(connection, received, 1, 10)
    assert received == [{"n": 1}]  # {"n": 0} was transient, on a transient queue
