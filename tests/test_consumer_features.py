"""Consumer priorities (x-priority), single active consumer, and Leveret's consumer timeout.

Every expectation not marked ``leveret_only`` was agreed with RabbitMQ 3.10.8 (observed
first, then encoded):

- consumer priorities: a message goes to the highest-priority consumer that has credit; a
  lower one gets messages only while every higher one is blocked (prefetch used up); with
  unlimited prefetch the highest one gets everything; no x-priority means 0, and a negative
  priority ranks below it; a non-integer x-priority is refused with 406 'invalid arg
  'x-priority' for queue ...: "expected integer, got longstr"';
- single active consumer (x-single-active-consumer=true): only the first registered consumer
  receives; when it cancels (or its channel closes) the next one takes over, and its unacked
  messages are redelivered to the new active consumer, in order; a non-boolean value is
  ``{unacceptable_type,...}``.

Exclusive-consumer refusal (403) is covered in the basic conformance tests.

The consumer timeout tests are Leveret-only: RabbitMQ 3.10 closes the whole channel (406)
when a delivery stays unacknowledged past ``consumer_timeout`` and has no per-queue
x-consumer-timeout; Leveret cancels just that consumer (basic.cancel), requeues its unacked
messages and keeps the channel open, ignoring a late ack of a timed-out delivery.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker
from pika_helpers import Broker, connect, pika_channel, pump, pump_until

pytestmark = pytest.mark.timeout(30)

Got = list[tuple[str, bytes, int, bool, BlockingChannel]]


def _consumer(
    conn: BlockingConnection,
    queue: str,
    name: str,
    got: Got,
    prefetch: int = 1,
    arguments: dict[str, Any] | None = None,
    auto_ack: bool = False,
) -> tuple[BlockingChannel, str]:
    """A consumer on its own channel; deliveries are appended to ``got``."""
    ch = conn.channel()
    if prefetch:
        ch.basic_qos(prefetch_count=prefetch)

    def on_message(c: BlockingChannel, method: Any, _props: Any, body: bytes) -> None:
        got.append((name, body, method.delivery_tag, bool(method.redelivered), c))

    tag = ch.basic_consume(queue, on_message, auto_ack=auto_ack, arguments=arguments)
    return ch, tag


def _who(got: Got) -> dict[bytes, str]:
    return {body: name for name, body, *_ in got}


# --- consumer priorities -------------------------------------------------------------------------


def test_highest_priority_consumer_with_credit_wins(broker: Broker) -> None:
    """prefetch 1: high gets the first message; while it is blocked the next goes to the
    best of the rest (low, priority 1, over mid, no priority); once high acks, high again."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        got: Got = []
        _consumer(conn, q, "low", got, arguments={"x-priority": 1})
        _consumer(conn, q, "high", got, arguments={"x-priority": 10})
        _consumer(conn, q, "mid", got)
        ch.basic_publish("", q, b"0")
        assert pump_until(conn, lambda: len(got) == 1)
        ch.basic_publish("", q, b"1")
        assert pump_until(conn, lambda: len(got) == 2)
        pump(conn, 0.1)
        assert _who(got) == {b"0": "high", b"1": "low"}
        for name, _body, tag, _redelivered, c in list(got):
            if name == "high":
                c.basic_ack(tag)
        pump(conn, 0.1)
        ch.basic_publish("", q, b"2")
        assert pump_until(conn, lambda: len(got) == 3)
        ch.basic_publish("", q, b"3")  # high and low are both blocked now: mid
        assert pump_until(conn, lambda: len(got) == 4)
        pump(conn, 0.1)
        assert _who(got) == {b"0": "high", b"1": "low", b"2": "high", b"3": "mid"}


def test_unlimited_prefetch_highest_priority_gets_everything(broker: Broker) -> None:
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        got: Got = []
        _consumer(conn, q, "low", got, prefetch=0, arguments={"x-priority": 1}, auto_ack=True)
        _consumer(conn, q, "high", got, prefetch=0, arguments={"x-priority": 5}, auto_ack=True)
        for i in range(6):
            ch.basic_publish("", q, str(i).encode())
        assert pump_until(conn, lambda: len(got) == 6)
        pump(conn, 0.1)
        assert {name for name, *_ in got} == {"high"}


