"""The one path by which a message enters queues, whoever produces it.

A channel's basic.publish, a transaction's commit, a delayed message coming due, a
dead-lettered copy: each routes through ``publish`` (or, when it chose its queues itself,
``deliver``), which stores a persistent message once for the durable queues it reached,
then enqueues it everywhere. The outcome carries the store ticket that makes all of it
durable (nested work included, e.g. a copy dead-lettered during its own publish), so a
confirm or a commit-ok waits for exactly that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from leveret.broker.message import sender_selected
from leveret.protocol import fastpath

if TYPE_CHECKING:
    from leveret.broker.exchange import Exchange
    from leveret.broker.message import Message
    from leveret.broker.queue import Queue
    from leveret.broker.store.records import QueueKey
    from leveret.broker.vhost import VirtualHost

Moved = list[tuple["QueueKey", int]] | tuple
"""Stored copies (queue, id) a message replaces: released as it is stored or enqueued."""


class Routed(NamedTuple):
    """Where a transaction's publish goes, decided when it is published."""

    message: Message  # as it will be enqueued (a BCC header removed)
    queues: list[Queue]
    held: bool  # a delayed-message exchange holds it instead


Outcome = tuple[bool, bool, int, "list[Queue]"]
"""What became of a publish: (routed, refused, ticket, queues). ``routed``: it reached a
queue or a delayed exchange holds it; ``refused``: some queue refused it (x-overflow
reject-publish: nack it); ``ticket``: the store ticket covering everything it caused (0:
nothing written); ``queues``: those it reached. A plain tuple: this is the per-message path."""


def publish(vhost: VirtualHost, exchange: Exchange, message: Message, *,
            routing_key: str | None = None, moved: Moved = (), hold: bool = True) -> Outcome:
    """Route ``message`` from ``exchange`` and deliver it to every queue it reaches.

    CC/BCC headers add routing keys (a bad one is a 406 here, before anything happens); a
    delayed-message exchange holds a message with an ``x-delay`` unless ``hold`` is false.
    """
    store = vhost.store
    mark = store.issued if store is not None else 0
    selected = message
    extra_keys = None
    if message.flags & fastpath.FLAG_HEADERS and b"CC" in message.header:
        selected, extra_keys = sender_selected(message)
    if hold and exchange.delayed and vhost.delayed.would_hold(message):
        vhost.delayed.hold(exchange, message, moved)  # with its CC/BCC: routed when due
        routed, refused, queues = True, False, _NONE
    else:
        queues = vhost.route(exchange, selected, extra_keys, routing_key)
        routed = bool(queues)
        refused = deliver(vhost, queues, selected, moved) if routed else release(vhost, moved)
    counters = exchange.counters
    counters.publish_in += 1
    if not routed:
        counters.drop_unroutable += 1
    ticket = store.issued if store is not None and store.issued != mark else 0
    return routed, refused, ticket, queues


def route(vhost: VirtualHost, exchange: Exchange, message: Message, *,
          routing_key: str | None = None) -> Routed:
    """A transaction's publish: the queues it reaches now (delivered at tx.commit, as
    RabbitMQ routes a transaction's publishes when they are published)."""
    selected = message
    extra_keys = None
    if message.flags & fastpath.FLAG_HEADERS and b"CC" in message.header:
        selected, extra_keys = sender_selected(message)  # a bad CC/BCC: 406 at publish
    if exchange.delayed and vhost.delayed.would_hold(message):
        return Routed(message, [], True)
    return Routed(selected, vhost.route(exchange, selected, extra_keys, routing_key), False)


def complete(vhost: VirtualHost, exchange: Exchange, routed: Routed) -> Outcome:
    """Deliver a transaction's publish at commit; queues deleted since are skipped."""
    store = vhost.store
    mark = store.issued if store is not None else 0
    queues: list[Queue] = _NONE
    if routed.held:
        vhost.delayed.hold(exchange, routed.message)
        delivered, refused = True, False
    else:
        queues = [queue for queue in routed.queues if not queue.deleted]
        delivered = bool(queues)
        refused = deliver(vhost, queues, routed.message) if delivered else False
    exchange.counters.publish_in += 1
    if not delivered:
        exchange.counters.drop_unroutable += 1
    ticket = store.issued if store is not None and store.issued != mark else 0
    return delivered, refused, ticket, queues


_NONE: list[Queue] = []


def deliver(vhost: VirtualHost, queues: list[Queue], message: Message,
            moved: Moved = ()) -> bool:
    """Store ``message`` for the durable queues among ``queues`` (once), then enqueue it in
    each. Returns True when some queue refused it."""
    store = vhost.store
    if len(queues) == 1 and not moved:  # the common case: one queue
        queue = queues[0]
        if store is None or not message.persistent or not queue.persists:
            return not queue.enqueue(message)
        return not queue.enqueue(message, store.publish(message, queue.store_keys))
    msg_id = None
    if store is not None and message.persistent:
        durable = [queue.store_key for queue in queues if queue.persists]
        if durable:
            # Stored before it is enqueued, so that a consumer taking it at once settles
            # a stored copy; the copies it replaces are released in the same record.
            msg_id = store.publish(message, durable, moved)
            moved = ()
    release(vhost, moved)
    refused = False
    for queue in queues:
        if not queue.enqueue(message, msg_id if queue.persists else None):
            refused = True
    return refused


def release(vhost: VirtualHost, moved: Moved) -> bool:
    """Release stored copies that nothing replaces (their message went nowhere durable)."""
    store = vhost.store
    if store is not None:
        for queue_key, msg_id in moved:
            store.remove(queue_key, msg_id)
    return False
