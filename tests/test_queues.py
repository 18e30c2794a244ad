"""Queue declare/bind/purge/delete semantics: flags, ownership, arguments and counts.

Every reply code, reply text and "channel or connection closed" expectation here was
agreed with RabbitMQ 3.10.8 (observed first, then encoded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import amqp
import pika
import pytest
from conftest import BrokerAddress
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker
from pika_helpers import (
    Broker,
    bodies,
    connect,
    message_count,
    pika_channel,
    pump_until,
    queue_exists,
    wait_for_count,
    wait_gone,
)

pytestmark = pytest.mark.timeout(30)


def _locked_text(queue: str) -> str:
    return (
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue}' in vhost "
        "'/'. It could be originally declared on another connection or the exclusive property "
        "value does not match that of the original declaration."
    )


def _assert_closed(
    exc: pytest.ExceptionInfo[ChannelClosedByBroker],
    conn: pika.BlockingConnection,
    code: int,
    text: str,
) -> None:
    """Only the channel was closed, with exactly this code and text."""
    assert (exc.value.reply_code, exc.value.reply_text) == (code, text)
    assert conn.is_open, "a channel-level error must leave the connection open"


# --- declare basics ----------------------------------------------------------------------------


def test_declare_ok_reports_name_and_counts(broker: Broker, unique: str) -> None:
    """declare-ok echoes the name; counts are ready messages (not unacked) and consumers."""
    name = f"{unique}-q"
    with pika_channel(broker.url) as (conn, ch):
        ok = ch.queue_declare(name, exclusive=True).method
        assert (ok.queue, ok.message_count, ok.consumer_count) == (name, 0, 0)
        for i in range(5):
            ch.basic_publish("", name, str(i).encode())
        assert wait_for_count(ch, name, 5) == 5
        ch.basic_get(name)  # one unacked: no longer counted
        ok = ch.queue_declare(name, exclusive=True).method  # active redeclare reports too
        assert (ok.message_count, ok.consumer_count) == (4, 0)
        other = conn.channel()
        other.basic_qos(prefetch_count=1)
        other.basic_consume(name, lambda *_: None)
        other.basic_consume(name, lambda *_: None)
        pump_until(conn, lambda: message_count(ch, name) == 2)
        ok = ch.queue_declare(name, passive=True).method
        assert (ok.message_count, ok.consumer_count) == (2, 2)


def test_server_named_queue(broker: Broker) -> None:
    """queue.declare('') gets a fresh 'amq.gen-' name each time."""
    with pika_channel(broker.url) as (_conn, ch):
        first = ch.queue_declare("", exclusive=True).method.queue
        second = ch.queue_declare("", auto_delete=True).method.queue
        assert first.startswith("amq.gen-") and second.startswith("amq.gen-")
        assert first != second
        assert len(first) > len("amq.gen-")
        ch.queue_delete(second)


def test_empty_queue_name_means_last_declared_on_channel(broker: Broker) -> None:
    """basic.get/queue.purge with '' use the channel's last declared queue."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"1")
        ch.basic_publish("", q, b"2")
        assert wait_for_count(ch, q, 2) == 2
        method, _props, body = ch.basic_get("", auto_ack=True)
        assert method.routing_key == q and body == b"1"
        assert ch.queue_purge("").method.message_count == 1