def test_negative_priority_ranks_below_default(broker: Broker) -> None:
    """x-priority -5 (registered first) gets a message only when the default one is blocked."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        got: Got = []
        _consumer(conn, q, "negative", got, arguments={"x-priority": -5})
        _consumer(conn, q, "default", got)
        ch.basic_publish("", q, b"0")
        assert pump_until(conn, lambda: len(got) == 1)
        ch.basic_publish("", q, b"1")
        assert pump_until(conn, lambda: len(got) == 2)
        assert _who(got) == {b"0": "default", b"1": "negative"}


def test_lower_priority_consumer_gets_nothing_while_higher_has_credit(broker: Broker) -> None:
    """prefetch 3 on the high one: the first three go there, the fourth to the low one."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        got: Got = []
        _consumer(conn, q, "low", got, prefetch=10)
        _consumer(conn, q, "high", got, prefetch=3, arguments={"x-priority": 2})
        for i in range(4):
            ch.basic_publish("", q, str(i).encode())
            assert pump_until(conn, lambda i=i: len(got) == i + 1)
        assert _who(got) == {b"0": "high", b"1": "high", b"2": "high", b"3": "low"}


def test_invalid_consumer_priority_is_406(broker: Broker) -> None:
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.basic_consume(q, lambda *_: None, arguments={"x-priority": "x"})
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in vhost '/': "
            '"expected integer, got longstr"',
        )
        assert conn.is_open


# --- single active consumer ----------------------------------------------------------------------


def _sac_queue(ch: BlockingChannel) -> str:
    return ch.queue_declare(
        "", exclusive=True, arguments={"x-single-active-consumer": True}
    ).method.queue


def test_single_active_consumer_only_first_receives(broker: Broker) -> None:
    """Only the first consumer receives, even with credit elsewhere; after it cancels the
    second takes over, and after the second's channel closes, the third."""
    with pika_channel(broker.url) as (conn, ch):
        q = _sac_queue(ch)
        got: Got = []
        chans = {}
        for name in ("first", "second", "third"):
            chans[name] = _consumer(conn, q, name, got, prefetch=0, auto_ack=True)
        for i in range(4):
            ch.basic_publish("", q, str(i).encode())
        assert pump_until(conn, lambda: len(got) == 4)
        pump(conn, 0.1)
        assert [(name, body) for name, body, *_ in got] == [
            ("first", str(i).encode()) for i in range(4)
        ]
        first_ch, first_tag = chans["first"]
        first_ch.basic_cancel(first_tag)
        for i in range(4, 6):
            ch.basic_publish("", q, str(i).encode())
        assert pump_until(conn, lambda: len(got) == 6)
        chans["second"][0].close()
        ch.basic_publish("", q, b"6")
        assert pump_until(conn, lambda: len(got) == 7)
        pump(conn, 0.1)
        assert [(name, body) for name, body, *_ in got[4:]] == [
            ("second", b"4"),
            ("second", b"5"),
            ("third", b"6"),
        ]


def test_single_active_consumer_unacked_go_to_next(broker: Broker) -> None:
    """The active consumer's channel closes with unacked messages: the next consumer gets
    them, redelivered, in order."""
    with pika_channel(broker.url) as (conn, ch):
        q = _sac_queue(ch)
        got: Got = []
        a_ch, _ = _consumer(conn, q, "a", got, prefetch=0)
        _consumer(conn, q, "b", got, prefetch=0)
        for i in range(2):
            ch.basic_publish("", q, str(i).encode())
        assert pump_until(conn, lambda: len(got) == 2)
        a_ch.close()
        assert pump_until(conn, lambda: len(got) == 4)
        assert [(name, body, redelivered) for name, body, _tag, redelivered, _c in got] == [
            ("a", b"0", False),
            ("a", b"1", False),
            ("b", b"0", True),
            ("b", b"1", True),
        ]


@pytest.mark.parametrize(("value", "kind"), [("yes", "longstr"), (1, "signedint")])
def test_single_active_consumer_wrong_type_is_406(
    broker: Broker, unique: str, value: object, kind: str
) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(unique, exclusive=True, arguments={"x-single-active-consumer": value})
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            f"PRECONDITION_FAILED - invalid arg 'x-single-active-consumer' for queue "
            f"'{unique}' in vhost '/': {{unacceptable_type,{kind}}}",
        )


# --- consumer timeout (Leveret only) -------------------------------------------------------------


