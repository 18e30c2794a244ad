"""Acknowledgements (ack/nack/reject, multiple, requeue), redelivery order, recover and qos.

Every reply code, reply text, requeue position and prefetch behaviour here was agreed with
RabbitMQ 3.10.8 (observed first, then encoded). RabbitMQ puts a requeued message back at
its original position (ordered by publish), not at the tail.
"""

from __future__ import annotations

from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker
from pika_helpers import (
    Broker,
    amqp_connect,
    connect,
    drain_queue,
    message_count,
    pika_channel,
    pump,
    pump_until,
    wait_for_count,
)

pytestmark = pytest.mark.timeout(30)

Delivery = tuple[Any, Any, bytes]


def _fill(ch: BlockingChannel, n: int = 5) -> str:
    """A fresh exclusive queue holding messages b'0' .. b'n-1'."""
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(n):
        ch.basic_publish("", q, str(i).encode())
    assert wait_for_count(ch, q, n) == n
    return q


def _get(ch: BlockingChannel, q: str, n: int) -> list[Any]:
    """basic.get (manual ack) ``n`` messages; return their methods."""
    out = []
    for _ in range(n):
        method, _props, _body = ch.basic_get(q)
        assert method is not None
        out.append(method)
    return out


def _remaining(ch: BlockingChannel, q: str) -> list[tuple[str, bool]]:
    """Drain ``q``: (body, redelivered) in queue order."""
    return [(body.decode(), redelivered) for body, redelivered in drain_queue(ch, q)]


def _collector(into: list[Delivery]) -> Any:
    def on_message(_ch: Any, method: Any, props: Any, body: bytes) -> None:
        into.append((method, props, body))

    return on_message


# --- ack / nack / reject -------------------------------------------------------------------------


def test_ack_single_and_multiple(broker: Broker) -> None:
    """ack(multiple) settles every outstanding tag up to and including the given one."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 5)
        tags = [m.delivery_tag for m in _get(ch, q, 4)]
        assert tags == [1, 2, 3, 4]
        ch.basic_ack(2)  # single, out of order
        ch.basic_ack(3, multiple=True)  # settles 1 and 3
        ch.close()
        # closing the channel requeues only what is left unacked: tag 4 (message '3')
        assert _remaining(conn.channel(), q) == [("3", True), ("4", False)]


def test_ack_multiple_zero_acks_everything_outstanding(broker: Broker) -> None:
    """ack(delivery_tag=0, multiple=True) settles all outstanding deliveries."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 3)
        _get(ch, q, 2)
        ch.basic_ack(0, multiple=True)
        assert message_count(ch, q) == 1
        ch.close()
        assert _remaining(conn.channel(), q) == [("2", False)]


def test_reject_and_nack_without_requeue_drop(broker: Broker) -> None:
    """reject/nack with requeue=False discard the message (no dead-lettering configured)."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 4)
        m = _get(ch, q, 3)
        ch.basic_reject(m[0].delivery_tag, requeue=False)
        ch.basic_nack(m[2].delivery_tag, multiple=True, requeue=False)  # drops 1 and 2
        ch.close()
        assert _remaining(conn.channel(), q) == [("3", False)]


def test_nack_multiple_requeue(broker: Broker) -> None:
    """nack(multiple, requeue) puts every covered message back, flagged redelivered."""
    with pika_channel(broker.url) as (_conn, ch):
        q = _fill(ch, 5)
        _get(ch, q, 4)
        ch.basic_nack(3, multiple=True, requeue=True)
        assert _remaining(ch, q)[:4] == [("0", True), ("1", True), ("2", True), ("4", False)]


@pytest.mark.parametrize(
    ("method", "tag", "multiple"),
    [
        ("ack", 7, False),
        ("ack", 7, True),
        ("nack", 7, False),
        ("reject", 7, False),
        ("ack", 0, False),  # tag 0 without multiple is just an unknown tag
    ],
)
def test_unknown_delivery_tag_is_406(broker: Broker, method: str, tag: int, multiple: bool) -> None:
    """Settling a tag that was never delivered: channel.close 406 'unknown delivery tag N'."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 2)
        _get(ch, q, 1)
        if method == "ack":
            ch.basic_ack(tag, multiple=multiple)
        elif method == "nack":
            ch.basic_nack(tag, multiple=multiple)
        else:
            ch.basic_reject(tag)
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(q, passive=True)  # round trip to observe the close
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            f"PRECONDITION_FAILED - unknown delivery tag {tag}",
        )
        assert conn.is_open


