"""Quorum queues, Celery's native delayed delivery topology, and the delayed-message exchange.

Every expectation not marked ``leveret_only`` was agreed with RabbitMQ 3.10.8 (observed
first, then encoded):

- a quorum queue (x-queue-type quorum) must be durable, not exclusive and not auto-delete:
  406 "invalid property 'non-durable' | 'exclusive-owner' | 'auto-delete' for queue '...'
  in vhost '/'"; x-max-priority is "invalid arg ... of queue type rabbit_quorum_queue"; a
  server-named quorum queue is 406 'Cannot declare a server-named queue for type
  rabbit_quorum_queue'; x-delivery-limit on a classic queue is "invalid arg
  'x-delivery-limit' ... of queue type rabbit_classic_queue";
- x-delivery-limit N: a message is delivered at most N+1 times; the return after the last one
  dead-letters it with reason ``delivery_limit`` (the dead letter carries no
  x-delivery-count); requeue=false dead-letters with reason ``rejected``;
- x-delivery-count: RabbitMQ 3.10 adds it to every basic.get answer (0 the first time) and to
  consumer deliveries from the first redelivery on (1, 2, ...); a first consumer delivery has
  no such header; the count is a long (field type 'l');
- a message returned to a quorum queue goes to the back (after the messages already waiting);
- Celery 5.5+ native delayed delivery (kombu's declare_native_delayed_delivery_exchanges_and_
  queues / bind_queue_to_native_delayed_delivery_exchange / calculate_routing_key): a message
  published to celery_delayed_27 with the computed routing key reaches the destination queue
  after its countdown and not before, dead-lettered (expired) out of celery_delayed_<level>.

The delayed-message exchange (type x-delayed-message, RabbitMQ's plugin, which the reference
broker does not have) is Leveret-only. Quorum queues are durable: each test deletes its own.
"""

from __future__ import annotations

import contextlib
import gc
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker
from pika_helpers import Broker, connect, pika_channel, pump, pump_until

pytestmark = pytest.mark.timeout(60)

QUORUM = {"x-queue-type": "quorum"}


def _get_wait(
    ch: BlockingChannel, queue: str, timeout: float = 3.0, auto_ack: bool = False
) -> tuple[Any, Any, bytes]:
    """basic.get until a message comes or ``timeout`` passes (None method if none came)."""
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is not None or time.monotonic() >= deadline:
            return method, props, body
        time.sleep(0.01)


@contextlib.contextmanager
def _quorum_queue(url: str, name: str, **arguments: Any) -> Iterator[str]:
    """A durable quorum queue, deleted afterwards whatever happens."""
    with pika_channel(url) as (_conn, ch):
        ch.queue_declare(name, durable=True, arguments={**QUORUM, **arguments})
    try:
        yield name
    finally:
        with pika_channel(url) as (_conn, ch):
            ch.queue_delete(name)


def _dlx(ch: BlockingChannel, unique: str) -> tuple[str, str]:
    dlx = f"{unique}-dlx"
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    dead = ch.queue_declare(f"{unique}-dead", exclusive=True).method.queue
    ch.queue_bind(dead, dlx)
    return dlx, dead


# --- quorum queues: declaration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "prop"),
    [
        ({"durable": False}, "non-durable"),
        ({"durable": True, "exclusive": True}, "exclusive-owner"),
        ({"durable": True, "auto_delete": True}, "auto-delete"),
    ],
)
def test_quorum_queue_properties_refused(
    broker: Broker, unique: str, flags: dict[str, bool], prop: str
) -> None:
    with pika_channel(broker.url) as (conn, ch):
        try:
            with pytest.raises(ChannelClosedByBroker) as exc:
                ch.queue_declare(unique, arguments=QUORUM, **flags)
            assert (exc.value.reply_code, exc.value.reply_text) == (
                406,
                f"PRECONDITION_FAILED - invalid property '{prop}' for queue '{unique}' "
                "in vhost '/'",
            )
        finally:
            conn.channel().queue_delete(unique)


