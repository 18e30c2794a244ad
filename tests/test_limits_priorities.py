"""Queue length limits (x-max-length, x-max-length-bytes, x-overflow) and priority queues.

Every expectation here was agreed with RabbitMQ 3.10.8 (observed first, then encoded):

- drop-head (the default): the oldest ready messages are dropped, dead-lettered with reason
  ``maxlen`` when the queue has a DLX; x-max-length-bytes counts body bytes; a message larger
  than the byte limit is dropped itself; x-max-length 0 drops every message;
- reject-publish: a publish into a full queue is refused (basic.nack under publisher
  confirms), never dead-lettered; the accepted ones are acked;
- reject-publish-dlx: refused (nacked) and, in RabbitMQ 3.10, dead-lettered with reason
  ``maxlen``;
- unacknowledged messages do not count toward the limit; when they are requeued into a full
  drop-head queue the limit applies again and the oldest (the requeued ones) are dropped and
  dead-lettered; a reject-publish queue keeps them all;
- argument errors: ``invalid_overflow``, ``{unacceptable_type,signedint}``,
  ``{value_negative,-1}``, ``"expected integer, got longstr"``;
- x-max-priority: higher priority first, FIFO within a priority, a priority above the maximum
  counts as the maximum, no priority counts as 0; the priority property is delivered as sent;
  a requeued message goes back among its own priority; drop-head drops the highest-priority
  message (the head); without x-max-priority the priority is ignored; x-max-priority 0..255
  is accepted, 256 and 300 are ``{max_value_exceeded,N}``, -1 ``{value_negative,-1}``.
"""

from __future__ import annotations

import time
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker, NackError
from pika_helpers import Broker, bodies, message_count, pika_channel, wait_for_count

pytestmark = pytest.mark.timeout(30)


def _dlx(ch: BlockingChannel, unique: str) -> tuple[str, str]:
    """A fanout DLX (auto-delete) and an exclusive queue collecting what it routes."""
    dlx = f"{unique}-dlx"
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    dead = ch.queue_declare(f"{unique}-dead", exclusive=True).method.queue
    ch.queue_bind(dead, dlx)
    return dlx, dead


def _dead_letters(ch: BlockingChannel, dead: str, expected: int) -> list[tuple[bytes, str]]:
    """Wait for ``expected`` dead letters (and a little longer); return (body, reason)."""
    wait_for_count(ch, dead, expected)
    time.sleep(0.05)
    out = []
    while True:
        method, props, body = ch.basic_get(dead, auto_ack=True)
        if method is None:
            return out
        out.append((body, props.headers["x-death"][0]["reason"]))


def _limited(ch: BlockingChannel, unique: str, **arguments: Any) -> tuple[str, str]:
    dlx, dead = _dlx(ch, unique)
    q = ch.queue_declare(
        f"{unique}-q", exclusive=True, arguments={"x-dead-letter-exchange": dlx, **arguments}
    ).method.queue
    return q, dead


# --- length limits -------------------------------------------------------------------------------


