"""Leveret-specific connection behaviour: resource alarms and internal-error isolation."""

from __future__ import annotations

import logging
import time

import pika
import pytest
from pamqp import commands
from pika.exceptions import ConnectionClosedByBroker

from leveret.broker import handlers

pytestmark = pytest.mark.leveret_only


def test_blocked_and_unblocked_reach_clients(broker, embedded) -> None:
    """block_publishers() sends connection.blocked; unblock_publishers() connection.unblocked."""
    events: list[str] = []
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        conn.add_on_connection_blocked_callback(lambda _c, m: events.append(m.method.reason))
        conn.add_on_connection_unblocked_callback(lambda _c, _m: events.append("unblocked"))
        embedded.call(embedded.broker.block_publishers, "low on disk")
        conn.process_data_events(time_limit=0.5)
        embedded.call(embedded.broker.unblock_publishers)
        conn.process_data_events(time_limit=0.5)
        assert events == ["low on disk", "unblocked"]
        conn.channel().queue_declare("", exclusive=True)
    finally:
        conn.close()


def test_internal_error_closes_only_that_connection(broker, monkeypatch) -> None:
    """A bug in a handler costs its own connection (541 INTERNAL_ERROR), nothing else."""
    bystander = pika.BlockingConnection(pika.URLParameters(broker.url))
    bystander_channel = bystander.channel()
    queue = bystander_channel.queue_declare("", exclusive=True).method.queue

    def broken(channel, method) -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(handlers.HANDLERS, commands.Queue.Purge.index, broken)
    victim = pika.BlockingConnection(pika.URLParameters(broker.url))
    with pytest.raises(ConnectionClosedByBroker) as closed:
        victim.channel().queue_purge(queue)
    assert closed.value.reply_code == 541
    assert closed.value.reply_text.startswith("INTERNAL_ERROR - ")
    monkeypatch.undo()
    bystander_channel.basic_publish("", queue, b"still here")
    assert bystander_channel.basic_get(queue, auto_ack=True)[2] == b"still here"
    bystander.close()


def test_message_above_max_size_is_406() -> None:
    """max_message_size as RabbitMQ's: a bigger body closes the channel with 406."""
    from pika.exceptions import ChannelClosedByBroker

    from leveret.broker.embedded import EmbeddedBroker

    with EmbeddedBroker(max_message_size=4096) as embedded:
        conn = pika.BlockingConnection(pika.URLParameters(embedded.url))
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", queue, b"x" * 4096)
        ch.basic_publish("", queue, b"x" * 4097)
        with pytest.raises(ChannelClosedByBroker) as closed:
            ch.queue_declare(queue, passive=True)
        assert (closed.value.reply_code, closed.value.reply_text) == (
            406,
            "PRECONDITION_FAILED - message size 4097 is larger than configured max size 4096",
        )
        ch = conn.channel()
        assert ch.queue_declare(queue, passive=True).method.message_count == 1
        conn.close()


def test_connection_that_starts_publishing_during_an_alarm_is_blocked(broker, embedded) -> None:
    """As RabbitMQ: during an alarm a connection is read until it publishes; after its first
    publish method nothing more is read from it (not even the rest of that message, if it
    came in a later read) until the alarm ends. Then everything arrives."""
    import time

    bystander = pika.BlockingConnection(pika.URLParameters(broker.url))
    watch = bystander.channel()
    queue = watch.queue_declare("", exclusive=False, auto_delete=True).method.queue
    embedded.call(embedded.broker.block_publishers, "low on memory")
    publisher = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        ch = publisher.channel()  # not a publisher yet: still read
        ch.basic_publish("", queue, b"first")
        publisher.process_data_events(time_limit=0.2)
        ch.basic_publish("", queue, b"second")
        publisher.process_data_events(time_limit=0.3)
        assert watch.queue_declare(queue, passive=True).method.message_count <= 1
        embedded.call(embedded.broker.unblock_publishers)
        deadline = time.monotonic() + 3
        while (watch.queue_declare(queue, passive=True).method.message_count < 2
               and time.monotonic() < deadline):
            publisher.process_data_events(time_limit=0.05)
        assert watch.queue_declare(queue, passive=True).method.message_count == 2
    finally:
        embedded.call(embedded.broker.unblock_publishers)  # never leave the shared broker blocked
        publisher.close()
        bystander.close()


def test_one_log_line_per_accepted_and_per_closed_connection(
        broker, caplog: pytest.LogCaptureFixture) -> None:
    """RabbitMQ's 'accepting AMQP connection' / 'closing AMQP connection' at info: peer,
    user, vhost and client product; then the reason and how long it lasted."""
    caplog.set_level(logging.INFO, logger="leveret")
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    local = conn._impl._transport._sock.getsockname()
    peer = f"{local[0]}:{local[1]}"
    conn.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
            peer in r.getMessage() and "closed AMQP" in r.getMessage() for r in caplog.records):
        time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if peer in r.getMessage()]
    accepted = [m for m in lines if m.startswith("accepted AMQP connection")]
    closed = [m for m in lines if m.startswith("closed AMQP connection")]
    assert len(accepted) == 1 and len(closed) == 1, lines
    assert "user 'guest', vhost '/', client Pika Python Client Library" in accepted[0]
    assert "client closed it: 200 Normal shutdown" in closed[0]


def test_channel_errors_are_logged_within_the_peers_share(
        broker, embedded, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that provokes channel errors in a loop cannot flood the log: its address
    gets PEER_LOG_LINES lines per window, and one saying the rest is suppressed."""
    from leveret.broker import connection

    monkeypatch.setattr(connection, "_peer_log", {})
    monkeypatch.setattr(connection, "PEER_LOG_WINDOW", 60.0)
    caplog.set_level(logging.INFO, logger="leveret")
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    for _ in range(3 * connection.PEER_LOG_LINES):
        channel = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            channel.queue_declare("no-such-queue-here", passive=True)
    conn.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "leveret.broker.channel"]
    assert len(lines) == connection.PEER_LOG_LINES + 1, lines
    assert "suppressed" in lines[-1]
