"""Dead-lettering: x-dead-letter-exchange, x-dead-letter-routing-key, reasons and x-death.

Every expectation here was agreed with RabbitMQ 3.10.8 (observed first, then encoded):

- reasons: ``rejected`` (basic.reject and basic.nack with requeue=false), ``expired``,
  ``maxlen``; the message is republished to the DLX with the queue's dead-letter routing key,
  or its own routing key when the queue has none;
- the x-death header is an array of tables, most recent first, one per (queue, reason), with
  ``count`` (a long, field type 'l'), ``reason``, ``queue``, ``time`` (a timestamp),
  ``exchange`` and ``routing-keys`` (the original routing key followed by the CC keys), plus
  ``original-expiration`` when the message had an expiration; the expiration property itself
  is removed; other properties and headers are kept;
- ``x-first-death-queue``, ``x-first-death-reason`` and ``x-first-death-exchange`` are set by
  the first dead-lettering and never changed (RabbitMQ 3.13 and Leveret also set
  ``x-last-death-*``; these tests do not look at them);
- going round again for the same (queue, reason) increments that entry's count and moves it to
  the front;
- a cycle with no rejection on the way (expired in q1 -> q2 -> expired -> q1) is dropped at the
  queue it would re-enter; a cycle with a rejection goes on;
- a dead letter is routed by its routing key and its CC and BCC keys, unless the queue has
  x-dead-letter-routing-key: then by that key alone, and the CC header is removed;
- a queue may dead-letter into itself (DLX '' and its own name as routing key): rejections
  go round, an expiry is dropped;
- a DLX that does not exist drops the message silently;
- ``x-dead-letter-routing-key`` without ``x-dead-letter-exchange`` is refused (406
  ``routing_key_but_no_dlx_defined``) and a non-string one is ``{unacceptable_type,...}``.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker
from pika_helpers import Broker, bodies, message_count, pika_channel, wait_for_count

pytestmark = pytest.mark.timeout(30)

DEATH_KEYS = {"count", "reason", "queue", "time", "exchange", "routing-keys"}


def _get_wait(
    ch: BlockingChannel, queue: str, timeout: float = 2.0, auto_ack: bool = True
) -> tuple[Any, Any, bytes]:
    """basic.get until a message comes or ``timeout`` passes; fail if none came."""
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            return method, props, body
        assert time.monotonic() < deadline, f"nothing arrived in {queue!r}"
        time.sleep(0.01)


def _dead_letter_setup(
    ch: BlockingChannel, unique: str, exchange_type: str = "topic", **queue_args: Any
) -> tuple[str, str, str]:
    """A DLX (auto-delete), a queue catching everything it routes, and a source queue."""
    dlx = f"{unique}-dlx"
    ch.exchange_declare(dlx, exchange_type, auto_delete=True)
    dead = ch.queue_declare(f"{unique}-dead", exclusive=True).method.queue
    ch.queue_bind(dead, dlx, "#" if exchange_type == "topic" else "")
    arguments = {"x-dead-letter-exchange": dlx, **queue_args}
    source = ch.queue_declare(f"{unique}-src", exclusive=True, arguments=arguments).method.queue
    return dlx, dead, source


def _check_time(death: dict[str, Any]) -> None:
    stamp = death["time"]
    assert isinstance(stamp, datetime.datetime)
    now = datetime.datetime.now(datetime.UTC)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    assert abs((now - stamp).total_seconds()) < 10


def test_reject_dead_letters_with_full_x_death(broker: Broker, unique: str) -> None:
    """basic.reject(requeue=false): republished to the DLX with one x-death entry."""
    with pika_channel(broker.url) as (_conn, ch):
        dlx, dead, src = _dead_letter_setup(ch, unique)
        props = pika.BasicProperties(
            headers={"CC": ["cc1"], "h": 1},
            expiration="10000",
            priority=3,
            message_id="mid",
            content_type="text/plain",
        )
        ch.basic_publish("", src, b"rej", props)
        method, _, _ = _get_wait(ch, src, auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=False)
        method, props, body = _get_wait(ch, dead)
        assert body == b"rej"
        assert (method.exchange, method.routing_key, method.redelivered) == (dlx, src, False)
        assert (props.message_id, props.priority, props.content_type) == ("mid", 3, "text/plain")
        assert props.expiration is None
        headers = props.headers
        assert (headers["CC"], headers["h"]) == (["cc1"], 1)
        (death,) = headers["x-death"]
        assert DEATH_KEYS | {"original-expiration"} == set(death)
        assert death["count"] == 1
        assert death["reason"] == "rejected"
        assert death["queue"] == src
        assert death["exchange"] == ""
        assert death["routing-keys"] == [src, "cc1"]
        assert death["original-expiration"] == "10000"
        _check_time(death)
        assert headers["x-first-death-queue"] == src
        assert headers["x-first-death-reason"] == "rejected"
        assert headers["x-first-death-exchange"] == ""


def test_x_death_count_is_a_long(broker: Broker, unique: str) -> None:
    """count goes on the wire as a long (field type 'l'): Java clients read it as a Long."""
    with pika_channel(broker.url) as (_conn, ch):
        _dlx, dead, src = _dead_letter_setup(ch, unique)
        ch.basic_publish("", src, b"m")
        method, _, _ = _get_wait(ch, src, auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=False)
        _method, props, _body = _get_wait(ch, dead)
        (death,) = props.headers["x-death"]
        assert isinstance(death["count"], pika.compat.long), type(death["count"])


def test_nack_without_requeue_dead_letters_as_rejected(broker: Broker, unique: str) -> None:
    """basic.nack(requeue=false), multiple too: each message dead-lettered, in order."""
    with pika_channel(broker.url) as (_conn, ch):
        _dlx, dead, src = _dead_letter_setup(ch, unique)
        for i in range(3):
            ch.basic_publish("", src, str(i).encode())
        tags = [_get_wait(ch, src, auto_ack=False)[0].delivery_tag for _ in range(3)]
        ch.basic_nack(tags[0], requeue=False)
        ch.basic_nack(tags[2], multiple=True, requeue=False)
        assert wait_for_count(ch, dead, 3) == 3
        got = []
        for _ in range(3):
            _method, props, body = _get_wait(ch, dead)
            (death,) = props.headers["x-death"]
            got.append((body, death["reason"], set(death)))
        assert got == [(str(i).encode(), "rejected", DEATH_KEYS) for i in range(3)]


def test_requeue_true_does_not_dead_letter(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        _dlx, dead, src = _dead_letter_setup(ch, unique)
        ch.basic_publish("", src, b"m")
        method, _, _ = _get_wait(ch, src, auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=True)
        time.sleep(0.1)
        assert message_count(ch, dead) == 0
        assert bodies(ch, src) == [b"m"]


def test_expired_with_dead_letter_routing_key(broker: Broker, unique: str) -> None:
    """Reason expired; x-dead-letter-routing-key replaces the routing key, routing-keys keeps
    the original; the per-message expiration becomes original-expiration."""
    with pika_channel(broker.url) as (_conn, ch):
        dlx, dead, src = _dead_letter_setup(ch, unique, **{"x-dead-letter-routing-key": "rk2"})
        ch.basic_publish("", src, b"exp", pika.BasicProperties(expiration="50"))
        method, props, body = _get_wait(ch, dead)
        assert (body, method.exchange, method.routing_key) == (b"exp", dlx, "rk2")
        assert props.expiration is None
        (death,) = props.headers["x-death"]
        assert set(death) == DEATH_KEYS | {"original-expiration"}
        assert (death["reason"], death["queue"], death["routing-keys"]) == (
            "expired",
            src,
            [src],
        )
        assert death["original-expiration"] == "50"
        assert props.headers["x-first-death-reason"] == "expired"


def test_queue_ttl_expiry_has_no_original_expiration(broker: Broker, unique: str) -> None:
    """Expired by the queue's x-message-ttl: no original-expiration in x-death."""
    with pika_channel(broker.url) as (_conn, ch):
        _dlx, dead, src = _dead_letter_setup(ch, unique, **{"x-message-ttl": 50})
        ch.basic_publish("", src, b"qexp")
        method, props, _ = _get_wait(ch, dead)
        assert method.routing_key == src
        (death,) = props.headers["x-death"]
        assert set(death) == DEATH_KEYS
        assert death["reason"] == "expired"


