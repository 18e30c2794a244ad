"""Dead-lettering: republish a message to its queue's dead-letter exchange with x-death.

Follows RabbitMQ: the x-death array holds one table per (queue, reason), most recent
first, whose count grows when the same pair happens again; x-first-death-* are set once
and x-last-death-* every time (as RabbitMQ 3.13 does); the per-message expiration is
removed and kept as original-expiration; automatic cycles (no rejection on the way) are
dropped.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from broker.message import Message, copy_properties
from protocol.tables import Long

if TYPE_CHECKING:
    from broker.queue import Queue


def _death_of(entry: Any) -> tuple[Any, Any]:
    return (entry.get("queue"), entry.get("reason")) if isinstance(entry, dict) else (None, None)


def with_death(message: Message, queue: Queue, reason: str, exchange: str,
               routing_key: str) -> Message:
    """The message as it leaves ``queue`` for ``exchange`` with a new x-death entry."""
    properties = copy_properties(message.properties)
    headers: dict[str, Any] = properties.headers
    cc = _string_list(headers.get("CC"))
    routing_keys = [message.routing_key, *cc]
    deaths = [d for d in headers.get("x-death") or [] if isinstance(d, dict)]
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    for index, death in enumerate(deaths):
        if _death_of(death) == (queue.name, reason):
            death = dict(death)
            death["count"] = Long(int(death.get("count", 1)) + 1)
            death["time"] = now
            del deaths[index]
            deaths.insert(0, death)
            break
    else:
        death = {
            "count": Long(1),
            "reason": reason,
            "queue": queue.name,
            "time": now,
            "exchange": message.exchange,
            "routing-keys": routing_keys,
        }
        if properties.expiration is not None:
            death["original-expiration"] = properties.expiration
        deaths.insert(0, death)
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-queue", queue.name)
    headers.setdefault("x-first-death-exchange", message.exchange)
    headers["x-last-death-reason"] = reason
    headers["x-last-death-queue"] = queue.name
    headers["x-last-death-exchange"] = message.exchange
    properties.expiration = None
    if queue.dead_letter_routing_key is not None:  # the new key replaces CC and BCC
        headers.pop("CC", None)
    for index, death in enumerate(deaths):  # counts decoded from the wire are plain ints
        if not isinstance(death.get("count"), Long):
            deaths[index] = {**death, "count": Long(int(death.get("count", 1)))}
    return message.derive(properties, exchange=exchange, routing_key=routing_key)


def _string_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v.decode() if isinstance(v, bytes) else v for v in value if isinstance(v, str | bytes)]


def is_cycle(queue_name: str, deaths: list[Any]) -> bool:
    """RabbitMQ's test: the message died in ``queue_name`` before, with no rejection since."""
    for death in deaths:
        if not isinstance(death, dict):
            continue
        if death.get("reason") == "rejected":
            return False
        if death.get("queue") == queue_name:
            return True
    return False


def dead_letter(queue: Queue, messages: Iterable[Message], reason: str) -> None:
    """Send ``messages`` from ``queue`` to its dead-letter exchange (if it has one)."""
    exchange_name = queue.dead_letter_exchange
    if exchange_name is None:
        return
    vhost = queue.vhost
    exchange = vhost.exchanges.get(exchange_name)
    if exchange is None:
        return  # RabbitMQ drops dead letters to a missing exchange
    for message in messages:
        if message.body is None and vhost.store is not None:
            vhost.store.load(message)
        key = queue.dead_letter_routing_key
        if key is None:
            key = message.routing_key
        dead = with_death(message, queue, reason, exchange.name, key)
        deaths = dead.properties.headers.get("x-death") or []
        extra_keys = None
        if queue.dead_letter_routing_key is None:  # re-routed by the original keys
            extra_keys = _string_list(message.headers.get("CC")) + (message.bcc or [])
        targets = [
            target for target in vhost.route(exchange, dead, extra_keys or None)
            if reason == "rejected" or not is_cycle(target.name, deaths)
        ]
        if targets:
            vhost.enqueue_all(targets, dead)