def _check_consumer_timeout(url: str, timeout: float, queue_args: dict[str, Any]) -> None:
    """A holds a delivery past ``timeout`` (s): cancelled by the broker, the message goes to
    B redelivered, A's channel stays open and a late ack of the old tag is harmless."""
    conn = connect(url)
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True, arguments=queue_args).method.queue
        held: Got = []
        a_ch, a_tag = _consumer(conn, q, "a", held)
        cancelled: list[tuple[str, float]] = []
        a_ch.add_on_cancel_callback(
            lambda frame: cancelled.append((frame.method.consumer_tag, time.monotonic()))
        )
        ch.basic_publish("", q, b"m")
        assert pump_until(conn, lambda: len(held) == 1)
        delivered_at = time.monotonic()
        got: list[tuple[bytes, bool]] = []

        def on_b(c: BlockingChannel, method: Any, _props: Any, body: bytes) -> None:
            got.append((body, bool(method.redelivered)))
            c.basic_ack(method.delivery_tag)

        b_ch = conn.channel()
        b_ch.basic_consume(q, on_b)
        assert pump_until(conn, lambda: bool(cancelled) and bool(got), timeout=timeout + 3.0), (
            cancelled,
            got,
        )
        assert cancelled[0][0] == a_tag
        assert cancelled[0][1] - delivered_at >= timeout * 0.9
        assert got == [(b"m", True)]
        a_ch.basic_ack(held[0][2])  # late ack of the timed-out delivery
        a_ch.basic_qos(prefetch_count=1)  # round trip: the channel is still open
        assert a_ch.is_open and conn.is_open
        ch.basic_publish("", q, b"n")  # A is cancelled: B gets the next one
        assert pump_until(conn, lambda: len(got) == 2)
        pump(conn, 0.1)
        assert got == [(b"m", True), (b"n", False)]
        assert len(held) == 1
    finally:
        if conn.is_open:
            conn.close()


@pytest.mark.leveret_only
def test_broker_consumer_timeout_cancels_consumer() -> None:
    """BrokerConfig.consumer_timeout (seconds) on a broker of its own."""
    from leveret.broker.embedded import EmbeddedBroker

    with EmbeddedBroker(port=0, consumer_timeout=0.5) as embedded:
        _check_consumer_timeout(embedded.url, 0.5, {})


@pytest.mark.leveret_only
def test_queue_consumer_timeout_argument(broker: Broker) -> None:
    """x-consumer-timeout (ms) on the queue, on the shared broker (no broker-wide timeout)."""
    _check_consumer_timeout(broker.url, 0.3, {"x-consumer-timeout": 300})


@pytest.mark.leveret_only
def test_consumer_that_acks_in_time_is_not_cancelled(broker: Broker) -> None:
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True, arguments={"x-consumer-timeout": 200}).method.queue
        cancelled: list[Any] = []
        ch.add_on_cancel_callback(cancelled.append)
        got: list[bytes] = []

        def on_message(c: BlockingChannel, method: Any, _props: Any, body: bytes) -> None:
            got.append(body)
            c.basic_ack(method.delivery_tag)

        ch.basic_consume(q, on_message)
        for i in range(5):
            ch.basic_publish("", q, str(i).encode())
            pump(conn, 0.1)
        pump(conn, 0.4)
        assert got == [str(i).encode() for i in range(5)]
        assert cancelled == []


@pytest.mark.leveret_only
def test_multiple_ack_naming_a_timed_out_tag_settles_the_earlier_tags(broker: Broker) -> None:
    """ack(multiple) with the tag of a delivery the consumer timeout took back still settles
    the channel's earlier deliveries (it was once ignored entirely)."""
    with pika_channel(broker.url) as (conn, ch):
        kept = ch.queue_declare("", exclusive=True).method.queue
        timed = ch.queue_declare("", exclusive=True,
                                 arguments={"x-consumer-timeout": 200}).method.queue
        ch.basic_publish("", kept, b"early")
        ch.basic_publish("", timed, b"late")
        early = ch.basic_get(kept)[0]  # tag 1, on a queue without a timeout
        got: list[Any] = []
        cancelled: list[Any] = []
        ch.add_on_cancel_callback(cancelled.append)
        ch.basic_consume(timed, lambda c, m, p, b: got.append(m))  # tag 2, times out
        assert pump_until(conn, lambda: bool(got) and bool(cancelled), timeout=5)
        assert got[0].delivery_tag > early.delivery_tag
        ch.basic_ack(got[0].delivery_tag, multiple=True)
        ch.basic_recover(requeue=True)  # anything still unacked goes back to its queue
        assert ch.queue_declare(kept, passive=True).method.message_count == 0, (
            "the earlier delivery was left unacked")
        assert ch.queue_declare(timed, passive=True).method.message_count == 1
