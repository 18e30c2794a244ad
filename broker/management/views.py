"""Broker objects as RabbitMQ 3.10's management API shows them (the JSON that tools read).

Only what Leveret knows is filled in; fields RabbitMQ derives from Erlang internals
(reductions, garbage collection) are left out rather than faked.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from leveret.broker import __version__
from leveret.broker.administration import json_safe
from leveret.broker.stats import FIELDS, MessageStats, RateWindow

if TYPE_CHECKING:
    from leveret.broker.access import User
    from leveret.broker.channel import Channel
    from leveret.broker.connection import Connection
    from leveret.broker.consumer import Consumer
    from leveret.broker.exchange import Exchange
    from leveret.broker.queue import Queue
    from leveret.broker.server import Broker
    from leveret.broker.vhost import VirtualHost

RABBITMQ_VERSION = "3.10.8"  # the management API version Leveret's answers follow
NODE = "leveret@localhost"

# Which message_stats keys each kind of object shows (as RabbitMQ 3.10 does).
QUEUE_STATS = ("publish", "deliver", "deliver_no_ack", "get", "get_no_ack", "get_empty", "ack",
               "redeliver", "deliver_get")
CHANNEL_STATS = ("publish", "confirm", "return_unroutable", "drop_unroutable", "deliver",
                 "deliver_no_ack", "get", "get_no_ack", "get_empty", "ack", "redeliver",
                 "deliver_get")
EXCHANGE_STATS = ("publish_in", "publish_out")
TOTAL_STATS = CHANNEL_STATS

_POSITION = {name: index for index, name in enumerate((*FIELDS, "deliver_get"))}


def message_stats(stats: MessageStats, window: RateWindow, shown: tuple[str, ...]
                  ) -> dict[str, Any]:
    """RabbitMQ's ``message_stats``: each counter in ``shown`` with ``<name>_details.rate``."""
    counts = tuple(stats.as_dict().values())  # FIELDS, then deliver_get
    rates = window.rates(counts)
    out: dict[str, Any] = {}
    for name in shown:
        index = _POSITION[name]
        out[name] = counts[index]
        out[f"{name}_details"] = {"rate": round(rates[index], 1) if rates[index] else 0.0}
    return out


def active_stats(stats: MessageStats, window: RateWindow, shown: tuple[str, ...]
                 ) -> dict[str, Any] | None:
    """``message_stats`` of a queue or an exchange, None while nothing has happened to it:
    RabbitMQ 3.10.8 leaves the key out then (and 50,000 idle queues list faster)."""
    stats_out = message_stats(stats, window, shown)
    return stats_out if any(stats_out[name] for name in shown) else None


def iso_time(timestamp: float | None) -> str | None:
    """RabbitMQ 3.10's time format: 2026-12-02T00:11:18.201+00:00."""
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="milliseconds")


def rate(value: float) -> dict[str, float]:
    return {"rate": round(value, 1)}


# -- queues ----------------------------------------------------------------------------------
def queue_type(queue: Queue) -> str:
    return "quorum" if queue.is_quorum else "classic"


def queue_memory(queue: Queue) -> int:
    """An estimate of the bytes a queue holds in memory: bodies plus per-entry overhead."""
    return 1024 + queue.ready_bytes + 200 * (len(queue.ready) + queue.unacked)


