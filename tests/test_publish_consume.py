"""basic.publish / consume / get / cancel / return, large bodies, properties and odd names.

Every reply code, reply text and "channel or connection closed" expectation here was
agreed with RabbitMQ 3.10.8 (observed first, then encoded).
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import hashlib
from typing import Any

import aio_pika
import amqp
import amqp.exceptions
import pika
import pytest
from pika.exceptions import ChannelClosedByBroker
from pika_helpers import (
    Broker,
    amqp_connect,
    amqp_drain_until,
    bodies,
    connect,
    message_count,
    pika_channel,
    pump,
    pump_until,
    wait_for_count,
)

pytestmark = pytest.mark.timeout(60)

Delivery = tuple[pika.spec.Basic.Deliver, pika.BasicProperties, bytes]


def _collector(into: list[Delivery]) -> Any:
    """An on_message_callback appending (method, properties, body) to ``into``."""

    def on_message(_ch: Any, method: Any, props: Any, body: bytes) -> None:
        into.append((method, props, body))

    return on_message


# --- publish -----------------------------------------------------------------------------------


def test_publish_to_default_exchange_by_queue_name(broker: Broker, unique: str) -> None:
    """The default exchange delivers to the queue named by the routing key, in order."""
    name = f"{unique}-q"
    with pika_channel(broker.url) as (_conn, ch):
        ch.queue_declare(name, exclusive=True)
        for i in range(3):
            ch.basic_publish("", name, f"m{i}".encode())
        assert wait_for_count(ch, name, 3) == 3
        method, _props, body = ch.basic_get(name, auto_ack=True)
        assert (method.exchange, method.routing_key, body) == ("", name, b"m0")
        assert bodies(ch, name) == [b"m1", b"m2"]


def test_properties_round_trip(broker: Broker) -> None:
    """Every basic property and a mix of header field types arrive unchanged."""
    headers: dict[str, Any] = {
        "s": "str",
        "i": 42,
        "neg": -7,
        "big": 1 << 40,
        "t": True,
        "f": False,
        "n": None,
        "d": {"k": "v", "n": {"x": 1}},
        "l": [1, "a", None, [2]],
        "b": b"\x00\xff",
        "dec": decimal.Decimal("3.14"),
        "ts": datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "u": "ünï",
    }
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=5,
        correlation_id="cid",
        reply_to="rt",
        expiration="60000",
        message_id="mid",
        timestamp=1600000000,
        type="tp",
        user_id="guest",
        app_id="app",
    )
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"body", props)
        assert wait_for_count(ch, q, 1) == 1
        _method, got, body = ch.basic_get(q, auto_ack=True)
    assert body == b"body"
    for field in (
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    ):
        assert getattr(got, field) == getattr(props, field), field
    assert got.headers == headers


@pytest.mark.parametrize("pad", [0, 2000])
def test_repeated_and_changing_properties_arrive_as_sent(broker: Broker, pad: int) -> None:
    """Headers repeated message after message (small ones are remembered per channel) and
    headers that change each time, small or big, all arrive as sent; so do the delivery
    modes of messages whose header bytes differ only there."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        sent = []
        for i in range(120):
            headers = {"same": "x" * pad, "n": i % 3 if i % 2 else i}
            props = pika.BasicProperties(headers=headers, delivery_mode=1 + i % 2,
                                         content_type="text/plain")
            ch.basic_publish("", q, f"m{i}".encode(), props)
            sent.append((f"m{i}".encode(), headers, 1 + i % 2))
        assert wait_for_count(ch, q, len(sent)) == len(sent)
        for body, headers, mode in sent:
            _method, got, got_body = ch.basic_get(q, auto_ack=True)
            assert (got_body, got.headers, got.delivery_mode) == (body, headers, mode)


