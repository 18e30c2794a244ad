"""Broker state as Prometheus metric families, named as RabbitMQ 3.10's rabbitmq_prometheus.

A custom ``prometheus_client`` collector: a scrape reads counters the broker keeps anyway
(``broker/stats.py``, the connections' traffic counts, queue depths, the store's index)
once, in O(queues + connections + channels + segment files); nothing is recorded per
message for it. As in RabbitMQ, ``/metrics`` sums the queue, connection and channel series
into one unlabelled sample each, and ``/metrics/per-object`` gives one sample per object
(labels ``vhost`` and ``queue``, ``connection``, ``channel``). Node-wide series and the
global counters are the same on both. Leveret's own series (the store) start ``leveret_``.

``BrokerCollector.read`` runs on the broker's loop and takes plain numbers and labels; the
``Reading`` it returns is itself a collector, which builds the per-object families (most
of the cost) wherever it runs.
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.utils import floatToGoString

from leveret.broker import __version__
from leveret.broker.management.views import NODE, RABBITMQ_VERSION, channel_name, connection_name
from leveret.broker.server import DISK_ALARM, MEMORY_ALARM, resident_memory

if TYPE_CHECKING:
    from leveret.broker.channel import Channel
    from leveret.broker.server import Broker
    from leveret.broker.stats import MessageStats
    from leveret.broker.store import MessageStore

# (name, help, value of one object); a name ending in _total is a counter, others gauges.
Series = tuple[str, str, Callable[[Any], float]]

QUEUE_SERIES: tuple[Series, ...] = (
    ("rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers",
     lambda q: q.message_count),
    ("rabbitmq_queue_messages_unacked",
     "Messages delivered to consumers but not yet acknowledged", lambda q: q.unacked),
    ("rabbitmq_queue_messages", "Sum of ready and unacknowledged messages - total queue depth",
     lambda q: q.message_count + q.unacked),
    ("rabbitmq_queue_consumers", "Consumers on a queue", lambda q: len(q.consumers)),
    ("rabbitmq_queue_messages_ready_bytes", "Size in bytes of ready messages",
     lambda q: q.ready_bytes),
    ("rabbitmq_queue_messages_ram", "Ready and unacknowledged messages stored in memory",
     lambda q: q.ready.in_memory + q.unacked),
    ("rabbitmq_queue_messages_ready_ram", "Ready messages stored in memory",
     lambda q: q.ready.in_memory),
    ("rabbitmq_queue_messages_unacked_ram", "Unacknowledged messages stored in memory",
     lambda q: q.unacked),
    ("rabbitmq_queue_messages_paged_out", "Messages paged out to disk",
     lambda q: len(q.ready) - q.ready.in_memory),
    ("rabbitmq_queue_messages_paged_out_bytes", "Size in bytes of messages paged out to disk",
     lambda q: q.ready.spilled_bytes),
    ("rabbitmq_queue_messages_published_total", "Total number of messages published to queues",
     lambda q: q.stats.publish),
)

CONNECTION_SERIES: tuple[Series, ...] = (
    ("rabbitmq_connection_incoming_bytes_total",
     "Total number of bytes received on a connection", lambda c: c.recv_oct),
    ("rabbitmq_connection_outgoing_bytes_total", "Total number of bytes sent on a connection",
     lambda c: c.send_oct),
    ("rabbitmq_connection_incoming_packets_total",
     "Total number of packets received on a connection", lambda c: c.recv_cnt),
    ("rabbitmq_connection_outgoing_packets_total",
     "Total number of packets sent on a connection", lambda c: c.send_cnt),
    ("rabbitmq_connection_channels", "Channels on a connection", lambda c: len(c.channels)),
)


def _acks_uncommitted(channel: Channel) -> int:
    return sum(len(settled) for settled, _requeue in channel.tx_settlements)


CHANNEL_SERIES: tuple[Series, ...] = (
    ("rabbitmq_channel_consumers", "Consumers on a channel", lambda ch: len(ch.consumers)),
    ("rabbitmq_channel_messages_unacked", "Delivered but not yet acknowledged messages",
     lambda ch: ch.unacked_count),
    ("rabbitmq_channel_messages_unconfirmed", "Published but not yet confirmed messages",
     lambda ch: len(ch._pending)),
    ("rabbitmq_channel_messages_uncommitted",
     "Messages received in a transaction but not yet committed",
     lambda ch: len(ch.tx_publishes)),
    ("rabbitmq_channel_acks_uncommitted",
     "Message acknowledgements in a transaction not yet committed", _acks_uncommitted),
    ("rabbitmq_consumer_prefetch", "Limit of unacknowledged messages for each consumer",
     lambda ch: ch.prefetch_count),
    ("rabbitmq_channel_prefetch",
     "Total limit of unacknowledged messages for all consumers on a channel",
     lambda ch: ch.global_prefetch),
    ("rabbitmq_channel_messages_published_total",
     "Total number of messages published into an exchange on a channel",
     lambda ch: ch.stats.publish),
    ("rabbitmq_channel_messages_confirmed_total",
     "Total number of messages published into an exchange and confirmed on the channel",
     lambda ch: ch.stats.confirm),
    ("rabbitmq_channel_messages_unroutable_returned_total",
     "Total number of messages published as mandatory into an exchange and returned to the "
     "publisher as unroutable", lambda ch: ch.stats.return_unroutable),
    ("rabbitmq_channel_messages_unroutable_dropped_total",
     "Total number of messages published as non-mandatory into an exchange and dropped as "
     "unroutable", lambda ch: ch.stats.drop_unroutable),
    ("rabbitmq_channel_get_ack_total",
     "Total number of messages fetched with basic.get in manual acknowledgement mode",
     lambda ch: ch.stats.get),
    ("rabbitmq_channel_get_total",
     "Total number of messages fetched with basic.get in automatic acknowledgement mode",
     lambda ch: ch.stats.get_no_ack),
    ("rabbitmq_channel_messages_delivered_ack_total",
     "Total number of messages delivered to consumers in manual acknowledgement mode",
     lambda ch: ch.stats.deliver),
    ("rabbitmq_channel_messages_delivered_total",
     "Total number of messages delivered to consumers in automatic acknowledgement mode",
     lambda ch: ch.stats.deliver_no_ack),
    ("rabbitmq_channel_messages_redelivered_total",
     "Total number of messages redelivered to consumers", lambda ch: ch.stats.redeliver),
    ("rabbitmq_channel_messages_acked_total",
     "Total number of messages acknowledged by consumers", lambda ch: ch.stats.ack),
    ("rabbitmq_channel_get_empty_total",
     "Total number of times basic.get operations fetched no message",
     lambda ch: ch.stats.get_empty),
)

# RabbitMQ's global counters (protocol="amqp091"), from the broker's message totals.
GLOBAL_SERIES: tuple[tuple[str, str, Callable[[MessageStats], int]], ...] = (
    ("rabbitmq_global_messages_received_total",
     "Total number of messages received from publishers", lambda t: t.publish),
    ("rabbitmq_global_messages_routed_total",
     "Total number of messages routed to queues or streams",
     lambda t: t.publish - t.return_unroutable - t.drop_unroutable),
    ("rabbitmq_global_messages_unroutable_dropped_total",
     "Total number of messages published as non-mandatory into an exchange and dropped as "
     "unroutable", lambda t: t.drop_unroutable),
    ("rabbitmq_global_messages_unroutable_returned_total",
     "Total number of messages published as mandatory into an exchange and returned to the "
     "publisher as unroutable", lambda t: t.return_unroutable),
    ("rabbitmq_global_messages_confirmed_total",
     "Total number of messages confirmed to publishers", lambda t: t.confirm),
    ("rabbitmq_global_messages_delivered_total",
     "Total number of messages delivered to consumers",
     lambda t: t.deliver + t.deliver_no_ack + t.get + t.get_no_ack),
    ("rabbitmq_global_messages_delivered_consume_manual_ack_total",
     "Total number of messages delivered to consumers using basic.consume with manual "
     "acknowledgment", lambda t: t.deliver),
    ("rabbitmq_global_messages_delivered_consume_auto_ack_total",
     "Total number of messages delivered to consumers using basic.consume with automatic "
     "acknowledgment", lambda t: t.deliver_no_ack),
    ("rabbitmq_global_messages_delivered_get_manual_ack_total",
     "Total number of messages delivered to consumers using basic.get with manual "
     "acknowledgment", lambda t: t.get),
    ("rabbitmq_global_messages_delivered_get_auto_ack_total",
     "Total number of messages delivered to consumers using basic.get with automatic "
     "acknowledgment", lambda t: t.get_no_ack),
    ("rabbitmq_global_messages_get_empty_total",
     "Total number of times basic.get operations fetched no message", lambda t: t.get_empty),
    ("rabbitmq_global_messages_redelivered_total",
     "Total number of messages redelivered to consumers", lambda t: t.redeliver),
    ("rabbitmq_global_messages_acknowledged_total",
     "Total number of messages acknowledged by consumers", lambda t: t.ack),
)
PROTOCOL = ("protocol",)
AMQP091 = ("amqp091",)


def _family(name: str, documentation: str, labels: Iterable[str] | None = None,
            value: float | None = None) -> Metric:
    kind = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
    return kind(name, documentation, value=value, labels=labels)


def summed(series: tuple[Series, ...], objects: Iterable[Any]) -> list[Metric]:
    """One unlabelled family per series: the sum over ``objects``."""
    getters = [get for _name, _help, get in series]
    sums = [0.0] * len(series)
    for obj in objects:
        for i, get in enumerate(getters):
            sums[i] += get(obj)
    return [_family(name, doc, value=total)
            for (name, doc, _get), total in zip(series, sums, strict=True)]


Rows = list[tuple[tuple[str, ...], list[float]]]  # (label values, one value per series)


def rows(series: tuple[Series, ...], objects: Iterable[Any],
         labels_of: Callable[[Any], tuple[str, ...]]) -> Rows:
    """Each object's labels and values: plain tuples, cheap to read on the loop."""
    getters = [get for _name, _help, get in series]
    return [(labels_of(obj), [get(obj) for get in getters]) for obj in objects]