def queue_json(queue: Queue) -> dict[str, Any]:
    ready = queue.message_count
    unacked = queue.unacked
    messages = ready + unacked
    in_memory = queue.ready.in_memory
    spilled_bytes = queue.ready.spilled_bytes
    owner = queue.exclusive_owner
    out: dict[str, Any] = {
        "name": queue.name,
        "vhost": queue.vhost.name,
        "type": queue_type(queue),
        "node": NODE,
        "durable": queue.durable,
        "auto_delete": queue.auto_delete,
        "exclusive": owner is not None,
        "owner_pid_details": ({"name": connection_name(owner), "peer_host": owner.peer_host}
                              if owner is not None else None),
        "arguments": json_safe(queue.arguments),
        "state": "running",
        "consumers": len(queue.consumers),
        "consumer_capacity": 1.0 if queue.consumers else 0.0,
        "consumer_utilisation": 1.0 if queue.consumers else 0.0,
        "messages": messages,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "message_bytes_ready": queue.ready_bytes,
        # RabbitMQ 3.10.8's paging counts: here what lives on disk only (a spilled backlog)
        "messages_ram": in_memory + unacked,
        "messages_ready_ram": in_memory,
        "messages_unacknowledged_ram": unacked,
        "messages_paged_out": ready - in_memory,
        "message_bytes_ram": queue.ready_bytes - spilled_bytes,
        "message_bytes_paged_out": spilled_bytes,
        "head_message_timestamp": None,
        "memory": queue_memory(queue),
        "policy": None,
        "operator_policy": None,
        "effective_policy_definition": {},
        "recoverable_slaves": None,
        "exclusive_consumer_tag": None,
        "single_active_consumer_tag": None,
    }
    stats = active_stats(queue.stats, queue.rates, QUEUE_STATS)
    if stats is not None:
        out["message_stats"] = stats
    # RabbitMQ 3.10.8 shows idle_since whenever nothing moved, consumers or not
    idle_since = queue.rates.idle_since
    if idle_since is not None:
        out["idle_since"] = iso_time(idle_since)
    out["messages_details"] = out["messages_ready_details"] = rate(0.0)
    out["messages_unacknowledged_details"] = rate(0.0)
    return out


# -- exchanges and bindings ------------------------------------------------------------------
def exchange_json(vhost: VirtualHost, exchange: Exchange) -> dict[str, Any]:
    out = {
        "name": exchange.name,
        "vhost": vhost.name,
        "type": exchange.type,
        "durable": exchange.durable,
        "auto_delete": exchange.auto_delete,
        "internal": exchange.internal,
        "arguments": json_safe(exchange.arguments),  # no "policy" key: RabbitMQ 3.10.8
        "user_who_performed_action": "",
    }
    stats = active_stats(exchange.stats, exchange.rates, EXCHANGE_STATS)
    if stats is not None:
        out["message_stats"] = stats
    return out


def properties_key(routing_key: str, arguments: dict[str, Any]) -> str:
    """What names one binding in URLs: the key escaped as RabbitMQ 3.10.8 escapes it
    (``a.#`` is ``a.%23``), ``~`` for an empty one, and a digest of the arguments when there
    are any (RabbitMQ hashes them likewise, with another hash: take the key from a list)."""
    key = _quote_plus(routing_key)
    if not arguments:
        return key or "~"
    digest = hashlib.sha1(json.dumps(json_safe(arguments), sort_keys=True).encode())
    return f"{key}~{digest.hexdigest()[:22]}"


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def _quote_plus(text: str) -> str:
    """Erlang's ``quote_plus``: letters, digits and ``-_.`` kept, space as ``+``, the rest
    of the UTF-8 bytes as ``%XX``."""
    return "".join(chr(byte) if byte in _UNRESERVED else "+" if byte == 0x20 else f"%{byte:02X}"
                   for byte in text.encode("utf-8", "surrogateescape"))


def binding_json(vhost: str, source: str, dest: Any, routing_key: str,
                 arguments: dict[str, Any]) -> dict[str, Any]:
    from leveret.broker.exchange import Exchange

    return {
        "source": source,
        "vhost": vhost,
        "destination": dest.name,
        "destination_type": "exchange" if isinstance(dest, Exchange) else "queue",
        "routing_key": routing_key,
        "arguments": json_safe(arguments),
        "properties_key": properties_key(routing_key, arguments),
    }


def vhost_bindings(vhost: VirtualHost) -> list[dict[str, Any]]:
    """Every binding of a vhost, the default exchange's implicit ones first (as RabbitMQ)."""
    out = [binding_json(vhost.name, "", queue, queue.name, {}) for queue in vhost.queues.values()]
    for exchange in vhost.exchanges.values():
        if exchange.name:
            for (dest, key, _frozen), args in exchange.table.bindings.items():
                out.append(binding_json(vhost.name, exchange.name, dest, key, args))
    return out


# -- connections, channels, consumers --------------------------------------------------------
def connection_name(connection: Connection) -> str:
    return f"{connection.peer} -> {connection.local}"


