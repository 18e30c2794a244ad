"""Message TTL (x-message-ttl, the expiration property) and queue expiry (x-expires).

Every expectation here was agreed with RabbitMQ 3.10.8 (observed first, then encoded):

- the lower of the queue TTL and the message's expiration wins; an expired message is never
  delivered, to basic.get or to a consumer;
- an invalid expiration closes the channel with 406 'PRECONDITION_FAILED - invalid
  expiration ...' (``no_integer``, ``{value_negative,-1}``, ``{leftover_string,".5"}``);
  '+5' is accepted;
- TTL 0: delivered when a consumer is waiting with credit, dropped otherwise; the delivered
  message keeps its expiration property ('0');
- an expired message goes to the dead-letter exchange with reason ``expired``;
- a requeued message keeps its original expiry (requeued after it passed: never seen again);
- x-expires: an unused queue is deleted after the period; a consumer keeps it; basic.get,
  queue.declare (also passive) restart the period; publishing and purging do not.

Queue-expiry checks probe each queue only once (a passive declare restarts the period).
"""

from __future__ import annotations

import time
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker
from pika_helpers import (
    Broker,
    bodies,
    connect,
    pika_channel,
    pump,
    pump_until,
    queue_exists,
)

pytestmark = pytest.mark.timeout(30)


def _get_wait(ch: BlockingChannel, queue: str, timeout: float = 2.0) -> tuple[Any, Any, bytes]:
    """basic.get (auto-ack) until a message comes or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is not None or time.monotonic() >= deadline:
            return method, props, body
        time.sleep(0.01)


def _exp(ms: int | str) -> pika.BasicProperties:
    return pika.BasicProperties(expiration=str(ms))


# --- message TTL ---------------------------------------------------------------------------------


def test_queue_ttl_expires_messages(broker: Broker) -> None:
    """x-message-ttl: a message is there before the TTL passes and gone after."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True, arguments={"x-message-ttl": 150}).method.queue
        ch.basic_publish("", q, b"early")
        assert bodies(ch, q) == [b"early"]
        ch.basic_publish("", q, b"late")
        time.sleep(0.4)
        assert bodies(ch, q) == []


def test_per_message_expiration(broker: Broker) -> None:
    """The expiration property (ms, as a string) expires one message; others stay."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"short", _exp(100))
        ch.basic_publish("", q, b"plain")
        ch.basic_publish("", q, b"long", _exp(60000))
        time.sleep(0.3)
        assert bodies(ch, q) == [b"plain", b"long"]


@pytest.mark.parametrize(
    ("queue_ttl", "expiration"),
    [(100, 60000), (60000, 100)],
    ids=["queue-ttl-lower", "message-ttl-lower"],
)
def test_lower_ttl_wins(broker: Broker, queue_ttl: int, expiration: int) -> None:
    """With both a queue TTL and an expiration, the lower one applies."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True, arguments={"x-message-ttl": queue_ttl})
        name = q.method.queue
        ch.basic_publish("", name, b"m", _exp(expiration))
        time.sleep(0.35)
        assert bodies(ch, name) == []


def test_higher_message_expiration_does_not_extend_queue_ttl(broker: Broker) -> None:
    """A message expiration above the queue TTL does not keep it longer than the queue TTL."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True, arguments={"x-message-ttl": 150}).method.queue
        ch.basic_publish("", q, b"m", _exp(60000))
        ch.basic_publish("", q, b"n", _exp(50))
        ch.basic_publish("", q, b"o")
        time.sleep(0.35)
        assert bodies(ch, q) == []


def test_expired_messages_never_reach_a_blocked_consumer(broker: Broker) -> None:
    """A consumer out of credit while messages expire never receives them afterwards."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True, arguments={"x-message-ttl": 150}).method.queue
        ch.basic_qos(prefetch_count=1)
        got: list[tuple[int, bytes]] = []
        ch.basic_consume(q, lambda _c, m, _p, b: got.append((m.delivery_tag, b)))
        for i in range(3):
            ch.basic_publish("", q, str(i).encode())
        assert pump_until(conn, lambda: len(got) == 1)
        pump(conn, 0.3)  # '1' and '2' expire while the consumer holds '0'
        ch.basic_ack(got[0][0])
        pump(conn, 0.3)
        assert [b for _, b in got] == [b"0"]