def labelled(series: tuple[Series, ...], label_names: tuple[str, ...],
             read: Rows) -> list[Metric]:
    """One family per series with a sample per row (building them is most of the cost)."""
    families = [_family(name, doc, label_names) for name, doc, _get in series]
    for labels, values in read:
        for family, value in zip(families, values, strict=True):
            family.add_metric(labels, value)
    return families


@dataclass(eq=False)  # a registry keys its collectors by identity
class Reading:
    """What one scrape read off the broker, on its loop: families whose values are known,
    and the per-object series as rows, made into families by ``collect`` in any thread."""

    families: list[Metric]
    objects: list[tuple[tuple[Series, ...], tuple[str, ...], Rows]]

    def collect(self) -> Iterator[Metric]:
        yield from self.families
        for series, label_names, read in self.objects:
            yield from labelled(series, label_names, read)


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


class BrokerCollector:
    """The broker's metric families: ``read`` them on the loop, collect the reading."""

    def __init__(self, broker: Broker, per_object: bool) -> None:
        self.broker = broker
        self.per_object = per_object
        self._build_labels = {
            "rabbitmq_version": RABBITMQ_VERSION,
            "product": "Leveret",
            "product_version": __version__,
            "python_version": platform.python_version(),
            "prometheus_client_version": _package_version("prometheus_client"),
        }

    def read(self) -> Reading:
        """Read the broker's state (on its loop only): O(objects), no Metric per object."""
        reading = Reading([*self._node(), *self._global()], [])
        broker = self.broker
        queues = [queue for vhost in broker.vhosts.values() for queue in vhost.queues.values()]
        connections = list(broker.connections)
        channels = [channel for connection in connections
                    for channel in connection.channels.values()]
        for series, objects, label_names, labels_of in (
                (QUEUE_SERIES, queues, ("vhost", "queue"), _queue_labels),
                (CONNECTION_SERIES, connections, ("vhost", "connection"), _connection_labels),
                (CHANNEL_SERIES, channels, ("vhost", "channel"), _channel_labels)):
            if self.per_object:
                reading.objects.append((series, label_names, rows(series, objects, labels_of)))
            else:
                reading.families += summed(series, objects)
        store = broker.store
        if store is not None:
            reading.families += store_families(store)
        return reading

    def collect(self) -> Iterator[Metric]:
        """The Collector interface: read and build at once (on the broker's loop)."""
        return self.read().collect()

    # -- the node ----------------------------------------------------------------------------
    def _node(self) -> Iterator[Metric]:
        broker = self.broker
        config = broker.config
        statistics = broker.statistics
        build = UnknownMetricFamily("rabbitmq_build_info", "RabbitMQ & Erlang/OTP version info",
                                    labels=tuple(self._build_labels))
        build.add_metric(tuple(self._build_labels.values()), 1)
        yield build
        identity = UnknownMetricFamily("rabbitmq_identity_info",
                                       "RabbitMQ node & cluster identity info",
                                       labels=("rabbitmq_node", "rabbitmq_cluster"))
        identity.add_metric((NODE, config.cluster_name), 1)
        yield identity
        channels = consumers = 0
        for connection in broker.connections:
            channels += len(connection.channels)
            for channel in connection.channels.values():
                consumers += len(channel.consumers)
        queues = sum(len(vhost.queues) for vhost in broker.vhosts.values())
        yield _family("rabbitmq_connections", "Connections currently open",
                      value=len(broker.connections))
        yield _family("rabbitmq_channels", "Channels currently open", value=channels)
        yield _family("rabbitmq_consumers", "Consumers currently connected", value=consumers)
        yield _family("rabbitmq_queues", "Queues available", value=queues)
        yield _family("rabbitmq_connections_opened_total", "Total number of connections opened",
                      value=statistics.connections_opened)
        yield _family("rabbitmq_connections_closed_total",
                      "Total number of connections closed or terminated",
                      value=statistics.connections_closed)
        yield _family("rabbitmq_channels_opened_total", "Total number of channels opened",
                      value=statistics.channels_opened)
        yield _family("rabbitmq_channels_closed_total", "Total number of channels closed",
                      value=statistics.channels_closed)
        rss = resident_memory()
        if rss is not None:
            yield _family("rabbitmq_process_resident_memory_bytes", "Memory used in bytes",
                          value=rss)
        yield _family("rabbitmq_resident_memory_limit_bytes",
                      "Memory high watermark in bytes", value=config.memory_high_watermark)
        if config.data_dir is not None:
            try:
                free: int | None = shutil.disk_usage(config.data_dir).free
            except OSError:
                free = None
            if free is not None:
                yield _family("rabbitmq_disk_space_available_bytes",
                              "Disk space available in bytes", value=free)
        yield _family("rabbitmq_disk_space_available_limit_bytes",
                      "Free disk space low watermark in bytes", value=config.disk_free_limit)
        yield UnknownMetricFamily("rabbitmq_alarms_memory_used_watermark",
                                  "is 1 if VM memory watermark alarm is in effect",
                                  value=int(MEMORY_ALARM in broker.alarms))
        yield UnknownMetricFamily("rabbitmq_alarms_free_disk_space_watermark",
                                  "is 1 if free disk space watermark alarm is in effect",
                                  value=int(DISK_ALARM in broker.alarms))

    # -- RabbitMQ's global counters --------------------------------------------------------------
    def _global(self) -> Iterator[Metric]:
        totals = self.broker.statistics.totals()
        for name, documentation, get in GLOBAL_SERIES:
            family = _family(name, documentation, PROTOCOL)
            family.add_metric(AMQP091, get(totals))
            yield family
        publishers = consumers = 0
        for connection in self.broker.connections:
            for channel in connection.channels.values():
                publishers += channel.stats.publish > 0
                consumers += len(channel.consumers)
        for name, documentation, value in (
                ("rabbitmq_global_publishers", "Current number of publishers", publishers),
                ("rabbitmq_global_consumers", "Current number of consumers", consumers)):
            family = _family(name, documentation, PROTOCOL)
            family.add_metric(AMQP091, value)
            yield family