@pytest.mark.parametrize("method", ["ack", "reject"])
def test_unknown_delivery_tag_names_the_method(broker: Broker, method: str) -> None:
    """The 406's channel.close carries the settling method's ids: basic.ack (60, 80),
    basic.reject (60, 90). Agreed with RabbitMQ 3.10.8 (py-amqp shows them, pika does not)."""
    import amqp.exceptions

    conn = amqp_connect(broker.url)
    try:
        ch = conn.channel()
        with pytest.raises(amqp.exceptions.PreconditionFailed) as refused:
            if method == "ack":
                ch.basic_ack(99)
            else:
                ch.basic_reject(99, True)
            ch.queue_declare(queue="", exclusive=True)
        assert refused.value.method_sig == ((60, 80) if method == "ack" else (60, 90))
    finally:
        conn.collect()


def test_double_ack_is_406(broker: Broker) -> None:
    """Acking the same tag twice: the second is an unknown delivery tag."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 1)
        (m,) = _get(ch, q, 1)
        ch.basic_ack(m.delivery_tag)
        ch.basic_ack(m.delivery_tag)
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(q, passive=True)
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            "PRECONDITION_FAILED - unknown delivery tag 1",
        )
        assert conn.is_open


def test_ack_multiple_on_already_acked_tag_is_406(broker: Broker) -> None:
    """ack(multiple) naming an already-settled tag fails even if older tags are pending."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 3)
        _get(ch, q, 3)
        ch.basic_ack(3)
        ch.basic_ack(3, multiple=True)
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(q, passive=True)
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            "PRECONDITION_FAILED - unknown delivery tag 3",
        )
        assert conn.is_open


def test_ack_multiple_over_a_hole_is_fine(broker: Broker) -> None:
    """ack(multiple) up to a pending tag skips tags settled earlier."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 4)
        _get(ch, q, 3)
        ch.basic_ack(2)
        ch.basic_ack(3, multiple=True)
        ch.close()
        assert _remaining(conn.channel(), q) == [("3", False)]


def test_ack_of_auto_ack_delivery_is_406(broker: Broker) -> None:
    """A delivery made with no-ack has no tag to settle."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 1)
        method, _props, _body = ch.basic_get(q, auto_ack=True)
        ch.basic_ack(method.delivery_tag)
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(q, passive=True)
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            f"PRECONDITION_FAILED - unknown delivery tag {method.delivery_tag}",
        )
        assert conn.is_open


def test_tags_are_per_channel(broker: Broker) -> None:
    """A tag from one channel cannot be acked on another."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 2)
        _get(ch, q, 1)
        other = conn.channel()
        other.basic_ack(1)
        with pytest.raises(ChannelClosedByBroker) as exc:
            other.queue_declare(q, passive=True)
        assert exc.value.reply_code == 406
        assert ch.is_open
        ch.basic_ack(1)
        assert message_count(ch, q) == 1


# --- requeue positions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fetch", "requeue", "expected"),
    [
        # fetch n, then requeue the messages at these indexes (in this order)
        (3, [1], [("1", True), ("3", False), ("4", False)]),
        (5, [3, 1], [("1", True), ("3", True)]),
        (3, [2, 0], [("0", True), ("2", True), ("3", False), ("4", False)]),
        (5, [4, 2, 0], [("0", True), ("2", True), ("4", True)]),
        (3, [0], [("0", True), ("3", False), ("4", False)]),
    ],
)
def test_requeued_message_returns_to_its_original_position(
    broker: Broker, fetch: int, requeue: list[int], expected: list[tuple[str, bool]]
) -> None:
    """RabbitMQ orders requeued messages by original publish position, ahead of newer ones."""
    with pika_channel(broker.url) as (_conn, ch):
        q = _fill(ch, 5)
        methods = _get(ch, q, fetch)
        for index in requeue:
            ch.basic_reject(methods[index].delivery_tag, requeue=True)
        assert _remaining(ch, q) == expected


def test_requeued_message_goes_ahead_of_later_publishes(broker: Broker) -> None:
    """A message requeued after newer publishes still comes out first."""
    with pika_channel(broker.url) as (_conn, ch):
        q = _fill(ch, 3)
        (m0,) = _get(ch, q, 1)
        ch.basic_publish("", q, b"3")
        assert wait_for_count(ch, q, 3) == 3
        ch.basic_nack(m0.delivery_tag, requeue=True)
        assert _remaining(ch, q) == [("0", True), ("1", False), ("2", False), ("3", False)]


def test_requeue_to_a_consumer_is_flagged_redelivered(broker: Broker) -> None:
    """A consumer sees requeued messages again, redelivered=True, with new tags."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 3)
        received: list[Delivery] = []
        ch.basic_consume(q, _collector(received))
        assert pump_until(conn, lambda: len(received) == 3)
        ch.basic_nack(received[1][0].delivery_tag, requeue=True)
        assert pump_until(conn, lambda: len(received) == 4)
        ch.basic_reject(received[0][0].delivery_tag, requeue=True)
        assert pump_until(conn, lambda: len(received) == 5)
        seen = [(b.decode(), m.redelivered, m.delivery_tag) for m, _, b in received]
        assert seen == [
            ("0", False, 1),
            ("1", False, 2),
            ("2", False, 3),
            ("1", True, 4),
            ("0", True, 5),
        ]


