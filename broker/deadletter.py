"""Dead-lettering: republish a message to its queue's dead-letter exchange with x-death.

Follows RabbitMQ: the x-death array holds one table per (queue, reason), most recent
first, whose count grows when the same pair happens again; x-first-death-* are set once
and x-last-death-* every time (as RabbitMQ 3.13 does); the per-message expiration is
removed and kept as original-expiration; automatic cycles (no rejection on the way) are
dropped.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from leveret.broker.message import Entry, Message, copy_properties
from leveret.broker.publish import Moved, deliver, release
from leveret.protocol.tables import Long

if TYPE_CHECKING:
    from leveret.broker.exchange import Exchange
    from leveret.broker.queue import Queue

log = logging.getLogger(__name__)


def _death_of(entry: Any) -> tuple[Any, Any]:
    return (entry.get("queue"), entry.get("reason")) if isinstance(entry, dict) else (None, None)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def with_death(message: Message, queue: Queue, reason: str, exchange: str,
               routing_key: str) -> Message:
    """The message as it leaves ``queue`` for ``exchange`` with a new x-death entry.

    Whatever a client put in ``x-death`` is tolerated (RabbitMQ 3.10.8 crashes the queue on
    some of it and loses the message): an x-death that is not an array starts afresh, entries
    that are not tables are dropped, other queues' entries are kept as they are, and this
    queue's entry counts one more when its count is an integer (from 1 otherwise).
    """
    properties = copy_properties(message.properties)
    headers: dict[str, Any] = properties.headers
    cc = _string_list(headers.get("CC"))
    routing_keys = [message.routing_key, *cc]
    found = headers.get("x-death")
    deaths = [d for d in found if isinstance(d, dict)] if isinstance(found, list) else []
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    for index, death in enumerate(deaths):
        if _death_of(death) == (queue.name, reason):
            death = dict(death)
            count = death.get("count")
            death["count"] = Long(count + 1 if _is_int(count) else 1)
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
    for index, death in enumerate(deaths):  # integer counts go out as longs, as RabbitMQ's
        count = death.get("count")
        if _is_int(count) and not isinstance(count, Long):
            deaths[index] = {**death, "count": Long(count)}
    return message.derive(properties, exchange=exchange, routing_key=routing_key)


def _string_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
            for v in value if isinstance(v, str | bytes)]


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


def dead_letter(queue: Queue, entries: Iterable[Entry], reason: str) -> None:
    """Send ``entries`` from ``queue`` to its dead-letter exchange (if it has one).

    Each entry's stored copy is released here: replaced by the dead-lettered copy in the
    same store record when that is stored, else simply released. A message that cannot be
    dead-lettered (however malformed) is logged and dropped; the others go on.
    """
    vhost = queue.vhost
    exchange_name = queue.dead_letter_exchange
    exchange = vhost.exchanges.get(exchange_name) if exchange_name is not None else None
    key = queue.store_key
    for entry in entries:
        moved = [(key, entry.msg_id)] if entry.msg_id is not None else ()
        if exchange is None:  # RabbitMQ drops dead letters to a missing exchange
            release(vhost, moved)
            continue
        try:
            _dead_letter_one(queue, exchange, entry.message, reason, moved)
        except Exception:
            log.exception("could not dead-letter a message from queue '%s' in vhost '%s' "
                          "(reason %s); it is dropped", queue.name, vhost.name, reason)
            if vhost.store is not None and entry.msg_id is not None:
                vhost.store.remove(key, entry.msg_id)


def _dead_letter_one(queue: Queue, exchange: Exchange, message: Message, reason: str,
                     moved: Moved) -> None:
    vhost = queue.vhost
    routing_key = queue.dead_letter_routing_key
    if routing_key is None:
        routing_key = message.routing_key
    dead = with_death(message, queue, reason, exchange.name, routing_key)
    deaths = dead.properties.headers.get("x-death") or []
    extra_keys = None
    if queue.dead_letter_routing_key is None:  # re-routed by the original keys
        extra_keys = _string_list(message.headers.get("CC")) + (message.bcc or [])
    targets = [
        target for target in vhost.route(exchange, dead, extra_keys or None)
        if reason == "rejected" or not is_cycle(target.name, deaths)
    ]
    if targets:
        deliver(vhost, targets, dead, moved)
    else:
        release(vhost, moved)