def _queue_labels(queue: Any) -> tuple[str, ...]:
    return queue.vhost.name, queue.name


def _connection_labels(connection: Any) -> tuple[str, ...]:
    return (connection.vhost.name if connection.vhost is not None else "",
            connection_name(connection))


def _channel_labels(channel: Channel) -> tuple[str, ...]:
    return channel.vhost.name if channel.vhost is not None else "", channel_name(channel)


# -- the message store (Leveret's own) ---------------------------------------------------------
def store_families(store: MessageStore) -> Iterator[Metric]:
    """The store's size, its compaction counters and the writer thread's sync latency."""
    usage = store.usage()
    yield _family("leveret_store_segments", "Segment files of the message log",
                  value=usage.segments)
    yield _family("leveret_store_disk_bytes",
                  "Bytes in the message log's segment files (including what the writer "
                  "thread has yet to write)", value=usage.disk_bytes)
    yield _family("leveret_store_live_bytes",
                  "Bytes of stored messages that some queue still holds", value=usage.live_bytes)
    yield _family("leveret_store_messages", "Stored persistent messages some queue still holds",
                  value=usage.messages)
    yield _family("leveret_store_write_failing",
                  "1 while the store's writes fail (publishers are blocked and writes retried)",
                  value=int(bool(store.failed)))
    compactor = store.compactor
    yield _family("leveret_store_compaction_merges_total",
                  "Merges of sealed segment files into one", value=compactor.merges)
    yield _family("leveret_store_compaction_deleted_segments_total",
                  "Settled segment files deleted from the front of the log",
                  value=compactor.deleted_files)
    yield _family("leveret_store_compaction_reclaimed_bytes_total",
                  "Segment bytes freed by compaction (deletes and merges)",
                  value=compactor.reclaimed_bytes)
    yield _family("leveret_store_compaction_lost_records_total",
                  "Damaged records compaction found and could not keep",
                  value=compactor.lost_records)
    writer = store.writer
    if writer is not None:
        buckets, total = writer.sync_latency.snapshot()
        yield HistogramMetricFamily(
            "leveret_store_fsync_seconds",
            "Time the writer thread took to make one group commit durable: its writes and "
            "fsyncs (with O_DSYNC the writes are the syncs); not observed with fsync off",
            buckets=[(floatToGoString(bound), cumulative) for bound, cumulative in buckets],
            sum_value=total)