def test_expired_message_never_returned_by_get(broker: Broker) -> None:
    """basic.get skips expired heads and returns the first live message, then get-empty."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"a", _exp(50))
        ch.basic_publish("", q, b"b", _exp(50))
        ch.basic_publish("", q, b"keep")
        time.sleep(0.25)
        method, _props, body = ch.basic_get(q, auto_ack=True)
        assert method is not None and body == b"keep"
        assert method.message_count == 0
        assert ch.basic_get(q, auto_ack=True)[0] is None


@pytest.mark.parametrize("how", ["get", "consume"])
def test_expired_message_behind_a_message_without_ttl(broker: Broker, how: str) -> None:
    """An expired message waiting behind one that never expires is still never delivered."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"plain")
        ch.basic_publish("", q, b"short", _exp(50))
        ch.basic_publish("", q, b"later")
        time.sleep(0.2)
        if how == "get":
            assert bodies(ch, q) == [b"plain", b"later"]
        else:
            got: list[bytes] = []
            ch.basic_consume(q, lambda _c, _m, _p, b: got.append(b), auto_ack=True)
            assert pump_until(conn, lambda: len(got) >= 2)
            pump(conn, 0.1)
            assert got == [b"plain", b"later"]


@pytest.mark.parametrize(
    ("expiration", "problem"),
    [
        ("abc", "no_integer"),
        ("-1", "{value_negative,-1}"),
        ("1.5", '{leftover_string,".5"}'),
        ("", "no_integer"),
        (" 5", "no_integer"),
        ("5 ", '{leftover_string," "}'),
    ],
)
def test_invalid_expiration_is_406(broker: Broker, expiration: str, problem: str) -> None:
    """An expiration that is not a non-negative integer string closes the channel (406)."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"x", _exp(expiration))
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(q, passive=True)
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            f"PRECONDITION_FAILED - invalid expiration '{expiration}': {problem}",
        )
        assert conn.is_open
        assert bodies(conn.channel(), q) == []


def test_expiration_with_plus_sign_is_accepted(broker: Broker) -> None:
    """A leading '+' is accepted: '+60000' is 60000 ms."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"x", _exp("+60000"))
        assert bodies(ch, q) == [b"x"]


def test_ttl_zero_without_consumer_is_dropped(broker: Broker) -> None:
    """TTL 0 (per message or per queue) with nobody waiting: the message is gone at once."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"m", _exp(0))
        q0 = ch.queue_declare("", exclusive=True, arguments={"x-message-ttl": 0}).method.queue
        ch.basic_publish("", q0, b"m")
        time.sleep(0.05)
        assert bodies(ch, q) == []
        assert bodies(ch, q0) == []


def test_ttl_zero_with_waiting_consumer_is_delivered(broker: Broker) -> None:
    """TTL 0 reaches a consumer that can take it now; the expiration property is kept."""
    with pika_channel(broker.url) as (conn, ch):
        got: list[tuple[bytes, str | None]] = []

        def on_message(_c: Any, _m: Any, props: Any, body: bytes) -> None:
            got.append((body, props.expiration))

        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_consume(q, on_message, auto_ack=True)
        q0 = ch.queue_declare("", exclusive=True, arguments={"x-message-ttl": 0}).method.queue
        ch.basic_consume(q0, on_message, auto_ack=True)
        ch.basic_publish("", q, b"per-message", _exp(0))
        ch.basic_publish("", q0, b"per-queue")
        assert pump_until(conn, lambda: len(got) == 2)
        assert sorted(got) == [(b"per-message", "0"), (b"per-queue", None)]


def test_ttl_zero_consumer_without_credit_drops(broker: Broker) -> None:
    """TTL 0 while the only consumer has no credit left: dropped, never delivered later."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True, arguments={"x-message-ttl": 0}).method.queue
        ch.basic_qos(prefetch_count=1)
        got: list[tuple[int, bytes]] = []
        ch.basic_consume(q, lambda _c, m, _p, b: got.append((m.delivery_tag, b)))
        ch.basic_publish("", q, b"a")
        assert pump_until(conn, lambda: len(got) == 1)
        ch.basic_publish("", q, b"b")  # the consumer is blocked: b expires at once
        pump(conn, 0.1)
        ch.basic_ack(got[0][0])
        pump(conn, 0.2)
        assert [b for _, b in got] == [b"a"]