def test_publish_with_wrong_user_id_is_406(broker: Broker) -> None:
    """user_id must match the authenticated user, else 406 on the channel."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="bob"))
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(q, passive=True)
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was "
            "'guest'",
        )
        assert conn.is_open


def test_mandatory_unroutable_is_returned(broker: Broker, unique: str) -> None:
    """mandatory + no route → basic.return 312 NO_ROUTE carrying the message back."""
    with pika_channel(broker.url) as (conn, ch):
        returned: list[tuple[Any, Any, bytes]] = []
        ch.add_on_return_callback(lambda _ch, m, p, b: returned.append((m, p, b)))
        props = pika.BasicProperties(message_id="m1", headers={"h": "v"})
        ch.basic_publish("amq.direct", f"{unique}-nothing", b"body-1", props, mandatory=True)
        ch.basic_publish("", f"{unique}-noqueue", b"body-2", mandatory=True)
        ch.basic_publish("amq.direct", f"{unique}-nothing", b"dropped", mandatory=False)
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"routed", mandatory=True)
        assert pump_until(conn, lambda: len(returned) >= 2)
        pump(conn, 0.2)
        assert len(returned) == 2
        (m1, p1, b1), (m2, _p2, b2) = returned
        assert (m1.reply_code, m1.reply_text, m1.exchange, m1.routing_key) == (
            312,
            "NO_ROUTE",
            "amq.direct",
            f"{unique}-nothing",
        )
        assert (p1.message_id, p1.headers, b1) == ("m1", {"h": "v"}, b"body-1")
        assert (m2.reply_code, m2.exchange, m2.routing_key, b2) == (
            312,
            "",
            f"{unique}-noqueue",
            b"body-2",
        )
        assert bodies(ch, q) == [b"routed"]


def test_immediate_flag_closes_connection_540(broker: Broker) -> None:
    """immediate=true is not implemented: connection.close 540 NOT_IMPLEMENTED."""
    conn = amqp_connect(broker.url)
    try:
        ch = conn.channel()
        with pytest.raises(amqp.exceptions.AMQPNotImplementedError) as exc:
            ch.basic_publish(
                amqp.Message(b"x"), exchange="amq.direct", routing_key="k", immediate=True
            )
            ch.queue_declare("", exclusive=True)  # round trip to observe the close
        assert exc.value.reply_code == 540
        assert exc.value.reply_text == "NOT_IMPLEMENTED - immediate=true"
        assert not conn.connected, "540 is a connection-level error"
    finally:
        conn.collect()


def test_publish_to_missing_exchange_closes_channel_404(broker: Broker, unique: str) -> None:
    """basic.publish to a missing exchange: channel.close 404, connection stays."""
    name = f"{unique}-nope"
    with pika_channel(broker.url) as (conn, ch):
        ch.basic_publish(name, "k", b"x")
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare("", exclusive=True)
        assert (exc.value.reply_code, exc.value.reply_text) == (
            404,
            f"NOT_FOUND - no exchange '{name}' in vhost '/'",
        )
        assert conn.is_open
        assert conn.channel().is_open


def test_publish_after_its_exchange_was_deleted_is_404(broker: Broker, unique: str) -> None:
    """The same publish bytes that routed a moment ago get 404 once the exchange is gone
    (a channel remembers decoded publishes; it must not remember deleted exchanges).
    Agreed with RabbitMQ 3.10.8."""
    name = f"{unique}-gone"
    with pika_channel(broker.url) as (conn, ch):
        ch.exchange_declare(name, "fanout", auto_delete=False)
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queue, name)
        ch.confirm_delivery()
        for _ in range(3):
            ch.basic_publish(name, "k", b"x", pika.BasicProperties(content_type="a/b"))
        assert message_count(ch, queue) == 3
        ch.exchange_delete(name)
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.basic_publish(name, "k", b"x", pika.BasicProperties(content_type="a/b"))
        assert (exc.value.reply_code, exc.value.reply_text) == (
            404,
            f"NOT_FOUND - no exchange '{name}' in vhost '/'",
        )
        assert conn.is_open


# --- large bodies ------------------------------------------------------------------------------

FRAME_MAX = 131072  # RabbitMQ's default, which pika accepts
BODY_PER_FRAME = FRAME_MAX - 8


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        BODY_PER_FRAME - 1,
        BODY_PER_FRAME,
        BODY_PER_FRAME + 1,
        2 * BODY_PER_FRAME,
        1024 * 1024,
        5 * 1024 * 1024 + 3,
    ],
)
def test_body_sizes_round_trip_byte_exact(broker: Broker, size: int) -> None:
    """Bodies of 0 bytes up to 5 MiB, including frame boundaries, come back byte-exact."""
    body = hashlib.shake_256(str(size).encode()).digest(size) if size else b""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, body)
        ch.basic_publish("", q, body)
        assert wait_for_count(ch, q, 2) == 2
        _method, _props, got = ch.basic_get(q, auto_ack=True)
        assert len(got) == size and got == body
        received: list[Delivery] = []
        ch.basic_consume(q, _collector(received), auto_ack=True)
        assert pump_until(conn, lambda: len(received) == 1, timeout=10)
        assert received[0][2] == body


async def test_large_body_round_trip_aio_pika(broker: Broker) -> None:
    """A 3 MiB body published and consumed by aio-pika is byte-exact."""
    body = hashlib.shake_256(b"aio").digest(3 * 1024 * 1024 + 17)
    connection = await aio_pika.connect(broker.url, timeout=5)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("", exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue.name)
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    assert message.body == body
                break


async def test_float_and_int_header_types_round_trip_aio_pika(broker: Broker) -> None:
    """Header field types pika cannot send (floats) survive the broker unchanged."""
    headers = {"f": 1.5, "neg": -3, "big": 1 << 50, "s": "x", "nested": {"f": 2.25}}
    connection = await aio_pika.connect(broker.url, timeout=5)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("", exclusive=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"h", headers=headers), routing_key=queue.name
        )
        message = await _aio_get(queue)
        assert message.headers == headers


async def _aio_get(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    """basic.get until a message arrives (bounded)."""
    for _ in range(100):
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.02)
    raise AssertionError("no message arrived")


# --- consume -----------------------------------------------------------------------------------


def test_server_generated_consumer_tags(broker: Broker) -> None:
    """basic.consume with an empty tag gets a unique 'amq.ctag-' tag from the server."""
    conn = amqp_connect(broker.url)
    try:
        ch = conn.channel()
        q, _, _ = ch.queue_declare("", exclusive=True)
        deliveries: list[amqp.Message] = []
        tag1 = ch.basic_consume(q, consumer_tag="", callback=deliveries.append)
        tag2 = ch.basic_consume(q, consumer_tag="", callback=deliveries.append)
        assert tag1.startswith("amq.ctag-") and tag2.startswith("amq.ctag-")
        assert tag1 != tag2
        ch.basic_publish(amqp.Message(b"x"), exchange="", routing_key=q)
        amqp_drain_until(conn, lambda: bool(deliveries), timeout=3)
        assert deliveries[0].delivery_info["consumer_tag"] in (tag1, tag2)
        assert ch.basic_cancel(tag1) == tag1
    finally:
        conn.close()


def test_duplicate_consumer_tag_closes_connection_530(broker: Broker, unique: str) -> None:
    """Reusing a consumer tag on one channel is 530 NOT_ALLOWED and closes the connection."""
    tag = f"{unique}-dup"
    conn = amqp_connect(broker.url)
    try:
        ch = conn.channel()
        q1, _, _ = ch.queue_declare("", exclusive=True)
        q2, _, _ = ch.queue_declare("", exclusive=True)
        ch.basic_consume(q1, consumer_tag=tag, callback=lambda _m: None)
        with pytest.raises(amqp.exceptions.NotAllowed) as exc:
            ch.basic_consume(q2, consumer_tag=tag, callback=lambda _m: None)
        assert exc.value.reply_code == 530
        assert exc.value.reply_text == f"NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"
        assert not conn.connected, "530 is a connection-level error"
    finally:
        conn.collect()


def test_same_consumer_tag_on_two_channels_is_fine(broker: Broker, unique: str) -> None:
    """Consumer tags are per channel."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_consume(q, lambda *_: None, consumer_tag=f"{unique}-t")
        other = conn.channel()
        assert other.basic_consume(q, lambda *_: None, consumer_tag=f"{unique}-t") == f"{unique}-t"
        assert ch.queue_declare(q, passive=True).method.consumer_count == 2


