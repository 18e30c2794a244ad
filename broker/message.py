"""Messages as the broker holds them: raw bytes in, the same bytes out.

A message keeps the client's content header payload unparsed; properties are decoded only
when a feature needs them (headers exchange, TTL, priorities, dead-lettering), and then once.
"""

from __future__ import annotations

from typing import Any

from pamqp import commands
from pamqp.header import ContentHeader


class Message:
    """One published message, shared by every queue it was routed to."""

    __slots__ = ("_properties", "body", "exchange", "header", "route_raw", "routing_key")

    def __init__(
        self, exchange: str, routing_key: str, route_raw: bytes, header: bytes, body: bytes
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.route_raw = route_raw  # exchange + routing key as raw shortstr bytes
        self.header = header  # the content header payload as the publisher sent it
        self.body = body
        self._properties: commands.Basic.Properties | None = None

    @property
    def properties(self) -> commands.Basic.Properties:
        """The decoded basic properties (decoded on first use)."""
        if self._properties is None:
            content = ContentHeader()
            content.unmarshal(self.header)
            self._properties = content.properties
        return self._properties

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.headers or {}

    @property
    def size(self) -> int:
        return len(self.body)


class Entry:
    """A message's place in one queue: its order there and whether it was delivered before."""

    __slots__ = ("message", "redelivered", "seq")

    def __init__(self, seq: int, message: Message, redelivered: bool = False) -> None:
        self.seq = seq
        self.message = message
        self.redelivered = redelivered