def test_unacked_requeued_on_channel_close(broker: Broker) -> None:
    """Closing a channel requeues its unacked deliveries in original order."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 5)
        other = conn.channel()
        _get(other, q, 3)
        other.basic_ack(2)
        other.close()
        assert _remaining(ch, q) == [("0", True), ("2", True), ("3", False), ("4", False)]


def test_unacked_requeued_on_connection_close(broker: Broker, unique: str) -> None:
    """Closing a connection requeues unacked deliveries from all its channels."""
    name = f"{unique}-q"
    with pika_channel(broker.url) as (_conn, ch):
        ch.queue_declare(name, auto_delete=False, arguments={"x-expires": 60000})
        try:
            for i in range(5):
                ch.basic_publish("", name, str(i).encode())
            assert wait_for_count(ch, name, 5) == 5
            consumer = connect(broker.url)
            c1, c2 = consumer.channel(), consumer.channel()
            _get(c1, name, 2)
            _get(c2, name, 2)
            c2.basic_ack(1)  # message '2'
            consumer.close()
            assert wait_for_count(ch, name, 4) == 4
            assert _remaining(ch, name) == [("0", True), ("1", True), ("3", True), ("4", False)]
        finally:
            ch.queue_delete(name)


def test_basic_recover_requeue(broker: Broker) -> None:
    """basic.recover(requeue=True) returns every unacked delivery of the channel."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 5)
        other = conn.channel()
        _get(other, q, 3)
        other.basic_ack(2)
        other.basic_recover(requeue=True)
        assert _remaining(ch, q) == [("0", True), ("2", True), ("3", False), ("4", False)]
        # the recovered tags are gone from the channel
        other.basic_ack(1)
        with pytest.raises(ChannelClosedByBroker) as exc:
            other.queue_declare(q, passive=True)
        assert exc.value.reply_code == 406


