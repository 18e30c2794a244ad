"""Messages as the broker holds them: raw bytes in, the same bytes out.

A message keeps the client's content header payload unparsed; properties are decoded only
when a feature needs them (headers exchange, TTL, priorities, dead-lettering), and then once.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from pamqp import commands

from leveret.protocol import errors, fastpath
from leveret.protocol.tables import content_header
from leveret.protocol.validate import decode_properties


def header_shape(header: bytes) -> tuple[int, bool]:
    """(property flags, persistent) of a content header, read from its bytes."""
    flags = fastpath.property_flags(header)
    return flags, bool(flags & fastpath.FLAG_DELIVERY_MODE) and (
        fastpath.delivery_mode(header) == 2)


class Message:
    """One published message, shared by every queue it was routed to.

    ``header`` and ``body`` are the bytes the publisher sent. A message holds nothing of
    the store's: a queue entry names the stored copy it holds (``Entry.msg_id``).
    """

    __slots__ = ("_properties", "bcc", "body", "flags", "header", "persistent", "route_raw",
                 "ttl")

    def __init__(self, route_raw: bytes, header: bytes, body: bytes,
                 flags: int | None = None, persistent: bool | None = None) -> None:
        """``flags`` and ``persistent`` may be passed when already known for ``header``."""
        self.route_raw = route_raw  # exchange + routing key as raw shortstr bytes
        self.header = header  # the content header payload as the publisher sent it
        if flags is None or persistent is None:
            flags, persistent = header_shape(header)
        self.flags = flags  # which properties are present
        self.persistent = persistent  # delivery_mode 2
        self.body = body
        self.ttl: int | None = None  # per-message TTL in ms (the expiration property)
        self.bcc: list[str] | None = None  # BCC routing keys (the header itself is removed)
        self._properties: commands.Basic.Properties | None = None

    @property
    def exchange(self) -> str:
        raw = self.route_raw
        return raw[1 : 1 + raw[0]].decode("utf-8", "surrogateescape")

    @property
    def routing_key(self) -> str:
        raw = self.route_raw
        start = 2 + raw[0]
        return raw[start : start + raw[start - 1]].decode("utf-8", "surrogateescape")

    @property
    def properties(self) -> commands.Basic.Properties:
        """The decoded basic properties (decoded on first use)."""
        if self._properties is None:
            self._properties = decode_properties(self.header)
        return self._properties

    @property
    def headers(self) -> dict[str, Any]:
        if not self.flags & fastpath.FLAG_HEADERS:
            return {}
        return self.properties.headers or {}

    @property
    def priority(self) -> int:
        if not self.flags & fastpath.FLAG_PRIORITY:
            return 0
        return self.properties.priority or 0

    def derive(self, properties: commands.Basic.Properties, exchange: str | None = None,
               routing_key: str | None = None) -> Message:
        """A copy with new properties (and optionally a new exchange and routing key)."""
        exchange = self.exchange if exchange is None else exchange
        routing_key = self.routing_key if routing_key is None else routing_key
        header = content_header(len(self.body), properties)
        route = (self.route_raw if exchange == self.exchange and routing_key == self.routing_key
                 else fastpath.route_raw(exchange, routing_key))
        copy = Message(route, header, self.body)
        copy._properties = properties
        copy.ttl = self.ttl if properties.expiration is not None else None
        return copy


def copy_properties(properties: commands.Basic.Properties) -> commands.Basic.Properties:
    """A shallow copy of basic properties with its own headers table."""
    fresh = commands.Basic.Properties()
    for name in properties.__slots__:
        setattr(fresh, name, getattr(properties, name))
    fresh.headers = dict(properties.headers or {})
    return fresh


def stored_message(route_raw: bytes, header: bytes, body: bytes) -> Message:
    """A message read back from the store, with its per-message TTL."""
    message = Message(route_raw, header, body)
    if message.flags & fastpath.FLAG_EXPIRATION:
        with contextlib.suppress(errors.AMQPError):  # checked at publish
            message.ttl = parse_expiration(message.properties.expiration)
        message._properties = None
    return message


class Entry:
    """A message's place in one queue: order, redelivery state and expiry there, and the
    id of the stored copy this queue holds (None when the queue does not store it)."""

    __slots__ = ("delivery_count", "expires_at", "message", "msg_id", "redelivered", "seq")

    def __init__(self, seq: int, message: Message, redelivered: bool = False,
                 msg_id: int | None = None) -> None:
        self.seq = seq
        self.message = message
        self.msg_id = msg_id
        self.redelivered = redelivered
        self.expires_at: float | None = None  # loop time
        self.delivery_count = 0  # returns to the queue (quorum x-delivery-count)


_EXPIRATION = re.compile(r"([+-]?[0-9]+)(.*)", re.DOTALL)


def parse_expiration(value: str | bytes) -> int:
    """The expiration property in ms; 406 with RabbitMQ's wording when it is not valid."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    match = _EXPIRATION.fullmatch(text)
    if match is None:
        problem = "no_integer"
    elif match.group(2):
        problem = f'{{leftover_string,"{match.group(2)}"}}'
    elif int(match.group(1)) < 0:
        problem = f"{{value_negative,{int(match.group(1))}}}"
    else:
        return int(match.group(1))
    raise errors.PreconditionFailed(f"invalid expiration '{text}': {problem}", 60, 40)


def sender_selected(message: Message) -> tuple[Message, list[str] | None]:
    """CC/BCC: the extra routing keys, and the message without its BCC header."""
    headers = message.headers
    keys: list[str] = []
    bcc: list[str] = []
    for name, found in (("CC", keys), ("BCC", bcc)):
        if name not in headers:
            continue
        value = headers[name]
        if not isinstance(value, list):
            raise errors.PreconditionFailed(
                f'invalid message: {{unacceptable_type_in_header,"{name}",'
                f"{'longstr' if isinstance(value, str | bytes) else type(value).__name__}}}",
                60, 40,
            )
        found += [v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
                  for v in value if isinstance(v, str | bytes)]  # keys are octets
    if "BCC" in headers:
        properties = copy_properties(message.properties)
        del properties.headers["BCC"]
        message = message.derive(properties)
        message.bcc = bcc
    return message, (keys + bcc) or None
