"""Back-pressure without deadlocks: throttled publishers, blocked and paused connections
that keep their heartbeats, clients that do not read, bounded per-channel memory.

Leveret-only: they look at the broker's memory and state (RabbitMQ's credit flow differs).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pika
import pytest
from pamqp import commands
from rawamqp import RawClient, connect
from test_persistence import BrokerProcess

from leveret.broker.embedded import EmbeddedBroker
from leveret.broker.server import resident_memory

pytestmark = pytest.mark.leveret_only


def _rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("total", [30_000, pytest.param(100_000, marks=pytest.mark.slow)])
def test_publisher_and_consumer_on_one_connection_never_deadlock(tmp_path: Path,
                                                                 total: int) -> None:
    """pika's single-connection app: ``total`` messages (30,000 in the default run, three
    times the queue's flow limit of 10,000 ready; 100,000 with -m slow) published while the
    same connection consumes slowly; everything arrives and memory stays bounded. (The
    deadlock it guards against stopped at 12 of 15,000.)"""
    broker = BrokerProcess(tmp_path / "data")
    broker.start()
    try:
        conn = broker.connect()
        ch = conn.channel()
        ch.queue_declare("one-conn")
        ch.basic_qos(prefetch_count=200)
        received = [0]

        def on_message(channel: Any, method: Any, _props: Any, _body: bytes) -> None:
            received[0] += 1
            channel.basic_ack(method.delivery_tag)

        ch.basic_consume("one-conn", on_message)
        body = b"x" * 64
        for index in range(total):
            ch.basic_publish("", "one-conn", body)
            if index % 5000 == 0:
                conn.process_data_events(time_limit=0)  # some acks between bursts
        deadline = time.monotonic() + 90
        while received[0] < total and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.2)
        peak_mb = _rss_kb(broker.process.pid, "VmHWM") / 1024  # type: ignore[union-attr]
        assert received[0] == total, f"only {received[0]} of {total} delivered"
        assert peak_mb < 250, f"broker peak RSS {peak_mb:.0f} MB"
        print(f"\none connection, {total} messages: broker peak RSS {peak_mb:.0f} MB")
        conn.close()
    finally:
        broker.stop()


def _blocked_by_memory_alarm(embedded: EmbeddedBroker, seconds: float) -> None:
    params = pika.URLParameters(embedded.url)
    params.heartbeat = 1
    params.blocked_connection_timeout = None
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare("blocked-q")
    ch.basic_publish("", "blocked-q", b"before")  # a publisher: the alarm blocks it
    blocked: list[str] = []
    conn.add_on_connection_blocked_callback(lambda _c, m: blocked.append(m.method.reason))
    embedded.broker.config.memory_high_watermark = 1  # the alarm goes off
    deadline = time.monotonic() + 5
    while not blocked and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert blocked == ["low on memory"]
    ch.basic_publish("", "blocked-q", b"while blocked")  # held (reading may stop)
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        conn.process_data_events(time_limit=0.2)
    assert conn.is_open, "dropped while blocked"
    embedded.broker.config.memory_high_watermark = 1 << 62
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
        if ch.queue_declare("blocked-q", passive=True).method.message_count == 2:
            break
    assert ch.queue_declare("blocked-q", passive=True).method.message_count == 2
    conn.close()


@pytest.mark.timeout(60)
def test_heartbeats_survive_a_memory_alarm() -> None:
    with EmbeddedBroker(resource_check_interval=0.1, heartbeat=1) as embedded:
        _blocked_by_memory_alarm(embedded, seconds=10)


@pytest.mark.timeout(60)
def test_heartbeats_survive_a_flow_control_pause() -> None:
    """A publisher-only connection whose reads stopped (its queue is backlogged, its held
    publishes passed the limit) is not dropped for missed heartbeats."""
    with EmbeddedBroker(heartbeat=1) as embedded:
        consumer = pika.BlockingConnection(pika.URLParameters(embedded.url))
        cch = consumer.channel()
        cch.queue_declare("slow")
        cch.basic_qos(prefetch_count=1)
        held: list[Any] = []
        cch.basic_consume("slow", lambda c, m, p, b: held.append(m))  # never acks yet
        params = pika.URLParameters(embedded.url)
        params.heartbeat = 1
        params.blocked_connection_timeout = None
        publisher = pika.BlockingConnection(params)
        pch = publisher.channel()
        sent = [0]
        stop = threading.Event()

        def publish() -> None:
            with contextlib.suppress(Exception):
                while not stop.is_set():
                    pch.basic_publish("", "slow", b"y" * 1000)
                    sent[0] += 1

        worker = threading.Thread(target=publish)
        worker.start()
        connection = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            consumer.process_data_events(time_limit=0.1)
            connection = next((c for c in embedded.broker.connections if c.reading_paused),
                              None)
            if connection is not None:
                break
        assert connection is not None, "the publisher was never paused"
        ends = time.monotonic() + 10  # the publisher's thread is stuck in send()
        while time.monotonic() < ends:
            consumer.process_data_events(time_limit=0.2)  # (the consumer heartbeats)
        assert connection.transport is not None and not connection.transport.is_closing()
        assert not worker.is_alive() or publisher.is_open
        stop.set()
        for message in held:
            cch.basic_ack(message.delivery_tag)
        cch.basic_cancel(held[0].consumer_tag if held else "")
        cch.queue_purge("slow")  # the backlog goes: the publisher is released
        worker.join(10)
        assert not worker.is_alive(), "the publisher never resumed"
        assert publisher.is_open
        publisher.close()
        consumer.close()


# -- clients that do not read ---------------------------------------------------------------
def _send_for(client: RawClient, frames: bytes, seconds: float) -> int:
    """Send ``frames`` over and over without reading; returns the bytes sent."""
    sock = client.sock
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + seconds
    view = memoryview(frames)
    at = 0
    while time.monotonic() < deadline:
        try:
            n = sock.send(view[at:])
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += n
        at = (at + n) % len(frames)
    sock.setblocking(True)
    return sent


def _frames(channel: int, *methods: Any) -> bytes:
    from pamqp import frame as pframe

    return b"".join(pframe.marshal(m, channel) for m in methods)


def _content(channel: int, body: bytes, method: Any) -> bytes:
    from pamqp import frame as pframe
    from pamqp.body import ContentBody
    from pamqp.header import ContentHeader

    return (pframe.marshal(method, channel)
            + pframe.marshal(ContentHeader(0, len(body), commands.Basic.Properties()), channel)
            + pframe.marshal(ContentBody(body), channel))


def _owed(embedded: EmbeddedBroker) -> int:
    """Bytes the broker buffers for its clients: transport buffers plus held frames."""
    total = 0
    for connection in list(embedded.broker.connections):
        if connection.transport is not None:
            total += connection.transport.get_write_buffer_size()
        total += connection.held_bytes
    return total


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["returns", "get-ok", "confirms", "deliveries"])
def test_a_client_that_never_reads_costs_bounded_memory(path: str) -> None:
    with EmbeddedBroker() as embedded:
        client = connect("127.0.0.1", embedded.port)
        client.open_channel(1)
        rss_before = resident_memory() or 0
        big = b"z" * (120 * 1024)  # one body frame (frame_max is 128 KB)
        if path == "returns":  # mandatory and unroutable: every publish comes back
            load = _content(1, big, commands.Basic.Publish(routing_key="nowhere",
                                                           mandatory=True))
        elif path == "get-ok":  # get + reject(requeue) of one big message, forever
            setup = pika.BlockingConnection(pika.URLParameters(embedded.url))
            setup.channel().queue_declare("big-get")
            setup.channel().basic_publish("", "big-get", big * 4)
            setup.close()
            load = b"".join(_frames(1, commands.Basic.Get(queue="big-get"),
                                    commands.Basic.Reject(delivery_tag=tag, requeue=True))
                            for tag in range(1, 2000))
        elif path == "confirms":
            client.send_method(1, commands.Confirm.Select())
            client.expect_method(commands.Confirm.SelectOk, channel=1)
            client.send_method(1, commands.Queue.Declare(  # bounded: only confirms pile up
                queue="conf", auto_delete=True, arguments={"x-max-length": 1000}))
            client.expect_method(commands.Queue.DeclareOk, channel=1)
            load = _content(1, b"c" * 100, commands.Basic.Publish(routing_key="conf"))
        else:  # a no-ack consumer that never reads, fed by another connection
            client.send_method(1, commands.Queue.Declare(queue="unread", auto_delete=True))
            client.expect_method(commands.Queue.DeclareOk, channel=1)
            client.send_method(1, commands.Basic.Consume(queue="unread", no_ack=True))
            client.expect_method(commands.Basic.ConsumeOk, channel=1)
            feeder = pika.BlockingConnection(pika.URLParameters(embedded.url))
            fch = feeder.channel()
            for _ in range(400):
                fch.basic_publish("", "unread", big)
            feeder.close()
            load = _frames(1, commands.Basic.Qos(prefetch_count=0))
        sent = _send_for(client, load, 4.0)
        owed = _owed(embedded)
        grown_mb = ((resident_memory() or 0) - rss_before) / 1e6
        client.close_socket()
        assert owed < 8 * 1024 * 1024, f"{path}: {owed} bytes owed to a client that never reads"
        limit = 200 if path == "deliveries" else 60  # deliveries: the queue holds 100 MB
        assert grown_mb < limit, f"{path}: RSS grew {grown_mb:.0f} MB (sent {sent} bytes)"


@pytest.mark.timeout(30)
def test_a_client_that_reads_nothing_is_dropped_after_the_write_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="leveret")
    with EmbeddedBroker(write_timeout=1.5) as embedded:
        client = connect("127.0.0.1", embedded.port)
        client.open_channel(1)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        load = _content(1, b"r" * 65536, commands.Basic.Publish(routing_key="x",
                                                                  mandatory=True))
        _send_for(client, load, 1.0)
        deadline = time.monotonic() + 10
        while embedded.broker.connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not embedded.broker.connections, "the stalled client was kept"
        assert any("read nothing" in r.getMessage() for r in caplog.records)
        client.close_socket()


# -- memory per channel ---------------------------------------------------------------------
def test_channel_bookkeeping_follows_outstanding_deliveries_not_traffic() -> None:
    """One old delivery stays unacked while 10,000 more come and are acked: every
    per-channel structure stays small, under 600 entries with a prefetch of 500 (it once
    kept one entry per delivery)."""
    with EmbeddedBroker() as embedded:
        conn = pika.BlockingConnection(pika.URLParameters(embedded.url))
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        timed = ch.queue_declare("", exclusive=True,
                                 arguments={"x-consumer-timeout": 60000}).method.queue
        ch.basic_publish("", queue, b"old")
        old = ch.basic_get(queue)[0]
        ch.basic_qos(prefetch_count=500)
        done = [0]

        def on_message(channel: Any, method: Any, _p: Any, _b: bytes) -> None:
            done[0] += 1
            channel.basic_ack(method.delivery_tag)

        ch.basic_consume(timed, on_message)
        total = 10_000
        for _ in range(total):
            ch.basic_publish("", timed, b"n")
        deadline = time.monotonic() + 60
        while done[0] < total and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert done[0] == total
        ch.queue_declare(timed, passive=True)  # a round trip: the acks before it are in
        channel = next(iter(next(iter(embedded.broker.connections)).channels.values()))
        sizes = {name: len(value) for name, value in vars(channel).items()
                 if isinstance(value, list | dict | set | tuple) or (hasattr(value, "__len__")
                 and not isinstance(value, str | bytes))}
        big = {name: size for name, size in sizes.items() if size > 600}
        assert big == {}, f"per-channel structures grew with traffic: {big}"
        assert len(channel.unacked) == 1
        ch.basic_ack(old.delivery_tag)
        conn.close()