def test_consume_from_missing_queue_is_404(broker: Broker, unique: str) -> None:
    """basic.consume and basic.get on a missing queue: 404 on the channel."""
    name = f"{unique}-missing"
    for attempt in ("consume", "get"):
        with pika_channel(broker.url) as (conn, ch):
            with pytest.raises(ChannelClosedByBroker) as exc:
                if attempt == "consume":
                    ch.basic_consume(name, lambda *_: None)
                else:
                    ch.basic_get(name)
            assert (exc.value.reply_code, exc.value.reply_text) == (
                404,
                f"NOT_FOUND - no queue '{name}' in vhost '/'",
            )
            assert conn.is_open


def test_consume_delivers_with_consumer_tag_and_increasing_delivery_tags(broker: Broker) -> None:
    """Deliveries carry the consumer tag, exchange, key and channel-wide tags 1, 2, 3, ..."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"before-get")
        assert wait_for_count(ch, q, 1) == 1
        assert ch.basic_get(q)[0].delivery_tag == 1  # get and consume share the sequence
        received: list[Delivery] = []
        tag = ch.basic_consume(q, _collector(received))
        for i in range(3):
            ch.basic_publish("", q, str(i).encode())
        assert pump_until(conn, lambda: len(received) == 3)
        assert [m.delivery_tag for m, _, _ in received] == [2, 3, 4]
        assert {m.consumer_tag for m, _, _ in received} == {tag}
        assert [(m.exchange, m.routing_key, m.redelivered) for m, _, _ in received] == [
            ("", q, False)
        ] * 3
        assert [b for _, _, b in received] == [b"0", b"1", b"2"]


def test_no_ack_consumer_removes_messages_immediately(broker: Broker) -> None:
    """auto_ack deliveries are settled on send: closing the channel requeues nothing."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        for i in range(5):
            ch.basic_publish("", q, str(i).encode())
        consumer_ch = conn.channel()
        received: list[Delivery] = []
        consumer_ch.basic_consume(q, _collector(received), auto_ack=True)
        assert pump_until(conn, lambda: len(received) == 5)
        consumer_ch.close()
        assert message_count(ch, q) == 0
        assert [b for _, _, b in received] == [b"0", b"1", b"2", b"3", b"4"]


