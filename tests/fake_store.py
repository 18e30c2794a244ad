"""An in-memory stand-in for ``broker.store.MessageStore``: the model's side of the contract.

It records what the model asked for (publishes with their queues and the copies they
replace, removals, deliveries, purges, definition changes) and hands out tickets that
become durable only when the test says so (``make_durable``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from leveret.broker.message import Message
from leveret.broker.store.records import CorruptRecord, Published, QueueKey


class FakeStore:
    audit = None
    failed: str | None = None

    def __init__(self) -> None:
        self.issued = 0
        self.durable = 0
        self.next_id = 1
        self.messages: dict[int, tuple[Message, list[QueueKey]]] = {}
        self.holders: dict[int, set[QueueKey]] = {}
        self.log: list[tuple[Any, ...]] = []
        self.definitions: list[dict[str, Any]] = []
        self._callbacks: list[tuple[int, Callable[[], None]]] = []
        self._watchers: dict[Any, None] = {}

    def _ticket(self) -> int:
        self.issued += 1
        return self.issued

    def publish(self, message: Message, queues: list[QueueKey],
                moved: list[tuple[QueueKey, int]] | tuple = ()) -> int:
        msg_id = self.next_id
        self.next_id += 1
        self.messages[msg_id] = (message, list(queues))
        self.holders[msg_id] = set(queues)
        for queue, old in moved:
            self.holders[old].discard(queue)
        self.log.append(("publish", msg_id, tuple(queues), tuple(moved)))
        self._ticket()
        return msg_id

    def remove(self, queue: QueueKey, msg_id: int) -> None:
        if queue in self.holders.get(msg_id, ()):
            self.holders[msg_id].discard(queue)
            self.log.append(("remove", queue, msg_id))
            self._ticket()

    def delivered(self, queue: QueueKey, msg_id: int) -> None:
        self.log.append(("delivered", queue, msg_id))
        self._ticket()

    def purge(self, queue: QueueKey, ids: list[int]) -> None:
        for msg_id in ids:
            self.holders[msg_id].discard(queue)
        self.log.append(("purge", queue, tuple(ids)))
        self._ticket()

    def read(self, msg_id: int) -> Published:
        if msg_id not in self.messages:
            raise CorruptRecord(f"no message {msg_id}")
        message, queues = self.messages[msg_id]
        return Published(msg_id, 0, message.route_raw, message.header, message.body, queues,
                         [], [])

    def is_written(self, msg_id: int) -> bool:
        return True

    def size_of(self, msg_id: int) -> int:
        return len(self.messages[msg_id][0].body)

    def define(self, change: dict[str, Any]) -> int:
        self.definitions.append(change)
        return self._ticket()

    def live(self, queue: QueueKey) -> list[int]:
        """Ids the store believes ``queue`` holds."""
        return sorted(i for i, holders in self.holders.items() if queue in holders)

    # durability
    def watch(self, waiter: Any) -> None:
        self._watchers[waiter] = None

    def unwatch(self, waiter: Any) -> None:
        self._watchers.pop(waiter, None)

    def when_durable(self, ticket: int, callback: Callable[[], None]) -> None:
        if ticket <= self.durable:
            callback()
        else:
            self._callbacks.append((ticket, callback))

    def make_durable(self, ticket: int | None = None) -> None:
        self.durable = self.issued if ticket is None else ticket
        for waiter in list(self._watchers):
            if not waiter.on_durable(self.durable):
                self._watchers.pop(waiter, None)
        due = [cb for t, cb in self._callbacks if t <= self.durable]
        self._callbacks = [(t, cb) for t, cb in self._callbacks if t > self.durable]
        for callback in due:
            callback()
