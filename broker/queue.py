"""A queue: ready messages, consumers, dispatch, and RabbitMQ's per-queue policies.

Policies come from the declare arguments: message TTL (``x-message-ttl`` and the
per-message ``expiration``), queue expiry (``x-expires``), length limits (``x-max-length``,
``x-max-length-bytes``, ``x-overflow``), dead-lettering (``x-dead-letter-exchange``,
``x-dead-letter-routing-key``), priorities (``x-max-priority``), quorum delivery limits
(``x-delivery-limit``) and the consumer timeout (``x-consumer-timeout``). Expiry looks at
queue heads only, from one timer per queue: never a scan of the whole queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from leveret.broker.deadletter import dead_letter
from leveret.broker.message import Entry, Message, copy_properties, stored_message
from leveret.broker.ready import FifoReady, PriorityReady, spillable
from leveret.broker.stats import MessageStats, RateWindow
from leveret.protocol.tables import Long, content_header

if TYPE_CHECKING:
    from leveret.broker.channel import Channel
    from leveret.broker.connection import Connection
    from leveret.broker.consumer import Consumer
    from leveret.broker.exchange import Exchange
    from leveret.broker.vhost import VirtualHost


log = logging.getLogger(__name__)

# A durable queue keeps at most about SPILL_AT stored messages (or SPILL_BYTES of their
# bodies) in memory; beyond that only their ids (24 bytes each) stay, and the first
# SPILL_KEEP (at most SPILL_KEEP_BYTES) remain ready for fast delivery.
SPILL_AT = 20_000
SPILL_BYTES = 32 * 1024 * 1024
SPILL_KEEP = 5_000
SPILL_KEEP_BYTES = 8 * 1024 * 1024
SPILL_DELAY = 0.05  # seconds: after the store has written the newest messages

FLOW_HIGH = 10_000
FLOW_LOW = 5_000
FLOW_HIGH_BYTES = 64 * 1024 * 1024  # the same, by the size of the ready bodies
FLOW_LOW_BYTES = 32 * 1024 * 1024


def _int_arg(arguments: dict[str, Any], name: str) -> int | None:
    value = arguments.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_arg(arguments: dict[str, Any], name: str) -> str | None:
    value = arguments.get(name)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


class Queue:
    """Messages wait here until a consumer or basic.get takes them."""

    def __init__(
        self,
        name: str,
        vhost: VirtualHost,
        *,
        durable: bool = False,
        exclusive_owner: Connection | None = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.vhost = vhost
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = args = arguments or {}
        self.message_ttl = _int_arg(args, "x-message-ttl")
        self.expires = _int_arg(args, "x-expires")
        self.max_length = _int_arg(args, "x-max-length")
        self.max_length_bytes = _int_arg(args, "x-max-length-bytes")
        self.overflow = _str_arg(args, "x-overflow") or "drop-head"
        self.dead_letter_exchange = _str_arg(args, "x-dead-letter-exchange")
        self.dead_letter_routing_key = _str_arg(args, "x-dead-letter-routing-key")
        self.is_quorum = _str_arg(args, "x-queue-type") == "quorum"
        self.single_active = args.get("x-single-active-consumer") is True
        self.delivery_limit = _int_arg(args, "x-delivery-limit") if self.is_quorum else None
        timeout = _int_arg(args, "x-consumer-timeout")
        self.consumer_timeout = timeout / 1000 if timeout else vhost.consumer_timeout
        max_priority = _int_arg(args, "x-max-priority")
        self.ready: FifoReady | PriorityReady = (
            PriorityReady(max_priority) if max_priority else FifoReady()
        )
        self._spill_timer: asyncio.TimerHandle | None = None
        self.ready_bytes = 0  # bodies of ready messages, for byte limits and flow control
        self.consumers: list[Consumer] = []
        self.unacked = 0  # deliveries handed out and not yet settled
        self.bindings: set[tuple[Exchange, str, Any]] = set()  # (source, key, frozen args)
        # Flow control: publishers into a queue with consumers pause past flow_high ready
        # messages and resume at flow_low, so consumers catch up and memory stays bounded.
        self.flow_high = FLOW_HIGH
        self.flow_low = FLOW_LOW
        self.throttled: set[Channel] = set()  # channels whose publishes wait for this queue
        self.backlogged = False  # past flow_high with consumers: publishers should wait
        self.deleted = False
        # RabbitMQ's queue message_stats (broker/stats.py); read them through ``stats``
        self.counters = MessageStats()
        self._restored = 0  # messages restored from the store (not published since start)
        self.rates = RateWindow()
        self._dispatcher = vhost.dispatcher
        self._loop: asyncio.AbstractEventLoop = vhost.dispatcher.loop
        self._limited = self.max_length is not None or self.max_length_bytes is not None
        # Messages of a durable, shared queue are kept in the store (if the broker has one).
        self.persists = durable and exclusive_owner is None and vhost.store is not None
        self.store_key = (vhost.name, name)
        self.store_keys = [self.store_key]  # (the store's argument for this queue alone)
        if self.persists and isinstance(self.ready, FifoReady):
            self.ready.loader = self._load_spilled
            self.ready.can_spill = self._can_spill
        self._next_seq = 0
        self._rr = 0
        self._had_consumer = False
        self._prioritised = False
        self._ttl_timer: asyncio.TimerHandle | None = None
        self._ttl_due = 0.0
        self._expires_timer: asyncio.TimerHandle | None = None
        self._last_used = self._loop.time()
        if self.expires:
            self._arm_expires_timer()

    @property
    def stats(self) -> MessageStats:
        """This queue's message counters; ``publish`` is what its sequence numbers count."""
        counters = self.counters
        counters.publish = self._next_seq - self._restored
        return counters

    # -- messages in ----------------------------------------------------------------------
    def enqueue(self, message: Message, msg_id: int | None = None) -> bool:
        """Add a published message (``msg_id``: its stored copy for this queue, if any);
        False when the queue refuses it (reject-publish)."""
        seq = self._next_seq
        self._next_seq = seq + 1
        entry = Entry(seq, message, False, msg_id)
        ttl = self.message_ttl
        if message.ttl is not None and (ttl is None or message.ttl < ttl):
            ttl = message.ttl
        if ttl is not None:
            if ttl == 0:  # deliverable right now, or expired
                consumer = None if self.ready else self._next_consumer()
                if consumer is not None:
                    consumer.channel.deliver(consumer, entry)
                else:
                    self._discard([entry], "expired")
                return True
            entry.expires_at = self._loop.time() + ttl / 1000
        if self._limited and self.overflow != "drop-head" and self._full(message):
            self._discard([entry], "maxlen" if self.overflow == "reject-publish-dlx" else None)
            return False
        if self.consumers and not self.ready:  # hand it straight to a consumer with credit
            consumer = self._next_consumer()
            if consumer is not None:
                consumer.channel.deliver(consumer, entry)
                return True
        ready = self.ready
        ready.push(entry)
        self.ready_bytes += len(message.body)
        if self.consumers and (len(ready) > self.flow_high or self.ready_bytes > FLOW_HIGH_BYTES):
            self.backlogged = True
        if (self.persists and self._spill_timer is None and self.max_length_bytes is None
                and (ready.in_memory > SPILL_AT
                     or self.ready_bytes - ready.spilled_bytes > SPILL_BYTES)):
            self._spill_soon()
        if self._limited:
            self._drop_head_over_limit()
        if entry.expires_at is not None:
            self._arm_ttl_timer(entry.expires_at)
        if self.consumers:
            self._dispatcher.mark(self)
        return True

    def _full(self, message: Message) -> bool:
        if self.max_length is not None and len(self.ready) >= self.max_length:
            return True
        limit = self.max_length_bytes
        return limit is not None and self.ready_bytes + len(message.body) > limit

    def _over_limit(self) -> bool:
        if self.max_length is not None and len(self.ready) > self.max_length:
            return True
        return self.max_length_bytes is not None and self.ready_bytes > self.max_length_bytes

    def _drop_head_over_limit(self) -> None:
        dropped = []
        while self.ready and self._over_limit():
            dropped.append(self._pop())
        if dropped:
            self._discard(dropped, "maxlen")

    def _pop(self) -> Entry:
        ready = self.ready
        entry = ready.pop()
        if ready:
            self.ready_bytes -= len(entry.message.body)
        else:
            self.ready_bytes = 0  # exact again (recovered sizes are estimates)
        return entry

    # -- messages out ---------------------------------------------------------------------
    def take(self) -> Entry | None:
        """Pop the head for basic.get (expired heads are dropped first)."""
        self.touch()
        return self._pop_live()

    def _pop_live(self) -> Entry | None:
        """The next entry that has not expired; expired ones met on the way are dropped."""
        while self.ready:
            entry = self._pop()
            expires_at = entry.expires_at
            if expires_at is None or expires_at > self._loop.time():
                return entry
            self._discard([entry], "expired")
        return None

    def peek(self, count: int) -> list[tuple[Message, bool]]:
        """The first ``count`` ready messages with their redelivered flags, in delivery
        order, left where they are: nothing is taken, flagged or counted. Messages that
        live on disk only are read back from the store; one that cannot be read, or has
        expired, is left out (the queue deals with it when it reaches the head)."""
        found = self.ready.peek(count)
        ids = [item for item in found if isinstance(item, int)]
        store = self.vhost.store
        read = iter(store.read_many(ids)) if ids and store is not None else iter(())
        now = self._loop.time()
        out: list[tuple[Message, bool]] = []
        for item in found:
            if isinstance(item, int):
                record = next(read)
                if not isinstance(record, Exception):  # spilled entries are never redelivered
                    out.append((stored_message(record.route_raw, record.header, record.body),
                                False))
            elif item.expires_at is None or item.expires_at > now:
                out.append((item.message, item.redelivered))
        return out

    def requeue(self, entries: Iterable[Entry]) -> None:
        """Return entries to their original positions, flagged redelivered.

        On a quorum queue each return counts; past x-delivery-limit the message is
        dead-lettered (reason delivery_limit) instead.
        """
        batch = []
        over_limit = []
        for entry in entries:
            entry.redelivered = True
            if self.is_quorum:
                entry.delivery_count += 1
                if self.delivery_limit is not None and entry.delivery_count > self.delivery_limit:
                    over_limit.append(entry)
                    continue
            batch.append(entry)
        if over_limit:
            self._discard(over_limit, "delivery_limit")
        if not batch:
            return
        if self.is_quorum:  # a quorum queue returns messages to its back
            for entry in sorted(batch, key=_entry_seq):
                self.ready.push(entry)
        else:
            self.ready.requeue(batch)
        self.ready_bytes += sum(len(e.message.body) for e in batch)
        if self._limited and self.overflow == "drop-head":
            self._drop_head_over_limit()
        expiring = [e.expires_at for e in batch if e.expires_at is not None]
        if expiring:
            self._arm_ttl_timer(min(expiring))
        if self.consumers:
            self._dispatcher.mark(self)

    def reject(self, entries: list[Entry]) -> None:
        """Settled without requeue (nack/reject): dead-letter with reason rejected."""
        self._discard(entries, "rejected")

    def acked(self, entries: list[Entry]) -> None:
        """Deliveries from this queue were acknowledged."""
        self.forget(entries)

    def _discard(self, entries: list[Entry], reason: str | None) -> None:
        """Entries leave the queue for good; with a reason they are dead-lettered (when the
        queue has a dead-letter exchange). Either way their stored copies are released."""
        if reason is not None and self.dead_letter_exchange is not None:
            dead_letter(self, entries, reason)  # releases the stored copies it replaces
        else:
            self.forget(entries)

    def forget(self, entries: Iterable[Entry]) -> None:
        """These entries left the queue for good: release their stored copies."""
        store = self.vhost.store
        if store is None:
            return
        key = self.store_key
        for entry in entries:
            if entry.msg_id is not None:
                store.remove(key, entry.msg_id)

    def stored_delivery(self, entry: Entry, no_ack: bool) -> None:
        """A stored message goes out: gone for good (no-ack) or marked as delivered."""
        store = self.vhost.store
        assert store is not None and entry.msg_id is not None
        if no_ack:
            store.remove(self.store_key, entry.msg_id)
            entry.msg_id = None
        else:
            store.delivered(self.store_key, entry.msg_id)

    def purge(self) -> int:
        """Drop the ready messages (unacked ones stay); returns how many."""
        count = len(self.ready)
        entries, spilled = self.ready.clear()
        self.ready_bytes = 0
        store = self.vhost.store
        if store is not None:
            self.forget(entries)
            for msg_id in spilled:
                store.remove(self.store_key, msg_id)
        return count

    def drop_all(self) -> None:
        """The queue is deleted: its ready messages go, and the store forgets the queue."""
        entries, spilled = self.ready.clear()
        self.ready_bytes = 0
        if self.persists:
            assert self.vhost.store is not None
            ids = [e.msg_id for e in entries if e.msg_id is not None] + spilled
            self.vhost.store.purge(self.store_key, ids)

    # -- messages that live on disk only (durable queues) ---------------------------------
    def _can_spill(self, entry: Entry) -> bool:
        store = self.vhost.store
        return spillable(entry) and store is not None and store.is_written(entry.msg_id)  # type: ignore[arg-type]

    def restore_stored(self, ids: array[int], delivered: set[int]) -> None:
        """Recovery: the queue's stored messages, in publish order.

        Messages handed out before the restart come back first, in memory, flagged
        redelivered; the rest stay on disk (only their ids in memory) until needed.
        """
        store = self.vhost.store
        assert store is not None
        last_delivered = -1
        if delivered:
            for index, msg_id in enumerate(ids):
                if msg_id in delivered:
                    last_delivered = index
        head = [(index, ids[index]) for index in range(last_delivered + 1)]
        spill_from = last_delivered + 1
        if not isinstance(self.ready, FifoReady) or self.max_length_bytes is not None:
            # priority levels need every header, byte limits every size: all in memory
            head += [(index, ids[index]) for index in range(spill_from, len(ids))]
            spill_from = len(ids)
        for entry in self._load_spilled(head):
            entry.redelivered = entry.msg_id in delivered
            self.ready.push(entry)
            self.ready_bytes += len(entry.message.body)
        if spill_from < len(ids):
            assert isinstance(self.ready, FifoReady)
            spilled = ids[spill_from:]
            sizes = store.sizes_of(spilled)
            triples = array("Q", (0,)) * (3 * len(spilled))
            triples[0::3] = array("Q", range(spill_from, len(ids)))
            triples[1::3] = spilled
            triples[2::3] = sizes
            self.ready_bytes += sum(sizes)
            self.ready.restore_spilled(triples)
        self._next_seq = self._restored = len(ids)
        self._arm_next_expiry()

    def _load_spilled(self, pairs: list[tuple[int, int]]) -> list[Entry]:
        """Entries for (seq, msg_id) pairs, their messages read back from the store.

        A record that cannot be read (damaged on disk) is lost: logged and released.
        """
        store = self.vhost.store
        assert store is not None
        now_ms = time.time() * 1000
        now = self._loop.time()
        entries = []
        read = store.read_many([msg_id for _seq, msg_id in pairs])
        for (seq, msg_id), found in zip(pairs, read, strict=True):
            if isinstance(found, Exception):
                log.error("queue '%s' in vhost '%s' lost a stored message: %s", self.name,
                          self.vhost.name, found)
                store.remove(self.store_key, msg_id)
                continue
            message = stored_message(found.route_raw, found.header, found.body)
            entry = Entry(seq, message, False, msg_id)
            ttl = self.message_ttl
            if message.ttl is not None and (ttl is None or message.ttl < ttl):
                ttl = message.ttl
            if ttl is not None:
                entry.expires_at = now + (found.published_ms + ttl - now_ms) / 1000
            entries.append(entry)
        return entries

    def _spill_soon(self) -> None:
        if self._spill_timer is None:
            self._spill_timer = self._loop.call_later(SPILL_DELAY, self._spill_pass)

    def _spill_pass(self) -> None:
        """Move a long in-memory backlog of stored messages to disk-only."""
        self._spill_timer = None
        if self.deleted:
            return
        ready = self.ready
        ready.spill(SPILL_KEEP, SPILL_KEEP_BYTES)
        if ready.in_memory > SPILL_AT or self.ready_bytes - ready.spilled_bytes > SPILL_BYTES:
            self._spill_soon()

    @property
    def message_count(self) -> int:
        return len(self.ready)

    # -- TTL and expiry -------------------------------------------------------------------
    def expire(self) -> None:
        """Drop (dead-letter, reason expired) every head whose time has come."""
        expired = self.ready.pop_expired(self._loop.time())
        if expired:
            self.ready_bytes = max(
                self.ready_bytes - sum(len(e.message.body) for e in expired), 0)
            self._discard(expired, "expired")
        self._arm_next_expiry()

    def _arm_next_expiry(self) -> None:
        due = self.ready.next_expiry()
        if due is not None:
            self._arm_ttl_timer(due)

    def _arm_ttl_timer(self, when: float) -> None:
        if self._ttl_timer is not None:
            if self._ttl_due <= when:
                return
            self._ttl_timer.cancel()
        self._ttl_due = when
        self._ttl_timer = self._loop.call_at(when, self._ttl_fired)

    def _ttl_fired(self) -> None:
        self._ttl_timer = None
        if self.deleted:
            return
        try:
            self.expire()
        except Exception:  # a bug must not stop expiry for good: log, try again later
            log.exception("expiry failed in queue '%s' of vhost '%s'", self.name,
                          self.vhost.name)
            self._arm_ttl_timer(self._loop.time() + 1.0)

    def touch(self) -> None:
        """The queue was used (basic.get, redeclare, last consumer left): restart x-expires."""
        self._last_used = self._loop.time()
        if self.expires and not self.consumers:
            self._arm_expires_timer()

    def _arm_expires_timer(self) -> None:
        self._cancel_expires_timer()
        assert self.expires is not None
        self._expires_timer = self._loop.call_at(
            self._last_used + self.expires / 1000, self._expires_fired
        )

    def _cancel_expires_timer(self) -> None:
        if self._expires_timer is not None:
            self._expires_timer.cancel()
            self._expires_timer = None

    def _expires_fired(self) -> None:
        self._expires_timer = None
        if self.deleted or self.consumers:
            return
        assert self.expires is not None
        if self._loop.time() >= self._last_used + self.expires / 1000 - 0.001:
            self.vhost.delete_queue(self)
        else:
            self._arm_expires_timer()

    def stop_timers(self) -> None:
        """The queue is gone: cancel its timers and release throttled publishers."""
        self.release_publishers()
        self._cancel_expires_timer()
        if self._spill_timer is not None:
            self._spill_timer.cancel()
            self._spill_timer = None
        if self._ttl_timer is not None:
            self._ttl_timer.cancel()
            self._ttl_timer = None

    # -- consumers ------------------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        """Register a consumer; higher x-priority first, registration order within a priority."""
        consumers = self.consumers
        position = len(consumers)
        if not self.single_active:  # keep the list sorted by priority, stable
            while position and consumers[position - 1].priority < consumer.priority:
                position -= 1
        consumers.insert(position, consumer)
        self._prioritised = any(c.priority for c in consumers) and not self.single_active
        self._had_consumer = True
        self._cancel_expires_timer()
        self.wake()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        self._prioritised = any(c.priority for c in self.consumers) and not self.single_active
        if not self.consumers:
            self.touch()
            self.release_publishers()  # a backlog without consumers is no reason to wait
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
        if count == 1 or self.single_active:
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
            entry = self._pop_live()
            if entry is None:
                break
            consumer.channel.deliver(consumer, entry)
            delivered += 1
        if self.backlogged and len(ready) <= self.flow_low and (
                self.ready_bytes <= FLOW_LOW_BYTES):
            self.release_publishers()
        return bool(ready) and delivered >= budget

    def release_publishers(self) -> None:
        """Let the channels whose publishes waited for this queue go on."""
        self.backlogged = False
        throttled, self.throttled = self.throttled, set()
        for channel in throttled:
            channel.unthrottle(self)

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} ready={len(self.ready)} consumers={len(self.consumers)}>"


def _entry_seq(entry: Entry) -> int:
    return entry.seq


def quorum_header(entry: Entry, for_get: bool) -> bytes:
    """The content header a quorum queue delivers: with x-delivery-count once redelivered
    (and always for basic.get, as RabbitMQ 3.10 does)."""
    message = entry.message
    if not entry.delivery_count and not for_get:
        return message.header
    properties = copy_properties(message.properties)
    properties.headers["x-delivery-count"] = Long(entry.delivery_count)
    return content_header(len(message.body), properties)