def test_expired_message_is_dead_lettered_with_reason_expired(broker: Broker, unique: str) -> None:
    """With a DLX, an expired message is republished there with x-death reason 'expired'."""
    with pika_channel(broker.url) as (_conn, ch):
        dlx = f"{unique}-dlx"
        ch.exchange_declare(dlx, "fanout", auto_delete=True)
        dead = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(dead, dlx)
        q = ch.queue_declare(
            f"{unique}-q", exclusive=True, arguments={"x-dead-letter-exchange": dlx}
        ).method.queue
        ch.basic_publish("", q, b"m", _exp(50))
        method, props, body = _get_wait(ch, dead)
        assert method is not None and body == b"m"
        (death,) = props.headers["x-death"]
        assert (death["reason"], death["queue"], death["original-expiration"]) == (
            "expired",
            q,
            "50",
        )
        assert props.expiration is None


@pytest.mark.parametrize("how", ["queue-ttl", "expiration"])
def test_requeue_after_expiry_drops(broker: Broker, how: str) -> None:
    """A message requeued after its TTL passed (while it was unacked) is not seen again."""
    with pika_channel(broker.url) as (_conn, ch):
        args = {"x-message-ttl": 150} if how == "queue-ttl" else {}
        q = ch.queue_declare("", exclusive=True, arguments=args).method.queue
        ch.basic_publish("", q, b"m", _exp(150) if how == "expiration" else None)
        method, props, _ = ch.basic_get(q)
        assert method is not None
        if how == "expiration":
            assert props.expiration == "150"
        time.sleep(0.3)
        ch.basic_nack(method.delivery_tag, requeue=True)
        assert ch.basic_get(q, auto_ack=True)[0] is None


