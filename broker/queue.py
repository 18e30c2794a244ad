"""A queue: ready messages in order, its consumers, and round-robin dispatch to them."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from broker.message import Entry, Message

if TYPE_CHECKING:
    from broker.connection import Connection
    from broker.consumer import Consumer
    from broker.dispatcher import Dispatcher
    from broker.exchange import Exchange


class Queue:
    """Messages wait here, FIFO, until a consumer or basic.get takes them."""

    def __init__(
        self,
        name: str,
        dispatcher: Dispatcher,
        *,
        durable: bool = False,
        exclusive_owner: Connection | None = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.ready: deque[Entry] = deque()
        self.consumers: list[Consumer] = []
        self.unacked = 0  # deliveries handed out and not yet settled
        self.bindings: set[tuple[Exchange, str, Any]] = set()  # (source, key, frozen args)
        self.deleted = False
        self._dispatcher = dispatcher
        self._next_seq = 0
        self._rr = 0
        self._had_consumer = False
        self._prioritised = False

    # -- messages -------------------------------------------------------------------------
    def enqueue(self, message: Message) -> None:
        """Append a freshly published message."""
        seq = self._next_seq
        self._next_seq = seq + 1
        self.ready.append(Entry(seq, message))
        if self.consumers:
            self._dispatcher.mark(self)

    def take(self) -> Entry | None:
        """Pop the head for basic.get."""
        return self.ready.popleft() if self.ready else None

    def requeue(self, entries: Iterable[Entry]) -> None:
        """Put settled-with-requeue entries back in their original order, flagged redelivered."""
        batch = sorted(entries, key=_seq)
        if not batch:
            return
        for entry in batch:
            entry.redelivered = True
        ready = self.ready
        last = batch[-1].seq
        if not ready or ready[0].seq > last:
            ready.extendleft(reversed(batch))
        else:
            head: list[Entry] = []
            while ready and ready[0].seq < last:
                head.append(ready.popleft())
            merged = sorted(head + batch, key=_seq)
            ready.extendleft(reversed(merged))
        if self.consumers:
            self._dispatcher.mark(self)

    def settled(self, count: int = 1) -> None:
        """Deliveries from this queue were acked, rejected or requeued."""
        self.unacked -= count

    def purge(self) -> int:
        count = len(self.ready)
        self.ready.clear()
        return count

    @property
    def message_count(self) -> int:
        return len(self.ready)

    # -- consumers ------------------------------------------------------------------------
    @property
    def single_active(self) -> bool:
        return self.arguments.get("x-single-active-consumer") is True

    def add_consumer(self, consumer: Consumer) -> None:
        """Register a consumer; higher x-priority first, registration order within a priority."""
        consumers = self.consumers
        if consumer.priority and not self.single_active:
            position = len(consumers)
            while position and consumers[position - 1].priority < consumer.priority:
                position -= 1
            consumers.insert(position, consumer)
        else:
            consumers.append(consumer)
        self._prioritised = any(c.priority for c in consumers) and not self.single_active
        self._had_consumer = True
        self.wake()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        self._prioritised = any(c.priority for c in self.consumers) and not self.single_active
        self.wake()

    @property
    def unused_after_consumers(self) -> bool:
        """auto_delete: true once the queue had a consumer and now has none."""
        return self.auto_delete and self._had_consumer and not self.consumers

    def wake(self) -> None:
        """Credit may have appeared (ack, qos, new consumer): dispatch soon."""
        if self.ready and self.consumers:
            self._dispatcher.mark(self)

    def _next_consumer(self) -> Consumer | None:
        """The consumer the next message goes to, or None when nobody can take one now.

        Round-robin over consumers with credit; with consumer priorities, over the highest
        priority that has a consumer with credit; with a single active consumer, only the
        first registered one.
        """
        consumers = self.consumers
        count = len(consumers)
        if not count:
            return None
        if self.single_active:
            first = consumers[0]
            return first if first.can_take() else None
        if not self._prioritised:
            for _ in range(count):
                rr = self._rr % count
                self._rr = rr + 1
                consumer = consumers[rr]
                if consumer.can_take():
                    return consumer
            return None
        start = 0
        while start < count:
            priority = consumers[start].priority
            end = start + 1
            while end < count and consumers[end].priority == priority:
                end += 1
            size = end - start
            for _ in range(size):
                rr = self._rr % size
                self._rr = rr + 1
                consumer = consumers[start + rr]
                if consumer.can_take():
                    return consumer
            start = end
        return None

    def dispatch(self, budget: int) -> bool:
        """Deliver up to ``budget`` ready messages; True if more can go right away."""
        ready = self.ready
        delivered = 0
        while ready and delivered < budget:
            consumer = self._next_consumer()
            if consumer is None:
                return False
            consumer.channel.deliver(consumer, ready.popleft())
            delivered += 1
        return bool(ready) and delivered >= budget

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} ready={len(self.ready)} consumers={len(self.consumers)}>"


def _seq(entry: Entry) -> int:
    return entry.seq