def test_exclusive_consumer_refused_when_queue_has_consumers(broker: Broker) -> None:
    """An exclusive basic.consume on a queue with consumers is 403 (channel closed)."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_consume(q, lambda *_: None)
        other = conn.channel()
        with pytest.raises(ChannelClosedByBroker) as exc:
            other.basic_consume(q, lambda *_: None, exclusive=True)
        assert (exc.value.reply_code, exc.value.reply_text) == (
            403,
            f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use",
        )
        assert ch.is_open and conn.is_open


def test_exclusive_consumer_blocks_other_consumers(broker: Broker) -> None:
    """While an exclusive consumer holds the queue, other consumers (any channel) get 403."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        tag = ch.basic_consume(q, lambda *_: None, exclusive=True)
        other = conn.channel()
        with pytest.raises(ChannelClosedByBroker) as exc:
            other.basic_consume(q, lambda *_: None)
        assert (exc.value.reply_code, exc.value.reply_text) == (
            403,
            f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use",
        )
        ch.basic_cancel(tag)
        # once released, ordinary consumers are welcome again
        conn.channel().basic_consume(q, lambda *_: None)


def test_round_robin_between_two_consumers(broker: Broker) -> None:
    """Two consumers on one queue share deliveries alternately, with nothing duplicated."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        received: dict[str, list[bytes]] = {"a": [], "b": []}
        for name in ("a", "b"):
            conn.channel().basic_consume(
                q,
                lambda _c, _m, _p, body, name=name: received[name].append(body),
                auto_ack=True,
            )
        for i in range(10):
            ch.basic_publish("", q, str(i).encode())
        assert pump_until(conn, lambda: len(received["a"]) + len(received["b"]) == 10)
        assert len(received["a"]) == len(received["b"]) == 5
        assert sorted(received["a"] + received["b"]) == sorted(str(i).encode() for i in range(10))
        parity = {int(b) % 2 for b in received["a"]}
        assert len(parity) == 1, f"deliveries did not alternate: {received}"


def test_cancel_stops_deliveries_and_keeps_unacked(broker: Broker) -> None:
    """After basic.cancel: no more deliveries; unacked ones can still be acked or rejected."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        for i in range(3):
            ch.basic_publish("", q, str(i).encode())
        ch.basic_qos(prefetch_count=2)
        received: list[Delivery] = []
        tag = ch.basic_consume(q, _collector(received))
        assert pump_until(conn, lambda: len(received) == 2)
        ch.basic_cancel(tag)
        assert ch.queue_declare(q, passive=True).method.consumer_count == 0
        ch.basic_ack(received[0][0].delivery_tag)
        ch.basic_reject(received[1][0].delivery_tag, requeue=True)
        assert wait_for_count(ch, q, 2) == 2
        pump(conn, 0.1)
        assert len(received) == 2
        got = [ch.basic_get(q, auto_ack=True) for _ in range(2)]
        assert [(b, m.redelivered) for m, _, b in got] == [(b"1", True), (b"2", False)]