def _port_of(address: str) -> int | None:
    try:
        return int(address.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def _host_of(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]")


def connection_json(connection: Connection) -> dict[str, Any]:
    vhost = connection.vhost
    ssl_object = (connection.transport.get_extra_info("ssl_object")
                  if connection.tls and connection.transport is not None else None)
    recv_rate, send_rate = connection.rates.rates((connection.recv_oct, connection.send_oct))
    return {
        "name": connection_name(connection),
        "node": NODE,
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "state": "blocked" if connection.blocked_reason and connection.has_published
        else "running",
        "user": connection.username,
        "vhost": vhost.name if vhost is not None else None,
        "host": _host_of(connection.local),
        "port": _port_of(connection.local),
        "peer_host": connection.peer_host,
        "peer_port": _port_of(connection.peer),
        "ssl": connection.tls,
        "ssl_protocol": ssl_object.version() if ssl_object is not None else None,
        "auth_mechanism": connection.mechanism,
        "channels": len(connection.channels),
        "channel_max": connection.channel_max,
        "frame_max": connection.frame_max,
        "timeout": connection.heartbeat,
        "connected_at": int(connection.connected_at * 1000),
        "client_properties": json_safe(connection.client_properties),
        "recv_oct": connection.recv_oct,
        "recv_oct_details": rate(recv_rate),
        "recv_cnt": connection.recv_cnt,
        "send_oct": connection.send_oct,
        "send_oct_details": rate(send_rate),
        "send_cnt": connection.send_cnt,
        "send_pend": (connection.transport.get_write_buffer_size()
                      if connection.transport is not None else 0),
    }


def channel_name(channel: Channel) -> str:
    return f"{connection_name(channel.connection)} ({channel.number})"


def channel_json(channel: Channel) -> dict[str, Any]:
    connection = channel.connection
    return {
        "name": channel_name(channel),
        "node": NODE,
        "number": channel.number,
        "user": connection.username,
        "vhost": channel.vhost.name if channel.vhost is not None else None,
        "state": "closing" if channel.closing else ("flow" if not channel.flow_active
                                                    else "running"),
        "connection_details": {"name": connection_name(connection),
                               "peer_host": connection.peer_host,
                               "peer_port": _port_of(connection.peer)},
        "confirm": channel.confirm_mode,
        "transactional": channel.tx_mode,
        "consumer_count": len(channel.consumers),
        "messages_unacknowledged": channel.unacked_count,
        "messages_unconfirmed": len(channel._pending),
        "messages_uncommitted": len(channel.tx_publishes),
        "acks_uncommitted": len(channel.tx_settlements),
        "prefetch_count": channel.prefetch_count,
        "global_prefetch_count": channel.global_prefetch,
        "message_stats": message_stats(channel.stats, channel.rates, CHANNEL_STATS),
    }


def consumer_json(consumer: Consumer) -> dict[str, Any]:
    channel = consumer.channel
    connection = channel.connection
    return {
        "consumer_tag": consumer.tag,
        "queue": {"name": consumer.queue.name, "vhost": consumer.queue.vhost.name},
        "channel_details": {"name": channel_name(channel),
                            "connection_name": connection_name(connection),
                            "number": channel.number, "node": NODE,
                            "peer_host": connection.peer_host,
                            "peer_port": _port_of(connection.peer),
                            "user": connection.username},
        "ack_required": not consumer.no_ack,
        "exclusive": consumer.exclusive,
        "prefetch_count": consumer.prefetch,
        "arguments": json_safe(consumer.arguments),
        "active": True,
        "activity_status": "up",
    }


# -- users, vhosts, permissions --------------------------------------------------------------
def user_json(user: User) -> dict[str, Any]:
    return {**user.to_json(), "limits": {}}


def queue_totals(queues: Any) -> dict[str, Any]:
    ready = unacked = 0
    for queue in queues:
        ready += queue.message_count
        unacked += queue.unacked
    return {"messages": ready + unacked, "messages_details": rate(0.0),
            "messages_ready": ready, "messages_ready_details": rate(0.0),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": rate(0.0)}


def vhost_json(broker: Broker, vhost: VirtualHost) -> dict[str, Any]:
    statistics = broker.statistics
    recv = send = 0
    for connection in broker.connections:
        if connection.vhost is vhost:
            recv += connection.recv_oct
            send += connection.send_oct
    return {
        "name": vhost.name,
        "description": "Default virtual host" if vhost.name == "/" else "",
        "tags": [],
        "metadata": {"description": "", "tags": []},
        "default_queue_type": "classic",
        "tracing": False,
        "cluster_state": {NODE: "running"},
        **queue_totals(vhost.queues.values()),
        "recv_oct": recv,
        "send_oct": send,
        "message_stats": message_stats(statistics.vhost_totals(vhost.name),
                                       statistics.window(vhost.name), TOTAL_STATS),
    }


# -- the node ---------------------------------------------------------------------------------
def node_json(broker: Broker) -> dict[str, Any]:
    from leveret.broker.server import DISK_ALARM, MEMORY_ALARM, resident_memory

    config = broker.config
    free = None
    if config.data_dir is not None:
        try:
            free = os.statvfs(config.data_dir).f_bavail * os.statvfs(config.data_dir).f_frsize
        except OSError:
            free = None
    return {
        "name": NODE,
        "type": "disc",
        "running": True,
        "os_pid": str(os.getpid()),
        "uptime": int((time.time() - broker.started_at) * 1000),
        "processors": os.cpu_count() or 1,
        "mem_used": resident_memory() or 0,
        "mem_limit": config.memory_high_watermark,
        "mem_alarm": MEMORY_ALARM in broker.alarms,
        "disk_free": free,
        "disk_free_limit": config.disk_free_limit,
        "disk_free_alarm": DISK_ALARM in broker.alarms,
        "sockets_used": len(broker.connections),
        "rates_mode": "basic",
        "db_dir": str(config.data_dir) if config.data_dir is not None else None,
        "exchange_types": exchange_types(),
        "auth_mechanisms": [{"name": m, "enabled": True} for m in config.auth_mechanisms],
        "applications": [{"name": "leveret", "description": "Leveret",
                          "version": __version__}],
        "partitions": [],
    }


def exchange_types() -> list[dict[str, Any]]:
    return [{"name": name, "description": "", "enabled": True}
            for name in ("direct", "fanout", "headers", "topic", "x-delayed-message")]


def listeners(broker: Broker) -> list[dict[str, Any]]:
    config = broker.config
    out = [{"node": NODE, "protocol": "amqp", "ip_address": config.host, "port": broker.port}]
    if broker.tls_port is not None:
        out.append({"node": NODE, "protocol": "amqp/ssl", "ip_address": config.host,
                    "port": broker.tls_port})
    management = getattr(broker, "management", None)
    if management is not None and management.port is not None:
        out.append({"node": NODE, "protocol": "http", "ip_address": config.host,
                    "port": management.port})
    if broker.metrics_port is not None:  # RabbitMQ's name for its Prometheus listener
        out.append({"node": NODE, "protocol": "http/prometheus", "ip_address": config.host,
                    "port": broker.metrics_port})
    return out


def overview_json(broker: Broker) -> dict[str, Any]:
    statistics = broker.statistics
    channels = consumers = 0
    for connection in broker.connections:
        channels += len(connection.channels)
        for channel in connection.channels.values():
            consumers += len(channel.consumers)
    queues = [queue for vhost in broker.vhosts.values() for queue in vhost.queues.values()]
    exchanges = sum(len(vhost.exchanges) for vhost in broker.vhosts.values())
    return {
        "management_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "Leveret",
        "product_version": __version__,
        "rates_mode": "basic",
        "cluster_name": broker.config.cluster_name,
        "node": NODE,
        "python_version": sys.version.split()[0],
        "exchange_types": exchange_types(),
        "disable_stats": False,
        "enable_queue_totals": True,
        "message_stats": message_stats(statistics.totals(), statistics.window(None),
                                       TOTAL_STATS),
        "queue_totals": queue_totals(queues),
        "object_totals": {"connections": len(broker.connections), "channels": channels,
                          "consumers": consumers, "exchanges": exchanges,
                          "queues": len(queues)},
        "listeners": listeners(broker),
        "contexts": [],
        "alarms": sorted(broker.alarms),
    }