def test_maxlen_dead_letters_oldest(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        _dlx, dead, src = _dead_letter_setup(ch, unique, **{"x-max-length": 1})
        ch.basic_publish("", src, b"m1")
        ch.basic_publish("", src, b"m2")
        _method, props, body = _get_wait(ch, dead)
        assert body == b"m1"
        (death,) = props.headers["x-death"]
        assert (death["reason"], death["queue"]) == ("maxlen", src)
        assert props.headers["x-first-death-reason"] == "maxlen"
        assert bodies(ch, src) == [b"m2"]


def test_published_to_named_exchange_records_it(broker: Broker, unique: str) -> None:
    """x-death exchange and x-first-death-exchange name the exchange it was published to."""
    with pika_channel(broker.url) as (_conn, ch):
        _dlx, dead, src = _dead_letter_setup(ch, unique)
        origin = f"{unique}-origin"
        ch.exchange_declare(origin, "direct", auto_delete=True)
        ch.queue_bind(src, origin, "key")
        ch.basic_publish(origin, "key", b"m")
        method, _, _ = _get_wait(ch, src, auto_ack=False)
        ch.basic_nack(method.delivery_tag, requeue=False)
        method, props, _ = _get_wait(ch, dead)
        assert method.routing_key == "key"
        (death,) = props.headers["x-death"]
        assert (death["exchange"], death["routing-keys"]) == (origin, ["key"])
        assert props.headers["x-first-death-exchange"] == origin


def _cc_setup(ch: BlockingChannel, unique: str, **queue_args: Any) -> tuple[str, dict[str, str]]:
    """A direct DLX with a queue per key (rk, cc1, bcc1, other), and a source exchange
    routing 'rk' to a source queue that dead-letters there."""
    dlx = f"{unique}-dlx"
    ch.exchange_declare(dlx, "direct", auto_delete=True)
    catch = {}
    for key in ("rk", "cc1", "bcc1", "other"):
        catch[key] = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(catch[key], dlx, key)
    origin = f"{unique}-origin"
    ch.exchange_declare(origin, "direct", auto_delete=True)
    src = ch.queue_declare(
        "", exclusive=True, arguments={"x-dead-letter-exchange": dlx, **queue_args}
    ).method.queue
    ch.queue_bind(src, origin, "rk")
    ch.basic_publish(
        origin, "rk", b"m", pika.BasicProperties(headers={"CC": ["cc1"], "BCC": ["bcc1"]})
    )
    method, _, _ = _get_wait(ch, src, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)
    time.sleep(0.2)
    return dlx, catch


def _caught(ch: BlockingChannel, catch: dict[str, str]) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for key, q in catch.items():
        out[key] = []
        while True:
            method, props, body = ch.basic_get(q, auto_ack=True)
            if method is None:
                break
            headers = props.headers
            out[key].append(
                (
                    body,
                    method.routing_key,
                    headers.get("CC"),
                    headers.get("BCC"),
                    headers["x-death"][0]["routing-keys"],
                )
            )
    return out


def test_dead_letter_reroutes_by_cc_and_bcc_keys(broker: Broker, unique: str) -> None:
    """Without x-dead-letter-routing-key, the dead letter is routed by all the keys it was
    published with: its routing key, CC and BCC (x-death routing-keys lists rk and CC only)."""
    with pika_channel(broker.url) as (_conn, ch):
        _dlx, catch = _cc_setup(ch, unique)
        copy = (b"m", "rk", ["cc1"], None, ["rk", "cc1"])
        assert _caught(ch, catch) == {"rk": [copy], "cc1": [copy], "bcc1": [copy], "other": []}


def test_dead_letter_routing_key_drops_cc(broker: Broker, unique: str) -> None:
    """With x-dead-letter-routing-key, the dead letter goes by that key alone and loses CC."""
    with pika_channel(broker.url) as (_conn, ch):
        _dlx, catch = _cc_setup(ch, unique, **{"x-dead-letter-routing-key": "other"})
        assert _caught(ch, catch) == {
            "rk": [],
            "cc1": [],
            "bcc1": [],
            "other": [(b"m", "other", None, None, ["rk", "cc1"])],
        }


def test_missing_dead_letter_exchange_drops(broker: Broker, unique: str) -> None:
    """A DLX that does not exist: the rejected message is dropped, the channel stays open."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare(
            "", exclusive=True, arguments={"x-dead-letter-exchange": f"{unique}-missing"}
        ).method.queue
        ch.basic_publish("", q, b"m")
        method, _, _ = _get_wait(ch, q, auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=False)
        assert message_count(ch, q) == 0
        assert conn.is_open and ch.is_open


def test_x_death_merges_by_queue_and_reason(broker: Broker, unique: str) -> None:
    """q1 (reject) -> x2 -> q2 (TTL) -> x1 -> q1, twice: two entries whose counts grow.

    A monitor queue on x2 shows the x-death right after the second rejection: the
    (q1, rejected) entry, now count 2, has moved to the front.
    """
    with pika_channel(broker.url) as (_conn, ch):
        x1, x2 = f"{unique}-x1", f"{unique}-x2"
        ch.exchange_declare(x1, "fanout", auto_delete=True)
        ch.exchange_declare(x2, "fanout", auto_delete=True)
        q1 = ch.queue_declare(
            f"{unique}-q1", exclusive=True, arguments={"x-dead-letter-exchange": x2}
        ).method.queue
        q2 = ch.queue_declare(
            f"{unique}-q2",
            exclusive=True,
            arguments={"x-dead-letter-exchange": x1, "x-message-ttl": 50},
        ).method.queue
        monitor = ch.queue_declare(f"{unique}-mon", exclusive=True).method.queue
        ch.queue_bind(q1, x1)
        ch.queue_bind(q2, x2)
        ch.queue_bind(monitor, x2)
        ch.basic_publish("", q1, b"cyc", pika.BasicProperties(headers={"k": "v"}))

        def summary(headers: dict[str, Any]) -> list[tuple[str, str, int, str, list[str]]]:
            return [
                (d["queue"], d["reason"], d["count"], d["exchange"], d["routing-keys"])
                for d in headers["x-death"]
            ]

        # round 0: straight from the publisher
        method, props, _ = _get_wait(ch, q1, auto_ack=False)
        assert props.headers == {"k": "v"}
        ch.basic_reject(method.delivery_tag, requeue=False)
        # round 1: rejected in q1, expired in q2, back in q1
        _, mon_props, _ = _get_wait(ch, monitor)
        assert summary(mon_props.headers) == [(q1, "rejected", 1, "", [q1])]
        method, props, _ = _get_wait(ch, q1, auto_ack=False)
        assert (method.exchange, method.routing_key, method.redelivered) == (x1, q1, False)
        assert summary(props.headers) == [
            (q2, "expired", 1, x2, [q1]),
            (q1, "rejected", 1, "", [q1]),
        ]
        assert props.headers["k"] == "v"
        ch.basic_reject(method.delivery_tag, requeue=False)
        # round 2: the same two deaths again
        _, mon_props, _ = _get_wait(ch, monitor)
        assert summary(mon_props.headers) == [
            (q1, "rejected", 2, "", [q1]),
            (q2, "expired", 1, x2, [q1]),
        ]
        method, props, _ = _get_wait(ch, q1, auto_ack=False)
        headers = props.headers
        assert summary(headers) == [
            (q2, "expired", 2, x2, [q1]),
            (q1, "rejected", 2, "", [q1]),
        ]
        for death in headers["x-death"]:
            assert set(death) == DEATH_KEYS
        assert (
            headers["x-first-death-queue"],
            headers["x-first-death-reason"],
            headers["x-first-death-exchange"],
        ) == (q1, "rejected", "")
        ch.basic_ack(method.delivery_tag)


def test_automatic_dead_letter_cycle_is_dropped(broker: Broker, unique: str) -> None:
    """expired in a1 -> a2 -> expired -> a1: dropped at a1 (no rejection on the way).

    Monitors bound next to a1 and a2 each see the message once: it does not go round.
    """
    with pika_channel(broker.url) as (_conn, ch):
        y1, y2 = f"{unique}-y1", f"{unique}-y2"
        ch.exchange_declare(y1, "fanout", auto_delete=True)
        ch.exchange_declare(y2, "fanout", auto_delete=True)
        a1 = ch.queue_declare(
            f"{unique}-a1",
            exclusive=True,
            arguments={"x-dead-letter-exchange": y2, "x-message-ttl": 50},
        ).method.queue
        a2 = ch.queue_declare(
            f"{unique}-a2",
            exclusive=True,
            arguments={"x-dead-letter-exchange": y1, "x-message-ttl": 50},
        ).method.queue
        ch.queue_bind(a1, y1)
        ch.queue_bind(a2, y2)
        m1 = ch.queue_declare(f"{unique}-m1", exclusive=True).method.queue
        m2 = ch.queue_declare(f"{unique}-m2", exclusive=True).method.queue
        ch.queue_bind(m1, y1)
        ch.queue_bind(m2, y2)
        ch.basic_publish("", a1, b"auto")
        assert wait_for_count(ch, m1, 1) == 1
        time.sleep(0.4)  # several TTL periods: a cycle would have gone round by now
        counts = {
            name: message_count(ch, q)
            for name, q in (("a1", a1), ("a2", a2), ("m1", m1), ("m2", m2))
        }
        assert counts == {"a1": 0, "a2": 0, "m1": 1, "m2": 1}
        _, props, _ = _get_wait(ch, m1)
        assert [(d["queue"], d["reason"], d["count"]) for d in props.headers["x-death"]] == [
            (a2, "expired", 1),
            (a1, "expired", 1),
        ]


def test_dead_letter_to_itself(broker: Broker, unique: str) -> None:
    """DLX '' with the queue's own name as routing key: a rejection comes back (count 2 the
    second time); an expiry would re-enter the queue it died in and is dropped."""
    with pika_channel(broker.url) as (_conn, ch):
        q = f"{unique}-self"
        ch.queue_declare(
            q,
            exclusive=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q},
        )
        ch.basic_publish("", q, b"r")
        for count in (1, 2):
            method, _, _ = _get_wait(ch, q, auto_ack=False)
            ch.basic_reject(method.delivery_tag, requeue=False)
            method, props, body = _get_wait(ch, q, auto_ack=False)
            assert body == b"r"
            assert [(d["queue"], d["reason"], d["count"]) for d in props.headers["x-death"]] == [
                (q, "rejected", count)
            ]
            ch.basic_nack(method.delivery_tag, requeue=True)
        q2 = f"{unique}-self2"
        ch.queue_declare(
            q2,
            exclusive=True,
            arguments={
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": q2,
                "x-message-ttl": 50,
            },
        )
        ch.basic_publish("", q2, b"e")
        time.sleep(0.3)
        assert message_count(ch, q2) == 0


def test_dead_letter_routing_key_without_dlx_is_406(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(unique, exclusive=True, arguments={"x-dead-letter-routing-key": "k"})
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            f"PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue "
            f"'{unique}' in vhost '/': routing_key_but_no_dlx_defined",
        )


def test_dead_letter_routing_key_wrong_type_is_406(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(
                unique,
                exclusive=True,
                arguments={"x-dead-letter-exchange": "x", "x-dead-letter-routing-key": 1},
            )
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            f"PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue "
            f"'{unique}' in vhost '/': {{unacceptable_type,signedint}}",
        )