def test_basic_recover_to_consumer_redelivers(broker: Broker) -> None:
    """After recover, a live consumer gets the messages again with redelivered=True."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 2)
        received: list[Delivery] = []
        ch.basic_consume(q, _collector(received))
        assert pump_until(conn, lambda: len(received) == 2)
        ch.basic_recover(requeue=True)
        assert pump_until(conn, lambda: len(received) == 4)
        assert [(b, m.redelivered) for m, _, b in received[2:]] == [(b"0", True), (b"1", True)]


def test_basic_recover_without_requeue_closes_connection_540(broker: Broker) -> None:
    """basic.recover(requeue=False) is not implemented: connection.close 540."""
    with pika_channel(broker.url) as (conn, ch):
        ch.queue_declare("", exclusive=True)
        with pytest.raises(ConnectionClosedByBroker) as exc:
            ch.basic_recover(requeue=False)
        assert (exc.value.reply_code, exc.value.reply_text) == (
            540,
            "NOT_IMPLEMENTED - requeue=false",
        )
        assert not conn.is_open


# --- qos -----------------------------------------------------------------------------------------


def _two_queues(ch: BlockingChannel, n: int = 10) -> tuple[str, str]:
    return _fill(ch, n), _fill(ch, n)


def _consume_counts(
    conn: pika.BlockingConnection, ch: BlockingChannel, queues: list[str]
) -> dict[str, list[Delivery]]:
    got: dict[str, list[Delivery]] = {q: [] for q in queues}
    for q in queues:
        ch.basic_consume(q, _collector(got[q]))
    return got


def _sizes(got: dict[str, list[Delivery]]) -> list[int]:
    return [len(v) for v in got.values()]


def test_prefetch_per_consumer(broker: Broker) -> None:
    """global=False: each consumer may hold prefetch_count unacked messages."""
    with pika_channel(broker.url) as (conn, ch):
        qa, qb = _two_queues(ch)
        ch.basic_qos(prefetch_count=2)
        got = _consume_counts(conn, ch, [qa, qb])
        assert pump_until(conn, lambda: _sizes(got) == [2, 2])
        pump(conn, 0.2)
        assert _sizes(got) == [2, 2]
        ch.basic_ack(got[qa][0][0].delivery_tag)
        assert pump_until(conn, lambda: _sizes(got) == [3, 2])
        pump(conn, 0.1)
        assert _sizes(got) == [3, 2]


def test_prefetch_per_channel(broker: Broker) -> None:
    """global=True: all consumers on the channel share prefetch_count."""
    with pika_channel(broker.url) as (conn, ch):
        qa, qb = _two_queues(ch)
        ch.basic_qos(prefetch_count=3, global_qos=True)
        got = _consume_counts(conn, ch, [qa, qb])
        assert pump_until(conn, lambda: sum(_sizes(got)) == 3)
        pump(conn, 0.2)
        assert sum(_sizes(got)) == 3
        first = next(d for ds in got.values() for d in ds)
        ch.basic_ack(first[0].delivery_tag)
        assert pump_until(conn, lambda: sum(_sizes(got)) == 4)
        pump(conn, 0.1)
        assert sum(_sizes(got)) == 4


def test_prefetch_per_consumer_and_per_channel_together(broker: Broker) -> None:
    """Per-consumer limit set first, then a channel limit: both apply."""
    with pika_channel(broker.url) as (conn, ch):
        qa, qb = _two_queues(ch)
        ch.basic_qos(prefetch_count=2, global_qos=False)
        ch.basic_qos(prefetch_count=3, global_qos=True)
        got = _consume_counts(conn, ch, [qa, qb])
        assert pump_until(conn, lambda: _sizes(got) == [2, 1])
        pump(conn, 0.2)
        assert _sizes(got) == [2, 1]  # qa stops at its own 2; the channel stops at 3
        ch.basic_ack(got[qa][0][0].delivery_tag)
        assert pump_until(conn, lambda: sum(_sizes(got)) == 4)
        pump(conn, 0.1)
        assert sum(_sizes(got)) == 4
        unacked = [len(got[qa]) - 1, len(got[qb])]
        assert all(n <= 2 for n in unacked), unacked


def test_per_consumer_qos_after_global_clears_channel_limit(broker: Broker) -> None:
    """RabbitMQ quirk: basic.qos(global=False) removes a channel-wide limit set before it."""
    with pika_channel(broker.url) as (conn, ch):
        qa, qb = _two_queues(ch)
        ch.basic_qos(prefetch_count=3, global_qos=True)
        ch.basic_qos(prefetch_count=2, global_qos=False)
        got = _consume_counts(conn, ch, [qa, qb])
        assert pump_until(conn, lambda: _sizes(got) == [2, 2])
        pump(conn, 0.2)
        assert _sizes(got) == [2, 2]


def test_prefetch_zero_is_unlimited(broker: Broker) -> None:
    """prefetch_count=0 (the default) sets no limit."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 20)
        ch.basic_qos(prefetch_count=0)
        ch.basic_qos(prefetch_count=0, global_qos=True)
        received: list[Delivery] = []
        ch.basic_consume(q, _collector(received))
        assert pump_until(conn, lambda: len(received) == 20)


