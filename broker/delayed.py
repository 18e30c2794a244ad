"""Delayed messages: the ``x-delayed-message`` exchange type, built in.

Compatible with RabbitMQ's delayed-message plugin: the exchange routes as its
``x-delayed-type`` says, and a message with an ``x-delay`` header (ms) is routed only when
that time has come. Held messages sit in one heap per vhost behind a single timer, so a
million of them cost O(log n) each; there is no cap on the delay.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import TYPE_CHECKING

from broker.message import Message, sender_selected
from protocol import fastpath

if TYPE_CHECKING:
    from broker.exchange import Exchange
    from broker.vhost import VirtualHost


STORE_PREFIX = "amq.delayed:"  # clients cannot name a queue amq.*: no clash in the store


def store_key(vhost: str, exchange: Exchange) -> tuple[str, str] | None:
    """Where the store keeps the messages an exchange holds (None if the name is too long)."""
    name = STORE_PREFIX + exchange.name
    return (vhost, name) if len(name.encode()) <= 255 else None


def delay_of(message: Message) -> int:
    """The x-delay header in ms (0 when absent or not a positive integer)."""
    delay = message.headers.get("x-delay")
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        return 0
    return max(int(delay), 0)


class DelayedMessages:
    """Messages held by delayed-message exchanges until they are due.

    A held transient message is kept as one flat tuple of atoms (due time, order, exchange
    number, route, header and body bytes, TTL) rather than a ``Message``: the garbage
    collector untracks such tuples, so a million held messages add nothing to the cost of a
    full collection (which otherwise made deliveries late by hundreds of ms while a burst
    was being published). A stored (persistent) message keeps its ``Message``, which the
    store settles by identity; only its decoded properties are dropped.
    """

    def __init__(self, vhost: VirtualHost) -> None:
        self._vhost = vhost
        self._heap: list[tuple] = []
        self._counter = itertools.count()
        self._exchange_numbers: dict[Exchange, int] = {}
        self._exchanges: dict[int, Exchange] = {}
        self._held_by: dict[int, int] = {}  # exchange number -> messages it holds
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return self._vhost.dispatcher.loop

    def hold(self, exchange: Exchange, message: Message) -> bool:
        """Keep ``message`` until its x-delay has passed; False when it has no delay.

        A persistent message held by a durable exchange is stored, so it survives a restart.
        """
        delay = delay_of(message)
        if delay <= 0:
            return False
        store = self._vhost.store
        key = store_key(self._vhost.name, exchange)
        if store is not None and exchange.durable and key is not None and message.persistent:
            store.publish(message, [key])
        self.schedule(self._loop.time() + delay / 1000, exchange, message)
        return True

    def restore(self, exchange: Exchange, messages: list[tuple[int, Message]]) -> None:
        """Recovery: messages held by ``exchange`` with their due times (epoch ms)."""
        now_ms = time.time() * 1000
        now = self._loop.time()
        for due_ms, message in messages:
            self.schedule(now + max(due_ms - now_ms, 0) / 1000, exchange, message)

    def schedule(self, due: float, exchange: Exchange, message: Message) -> None:
        number = self._exchange_numbers.get(exchange)
        if number is None:
            number = next(self._counter)
            self._exchange_numbers[exchange] = number
            self._exchanges[number] = exchange
            self._held_by[number] = 0
        self._held_by[number] += 1
        if message.refs:
            message._properties = None  # decoded again when due, if routing needs it
            entry = (due, next(self._counter), number, message)
        else:
            entry = (due, next(self._counter), number, message.route_raw, message.header,
                     message.body, message.ttl)
        heapq.heappush(self._heap, entry)
        if self._timer is None or due < self._timer_due:
            self._arm(due)

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        heap = self._heap
        now = self._loop.time()
        try:
            while heap and heap[0][0] <= now:
                self._route_due(heapq.heappop(heap))
        finally:
            if heap:
                self._arm(heap[0][0])

    def _route_due(self, entry: tuple) -> None:
        vhost = self._vhost
        number = entry[2]
        exchange = self._exchanges[number]
        if len(entry) == 4:
            message = entry[3]
            if message.refs and vhost.store is not None:
                vhost.store.remove(store_key(vhost.name, exchange), message)  # type: ignore[arg-type]
        else:
            message = Message(entry[3], entry[4], entry[5])
            message.ttl = entry[6]
        alive = vhost.exchanges.get(exchange.name) is exchange
        self._held_by[number] -= 1
        if not alive and not self._held_by[number]:  # a deleted exchange's last message
            del self._held_by[number], self._exchanges[number]
            del self._exchange_numbers[exchange]
        if not alive:
            return
        extra_keys = None
        if message.flags & fastpath.FLAG_HEADERS and b"CC" in message.header:
            message, extra_keys = sender_selected(message)  # checked at publish already
        vhost.enqueue_all(vhost.route(exchange, message, extra_keys), message)

    def cancel_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