def test_cancel_unknown_consumer_tag_is_ok(broker: Broker) -> None:
    """basic.cancel of an unknown tag is answered with cancel-ok (channel stays open)."""
    conn = amqp_connect(broker.url)
    try:
        ch = conn.channel()
        assert ch.basic_cancel("no-such-consumer") == "no-such-consumer"
        assert ch.is_open
        ch.queue_declare("", exclusive=True)
    finally:
        conn.close()


# --- basic.get --------------------------------------------------------------------------------


def test_get_ok_fields_and_get_empty(broker: Broker, unique: str) -> None:
    """get-ok carries the remaining ready count; an empty queue answers get-empty."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, "amq.direct", unique)
        ch.basic_publish("amq.direct", unique, b"0")
        ch.basic_publish("", q, b"1")
        ch.basic_publish("", q, b"2")
        assert wait_for_count(ch, q, 3) == 3
        seen = []
        for _ in range(3):
            m, _p, b = ch.basic_get(q)
            seen.append((m.message_count, m.delivery_tag, m.redelivered, m.exchange, b))
        assert seen == [
            (2, 1, False, "amq.direct", b"0"),
            (1, 2, False, "", b"1"),
            (0, 3, False, "", b"2"),
        ]
        assert ch.basic_get(q) == (None, None, None)


# --- awkward names ---------------------------------------------------------------------------

NAMES = [
    "a*b",
    "a#b.c",
    "ünï",
    "with space",
    "x" * 255,
    "é" * 127 + "x",  # 255 bytes of UTF-8
    "日本語" * 28 + "x",  # 253 bytes of UTF-8
]


@pytest.mark.parametrize("suffix", NAMES, ids=lambda n: f"len{len(n.encode())}-{n[:6]}")
def test_odd_names_round_trip(broker: Broker, suffix: str) -> None:
    """Queue names / routing keys survive declare-ok, deliver, get-ok and return intact."""
    name = suffix  # used both as queue name and as routing key
    assert len(name.encode()) <= 255
    with pika_channel(broker.url) as (conn, ch):
        assert ch.queue_declare(name, exclusive=True).method.queue == name
        ch.basic_publish("", name, b"via-default")
        assert wait_for_count(ch, name, 1) == 1
        method, _props, _body = ch.basic_get(name, auto_ack=True)
        assert method.routing_key == name
        returned: list[Any] = []
        ch.add_on_return_callback(lambda _c, m, _p, _b: returned.append(m))
        ch.basic_publish("amq.direct", name, b"unroutable", mandatory=True)
        assert pump_until(conn, lambda: bool(returned))
        assert returned[0].routing_key == name
        ch.queue_bind(name, "amq.topic", name)
        ch.basic_publish("amq.topic", name, b"via-topic")
        received: list[Delivery] = []
        ch.basic_consume(name, _collector(received), auto_ack=True)
        assert pump_until(conn, lambda: bool(received))
        assert (received[0][0].exchange, received[0][0].routing_key) == ("amq.topic", name)
        ch.queue_unbind(name, "amq.topic", name)


def test_odd_names_with_py_amqp(broker: Broker) -> None:
    """py-amqp sees the same names on declare-ok and get-ok."""
    conn = amqp_connect(broker.url)
    try:
        ch = conn.channel()
        for name in NAMES:
            declared, _, _ = ch.queue_declare(name, exclusive=True)
            assert declared == name
            ch.basic_publish(amqp.Message(b"x"), exchange="", routing_key=name)
            msg = None
            for _ in range(100):
                msg = ch.basic_get(name, no_ack=True)
                if msg is not None:
                    break
            assert msg is not None and msg.delivery_info["routing_key"] == name
            ch.queue_delete(name)
    finally:
        conn.close()


def test_many_connections_publish_to_one_queue(broker: Broker) -> None:
    """Publishers on separate connections all land in the same queue."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        publishers = [connect(broker.url) for _ in range(3)]
        try:
            for i, pub in enumerate(publishers):
                pub.channel().basic_publish("", q, str(i).encode())
        finally:
            for pub in publishers:
                pub.close()
        assert wait_for_count(ch, q, 3) == 3
        assert sorted(bodies(ch, q)) == [b"0", b"1", b"2"]