def test_quorum_queue_refuses_max_priority(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (conn, ch):
        try:
            with pytest.raises(ChannelClosedByBroker) as exc:
                ch.queue_declare(unique, durable=True, arguments={**QUORUM, "x-max-priority": 5})
            assert (exc.value.reply_code, exc.value.reply_text) == (
                406,
                f"PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{unique}' in "
                "vhost '/' of queue type rabbit_quorum_queue",
            )
        finally:
            conn.channel().queue_delete(unique)


def test_server_named_quorum_queue_refused(broker: Broker) -> None:
    with pika_channel(broker.url) as (conn, ch):
        declared: list[str] = []
        try:
            with pytest.raises(ChannelClosedByBroker) as exc:
                declared.append(ch.queue_declare("", durable=True, arguments=QUORUM).method.queue)
            assert (exc.value.reply_code, exc.value.reply_text) == (
                406,
                "PRECONDITION_FAILED - Cannot declare a server-named queue for type "
                "rabbit_quorum_queue",
            )
        finally:
            for name in declared:
                conn.channel().queue_delete(name)


def test_delivery_limit_on_classic_queue_refused(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(unique, exclusive=True, arguments={"x-delivery-limit": 3})
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            f"PRECONDITION_FAILED - invalid arg 'x-delivery-limit' for queue '{unique}' in "
            "vhost '/' of queue type rabbit_classic_queue",
        )


# --- quorum queues: delivery limit and x-delivery-count ------------------------------------------


def test_delivery_limit_dead_letters(broker: Broker, unique: str) -> None:
    """x-delivery-limit 2: delivered three times, then dead-lettered (delivery_limit)."""
    with pika_channel(broker.url) as (_conn, ch):
        dlx, dead = _dlx(ch, unique)
        name = f"{unique}-qq"
        with _quorum_queue(
            broker.url, name, **{"x-delivery-limit": 2, "x-dead-letter-exchange": dlx}
        ):
            ch.confirm_delivery()
            ch.basic_publish("", name, b"m", pika.BasicProperties(headers={"a": 1}))
            flags = []
            for _ in range(3):
                method, _props, body = _get_wait(ch, name)
                assert body == b"m"
                flags.append(bool(method.redelivered))
                ch.basic_nack(method.delivery_tag, requeue=True)
            assert flags == [False, True, True]
            _method, props, body = _get_wait(ch, dead, auto_ack=True)
            assert body == b"m"
            assert props.headers["a"] == 1
            (death,) = props.headers["x-death"]
            assert (death["reason"], death["queue"], death["count"]) == ("delivery_limit", name, 1)
            assert props.headers["x-first-death-reason"] == "delivery_limit"
            assert ch.basic_get(name)[0] is None


def test_delivery_limit_dead_letter_has_no_delivery_count(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        dlx, dead = _dlx(ch, unique)
        name = f"{unique}-qq"
        with _quorum_queue(
            broker.url, name, **{"x-delivery-limit": 1, "x-dead-letter-exchange": dlx}
        ):
            ch.confirm_delivery()
            ch.basic_publish("", name, b"m")
            for _ in range(2):
                method, _props, _body = _get_wait(ch, name)
                ch.basic_nack(method.delivery_tag, requeue=True)
            _method, props, body = _get_wait(ch, dead, auto_ack=True)
            assert body == b"m"
            assert "x-delivery-count" not in props.headers


def test_delivery_count_header_on_get(broker: Broker, unique: str) -> None:
    """RabbitMQ 3.10: every basic.get answer from a quorum queue has x-delivery-count."""
    with pika_channel(broker.url) as (_conn, ch):
        name = f"{unique}-qq"
        with _quorum_queue(broker.url, name):
            ch.confirm_delivery()
            ch.basic_publish("", name, b"m", pika.BasicProperties(headers={"a": 1}))
            counts = []
            for _ in range(3):
                method, props, _body = _get_wait(ch, name)
                counts.append(props.headers.get("x-delivery-count"))
                ch.basic_nack(method.delivery_tag, requeue=True)
            assert counts == [0, 1, 2]


def test_delivery_count_is_a_long(broker: Broker, unique: str) -> None:
    """x-delivery-count goes on the wire as a long (field type 'l')."""
    with pika_channel(broker.url) as (_conn, ch):
        name = f"{unique}-qq"
        with _quorum_queue(broker.url, name):
            ch.confirm_delivery()
            ch.basic_publish("", name, b"m")
            method, _props, _body = _get_wait(ch, name)
            ch.basic_nack(method.delivery_tag, requeue=True)
            _method, props, _body = _get_wait(ch, name)
            count = props.headers["x-delivery-count"]
            assert (count, isinstance(count, pika.compat.long)) == (1, True), type(count)


def test_delivery_count_header_on_consume_and_limit(broker: Broker, unique: str) -> None:
    """Consumer deliveries: no header the first time, then 1, 2; with x-delivery-limit 2 the
    fourth delivery never happens (the message was dead-lettered, reason delivery_limit)."""
    with pika_channel(broker.url) as (conn, ch):
        dlx, dead = _dlx(ch, unique)
        name = f"{unique}-qq"
        with _quorum_queue(
            broker.url, name, **{"x-delivery-limit": 2, "x-dead-letter-exchange": dlx}
        ):
            ch.confirm_delivery()
            ch.basic_publish("", name, b"c")
            seen = []
            for _ in range(3):
                c = conn.channel()
                got: list[tuple[bool, Any]] = []
                c.basic_consume(
                    name,
                    lambda _c, m, p, _b, got=got: got.append(
                        (bool(m.redelivered), (p.headers or {}).get("x-delivery-count"))
                    ),
                )
                assert pump_until(conn, lambda got=got: bool(got))
                seen.append(got[0])
                c.close()  # requeues the unacked delivery
            assert seen == [(False, None), (True, 1), (True, 2)]
            _method, props, body = _get_wait(ch, dead, auto_ack=True)
            assert body == b"c"
            assert props.headers["x-death"][0]["reason"] == "delivery_limit"
            c = conn.channel()
            late: list[bytes] = []
            c.basic_consume(name, lambda _c, _m, _p, b: late.append(b))
            pump(conn, 0.2)
            assert late == []
            c.close()


def test_quorum_reject_without_requeue_dead_letters(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        dlx, dead = _dlx(ch, unique)
        name = f"{unique}-qq"
        with _quorum_queue(broker.url, name, **{"x-dead-letter-exchange": dlx}):
            ch.confirm_delivery()
            ch.basic_publish("", name, b"r")
            method, _props, _body = _get_wait(ch, name)
            ch.basic_reject(method.delivery_tag, requeue=False)
            _method, props, body = _get_wait(ch, dead, auto_ack=True)
            assert body == b"r"
            (death,) = props.headers["x-death"]
            assert (death["reason"], death["queue"]) == ("rejected", name)


def test_quorum_requeue_goes_to_the_back(broker: Broker, unique: str) -> None:
    """Unlike a classic queue, a quorum queue puts a returned message after those waiting."""
    with pika_channel(broker.url) as (conn, ch):
        name = f"{unique}-qq"
        with _quorum_queue(broker.url, name):
            ch.confirm_delivery()
            for body in (b"a", b"b", b"c"):
                ch.basic_publish("", name, body)
            method, _props, body = _get_wait(ch, name)
            assert body == b"a"
            ch.basic_nack(method.delivery_tag, requeue=True)
            time.sleep(0.1)
            got: list[tuple[bytes, bool]] = []
            c = conn.channel()
            c.basic_consume(
                name, lambda _c, m, _p, b: got.append((b, bool(m.redelivered))), auto_ack=True
            )
            assert pump_until(conn, lambda: len(got) == 3)
            assert got == [(b"b", False), (b"c", False), (b"a", True)]


# --- Celery native delayed delivery --------------------------------------------------------------


@pytest.fixture(scope="module")
def celery_delayed_topology(broker: Broker) -> str:
    """kombu's native delayed delivery exchanges and queues, declared once (they are durable
    and shared: celery_delayed_0..27 and celery_delayed_delivery are left in place)."""
    import kombu
    from kombu.transport.native_delayed_delivery import (
        declare_native_delayed_delivery_exchanges_and_queues,
    )

    with kombu.Connection(broker.url, connect_timeout=5) as conn:
        declare_native_delayed_delivery_exchanges_and_queues(conn, "quorum")  # Celery's default
    return broker.url


def test_celery_native_delayed_delivery(celery_delayed_topology: str, unique: str) -> None:
    """Messages with a 1 s and a 2 s countdown arrive after about that long, not before."""
    import kombu
    from kombu.transport.native_delayed_delivery import (
        bind_queue_to_native_delayed_delivery_exchange,
        calculate_routing_key,
    )

    url = celery_delayed_topology
    routing_key = f"{unique}.task"
    with kombu.Connection(url, connect_timeout=5) as conn:
        channel = conn.channel()
        exchange = kombu.Exchange(f"{unique}-tasks", "topic", durable=False, auto_delete=True)
        queue = kombu.Queue(
            f"{unique}-tasks", exchange, routing_key=routing_key, durable=False, auto_delete=True
        ).bind(channel)
        try:
            queue.declare()
            bind_queue_to_native_delayed_delivery_exchange(conn, queue)
            producer = kombu.Producer(channel)
            start = time.monotonic()
            for countdown in (2, 1):
                producer.publish(
                    {"countdown": countdown},
                    exchange="celery_delayed_27",
                    routing_key=calculate_routing_key(countdown, routing_key),
                )
            arrivals: dict[int, tuple[float, Any]] = {}
            deadline = start + 6
            while len(arrivals) < 2 and time.monotonic() < deadline:
                message = queue.get(no_ack=True)
                if message is None:
                    time.sleep(0.01)
                    continue
                arrivals[message.payload["countdown"]] = (time.monotonic() - start, message.headers)
            assert sorted(arrivals) == [1, 2], arrivals
            for countdown, (elapsed, headers) in arrivals.items():
                assert countdown - 0.05 <= elapsed <= countdown + 1.0, (countdown, elapsed)
                assert headers["x-first-death-reason"] == "expired"
                assert headers["x-first-death-queue"] == f"celery_delayed_{countdown - 1}"
        finally:
            with contextlib.suppress(Exception):
                queue.delete()
            with contextlib.suppress(Exception):
                exchange.bind(channel).delete()


# --- delayed-message exchange (Leveret only) -----------------------------------------------------


def _delayed_exchange(ch: BlockingChannel, unique: str, kind: str = "direct") -> tuple[str, str]:
    ex = f"{unique}-delayed"
    ch.exchange_declare(
        ex, "x-delayed-message", auto_delete=True, arguments={"x-delayed-type": kind}
    )
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, ex, "k")
    return ex, q


@pytest.mark.leveret_only
def test_delayed_message_arrives_after_delay(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (conn, ch):
        ex, q = _delayed_exchange(ch, unique)
        got: list[tuple[bytes, float]] = []
        ch.basic_consume(q, lambda _c, _m, _p, b: got.append((b, time.monotonic())), auto_ack=True)
        start = time.monotonic()
        ch.basic_publish(ex, "k", b"late", pika.BasicProperties(headers={"x-delay": 300}))
        ch.basic_publish(ex, "k", b"now")
        ch.basic_publish(ex, "k", b"sooner", pika.BasicProperties(headers={"x-delay": 100}))
        assert pump_until(conn, lambda: len(got) == 3, timeout=3)
        assert [b for b, _ in got] == [b"now", b"sooner", b"late"]
        elapsed = {b: t - start for b, t in got}
        # Never early; the upper bounds leave room for a loaded CI machine (the 100 ms
        # promise is checked on a quiet one by the slow soak test and benchmarks/delayed.py).
        assert elapsed[b"now"] < 0.25
        assert 0.1 <= elapsed[b"sooner"] < 0.4, elapsed
        assert 0.3 <= elapsed[b"late"] < 0.6, elapsed


@pytest.mark.leveret_only
def test_delayed_message_fanout_type(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        ex = f"{unique}-delayed"
        ch.exchange_declare(
            ex, "x-delayed-message", auto_delete=True, arguments={"x-delayed-type": "fanout"}
        )
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, ex, "ignored")
        ch.basic_publish(ex, "any", b"m", pika.BasicProperties(headers={"x-delay": 150}))
        time.sleep(0.08)
        assert ch.basic_get(q, auto_ack=True)[0] is None
        _method, _props, body = _get_wait(ch, q, timeout=1.0, auto_ack=True)
        assert body == b"m"


@pytest.mark.leveret_only
def test_delayed_message_keeps_cc_and_expiration(broker: Broker, unique: str) -> None:
    """When due, a held message is routed with its CC keys, BCC is removed, and its
    expiration still applies in the queue it reaches."""
    with pika_channel(broker.url) as (_conn, ch):
        ex, q = _delayed_exchange(ch, unique)
        cc_queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(cc_queue, ex, "cc")
        bcc_queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(bcc_queue, ex, "bcc")
        headers = {"x-delay": 100, "CC": ["cc"], "BCC": ["bcc"]}
        ch.basic_publish(ex, "k", b"m", pika.BasicProperties(headers=headers, expiration="60000"))
        for queue in (q, cc_queue, bcc_queue):
            _method, props, body = _get_wait(ch, queue, timeout=1.0, auto_ack=True)
            assert body == b"m"
            assert props.expiration == "60000"
            assert props.headers["CC"] == ["cc"]
            assert "BCC" not in props.headers
        ch.basic_publish(ex, "k", b"e", pika.BasicProperties(headers={"x-delay": 50},
                                                                expiration="100"))
        time.sleep(0.4)
        assert ch.basic_get(q, auto_ack=True)[0] is None  # expired 100 ms after it was due


@pytest.mark.leveret_only
def test_delayed_message_with_a_bad_cc_is_refused_at_publish(broker: Broker, unique: str) -> None:
    """A CC header that is not an array: 406 at publish, as for any exchange (RabbitMQ
    checks CC/BCC before routing), and the messages held before it still arrive."""
    with pika_channel(broker.url) as (conn, ch):
        ex, q = _delayed_exchange(ch, unique)
        ch.basic_publish(ex, "k", b"good", pika.BasicProperties(headers={"x-delay": 150}))
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.basic_publish(ex, "k", b"bad", pika.BasicProperties(
                headers={"x-delay": 100, "CC": "not-a-list"}))
            ch.queue_declare(q, passive=True)
        assert exc.value.reply_code == 406
        assert "unacceptable_type_in_header" in exc.value.reply_text
        _method, _props, body = _get_wait(conn.channel(), q, timeout=1.0, auto_ack=True)
        assert body == b"good"


@pytest.mark.leveret_only
def test_delayed_messages_of_a_deleted_exchange_are_dropped(broker: Broker, unique: str) -> None:
    """Deleting the exchange drops what it held, even if one of that name comes back."""
    with pika_channel(broker.url) as (_conn, ch):
        ex, q = _delayed_exchange(ch, unique)
        ch.basic_publish(ex, "k", b"old", pika.BasicProperties(headers={"x-delay": 150}))
        ch.exchange_delete(ex)
        ch.exchange_declare(
            ex, "x-delayed-message", auto_delete=True, arguments={"x-delayed-type": "direct"}
        )
        ch.queue_bind(q, ex, "k")
        ch.basic_publish(ex, "k", b"new", pika.BasicProperties(headers={"x-delay": 200}))
        _method, _props, body = _get_wait(ch, q, timeout=1.0, auto_ack=True)
        assert body == b"new"
        assert ch.basic_get(q, auto_ack=True)[0] is None


@pytest.mark.leveret_only
@pytest.mark.parametrize("arguments", [{}, {"x-delayed-type": "nope"}, {"x-delayed-type": 1}])
def test_delayed_exchange_needs_a_valid_type(
    broker: Broker, unique: str, arguments: dict[str, Any]
) -> None:
    with pika_channel(broker.url) as (conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.exchange_declare(
                f"{unique}-delayed", "x-delayed-message", auto_delete=True, arguments=arguments
            )
        assert exc.value.reply_code == 406
        assert "x-delayed-type" in exc.value.reply_text
        assert conn.is_open


def _serve(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    """A Leveret broker in its own process (so the test's clients do not share its GIL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "leveret", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    deadline = time.monotonic() + 15
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            line = proc.stderr.readline()
            found = re.search(r"listening on amqp://[^:]+:(\d+)", line)
            if found:
                return proc, int(found.group(1))
            if not line and proc.poll() is not None:
                break
    proc.kill()
    raise AssertionError("the broker did not start")


@pytest.mark.slow
@pytest.mark.leveret_only
@pytest.mark.timeout(120)
def test_100k_delayed_messages_arrive_on_time(tmp_path: Path) -> None:
    """100,000 messages due over 5 s (published first, in batches of 200 through pika's
    asynchronous channel) each arrive within 100 ms of their due time, and not before."""
    total, span, lead, batch = 100_000, 5.0, 3.0, 200
    proc, port = _serve(tmp_path)
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    received: list[tuple[float, bytes]] = []
    try:
        with pika_channel(url) as (_conn, ch):
            ch.exchange_declare(
                "soak-delayed", "x-delayed-message", arguments={"x-delayed-type": "direct"}
            )
            ch.queue_declare("soak")
            ch.queue_bind("soak", "soak-delayed", "k")
        ready, stop = threading.Event(), threading.Event()

        def consume() -> None:
            conn = connect(url)
            try:
                c = conn.channel()
                c.basic_consume(
                    "soak",
                    lambda _c, _m, _p, b: received.append((time.monotonic(), b)),
                    auto_ack=True,
                )
                ready.set()
                while not stop.is_set():
                    conn.process_data_events(time_limit=0.02)
            finally:
                conn.close()

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        assert ready.wait(5)
        gc.disable()  # the consumer's timestamps should not include our collector's pauses
        start = time.monotonic()
        first_due = start + lead
        behind = [0]  # messages published less than 50 ms before their due time

        def on_channel(pch: Any) -> None:
            position = [0]

            def publish_batch() -> None:
                first = position[0]
                for i in range(first, min(total, first + batch)):
                    now = time.monotonic()
                    due = max(first_due + span * i / total, now + 0.05)
                    if due - now <= 0.05:
                        behind[0] += 1
                    pch.basic_publish(
                        "soak-delayed",
                        "k",
                        f"{due:.6f}".encode(),
                        pika.BasicProperties(headers={"x-delay": round((due - now) * 1000)}),
                    )
                position[0] = min(total, first + batch)
                if position[0] < total:
                    publisher.ioloop.call_later(0, publish_batch)  # let the loop write
                else:
                    publisher.close()

            publish_batch()

        publisher = pika.SelectConnection(
            pika.URLParameters(url),
            on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
            on_close_callback=lambda c, _reason: c.ioloop.stop(),
        )
        publisher.ioloop.start()
        published_in = time.monotonic() - start
        deadline = first_due + span + 10
        while len(received) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        consumer.join(5)
    finally:
        gc.enable()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    errors = sorted(at - float(body) for at, body in received)
    summary = (
        f"published {total} in {published_in:.2f}s ({behind[0]} less than 50 ms ahead); "
        f"received {len(received)}; error min {errors[0] * 1000:.1f} ms, "
        f"p50 {errors[len(errors) // 2] * 1000:.1f} ms, "
        f"p99 {errors[int(len(errors) * 0.99)] * 1000:.1f} ms, max {errors[-1] * 1000:.1f} ms"
    )
    print(summary)
    assert len(received) == total, summary
    assert errors[0] >= -0.002, summary  # never before the due time (x-delay is whole ms)
    assert errors[-1] <= 0.100, summary
