"""Direct reply-to (amq.rabbitmq.reply-to); every expectation agreed with RabbitMQ 3.10.8."""

from __future__ import annotations

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from tests.pika_helpers import amqp_connect, pika_channel

REPLY_TO = "amq.rabbitmq.reply-to"


def _refused(url: str, action, code: int, text: str) -> None:
    with pika_channel(url) as (_conn, ch):
        with pytest.raises(ChannelClosedByBroker) as closed:
            action(ch)
        assert (closed.value.reply_code, closed.value.reply_text) == (code, text)


def test_request_reply_round_trip(broker) -> None:
    """reply_to is rewritten to a private name; a reply to it reaches the requesting channel."""
    with pika_channel(broker.url) as (conn, ch):
        replies: list[tuple[str, str, bool, bytes]] = []
        ch.basic_consume(
            REPLY_TO,
            lambda _c, m, _p, body: replies.append(
                (m.exchange, m.routing_key, m.redelivered, body)
            ),
            auto_ack=True,
        )
        requests = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", requests, b"request", pika.BasicProperties(reply_to=REPLY_TO))
        _method, props, body = ch.basic_get(requests, auto_ack=True)
        assert body == b"request"
        assert props.reply_to.startswith(REPLY_TO + ".")
        with pika_channel(broker.url) as (_other_conn, server):  # the replier
            server.basic_publish("", props.reply_to, b"response")
        conn.process_data_events(time_limit=0.5)
        assert replies == [("", props.reply_to, False, b"response")]


def test_consuming_with_acks_is_refused(broker) -> None:
    _refused(
        broker.url,
        lambda ch: ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=False),
        406,
        "PRECONDITION_FAILED - reply consumer cannot acknowledge",
    )


def test_second_reply_consumer_is_refused(broker) -> None:
    def twice(ch) -> None:
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)

    _refused(broker.url, twice, 406, "PRECONDITION_FAILED - reply consumer already set")


def test_publishing_with_reply_to_but_no_consumer_is_refused(broker) -> None:
    def publish(ch) -> None:
        ch.basic_publish("", "nowhere", b"", pika.BasicProperties(reply_to=REPLY_TO))
        ch.queue_declare("", exclusive=True)

    _refused(broker.url, publish, 406, "PRECONDITION_FAILED - fast reply consumer does not exist")


def test_pseudo_queue_is_not_a_queue(broker) -> None:
    """Passive declare answers (consumer_count 1); get and bind say 404."""
    with pika_channel(broker.url) as (_conn, ch):
        ok = ch.queue_declare(REPLY_TO, passive=True).method
        assert (ok.queue, ok.message_count, ok.consumer_count) == (REPLY_TO, 0, 1)
    missing = f"NOT_FOUND - no queue '{REPLY_TO}' in vhost '/'"
    _refused(broker.url, lambda ch: ch.basic_get(REPLY_TO), 404, missing)
    _refused(broker.url, lambda ch: ch.queue_bind(REPLY_TO, "amq.direct", "k"), 404, missing)
    _refused(
        broker.url,
        lambda ch: ch.queue_declare(REPLY_TO + ".bogus", passive=True),
        404,
        f"NOT_FOUND - no queue '{REPLY_TO}.bogus' in vhost '/'",
    )


def test_reply_after_cancel_is_dropped(broker) -> None:
    """Once the reply consumer is cancelled, a reply to its private name is not delivered."""
    with pika_channel(broker.url) as (conn, ch):
        late: list[bytes] = []
        tag = ch.basic_consume(REPLY_TO, lambda _c, _m, _p, body: late.append(body), auto_ack=True)
        requests = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", requests, b"request", pika.BasicProperties(reply_to=REPLY_TO))
        _method, props, _body = ch.basic_get(requests, auto_ack=True)
        ch.basic_cancel(tag)
        ch.basic_publish("", props.reply_to, b"late")
        conn.process_data_events(time_limit=0.3)
        assert late == []
        assert ch.queue_declare("", exclusive=True).method.queue  # the channel is still fine


def test_reply_to_without_consumer_names_basic_publish(broker) -> None:
    """The 406 for a missing reply consumer names basic.publish (60, 40), as RabbitMQ 3.10.8."""
    import amqp
    import amqp.exceptions

    conn = amqp_connect(broker.url)
    try:
        ch = conn.channel()
        with pytest.raises(amqp.exceptions.PreconditionFailed) as refused:
            ch.basic_publish(amqp.Message(b"x", reply_to=REPLY_TO), exchange="",
                             routing_key="nowhere")
            ch.queue_declare(queue="", exclusive=True)
        assert refused.value.method_sig == (60, 40)
    finally:
        conn.collect()