def test_max_length_drop_head(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        q, dead = _limited(ch, unique, **{"x-max-length": 3})
        for i in range(5):
            ch.basic_publish("", q, str(i).encode())
        assert bodies(ch, q) == [b"2", b"3", b"4"]
        assert _dead_letters(ch, dead, 2) == [(b"0", "maxlen"), (b"1", "maxlen")]


def test_max_length_bytes_drop_head(broker: Broker, unique: str) -> None:
    """The byte limit counts bodies: 4+4+4 > 10 drops the oldest; then 4+4+2 fits."""
    with pika_channel(broker.url) as (_conn, ch):
        q, dead = _limited(ch, unique, **{"x-max-length-bytes": 10})
        for body in (b"aaaa", b"bbbb", b"cccc", b"dd"):
            ch.basic_publish("", q, body)
        assert bodies(ch, q) == [b"bbbb", b"cccc", b"dd"]
        assert _dead_letters(ch, dead, 1) == [(b"aaaa", "maxlen")]


def test_message_larger_than_byte_limit_is_dropped(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        q, dead = _limited(ch, unique, **{"x-max-length-bytes": 3})
        ch.basic_publish("", q, b"abcd")
        ch.basic_publish("", q, b"abc")
        assert bodies(ch, q) == [b"abc"]
        assert _dead_letters(ch, dead, 1) == [(b"abcd", "maxlen")]


def test_max_length_zero_drops_everything(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        q, dead = _limited(ch, unique, **{"x-max-length": 0})
        ch.basic_publish("", q, b"z")
        assert bodies(ch, q) == []
        assert _dead_letters(ch, dead, 1) == [(b"z", "maxlen")]


def _confirmed(ch: BlockingChannel, q: str, n: int, start: int = 0) -> list[str]:
    out = []
    for i in range(start, start + n):
        try:
            ch.basic_publish("", q, str(i).encode())
            out.append("ack")
        except NackError:
            out.append("nack")
    return out


def test_reject_publish_nacks_refused_messages(broker: Broker, unique: str) -> None:
    """reject-publish: confirms nack the refused publishes; nothing is dead-lettered."""
    with pika_channel(broker.url) as (_conn, ch):
        q, dead = _limited(ch, unique, **{"x-max-length": 2, "x-overflow": "reject-publish"})
        ch.confirm_delivery()
        assert _confirmed(ch, q, 4) == ["ack", "ack", "nack", "nack"]
        assert bodies(ch, q) == [b"0", b"1"]
        assert _confirmed(ch, q, 1, start=9) == ["ack"]  # room again
        assert bodies(ch, q) == [b"9"]
        time.sleep(0.1)
        assert message_count(ch, dead) == 0


def test_reject_publish_byte_limit(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        q, _dead = _limited(ch, unique, **{"x-max-length-bytes": 2, "x-overflow": "reject-publish"})
        ch.confirm_delivery()
        assert _confirmed(ch, q, 3) == ["ack", "ack", "nack"]
        assert bodies(ch, q) == [b"0", b"1"]


def test_reject_publish_dlx_dead_letters_refused(broker: Broker, unique: str) -> None:
    """reject-publish-dlx: refused publishes are nacked and dead-lettered (reason maxlen)."""
    with pika_channel(broker.url) as (_conn, ch):
        q, dead = _limited(ch, unique, **{"x-max-length": 2, "x-overflow": "reject-publish-dlx"})
        ch.confirm_delivery()
        assert _confirmed(ch, q, 4) == ["ack", "ack", "nack", "nack"]
        assert bodies(ch, q) == [b"0", b"1"]
        assert _dead_letters(ch, dead, 2) == [(b"2", "maxlen"), (b"3", "maxlen")]


def test_reject_publish_without_confirms_drops_silently(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (conn, ch):
        q, _dead = _limited(ch, unique, **{"x-max-length": 1, "x-overflow": "reject-publish"})
        for i in range(3):
            ch.basic_publish("", q, str(i).encode())
        assert bodies(ch, q) == [b"0"]
        assert conn.is_open and ch.is_open


def test_reject_publish_one_of_several_queues(broker: Broker, unique: str) -> None:
    """A publish routed to a full reject-publish queue and another queue is still nacked,
    and the other queue gets it."""
    with pika_channel(broker.url) as (_conn, ch):
        fan = f"{unique}-fan"
        ch.exchange_declare(fan, "fanout", auto_delete=True)
        full = ch.queue_declare(
            "", exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        ).method.queue
        other = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(full, fan)
        ch.queue_bind(other, fan)
        ch.confirm_delivery()
        with pytest.raises(NackError):
            ch.basic_publish(fan, "", b"m")
        assert bodies(ch, other) == [b"m"]


def test_unacked_messages_do_not_count(broker: Broker, unique: str) -> None:
    """Only ready messages count; requeueing into a full drop-head queue drops the oldest."""
    with pika_channel(broker.url) as (_conn, ch):
        q, dead = _limited(ch, unique, **{"x-max-length": 2})
        for i in range(2):
            ch.basic_publish("", q, str(i).encode())
        ch.basic_get(q)
        second, _, _ = ch.basic_get(q)
        for i in range(2, 4):  # two unacked + two ready: nothing dropped
            ch.basic_publish("", q, str(i).encode())
        time.sleep(0.1)
        assert message_count(ch, dead) == 0
        ch.basic_publish("", q, b"4")  # three ready: the oldest ready ('2') goes
        assert _dead_letters(ch, dead, 1) == [(b"2", "maxlen")]
        assert message_count(ch, q) == 2
        ch.basic_nack(second.delivery_tag, multiple=True, requeue=True)
        # '0' and '1' go back to the head, over the limit: the two oldest are dropped
        assert _dead_letters(ch, dead, 2) == [(b"0", "maxlen"), (b"1", "maxlen")]
        assert bodies(ch, q) == [b"3", b"4"]


def test_requeue_into_full_reject_publish_queue_keeps_all(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        q, _dead = _limited(ch, unique, **{"x-max-length": 2, "x-overflow": "reject-publish"})
        for i in range(2):
            ch.basic_publish("", q, str(i).encode())
        ch.basic_get(q)
        second, _, _ = ch.basic_get(q)
        for i in range(2, 5):  # '4' is refused
            ch.basic_publish("", q, str(i).encode())
        ch.basic_nack(second.delivery_tag, multiple=True, requeue=True)
        assert bodies(ch, q) == [b"0", b"1", b"2", b"3"]


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"x-overflow": "foo"}, "invalid_overflow"),
        ({"x-overflow": 1}, "{unacceptable_type,signedint}"),
        ({"x-max-length": -1}, "{value_negative,-1}"),
        ({"x-max-length-bytes": "x"}, '"expected integer, got longstr"'),
        ({"x-max-priority": 300}, "{max_value_exceeded,300}"),
        ({"x-max-priority": 256}, "{max_value_exceeded,256}"),
        ({"x-max-priority": -1}, "{value_negative,-1}"),
        ({"x-max-priority": "x"}, '"expected integer, got longstr"'),
    ],
)
def test_invalid_limit_arguments_are_406(
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


# --- priorities ----------------------------------------------------------------------------------


def _publish_prioritised(ch: BlockingChannel, q: str, items: list[tuple[str, int | None]]) -> None:
    for body, priority in items:
        ch.basic_publish("", q, body.encode(), pika.BasicProperties(priority=priority))


def test_priority_order(broker: Broker) -> None:
    """Highest first, FIFO within a priority, above max = max, none = 0."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True, arguments={"x-max-priority": 5}).method.queue
        _publish_prioritised(
            ch,
            q,
            [
                ("a", None),
                ("b", 1),
                ("c", 5),
                ("d", 9),
                ("e", 0),
                ("f", 5),
                ("g", 255),
                ("h", 3),
                ("i", None),
            ],
        )
        assert bodies(ch, q) == [b"c", b"d", b"f", b"g", b"h", b"b", b"a", b"e", b"i"]


def test_priority_property_is_delivered_as_sent(broker: Broker) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True, arguments={"x-max-priority": 5}).method.queue
        _publish_prioritised(ch, q, [("x", 9)])
        method, props, _ = ch.basic_get(q, auto_ack=True)
        assert method is not None and props.priority == 9


def test_priority_requeue_returns_to_its_level(broker: Broker) -> None:
    """A requeued message goes back ahead of later messages of its own priority."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True, arguments={"x-max-priority": 5}).method.queue
        _publish_prioritised(ch, q, [("l", 1), ("h", 4), ("h2", 4)])
        first, _, body = ch.basic_get(q)
        assert body == b"h"
        _publish_prioritised(ch, q, [("h3", 4)])
        ch.basic_nack(first.delivery_tag, requeue=True)
        assert bodies(ch, q) == [b"h", b"h2", b"h3", b"l"]


def test_priority_ignored_without_max_priority(broker: Broker) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        _publish_prioritised(ch, q, [("a", 1), ("b", 9)])
        assert bodies(ch, q) == [b"a", b"b"]


def test_priority_order_to_a_consumer(broker: Broker) -> None:
    """A consumer that starts after the messages arrive gets them in priority order."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True, arguments={"x-max-priority": 3}).method.queue
        _publish_prioritised(ch, q, [("a", 0), ("b", 2), ("c", 3), ("d", 2), ("e", None)])
        assert wait_for_count(ch, q, 5) == 5
        got: list[bytes] = []
        ch.basic_consume(q, lambda _c, _m, _p, b: got.append(b), auto_ack=True)
        deadline = time.monotonic() + 3
        while len(got) < 5 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        assert got == [b"c", b"b", b"d", b"a", b"e"]


def test_priority_queue_drop_head_drops_highest_priority(broker: Broker, unique: str) -> None:
    """The head of a priority queue is its highest-priority message: that is what drop-head
    drops."""
    with pika_channel(broker.url) as (_conn, ch):
        q, dead = _limited(ch, unique, **{"x-max-priority": 2, "x-max-length": 2})
        _publish_prioritised(ch, q, [("a", 0), ("b", 2), ("c", 1)])
        assert _dead_letters(ch, dead, 1) == [(b"b", "maxlen")]
        assert bodies(ch, q) == [b"c", b"a"]


@pytest.mark.parametrize("value", [0, 1, 255])
def test_valid_max_priority_accepted(broker: Broker, value: int) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        ch.queue_declare("", exclusive=True, arguments={"x-max-priority": value})
