"""Prometheus metrics: /metrics (totals) and /metrics/per-object over real HTTP, with broker
state made by real clients (pika), parsed with prometheus_client's own parser."""

from __future__ import annotations

import logging
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
from pika_helpers import connect
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from leveret.broker.embedded import EmbeddedBroker
from leveret.broker.settings import resolve
from leveret.broker.store.latency import Histogram

pytestmark = pytest.mark.leveret_only

PERSISTENT = pika.BasicProperties(delivery_mode=2)
ODD_NAME = 'm.ünï "quoted" \\ back'  # label values are escaped by the exposition format


class Scrape:
    """One scrape's samples by sample name, and the families' types."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[str, list[Sample]] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append(sample)
                self.types[sample.name] = family.type

    def value(self, name: str, **labels: str) -> float:
        """The one sample of ``name`` whose labels include ``labels``."""
        found = [s.value for s in self.samples.get(name, [])
                 if all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) == 1, f"{name} {labels}: {found} in {self.samples.get(name)}"
        return found[0]

    def labels(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples.get(name, [])]


def scrape(embedded: EmbeddedBroker, path: str = "/metrics",
           accept: str | None = None) -> Scrape:
    port = embedded.broker.metrics_port
    assert port is not None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return Scrape(response.read().decode())


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(metrics_port=0, data_dir=tmp_path) as broker:
        yield broker


def test_totals_and_per_object_series(embedded: EmbeddedBroker) -> None:
    publisher = connect(embedded.url)
    pub = publisher.channel()
    pub.confirm_delivery()
    for name in ("m.orders", ODD_NAME):
        pub.queue_declare(name, durable=True)
    for i in range(5):
        pub.basic_publish("", "m.orders", f"order {i}".encode(), PERSISTENT)
    for i in range(2):
        pub.basic_publish("", ODD_NAME, f"audit {i}".encode(), PERSISTENT)
    with pytest.raises(pika.exceptions.UnroutableError):
        pub.basic_publish("", "m.nowhere", b"returned", PERSISTENT, mandatory=True)
    pub.basic_publish("", "m.nowhere", b"dropped", PERSISTENT)  # confirmed, dropped

    consumer = connect(embedded.url)
    sub = consumer.channel()
    sub.basic_qos(prefetch_count=10)
    received = []
    for method, _props, _body in sub.consume("m.orders", inactivity_timeout=5):
        assert method is not None, "deliveries did not arrive"
        received.append(method.delivery_tag)
        if len(received) == 5:
            break
    for tag in received[:3]:
        sub.basic_ack(tag)
    _method, _props, body = sub.basic_get(ODD_NAME, auto_ack=True)
    assert body == b"audit 0"
    sub.queue_declare("m.orders", passive=True)  # a round trip: the acks are processed

    totals = scrape(embedded)
    assert totals.value("rabbitmq_queues") == 2
    assert totals.value("rabbitmq_connections") == 2
    assert totals.value("rabbitmq_channels") == 2
    assert totals.value("rabbitmq_consumers") == 1
    assert totals.value("rabbitmq_queue_messages_ready") == 1  # summed over the queues
    assert totals.value("rabbitmq_queue_messages_unacked") == 2
    assert totals.value("rabbitmq_queue_messages") == 3
    assert totals.labels("rabbitmq_queue_messages_ready") == [{}]  # no per-queue series here
    amqp = {"protocol": "amqp091"}
    assert totals.value("rabbitmq_global_messages_received_total", **amqp) == 9
    assert totals.value("rabbitmq_global_messages_routed_total", **amqp) == 7
    assert totals.value("rabbitmq_global_messages_unroutable_returned_total", **amqp) == 1
    assert totals.value("rabbitmq_global_messages_unroutable_dropped_total", **amqp) == 1
    assert totals.value("rabbitmq_global_messages_confirmed_total", **amqp) == 9
    assert totals.value("rabbitmq_global_messages_delivered_total", **amqp) == 6
    assert totals.value("rabbitmq_global_messages_delivered_consume_manual_ack_total",
                        **amqp) == 5
    assert totals.value("rabbitmq_global_messages_delivered_get_auto_ack_total", **amqp) == 1
    assert totals.value("rabbitmq_global_messages_acknowledged_total", **amqp) == 3
    assert totals.value("rabbitmq_global_publishers", **amqp) == 1
    assert totals.value("rabbitmq_global_consumers", **amqp) == 1
    assert totals.types["rabbitmq_global_messages_received_total"] == "counter"
    assert totals.types["rabbitmq_queue_messages_ready"] == "gauge"
    assert totals.types["rabbitmq_alarms_memory_used_watermark"] == "unknown"  # untyped
    assert totals.value("rabbitmq_alarms_free_disk_space_watermark") == 0
    assert totals.value("rabbitmq_disk_space_available_bytes") > 0
    assert totals.value("rabbitmq_disk_space_available_limit_bytes") == 50_000_000
    assert totals.value("rabbitmq_process_resident_memory_bytes") > 0
    assert totals.value("rabbitmq_identity_info", rabbitmq_node="leveret@localhost") == 1
    assert totals.value("rabbitmq_build_info", product="Leveret") == 1
    # the store: the writer thread timed its syncs; 3 persistent messages are still held
    assert totals.value("leveret_store_fsync_seconds_count") > 0
    assert totals.value("leveret_store_fsync_seconds_bucket", le="+Inf") == totals.value(
        "leveret_store_fsync_seconds_count")
    assert totals.value("leveret_store_fsync_seconds_sum") > 0
    assert totals.value("leveret_store_messages") == 3
    assert totals.value("leveret_store_segments") == 1
    disk = totals.value("leveret_store_disk_bytes")
    assert disk >= totals.value("leveret_store_live_bytes") > 0

    objects = scrape(embedded, "/metrics/per-object")
    orders = {"vhost": "/", "queue": "m.orders"}
    audit = {"vhost": "/", "queue": ODD_NAME}
    assert objects.value("rabbitmq_queue_messages_ready", **orders) == 0
    assert objects.value("rabbitmq_queue_messages_unacked", **orders) == 2
    assert objects.value("rabbitmq_queue_consumers", **orders) == 1
    assert objects.value("rabbitmq_queue_messages_ready", **audit) == 1
    assert objects.value("rabbitmq_queue_messages_ready_bytes", **audit) == len(b"audit 1")
    assert objects.value("rabbitmq_queue_messages_published_total", **audit) == 2
    assert objects.value("rabbitmq_queue_messages_paged_out", **audit) == 0
    connections = objects.labels("rabbitmq_connection_incoming_bytes_total")
    assert len(connections) == 2 and all(labels["vhost"] == "/" for labels in connections)
    for labels in connections:
        assert objects.value("rabbitmq_connection_incoming_bytes_total", **labels) > 0
        assert objects.value("rabbitmq_connection_channels", **labels) == 1
    published = {tuple(sorted(s.labels.items())): s.value
                 for s in objects.samples["rabbitmq_channel_messages_published_total"]}
    assert sorted(published.values()) == [0, 9]
    consuming = [labels for labels in objects.labels("rabbitmq_channel_consumers")
                 if objects.value("rabbitmq_channel_consumers", **labels) == 1]
    assert len(consuming) == 1
    assert objects.value("rabbitmq_channel_messages_unacked", **consuming[0]) == 2
    # node-wide series and global counters are the same on both endpoints
    assert objects.value("rabbitmq_global_messages_received_total", **amqp) == 9
    assert objects.value("rabbitmq_queues") == 2

    consumer.close()  # its 2 unacked messages go back; its counts stay in the totals
    publisher.channel().close()
    deadline = time.monotonic() + 5
    while (after := scrape(embedded)).value("rabbitmq_connections") != 1:
        assert time.monotonic() < deadline, "the closed connection is still counted"
        time.sleep(0.02)  # (the broker forgets it when its socket is gone)
    assert after.value("rabbitmq_connections_opened_total") == 2
    assert after.value("rabbitmq_connections_closed_total") == 1
    assert after.value("rabbitmq_channels_opened_total") == 3
    assert after.value("rabbitmq_channels_closed_total") == 2
    assert after.value("rabbitmq_global_messages_acknowledged_total", **amqp) == 3
    assert after.value("rabbitmq_global_messages_delivered_total", **amqp) == 6
    assert after.value("rabbitmq_queue_messages_ready") == 3
    assert after.value("rabbitmq_channel_messages_acked_total") == 0  # live channels only
    publisher.close()


def test_openmetrics_when_asked(embedded: EmbeddedBroker) -> None:
    port = embedded.broker.metrics_port
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().decode().endswith("# EOF\n")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_compaction_counters(tmp_path: Path) -> None:
    with EmbeddedBroker(metrics_port=0, data_dir=tmp_path, segment_limit=4096) as embedded:
        conn = connect(embedded.url)
        channel = conn.channel()
        channel.confirm_delivery()
        channel.queue_declare("m.churn", durable=True)
        for _ in range(40):
            channel.basic_publish("", "m.churn", b"x" * 500, PERSISTENT)
        for _ in range(40):
            method, _props, _body = channel.basic_get("m.churn")
            channel.basic_ack(method.delivery_tag)
        channel.queue_declare("m.churn", passive=True)
        deadline = time.monotonic() + 10
        while True:
            metrics = scrape(embedded)
            if metrics.value("leveret_store_compaction_deleted_segments_total") > 0:
                break
            assert time.monotonic() < deadline, "settled segments were not deleted"
            channel.basic_publish("", "m.churn", b"", PERSISTENT)  # another durable step
            method, _props, _body = channel.basic_get("m.churn")
            channel.basic_ack(method.delivery_tag)
            time.sleep(0.05)
        assert metrics.value("leveret_store_compaction_reclaimed_bytes_total") >= 4096
        assert metrics.value("leveret_store_live_bytes") < 4096
        conn.close()


def test_in_memory_broker_has_no_store_series() -> None:
    with EmbeddedBroker(metrics_port=0) as embedded:
        metrics = scrape(embedded)
        assert metrics.value("rabbitmq_queues") == 0
        assert not [name for name in metrics.samples if name.startswith("leveret_store")]
        assert "rabbitmq_disk_space_available_bytes" not in metrics.samples


def test_port_taken_broker_starts_and_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        caplog.set_level(logging.INFO, logger="leveret")
        with EmbeddedBroker(metrics_port=port) as embedded:
            assert embedded.broker.metrics_port is None
            connect(embedded.url).close()  # AMQP works regardless
        lines = [r.getMessage() for r in caplog.records if "Prometheus metrics" in r.getMessage()]
        assert len(lines) == 1
        assert f"cannot listen on 127.0.0.1:{port}" in lines[0]


def test_metrics_off() -> None:
    with EmbeddedBroker() as embedded:  # BrokerConfig.metrics_port is None by default
        assert embedded.broker.metrics is None and embedded.broker.metrics_port is None
    assert resolve({}, {}).broker_config().metrics_port == 15692  # the command line's default
    assert resolve({"metrics_port": 0}, {}).broker_config().metrics_port is None


def test_histogram_buckets() -> None:
    histogram = Histogram((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.005, 3.0):
        histogram.observe(seconds)
    buckets, total = histogram.snapshot()
    assert buckets == [(0.001, 2), (0.01, 3), (float("inf"), 4)]
    assert total == pytest.approx(3.0065)