def test_empty_queue_name_without_prior_declare_is_404(broker: Broker) -> None:
    """With no queue declared on the channel, '' is 404 'no previously declared queue'."""
    with pika_channel(broker.url) as (conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.basic_get("", auto_ack=True)
        _assert_closed(exc, conn, 404, "NOT_FOUND - no previously declared queue")


def test_passive_declare_of_empty_name_is_404(broker: Broker) -> None:
    """A passive declare does not substitute the last queue for ''."""
    with pika_channel(broker.url) as (conn, ch):
        ch.queue_declare("", exclusive=True)
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare("", passive=True)
        _assert_closed(exc, conn, 404, "NOT_FOUND - no queue '' in vhost '/'")


def test_reserved_amq_prefix_is_refused(broker: Broker, unique: str) -> None:
    """Clients may not declare 'amq.'-prefixed queues (even 'amq.gen-' lookalikes)."""
    name = f"amq.gen-{unique}"
    with pika_channel(broker.url) as (conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(name)
        _assert_closed(
            exc, conn, 403, f"ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'"
        )


def test_passive_declare_of_missing_queue_is_404(broker: Broker, unique: str) -> None:
    """Passive declare of a missing queue: 404, channel closed, connection usable."""
    name = f"{unique}-missing"
    with pika_channel(broker.url) as (conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(name, passive=True)
        _assert_closed(exc, conn, 404, f"NOT_FOUND - no queue '{name}' in vhost '/'")
        assert conn.channel().queue_declare("", exclusive=True).method.queue


def test_passive_declare_ignores_flags(broker: Broker, unique: str) -> None:
    """Passive declare of an existing queue succeeds whatever flags are sent."""
    name = f"{unique}-q"
    with pika_channel(broker.url) as (_conn, ch):
        ch.queue_declare(name, auto_delete=True)
        ok = ch.queue_declare(name, passive=True, durable=True, auto_delete=False)
        assert ok.method.queue == name
        ch.queue_delete(name)


def test_durable_queue_redeclare(broker: Broker, unique: str) -> None:
    """A durable queue redeclares fine as durable and is 406 as non-durable."""
    name = f"{unique}-durable"
    with pika_channel(broker.url) as (conn, ch):
        ch.queue_declare(name, durable=True)
        try:
            ch.queue_declare(name, durable=True)
            with pytest.raises(ChannelClosedByBroker) as exc:
                ch.queue_declare(name, durable=False)
            _assert_closed(
                exc,
                conn,
                406,
                f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{name}' in vhost "
                "'/': received 'false' but current is 'true'",
            )
        finally:
            conn.channel().queue_delete(name)


@pytest.mark.parametrize(
    ("first", "second", "text"),
    [
        (
            {"auto_delete": True},
            {"auto_delete": True, "durable": True},
            "inequivalent arg 'durable' for queue '{q}' in vhost '/': "
            "received 'true' but current is 'false'",
        ),
        (
            {"auto_delete": True},
            {"auto_delete": False},
            "inequivalent arg 'auto_delete' for queue '{q}' in vhost '/': "
            "received 'false' but current is 'true'",
        ),
        (
            {"auto_delete": True},
            {"auto_delete": True, "arguments": {"x-message-ttl": 1000}},
            "inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': "
            "received the value '1000' of type 'signedint' but current is none",
        ),
        (
            {"auto_delete": True, "arguments": {"x-message-ttl": 1000}},
            {"auto_delete": True, "arguments": {"x-message-ttl": 2000}},
            "inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': "
            "received '2000' but current is '1000'",
        ),
        (
            {"auto_delete": True, "arguments": {"x-message-ttl": 1000}},
            {"auto_delete": True},
            "inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': "
            "received none but current is the value '1000' of type 'signedint'",
        ),
        (
            {"auto_delete": True, "arguments": {"x-max-length": 10}},
            {"auto_delete": True, "arguments": {"x-max-length": 11}},
            "inequivalent arg 'x-max-length' for queue '{q}' in vhost '/': "
            "received '11' but current is '10'",
        ),
    ],
)
def test_inequivalent_redeclare_is_406(
    broker: Broker, unique: str, first: dict[str, Any], second: dict[str, Any], text: str
) -> None:
    """Redeclaring with other flags or x-arguments: 406 with RabbitMQ's exact text."""
    name = f"{unique}-q"
    with pika_channel(broker.url) as (conn, ch):
        ch.queue_declare(name, **first)
        try:
            with pytest.raises(ChannelClosedByBroker) as exc:
                ch.queue_declare(name, **second)
            _assert_closed(exc, conn, 406, "PRECONDITION_FAILED - " + text.format(q=name))
        finally:
            conn.channel().queue_delete(name)


def test_redeclare_with_unknown_plain_argument_is_fine(broker: Broker, unique: str) -> None:
    """Arguments RabbitMQ does not interpret take no part in equivalence."""
    name = f"{unique}-q"
    with pika_channel(broker.url) as (_conn, ch):
        ch.queue_declare(name, auto_delete=True)
        ch.queue_declare(name, auto_delete=True, arguments={"foo": 1000})
        ch.queue_delete(name)


@pytest.mark.parametrize(
    ("arguments", "detail"),
    [
        (
            {"x-message-ttl": "1000"},
            "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': "
            '"expected integer, got longstr"',
        ),
        (
            {"x-message-ttl": -1},
            "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': {{value_negative,-1}}",
        ),
        (
            {"x-expires": 0},
            "invalid arg 'x-expires' for queue '{q}' in vhost '/': {{value_zero,0}}",
        ),
        (
            {"x-max-length": -1},
            "invalid arg 'x-max-length' for queue '{q}' in vhost '/': {{value_negative,-1}}",
        ),
        (
            {"x-max-length": "a"},
            "invalid arg 'x-max-length' for queue '{q}' in vhost '/': "
            '"expected integer, got longstr"',
        ),
        (
            {"x-max-priority": 300},
            "invalid arg 'x-max-priority' for queue '{q}' in vhost '/': {{max_value_exceeded,300}}",
        ),
        (
            {"x-overflow": "bogus"},
            "invalid arg 'x-overflow' for queue '{q}' in vhost '/': invalid_overflow",
        ),
        (
            {"x-queue-type": "bogus"},
            "invalid arg 'x-queue-type' for queue '{q}' in vhost '/': "
            "\"unsupported queue type 'bogus'\"",
        ),
        (
            {"x-dead-letter-exchange": 1},
            "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '{q}' in vhost '/'",
        ),
    ],
)
def test_invalid_queue_arguments_are_406(
    broker: Broker, unique: str, arguments: dict[str, Any], detail: str
) -> None:
    """RabbitMQ validates well-known x-arguments; failures are 406 on the channel."""
    name = f"{unique}-q"
    with pika_channel(broker.url) as (conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(name, auto_delete=True, arguments=arguments)
        _assert_closed(exc, conn, 406, "PRECONDITION_FAILED - " + detail.format(q=name))
    assert not queue_exists(broker.url, name)


# --- exclusive -------------------------------------------------------------------------------


def test_exclusive_queue_is_locked_to_its_connection(broker: Broker, unique: str) -> None:
    """Another connection gets 405 RESOURCE_LOCKED for every queue operation."""
    name = f"{unique}-excl"
    owner = connect(broker.url)
    try:
        owner_ch = owner.channel()
        owner_ch.queue_declare(name, exclusive=True)
        attempts: dict[str, Callable[[BlockingChannel], object]] = {
            "declare exclusive": lambda ch: ch.queue_declare(name, exclusive=True),
            "declare shared": lambda ch: ch.queue_declare(name),
            "declare passive": lambda ch: ch.queue_declare(name, passive=True),
            "consume": lambda ch: ch.basic_consume(name, lambda *_: None),
            "get": lambda ch: ch.basic_get(name),
            "purge": lambda ch: ch.queue_purge(name),
            "delete": lambda ch: ch.queue_delete(name),
            "bind": lambda ch: ch.queue_bind(name, "amq.direct", unique),
        }
        for label, attempt in attempts.items():
            with pika_channel(broker.url) as (conn, ch):
                with pytest.raises(ChannelClosedByBroker) as exc:
                    attempt(ch)
                assert exc.value.reply_code == 405, label
                _assert_closed(exc, conn, 405, _locked_text(name))
        # publishing into it from elsewhere is allowed
        with pika_channel(broker.url) as (_conn, ch):
            ch.basic_publish("", name, b"from-another-connection")
        assert wait_for_count(owner_ch, name, 1) == 1
        # another channel of the owning connection may use it
        assert owner.channel().queue_declare(name, passive=True).method.message_count == 1
    finally:
        owner.close()
    assert wait_gone(lambda: queue_exists(broker.url, name))


def test_exclusive_queue_survives_its_channel_closing(broker: Broker, unique: str) -> None:
    """Exclusivity belongs to the connection: closing the declaring channel keeps the queue."""
    name = f"{unique}-excl"
    conn = connect(broker.url)
    try:
        ch = conn.channel()
        ch.queue_declare(name, exclusive=True)
        ch.close()
        assert conn.channel().queue_declare(name, passive=True).method.queue == name
    finally:
        conn.close()
    assert wait_gone(lambda: queue_exists(broker.url, name))


def test_exclusive_redeclare_of_shared_queue_is_405(broker: Broker, unique: str) -> None:
    """Redeclaring an existing shared queue as exclusive (same connection) is 405."""
    name = f"{unique}-q"
    with pika_channel(broker.url) as (conn, ch):
        ch.queue_declare(name, auto_delete=True)
        try:
            with pytest.raises(ChannelClosedByBroker) as exc:
                ch.queue_declare(name, exclusive=True, auto_delete=True)
            _assert_closed(exc, conn, 405, _locked_text(name))
        finally:
            conn.channel().queue_delete(name)


# --- auto-delete -----------------------------------------------------------------------------


def test_auto_delete_queue_needs_a_consumer_first(broker: Broker, unique: str) -> None:
    """An auto_delete queue that never had a consumer stays (even after basic.get)."""
    name = f"{unique}-ad"
    with pika_channel(broker.url) as (_conn, ch):
        ch.queue_declare(name, auto_delete=True)
        ch.basic_publish("", name, b"x")
        assert wait_for_count(ch, name, 1) == 1
        assert ch.basic_get(name, auto_ack=True)[0] is not None
    assert queue_exists(broker.url, name)
    with pika_channel(broker.url) as (_conn, ch):
        ch.queue_delete(name)


def test_auto_delete_queue_goes_with_last_consumer(broker: Broker, unique: str) -> None:
    """Cancelling one of two consumers keeps it; cancelling the last deletes it."""
    name = f"{unique}-ad"
    with pika_channel(broker.url) as (_conn, ch):
        ch.queue_declare(name, auto_delete=True)
        first = ch.basic_consume(name, lambda *_: None)
        second = ch.basic_consume(name, lambda *_: None)
        assert ch.queue_declare(name, passive=True).method.consumer_count == 2
        ch.basic_cancel(first)
        assert ch.queue_declare(name, passive=True).method.consumer_count == 1
        ch.basic_cancel(second)
        assert wait_gone(lambda: queue_exists(broker.url, name))
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(name, passive=True)
        assert exc.value.reply_code == 404


def test_auto_delete_queue_goes_when_consumer_channel_closes(broker: Broker, unique: str) -> None:
    """Closing the consuming channel cancels its consumer, deleting the auto_delete queue."""
    name = f"{unique}-ad"
    with pika_channel(broker.url) as (conn, ch):
        ch.queue_declare(name, auto_delete=True)
        consumer_ch = conn.channel()
        consumer_ch.basic_consume(name, lambda *_: None)
        consumer_ch.close()
    assert wait_gone(lambda: queue_exists(broker.url, name))


def test_auto_delete_queue_goes_when_consumer_connection_closes(
    broker: Broker, unique: str
) -> None:
    """A consumer's connection closing counts as the consumer going away."""
    name = f"{unique}-ad"
    with pika_channel(broker.url) as (_conn, ch):
        ch.queue_declare(name, auto_delete=True)
        ch.basic_consume(name, lambda *_: None)
        assert queue_exists(broker.url, name)
    assert wait_gone(lambda: queue_exists(broker.url, name))


# --- bind / unbind ------------------------------------------------------------------------------


def test_bind_missing_queue_or_exchange_is_404(broker: Broker, unique: str) -> None:
    """queue.bind with a missing queue or exchange is 404; with both missing, the exchange."""
    cases = [
        (f"{unique}-noq", "amq.direct", f"NOT_FOUND - no queue '{unique}-noq' in vhost '/'"),
        (None, f"{unique}-nox", f"NOT_FOUND - no exchange '{unique}-nox' in vhost '/'"),
        (f"{unique}-noq", f"{unique}-nox", f"NOT_FOUND - no exchange '{unique}-nox' in vhost '/'"),
    ]
    for queue, exchange, text in cases:
        with pika_channel(broker.url) as (conn, ch):
            if queue is None:
                queue = ch.queue_declare("", exclusive=True).method.queue
            with pytest.raises(ChannelClosedByBroker) as exc:
                ch.queue_bind(queue, exchange, "k")
            _assert_closed(exc, conn, 404, text)


def test_unbind_is_idempotent(broker: Broker, unique: str) -> None:
    """RabbitMQ 3.10 answers unbind-ok for a missing binding, queue or exchange alike."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_unbind(q, "amq.direct", f"{unique}-never-bound")
        ch.queue_unbind(f"{unique}-noq", "amq.direct", "k")
        ch.queue_unbind(q, f"{unique}-nox", "k")
        assert ch.is_open


def test_bind_then_unbind_controls_routing(broker: Broker, unique: str) -> None:
    """A binding routes until it is removed."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, "amq.direct", unique)
        ch.basic_publish("amq.direct", unique, b"bound")
        assert wait_for_count(ch, q, 1) == 1
        ch.queue_unbind(q, "amq.direct", unique)
        ch.basic_publish("amq.direct", unique, b"unbound")
        ch.basic_publish("", q, b"marker")
        assert wait_for_count(ch, q, 2) == 2
        assert bodies(ch, q) == [b"bound", b"marker"]


# --- purge -------------------------------------------------------------------------------------


def test_purge_removes_ready_messages_only(broker: Broker) -> None:
    """purge-ok counts ready messages; unacked ones survive and can be requeued."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        for i in range(5):
            ch.basic_publish("", q, str(i).encode())
        assert wait_for_count(ch, q, 5) == 5
        held = [ch.basic_get(q)[0] for _ in range(2)]
        assert ch.queue_purge(q).method.message_count == 3
        assert message_count(ch, q) == 0
        ch.basic_ack(held[0].delivery_tag)
        ch.basic_nack(held[1].delivery_tag, requeue=True)
        assert wait_for_count(ch, q, 1) == 1
        assert ch.queue_purge(q).method.message_count == 1
        assert ch.queue_purge(q).method.message_count == 0


def test_purge_missing_queue_is_404(broker: Broker, unique: str) -> None:
    """queue.purge of a missing queue is 404 on the channel."""
    name = f"{unique}-missing"
    with pika_channel(broker.url) as (conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_purge(name)
        _assert_closed(exc, conn, 404, f"NOT_FOUND - no queue '{name}' in vhost '/'")


# --- delete ------------------------------------------------------------------------------------


def test_delete_returns_ready_count(broker: Broker) -> None:
    """delete-ok carries the number of ready messages deleted (unacked not counted)."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        for _ in range(3):
            ch.basic_publish("", q, b"x")
        assert wait_for_count(ch, q, 3) == 3
        ch.basic_get(q)
        assert ch.queue_delete(q).method.message_count == 2
    assert not queue_exists(broker.url, q)


def test_delete_of_missing_queue_is_ok(broker: Broker, unique: str) -> None:
    """RabbitMQ 3.x answers delete-ok (count 0) for a missing queue."""
    with pika_channel(broker.url) as (_conn, ch):
        assert ch.queue_delete(f"{unique}-nope").method.message_count == 0
        assert ch.queue_delete(f"{unique}-nope", if_empty=True, if_unused=True).method
        assert ch.is_open


def test_delete_if_empty_with_ready_messages_is_406(broker: Broker) -> None:
    """if_empty refuses a queue holding ready messages."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"x")
        assert wait_for_count(ch, q, 1) == 1
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_delete(q, if_empty=True)
        _assert_closed(exc, conn, 406, f"PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty")
        assert conn.channel().queue_declare(q, passive=True).method.message_count == 1


def test_delete_if_empty_ignores_unacked(broker: Broker) -> None:
    """A queue whose only message is unacked counts as empty for if_empty."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"x")
        assert wait_for_count(ch, q, 1) == 1
        assert ch.basic_get(q)[0] is not None
        assert ch.queue_delete(q, if_empty=True).method.message_count == 0
    assert not queue_exists(broker.url, q)


def test_delete_if_unused_with_consumer_is_406(broker: Broker) -> None:
    """if_unused refuses a queue with consumers."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_consume(q, lambda *_: None)
        other = conn.channel()
        with pytest.raises(ChannelClosedByBroker) as exc:
            other.queue_delete(q, if_unused=True)
        _assert_closed(exc, conn, 406, f"PRECONDITION_FAILED - queue '{q}' in vhost '/' in use")
        assert ch.is_open


def test_delete_cancels_consumers_with_basic_cancel(broker: Broker, unique: str) -> None:
    """Deleting a queue sends basic.cancel to each of its consumers, on any connection."""
    name = f"{unique}-q"
    first, second = connect(broker.url), connect(broker.url)
    try:
        ch1, ch2 = first.channel(), second.channel()
        ch1.queue_declare(name)
        cancelled: list[tuple[str, str]] = []
        ch1.add_on_cancel_callback(
            lambda frame: cancelled.append(("c1", frame.method.consumer_tag))
        )
        ch2.add_on_cancel_callback(
            lambda frame: cancelled.append(("c2", frame.method.consumer_tag))
        )
        ch1.basic_consume(name, lambda *_: None, consumer_tag=f"{unique}-c1")
        ch2.basic_consume(name, lambda *_: None, consumer_tag=f"{unique}-c2")
        with pika_channel(broker.url) as (_conn, deleter):
            assert deleter.queue_delete(name).method.message_count == 0
        pump_until(first, lambda: ("c1", f"{unique}-c1") in cancelled)
        pump_until(second, lambda: ("c2", f"{unique}-c2") in cancelled)
        assert sorted(cancelled) == [("c1", f"{unique}-c1"), ("c2", f"{unique}-c2")]
        assert ch1.is_open and ch2.is_open
        # the channels are still usable
        assert ch1.queue_declare("", exclusive=True).method.queue
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("durable", [True, False])
def test_delete_ok_precedes_the_deleting_channels_basic_cancel(
    broker: BrokerAddress, unique: str, durable: bool
) -> None:
    """queue.delete-ok comes first, then basic.cancel for the channel's own consumers of the
    queue (py-amqp, and so kombu, raises ConsumerCancelled out of queue_delete() otherwise).

    agreed with RabbitMQ 3.10.8.
    """
    conn = amqp.Connection(f"{broker.host}:{broker.port}")
    conn.connect()
    try:
        ch = conn.channel()
        name = f"{unique}-q"
        ch.queue_declare(name, durable=durable, auto_delete=False)
        cancelled: list[str] = []
        tag = ch.basic_consume(name, callback=lambda m: None, on_cancel=cancelled.append)
        # queue_delete returns on delete-ok; a basic.cancel read before it would run on_cancel
        assert ch.queue_delete(name) == 0
        assert cancelled == []
        conn.drain_events(timeout=5)  # the basic.cancel follows
        assert cancelled == [tag]
        assert ch.is_open
    finally:
        conn.close()