def test_requeue_keeps_original_expiry(broker: Broker) -> None:
    """Requeued before the TTL passes: redelivered, but it still expires at the original time."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True, arguments={"x-message-ttl": 300}).method.queue
        ch.basic_publish("", q, b"m")
        start = time.monotonic()
        method, _, _ = ch.basic_get(q)
        assert method is not None
        ch.basic_nack(method.delivery_tag, requeue=True)
        again, _, body = ch.basic_get(q)
        assert again is not None and again.redelivered and body == b"m"
        ch.basic_nack(again.delivery_tag, requeue=True)
        time.sleep(max(0.0, start + 0.45 - time.monotonic()))
        assert ch.basic_get(q, auto_ack=True)[0] is None


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"x-message-ttl": -1}, "{value_negative,-1}"),
        ({"x-message-ttl": "x"}, '"expected integer, got longstr"'),
        ({"x-expires": 0}, "{value_zero,0}"),
        ({"x-expires": -5}, "{value_negative,-5}"),
        ({"x-expires": "x"}, '"expected integer, got longstr"'),
    ],
)
def test_invalid_ttl_arguments_are_406(
    broker: Broker, unique: str, arguments: dict[str, Any], problem: str
) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(unique, exclusive=True, arguments=arguments)
        (name,) = arguments
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            f"PRECONDITION_FAILED - invalid arg '{name}' for queue '{unique}' in vhost '/': "
            f"{problem}",
        )


# --- queue expiry (x-expires) --------------------------------------------------------------------


def _cleanup(url: str, queue: str) -> None:
    with pika_channel(url) as (_conn, ch):
        ch.queue_delete(queue)


def test_unused_queue_expires(broker: Broker, unique: str) -> None:
    """x-expires: a queue nobody uses is deleted once the period has passed."""
    q = f"{unique}-exp"
    try:
        with pika_channel(broker.url) as (_conn, ch):
            ch.queue_declare(q, arguments={"x-expires": 150})
        time.sleep(0.5)
        assert not queue_exists(broker.url, q)
    finally:
        _cleanup(broker.url, q)


def test_queue_with_consumer_does_not_expire(broker: Broker, unique: str) -> None:
    """A consumer keeps the queue alive; once it cancels, the period starts again."""
    q = f"{unique}-exp"
    try:
        with pika_channel(broker.url) as (conn, ch):
            ch.queue_declare(q, arguments={"x-expires": 150})
            tag = ch.basic_consume(q, lambda *_: None)
            pump(conn, 0.4)
            assert queue_exists(broker.url, q)
            ch.basic_cancel(tag)
            time.sleep(0.45)
            assert not queue_exists(broker.url, q)
    finally:
        _cleanup(broker.url, q)


@pytest.mark.parametrize("use", ["get", "redeclare", "passive-declare"])
def test_use_restarts_expiry_period(broker: Broker, unique: str, use: str) -> None:
    """basic.get and queue.declare (passive too) restart the x-expires period."""
    q = f"{unique}-exp"
    try:
        with pika_channel(broker.url) as (_conn, ch):
            ch.queue_declare(q, arguments={"x-expires": 250})
            for i in range(5):  # 500 ms in all, never 250 ms without a use
                time.sleep(0.1)
                try:
                    if use == "get":
                        ch.basic_get(q)
                    elif use == "redeclare":
                        ch.queue_declare(q, arguments={"x-expires": 250})
                    else:
                        ch.queue_declare(q, passive=True)
                except ChannelClosedByBroker as exc:
                    pytest.fail(f"queue expired although used every 100 ms ({use} {i}): {exc}")
            time.sleep(0.1)
            alive = queue_exists(broker.url, q)
            time.sleep(0.5)
            gone = not queue_exists(broker.url, q)
        assert (alive, gone) == (True, True)
    finally:
        _cleanup(broker.url, q)


@pytest.mark.parametrize("action", ["publish", "purge"])
def test_publish_and_purge_do_not_restart_expiry(broker: Broker, unique: str, action: str) -> None:
    """Publishing to a queue or purging it is not a use: the queue still expires."""
    q = f"{unique}-exp"
    try:
        with pika_channel(broker.url) as (conn, ch):
            ch.queue_declare(q, arguments={"x-expires": 300})
            deleted = False
            for _ in range(4):
                time.sleep(0.15)
                try:
                    if action == "publish":
                        ch.basic_publish("", q, b"x")
                    else:
                        ch.queue_purge(q)
                except ChannelClosedByBroker as exc:  # purge of the deleted queue: 404
                    assert exc.reply_code == 404
                    deleted = True
                    break
            if not deleted:
                time.sleep(0.2)
                deleted = not queue_exists(broker.url, q)
            assert deleted
            assert conn.is_open
    finally:
        _cleanup(broker.url, q)


def test_expired_queue_with_messages_is_deleted(broker: Broker, unique: str) -> None:
    """Messages in a queue do not keep it alive."""
    q = f"{unique}-exp"
    try:
        conn = connect(broker.url)
        try:
            ch = conn.channel()
            ch.queue_declare(q, arguments={"x-expires": 150})
            for i in range(3):
                ch.basic_publish("", q, str(i).encode())
        finally:
            conn.close()
        time.sleep(0.5)
        assert not queue_exists(broker.url, q)
    finally:
        _cleanup(broker.url, q)
