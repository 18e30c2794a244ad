"""Message statistics (broker/stats.py): what each counter counts, totals that survive a
channel's close, rates from two samples, and restored messages not counted as published."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pika

from leveret.broker.embedded import EmbeddedBroker
from leveret.broker.stats import RateWindow


def _traffic(url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    ch = connection.channel()
    ch.queue_declare("stats", durable=True)
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish("", "stats", f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("amq.direct", "nowhere", b"dropped")
    with contextlib.suppress(pika.exceptions.UnroutableError):
        ch.basic_publish("amq.direct", "nowhere", b"returned", mandatory=True)
    for _ in range(2):  # two gets, one acked, one rejected back (redelivered next time)
        method, _, _ = ch.basic_get("stats")
        assert method is not None
    ch.basic_ack(1)
    ch.basic_reject(2, requeue=True)
    consumed = []

    def on_message(channel: object, method: pika.spec.Basic.Deliver, *_: object) -> None:
        consumed.append(method)
        if len(consumed) == 5:  # the prefetch window is full: nothing more comes
            ch.stop_consuming()

    ch.basic_qos(prefetch_count=5)
    ch.basic_consume("stats", on_message)
    ch.start_consuming()
    ch.basic_ack(consumed[-1].delivery_tag, multiple=True)  # after the cancel: no refill
    auto = connection.channel()
    for _ in range(4):  # what is left
        method, _, _ = auto.basic_get("stats", auto_ack=True)
        assert method is not None
    assert auto.basic_get("stats", auto_ack=True)[0] is None
    connection.close()


def test_counters_and_totals(tmp_path: Path) -> None:
    with EmbeddedBroker(port=0, data_dir=tmp_path) as broker:
        _traffic(broker.url)

        def read() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
            b = broker.broker
            vhost = b.vhosts["/"]
            return (b.statistics.totals().as_dict(), vhost.queues["stats"].stats.as_dict(),
                    vhost.exchanges["amq.direct"].stats.as_dict())

        totals, queue, exchange = broker.call(read)
    # every channel is closed: the totals are what closed channels left behind
    assert totals["publish"] == 12 and totals["confirm"] == 12
    assert totals["drop_unroutable"] == 1 and totals["return_unroutable"] == 1
    assert totals["get"] == 2 and totals["get_no_ack"] == 4 and totals["get_empty"] == 1
    assert totals["deliver"] == 5 and totals["deliver_no_ack"] == 0
    assert totals["ack"] == 6  # one get and five deliveries
    assert totals["redeliver"] == 1  # the rejected message, delivered again
    assert totals["deliver_get"] == 11
    assert queue["publish"] == 10 and queue["deliver"] == 5 and queue["get"] == 2
    assert queue["get_no_ack"] == 4 and queue["ack"] == 6 and queue["redeliver"] == 1
    assert exchange["publish_in"] == 2 and exchange["publish_out"] == 0


def test_restored_messages_are_not_counted_as_published(tmp_path: Path) -> None:
    with EmbeddedBroker(port=0, data_dir=tmp_path) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        ch = connection.channel()
        ch.queue_declare("kept", durable=True)
        ch.confirm_delivery()
        for _ in range(4):
            ch.basic_publish("", "kept", b"x", pika.BasicProperties(delivery_mode=2))
        connection.close()
        broker.restart()
        queue = broker.call(lambda: broker.broker.vhosts["/"].queues["kept"])
        assert broker.call(lambda: (queue.message_count, queue.stats.publish)) == (4, 0)


def test_rates_come_from_two_samples_a_second_apart() -> None:
    window = RateWindow()
    assert window.rates((0, 0), now=100.0) == (0.0, 0.0)
    assert window.rates((50, 5), now=100.5) == (0.0, 0.0)  # too soon: same samples
    assert window.rates((100, 10), now=102.0) == (50.0, 5.0)
    assert window.idle_since is None
    assert window.rates((100, 10), now=104.0) == (0.0, 0.0)
    assert window.idle_since is not None  # nothing moved since the last sample
