"""Testing pika code against a real broker.

With Leveret installed (``pip install leveret pika pytest``) its pytest plugin gives every
test the ``amqp_url`` of a vhost of its own, deleted afterwards, and ``leveret`` to look
inside it.
"""

import pika


def send_order(url: str, order_id: int) -> None:
    """The code under test: a persistent message, confirmed by the broker."""
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("orders", durable=True)
        channel.basic_publish("", "orders", str(order_id).encode(),
                              pika.BasicProperties(delivery_mode=2))


def test_order_is_queued(amqp_url, leveret):
    send_order(amqp_url, 42)
    assert leveret.queue("orders").messages == 1
    assert leveret.peek("orders")[0].body == b"42"  # peeking leaves it queued


def test_each_test_has_its_own_vhost(amqp_url):
    send_order(amqp_url, 7)
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        channel = connection.channel()
        _, _, body = channel.basic_get("orders", auto_ack=True)
        assert body == b"7"  # not the 42 of the other test
        assert channel.basic_get("orders")[0] is None
