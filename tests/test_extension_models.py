"""Property tests over the wire: RabbitMQ extensions against small reference models.

Hypothesis generates operation sequences; each example runs on a fresh exclusive queue of
the broker under test and is compared with a model. The models encode behaviour that was
agreed with RabbitMQ 3.10.8 (these tests pass against it):

- a priority queue (x-max-priority 3, priorities 0..5 or none): basic.get returns the highest
  effective priority first (above the maximum counts as the maximum, none as 0), FIFO within
  a priority;
- x-max-length with drop-head: the queue keeps the newest ``max_length`` ready messages; the
  dropped ones are dead-lettered (reason maxlen) in the order they were dropped;
- per-message TTL in a queue with a (long) x-message-ttl: messages published with expiration
  '0' (nobody consuming) never come out; the others come out in publish order.
"""

from __future__ import annotations

import time
from collections import deque

import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pika.adapters.blocking_connection import BlockingChannel
from pika_helpers import Broker, bodies, message_count, pika_channel

pytestmark = pytest.mark.timeout(60)

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
)

Op = tuple[str, int | None]  # ("pub", priority or None) or ("get", None)

operations = st.lists(
    st.one_of(
        st.tuples(st.just("pub"), st.one_of(st.none(), st.integers(0, 5))),
        st.tuples(st.just("get"), st.none()),
    ),
    min_size=5,
    max_size=40,
)


def _get(ch: BlockingChannel, q: str) -> bytes | None:
    method, _props, body = ch.basic_get(q, auto_ack=True)
    return None if method is None else body


def test_priority_queue_matches_model(broker: Broker) -> None:
    max_priority = 3
    with pika_channel(broker.url) as (_conn, ch):

        @SETTINGS
        @given(ops=operations)
        def check(ops: list[Op]) -> None:
            q = ch.queue_declare(
                "", exclusive=True, arguments={"x-max-priority": max_priority}
            ).method.queue
            levels: list[deque[bytes]] = [deque() for _ in range(max_priority + 1)]
            for n, (op, priority) in enumerate(ops):
                if op == "pub":
                    body = str(n).encode()
                    ch.basic_publish("", q, body, pika.BasicProperties(priority=priority))
                    levels[min(priority or 0, max_priority)].append(body)
                else:
                    expected = next((level.popleft() for level in reversed(levels) if level), None)
                    assert _get(ch, q) == expected, ops
            remaining = [body for level in reversed(levels) for body in level]
            assert bodies(ch, q) == remaining, ops
            ch.queue_delete(q)

        check()


def test_max_length_drop_head_matches_model(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        dlx = f"{unique}-dlx"
        ch.exchange_declare(dlx, "fanout", auto_delete=True)
        dead = ch.queue_declare(f"{unique}-dead", exclusive=True).method.queue
        ch.queue_bind(dead, dlx)

        @SETTINGS
        @given(
            max_length=st.integers(0, 4),
            ops=st.lists(st.sampled_from(["pub", "pub", "get"]), min_size=5, max_size=40),
        )
        def check(max_length: int, ops: list[str]) -> None:
            ch.queue_purge(dead)
            q = ch.queue_declare(
                "",
                exclusive=True,
                arguments={"x-max-length": max_length, "x-dead-letter-exchange": dlx},
            ).method.queue
            ready: deque[bytes] = deque()
            dropped: list[bytes] = []
            for n, op in enumerate(ops):
                if op == "pub":
                    body = str(n).encode()
                    ch.basic_publish("", q, body)
                    ready.append(body)
                    while len(ready) > max_length:
                        dropped.append(ready.popleft())
                else:
                    expected = ready.popleft() if ready else None
                    assert _get(ch, q) == expected, (max_length, ops)
            assert bodies(ch, q) == list(ready), (max_length, ops)
            deadline = time.monotonic() + 3
            while message_count(ch, dead) < len(dropped) and time.monotonic() < deadline:
                time.sleep(0.01)
            got = []
            while True:
                method, props, body = ch.basic_get(dead, auto_ack=True)
                if method is None:
                    break
                (death,) = props.headers["x-death"]
                assert (death["reason"], death["queue"]) == ("maxlen", q)
                got.append(body)
            assert got == dropped, (max_length, ops)
            ch.queue_delete(q)

        check()


def test_per_message_ttl_matches_model(broker: Broker) -> None:
    with pika_channel(broker.url) as (_conn, ch):

        @SETTINGS
        @given(
            ops=st.lists(
                st.one_of(
                    st.tuples(st.just("pub"), st.sampled_from([None, "0", "0", "60000"])),
                    st.tuples(st.just("get"), st.none()),
                ),
                min_size=5,
                max_size=40,
            )
        )
        def check(ops: list[tuple[str, str | None]]) -> None:
            q = ch.queue_declare(
                "", exclusive=True, arguments={"x-message-ttl": 60000}
            ).method.queue
            live: deque[bytes] = deque()
            for n, (op, expiration) in enumerate(ops):
                if op == "pub":
                    body = str(n).encode()
                    ch.basic_publish("", q, body, pika.BasicProperties(expiration=expiration))
                    if expiration != "0":
                        live.append(body)
                else:
                    expected = live.popleft() if live else None
                    assert _get(ch, q) == expected, ops
            assert bodies(ch, q) == list(live), ops
            ch.queue_delete(q)

        check()