def test_raising_channel_prefetch_while_consuming_applies_at_once(broker: Broker) -> None:
    """Celery/kombu bump a global prefetch by one for ETA tasks: one more arrives, no ack."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 10)
        ch.basic_qos(prefetch_count=2, global_qos=True)
        received: list[Delivery] = []
        ch.basic_consume(q, _collector(received))
        assert pump_until(conn, lambda: len(received) == 2)
        ch.basic_qos(prefetch_count=3, global_qos=True)
        assert pump_until(conn, lambda: len(received) == 3)
        pump(conn, 0.2)
        assert len(received) == 3
        ch.basic_qos(prefetch_count=0, global_qos=True)
        assert pump_until(conn, lambda: len(received) == 10)


def test_lowering_channel_prefetch_while_consuming_applies_at_once(broker: Broker) -> None:
    """After lowering a global prefetch, deliveries resume only below the new limit."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 10)
        ch.basic_qos(prefetch_count=3, global_qos=True)
        received: list[Delivery] = []
        ch.basic_consume(q, _collector(received))
        assert pump_until(conn, lambda: len(received) == 3)
        ch.basic_qos(prefetch_count=1, global_qos=True)
        ch.basic_ack(received[0][0].delivery_tag)
        pump(conn, 0.2)
        assert len(received) == 3  # 2 still unacked >= 1
        ch.basic_ack(received[2][0].delivery_tag, multiple=True)
        assert pump_until(conn, lambda: len(received) == 4)
        pump(conn, 0.2)
        assert len(received) == 4


@pytest.mark.rabbitmq_only  # Leveret applies it at once: Celery relies on that with global=False
def test_per_consumer_prefetch_is_fixed_at_consume_time(broker: Broker) -> None:
    """Changing global=False qos affects consumers created afterwards, not existing ones."""
    with pika_channel(broker.url) as (conn, ch):
        qa, qb = _two_queues(ch)
        ch.basic_qos(prefetch_count=2)
        got: dict[str, list[Delivery]] = {qa: [], qb: []}
        ch.basic_consume(qa, _collector(got[qa]))
        ch.basic_qos(prefetch_count=4)
        ch.basic_consume(qb, _collector(got[qb]))
        assert pump_until(conn, lambda: _sizes(got) == [2, 4])
        pump(conn, 0.2)
        assert _sizes(got) == [2, 4]
        ch.basic_qos(prefetch_count=1)
        for method, _, _ in got[qa][:2]:
            ch.basic_ack(method.delivery_tag)
        assert pump_until(conn, lambda: _sizes(got) == [4, 4])  # qa still allowed 2
        pump(conn, 0.2)
        assert _sizes(got) == [4, 4]


def test_prefetch_does_not_limit_basic_get_or_no_ack_consumers(broker: Broker) -> None:
    """basic.get and auto-ack consumers ignore prefetch limits."""
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 6)
        ch.basic_qos(prefetch_count=1, global_qos=True)
        assert len(_get(ch, q, 3)) == 3
        received: list[Delivery] = []
        ch.basic_consume(q, _collector(received), auto_ack=True)
        assert pump_until(conn, lambda: len(received) == 3)


def test_prefetch_size_is_not_implemented(broker: Broker) -> None:
    """basic.qos with prefetch_size != 0 closes the connection with 540."""
    for global_qos in (False, True):
        with pika_channel(broker.url) as (conn, ch):
            with pytest.raises(ConnectionClosedByBroker) as exc:
                ch.basic_qos(prefetch_size=1000, prefetch_count=1, global_qos=global_qos)
            assert (exc.value.reply_code, exc.value.reply_text) == (
                540,
                "NOT_IMPLEMENTED - prefetch_size!=0 (1000)",
            )
            assert not conn.is_open


@pytest.mark.leveret_only
def test_per_consumer_prefetch_change_applies_to_existing_consumers(broker: Broker) -> None:
    """Leveret: basic.qos(global=False) also re-limits the channel's existing consumers.

    RabbitMQ fixes a consumer's limit at consume time. kombu treats any broker that is not
    RabbitMQ 3.x as spec-compliant and so Celery sends global=False when it raises the
    prefetch for ETA tasks; with RabbitMQ's rule the bump would never reach the worker.
    """
    with pika_channel(broker.url) as (conn, ch):
        q = _fill(ch, 10)
        ch.basic_qos(prefetch_count=2)
        received: list[Delivery] = []
        ch.basic_consume(q, _collector(received))
        assert pump_until(conn, lambda: len(received) == 2)
        ch.basic_qos(prefetch_count=3)
        assert pump_until(conn, lambda: len(received) == 3)
        pump(conn, 0.2)
        assert len(received) == 3
