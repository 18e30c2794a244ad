"""Exchanges: a name, a type's routing table and the flags RabbitMQ compares on redeclare."""

from __future__ import annotations

from typing import Any

from leveret.broker.routing import TABLES, RoutingTable
from leveret.broker.stats import MessageStats, RateWindow

BUILTIN_TYPES = frozenset(TABLES)
DELAYED_TYPE = "x-delayed-message"  # RabbitMQ's delayed-message plugin, built in here


class Exchange:
    """A named router of messages to queues and other exchanges."""

    def __init__(
        self,
        name: str,
        type_: str,
        *,
        durable: bool = True,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.type = type_
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = arguments or {}
        self.delayed = type_ == DELAYED_TYPE
        routing_type = self.arguments.get("x-delayed-type") if self.delayed else type_
        if isinstance(routing_type, bytes):
            routing_type = routing_type.decode("utf-8", "replace")
        self.table: RoutingTable = TABLES[routing_type]()
        alternate = self.arguments.get("alternate-exchange")
        if isinstance(alternate, bytes):
            alternate = alternate.decode("utf-8", "replace")
        self.alternate: str | None = alternate if isinstance(alternate, str) else None
        self.exchange_destinations = 0  # bindings whose destination is an exchange
        self.bound_as_destination: set[tuple[Exchange, str, Any]] = set()
        # publish_in, and drop_unroutable for what went nowhere; read them through ``stats``
        self.counters = MessageStats()
        self.rates = RateWindow()

    @property
    def stats(self) -> MessageStats:
        """RabbitMQ's exchange message_stats: ``publish_out`` is what was routed."""
        counters = self.counters
        counters.publish_out = counters.publish_in - counters.drop_unroutable
        return counters

    def __repr__(self) -> str:
        return f"<Exchange {self.name!r} {self.type}>"
