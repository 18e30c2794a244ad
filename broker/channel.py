"""A channel: content assembly, deliveries and their acknowledgements, confirms and tx.

Method handling is split by AMQP class into ``broker/handlers/`` (one module per class);
this module holds the per-channel state those handlers share and the per-message fast path
(basic.publish in, basic.deliver out, basic.ack/nack/reject in), which works on raw bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from pamqp import commands

from leveret.broker import direct_reply
from leveret.broker.handlers import HANDLERS
from leveret.broker.message import Entry, Message, header_shape, parse_expiration
from leveret.broker.publish import Routed, complete, route
from leveret.broker.publish import publish as deliver_publish
from leveret.broker.queue import quorum_header
from leveret.broker.stats import MessageStats, RateWindow
from leveret.protocol import constants as c
from leveret.protocol import errors, fastpath
from leveret.protocol.framing import body_of, method_frame
from leveret.protocol.header_memo import HeaderChecker
from leveret.protocol.methods import decode_method, make, method_index
from leveret.protocol.validate import decode_properties

if TYPE_CHECKING:
    from leveret.broker.connection import Connection
    from leveret.broker.consumer import Consumer
    from leveret.broker.exchange import Exchange
    from leveret.broker.queue import Queue
    from leveret.protocol.methods import Method

log = logging.getLogger(__name__)

Delivery = tuple[Entry, "Queue", "Consumer | None"]
Frame = tuple[int, object]


def _expected_method() -> errors.AMQPError:
    return errors.UnexpectedFrame("expected method frame, got non method frame instead")


def _expected_header() -> errors.AMQPError:
    return errors.UnexpectedFrame(
        "expected content header for class 60, got non content header frame instead",
        c.CLASS_BASIC, 40,
    )


def _expected_body() -> errors.AMQPError:
    return errors.UnexpectedFrame(
        "expected content body, got non content body frame instead", c.CLASS_BASIC, 40
    )


# Properties whose check has an effect (the TTL noted, reply_to rewritten): never cached.
_NOT_PLAIN = fastpath.FLAG_USER_ID | fastpath.FLAG_EXPIRATION | fastpath.FLAG_REPLY_TO
_SETTLEMENTS = frozenset((c.BASIC_ACK, c.BASIC_NACK, c.BASIC_REJECT))
_CACHE_SIZE = 8  # per channel: a publisher's few destinations and property sets
_REPLAY_BATCH = 1024  # held frames processed per event-loop iteration
_CACHED_HEADER_MAX = 512  # bytes; bigger headers are checked each time


def _remember(cache: dict, key: bytes, value: object) -> None:
    """Keep ``key`` in a small per-channel cache (emptied when full: no unbounded growth)."""
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value


class Channel:
    """Per-channel state shared by the method handlers."""

    def __init__(self, connection: Connection, number: int) -> None:
        self.connection = connection
        self.number = number
        self.vhost = connection.vhost
        # RabbitMQ's channel message_stats (broker/stats.py); read them through ``stats``
        self.counters = MessageStats()
        self.rates = RateWindow()
        self.opened_at = time.time()
        self.closing = False  # we sent channel.close and wait for close-ok
        self.flow_active = True
        self.reply_queue: Queue | None = None  # direct reply-to consumer's private queue
        self.last_queue: str | None = None  # for queue methods with an empty name
        self.max_message_size = connection.broker.config.max_message_size
        # deliveries; ``unacked`` is kept in tag order (insertion order of increasing tags)
        self.next_delivery_tag = 1
        self.unacked: dict[int, Delivery] = {}
        self._deadlines: dict[int, float] = {}  # tag -> deadline, for timed consumers
        self._timeout_timer: asyncio.TimerHandle | None = None
        self._timed_out_tags: set[int] = set()
        # set during this channel's own queue.delete: basic.cancel for its consumers of the
        # deleted queue is held and sent after delete-ok, as RabbitMQ does
        self.deferred_cancels: list[Consumer] | None = None
        self.consumers: dict[str, Consumer] = {}
        self.prefetch_count = 0  # basic.qos global=false: per consumer
        self.global_prefetch = 0  # basic.qos global=true: shared by the channel
        # publishing
        self.confirm_mode = False
        self.publish_seq = 0
        self.confirmed_seq = 0  # every sequence number up to this one is answered
        self._confirm_nacks: list[int] = []  # refused publishes awaiting their nack
        self._pending: deque[tuple[int, int]] = deque()  # (seq, store ticket) not yet durable
        self._ahead: list[int] = []  # publishes answerable while earlier ones wait
        self.tx_mode = False
        self.tx_publishes: list[tuple[Exchange, Routed, bool]] = []
        # a transaction's settlements, out of ``unacked`` already: ([(tag, delivery)], requeue)
        self.tx_settlements: list[tuple[list[tuple[int, Delivery]], bool | None]] = []
        # frames held while the channel is parked or throttled (see ``must_hold``)
        self.inbox: deque[Frame] | None = None
        self.parked = False
        self.throttled_by: set[Queue] = set()
        self._resume_scheduled = False
        self._discarding = 0  # closing: -1 a content header, >0 body bytes still to come
        self.released = False
        if connection.blocked_reason is not None:  # a resource alarm: publishes wait
            self.inbox = deque()
        self._publish: fastpath.Publish | None = None
        self._exchange: Exchange | None = None
        self._header: bytes | None = None
        self._body: list[bytes] = []
        self._body_remaining = 0
        self._ttl: int | None = None  # expiration of the message being received, in ms
        self._publish_cache: dict[bytes, tuple[fastpath.Publish, Exchange]] = {}
        self._access = connection.authz.access  # permission changes empty the cache
        self._access_generation = self._access.generation
        # headers accepted with nothing to note, with their (flags, persistent)
        self._plain_headers: dict[bytes, tuple[int, bool]] = {}
        self._header_checker = HeaderChecker()  # headers that differ in their strings only

    @property
    def stats(self) -> MessageStats:
        """This channel's message counters; manual-ack deliveries are what its delivery
        tags count beyond the other kinds (nothing extra to count per delivery)."""
        counters = self.counters
        counters.deliver = (self.next_delivery_tag - 1 - counters.deliver_no_ack
                            - counters.get - counters.get_no_ack)
        return counters

    # -- frames ----------------------------------------------------------------------------
    def handle_frame(self, frame_type: int, payload: bytes) -> None:
        """Process one frame for this channel; channel errors close the channel here."""
        try:
            if frame_type == c.FRAME_METHOD:
                self._handle_method(payload)
            elif frame_type == c.FRAME_HEADER:
                self._handle_header(payload)
            elif frame_type == c.FRAME_BODY:
                self._handle_body(payload)
            else:
                raise errors.FrameError(f"unexpected frame type {frame_type} on channel")
        except errors.ChannelError as error:
            # The rest of a refused publish's content is still to come: it is dropped.
            if frame_type == c.FRAME_METHOD and method_index(payload) == c.BASIC_PUBLISH:
                self._discarding = -1
            elif frame_type == c.FRAME_HEADER:
                self._discarding = fastpath.content_header_fields(payload)[1]
            self.close_with_error(error)

    def _handle_method(self, payload: bytes) -> None:
        if self._publish is not None:
            raise (_expected_header if self._header is None else _expected_body)()
        index = method_index(payload)
        if index == c.BASIC_PUBLISH:
            self._on_publish(fastpath.decode_publish(payload))
        elif index in _SETTLEMENTS:
            try:
                if index == c.BASIC_ACK:
                    self.ack(*fastpath.decode_ack(payload))
                elif index == c.BASIC_NACK:
                    self.nack(*fastpath.decode_nack(payload))
                else:
                    tag, requeue = fastpath.decode_reject(payload)
                    self.nack(tag, False, requeue)
            except errors.AMQPError as error:  # e.g. unknown delivery tag: names the method
                raise error.with_method(c.CLASS_BASIC, index & 0xFFFF) from None
        else:
            method = decode_method(payload)
            handler = HANDLERS.get(index)
            if handler is None:  # a server's or a connection's method (RabbitMQ's wording)
                raise errors.CommandInvalid("unimplemented method", index >> 16, index & 0xFFFF)
            try:
                handler(self, method)
            except errors.AMQPError as error:
                raise error.with_method(index >> 16, index & 0xFFFF) from None

    def discard_frame(self, frame_type: int, payload: bytes) -> int:
        """A frame after the broker closed this channel (until the client's close-ok): it
        is checked as any frame would be (RabbitMQ decodes every method and follows the
        content of a publish it drops), then dropped. Returns a method's index, else 0."""
        if frame_type == c.FRAME_METHOD:
            if self._discarding:
                raise (_expected_header if self._discarding < 0 else _expected_body)()
            index = decode_method(payload).index
            if index == c.BASIC_PUBLISH:
                self._discarding = -1  # its content header comes next
            return index
        if frame_type == c.FRAME_HEADER and self._discarding < 0:
            size = fastpath.content_header_fields(payload)[1]
            self._discarding = size if size else 0
        elif frame_type == c.FRAME_BODY and self._discarding > 0:
            self._discarding = max(self._discarding - len(payload), 0)
        else:
            raise _expected_method()
        return 0

    # -- publishing ------------------------------------------------------------------------
    def handle_publish(self, method: bytes, header: bytes, body: bytes | None) -> None:
        """A whole basic.publish at once (the frame reader fused its three frames): the same
        checks and errors, in the same order, as frame by frame, in one step."""
        try:
            if self._publish is not None:
                raise (_expected_header if self._header is None else _expected_body)()
            # Publishers repeat the same method and header bytes: both are checked once
            # (again when permissions change).
            if self._access_generation != self._access.generation:
                self._publish_cache.clear()
                self._access_generation = self._access.generation
            cached = self._publish_cache.get(method)
            if cached is not None and self.vhost.exchanges.get(cached[0].exchange) is cached[1]:
                publish, exchange = cached
            else:
                if cached is not None:  # its exchange is gone: forget it
                    del self._publish_cache[method]
                publish = fastpath.decode_publish(method)
                exchange = self._publish_exchange(publish)
                _remember(self._publish_cache, method, (publish, exchange))
            small = len(header) <= _CACHED_HEADER_MAX  # big tables: not hashed, not kept
            known = self._plain_headers.get(header) if small else None
            if known is None:
                _size, accepted = self._accept_header(header)
                if accepted is header:  # not rewritten: its shape holds for the message
                    known = header_shape(header)
                    if small and not known[0] & _NOT_PLAIN:
                        _remember(self._plain_headers, header, known)
                header = accepted
            self._publish_message(publish, exchange, header, b"" if body is None else body,
                                  known)
        except errors.ChannelError as error:
            self.close_with_error(error)

    def _on_publish(self, publish: fastpath.Publish) -> None:
        self._exchange = self._publish_exchange(publish)
        self._publish = publish

    def _publish_exchange(self, publish: fastpath.Publish) -> Exchange:
        """The exchange a publish names; 540/404/403 as RabbitMQ when it cannot be used."""
        try:
            if publish.immediate:
                raise errors.NotImplemented_("immediate=true")
            self.connection.authz.write("exchange", publish.exchange)
            exchange = self.vhost.exchanges.get(publish.exchange)
            if exchange is None:
                raise self.vhost.no_exchange(publish.exchange)
            if exchange.internal:
                raise errors.AccessRefused(
                    f"cannot publish to internal exchange '{exchange.name}' "
                    f"in vhost '{self.vhost.name}'"
                )
        except errors.AMQPError as error:
            raise error.with_method(c.CLASS_BASIC, 40) from None
        if not self.connection.has_published:
            self.connection.started_publishing()
        return exchange

    def _handle_header(self, payload: bytes) -> None:
        if self._publish is None:
            raise _expected_method()
        if self._header is not None:
            raise _expected_body()
        size, payload = self._accept_header(payload)
        self._header = payload
        if size == 0:
            self._finish_publish(b"")
        else:
            self._body_remaining = size

    def _accept_header(self, payload: bytes) -> tuple[int, bytes]:
        """Check a publish's content header: (body size, the header as it will be stored)."""
        content_class, size, flags = fastpath.content_header_fields(payload)
        if payload[2:4] != b"\x00\x00":  # a weight other than 0: RabbitMQ 3.10.8's words
            raise errors.UnexpectedFrame(
                "expected content header for class 60, got non content header frame "
                "instead", c.CLASS_BASIC, 40)
        if content_class != c.CLASS_BASIC:
            raise errors.UnexpectedFrame(
                f"expected content header for class 60, got one for class {content_class} "
                "instead", c.CLASS_BASIC, 40,
            )
        limit = self.max_message_size
        if size > limit:
            self._reset_content()
            raise errors.PreconditionFailed(
                f"message size {size} is larger than configured max size {limit}",
                c.CLASS_BASIC,
                40,
            )
        # A header that does not decode is refused before anything of it is kept: RabbitMQ
        # 3.10.8 closes the connection with 541 INTERNAL_ERROR; this says what it is (502).
        self._header_checker.check(payload)
        if flags & (fastpath.FLAG_USER_ID | fastpath.FLAG_EXPIRATION):
            self._check_properties(payload)
        if flags & fastpath.FLAG_REPLY_TO:
            payload = direct_reply.rewrite_reply_to(self, payload)
        return size, payload

    def _check_properties(self, header: bytes) -> None:
        """Refuse a wrong user_id or an invalid expiration, as RabbitMQ does (406)."""
        properties = decode_properties(header)
        # A shortstr that is not UTF-8 comes as bytes: compared and quoted as sent.
        user_id = properties.user_id
        if isinstance(user_id, bytes):
            user_id = user_id.decode("utf-8", "surrogateescape")
        if user_id is not None and user_id != self.connection.username:
            raise errors.PreconditionFailed(
                f"user_id property set to '{user_id}' but authenticated user was "
                f"'{self.connection.username}'", c.CLASS_BASIC, 40,
            )
        expiration = properties.expiration
        if expiration is not None:
            if isinstance(expiration, bytes):
                expiration = expiration.decode("utf-8", "surrogateescape")
            self._ttl = parse_expiration(expiration)

    def _handle_body(self, payload: bytes) -> None:
        if self._header is None:
            raise _expected_method() if self._publish is None else _expected_header()
        remaining = self._body_remaining - len(payload)
        if remaining < 0:
            raise errors.UnexpectedFrame(
                "content body frame exceeds the size in the header", c.CLASS_BASIC, 40
            )
        if remaining == 0:
            body = self._body
            if body:
                body.append(payload)
                payload = body_of(body)
                body.clear()
            elif type(payload) is memoryview:  # a slice of a read (kept, it would pin it all)
                payload = body_of([payload])  # or the whole of an assembled body
            self._finish_publish(payload)
        else:
            self._body.append(payload)
            self._body_remaining = remaining

    def _reset_content(self) -> None:
        self._publish = self._exchange = self._header = None
        self._body.clear()
        self._body_remaining = 0

    def _finish_publish(self, body: bytes) -> None:
        publish, exchange, header = self._publish, self._exchange, self._header
        self._publish = self._exchange = self._header = None
        assert publish is not None and exchange is not None and header is not None
        self._publish_message(publish, exchange, header, body)

    def _publish_message(self, publish: fastpath.Publish, exchange: Exchange, header: bytes,
                         body: bytes, shape: tuple[int, bool] | None = None) -> None:
        """Route a complete publish; ``shape`` is (flags, persistent) when already known."""
        message = Message(publish.route_raw, header, body, *(shape or ()))
        if self._ttl is not None:
            message.ttl, self._ttl = self._ttl, None
        if self.tx_mode:  # routed now, delivered at commit (as RabbitMQ does)
            self.tx_publishes.append(
                (exchange, route(self.vhost, exchange, message, routing_key=publish.routing_key),
                 publish.mandatory))
            return
        self._published(
            message, publish.mandatory,
            *deliver_publish(self.vhost, exchange, message, routing_key=publish.routing_key))

    def _published(self, message: Message, mandatory: bool, routed: bool, refused: bool,
                   ticket: int, queues: list[Queue]) -> None:
        """After a publish went its way: throttle on backlogged queues, return it if it was
        mandatory and unroutable, confirm it once everything it caused is durable."""
        stats = self.counters
        stats.publish += 1
        for queue in queues:
            if queue.backlogged:  # flow control: hold this channel's next publishes
                self.throttle(queue)
        if not routed:
            if mandatory:
                stats.return_unroutable += 1
                self.send_return(c.NO_ROUTE, "NO_ROUTE", message)
                if not self.connection.has_room():
                    self.park_until_writable()  # returns pile up: wait for the client to read
            else:
                stats.drop_unroutable += 1
        if self.confirm_mode:
            seq = self.publish_seq = self.publish_seq + 1
            if refused:
                self._confirm_nacks.append(seq)
            store = self.vhost.store
            if ticket and store is not None and ticket > store.durable:
                if not self._pending:
                    store.watch(self)
                self._pending.append((seq, ticket))  # confirmed once on disk
            else:
                if self._pending:  # earlier publishes still wait: answer this one alone
                    self._ahead.append(seq)
                self.connection.confirms_ready(self)

    def on_durable(self, durable: int) -> bool:
        """The store made every ticket up to ``durable`` durable; True while still waiting."""
        pending = self._pending
        if pending and pending[0][1] <= durable:
            audit = self.vhost.store.audit  # type: ignore[union-attr]
            while pending and pending[0][1] <= durable:
                _seq, ticket = pending.popleft()
                if audit is not None:
                    self.vhost.store.audit_confirm(ticket)  # type: ignore[union-attr]
            self.connection.confirms_ready(self)
        return bool(pending)

    def on_store_failed(self, durable: int) -> None:
        """The store could not write what came after ``durable``: nack those publishes."""
        pending = self._pending
        kept = deque(item for item in pending if item[1] <= durable)
        self._confirm_nacks.extend(seq for seq, ticket in pending if ticket > durable)
        self._pending = kept
        self.connection.confirms_ready(self)

    def send_return(self, code: int, text: str, message: Message) -> None:
        conn = self.connection
        conn.out_bytes += len(message.body)
        fastpath.write_delivery(
            conn.out,
            self.number,
            fastpath.return_method(code, text, message.route_raw),
            message.header,
            message.body,
            conn.frame_max,
        )
        conn.schedule_flush()

    def pending_confirms(self, out: list) -> None:
        """Append basic.ack/nack frames for every publish answerable since the last flush.

        Publishes up to the first one still waiting for the store are answered together (a
        ``multiple`` ack, with a refused publish's nack in between); publishes after it that
        need no wait are answered one by one.
        """
        number = self.number
        seq = self._pending[0][0] - 1 if self._pending else self.publish_seq
        done = self.confirmed_seq
        if seq > done:
            self.counters.confirm += seq - done
            nacks = sorted(n for n in self._confirm_nacks if n <= seq)
            if nacks:
                self._confirm_nacks = [n for n in self._confirm_nacks if n > seq]
            for nacked in nacks:
                if nacked - 1 > done:
                    out.append(method_frame(number, fastpath.ack_method(
                        nacked - 1, nacked - 1 - done > 1)))
                out.append(method_frame(number, fastpath.nack_method(nacked, False)))
                done = nacked
            if seq > done:
                out.append(method_frame(number, fastpath.ack_method(seq, seq - done > 1)))
            self.confirmed_seq = seq
        if self._ahead:
            ahead, self._ahead = self._ahead, []
            for one in ahead:
                if one <= self.confirmed_seq:
                    continue
                self.counters.confirm += 1
                if one in self._confirm_nacks:
                    self._confirm_nacks.remove(one)
                    out.append(method_frame(number, fastpath.nack_method(one, False)))
                else:
                    out.append(method_frame(number, fastpath.ack_method(one, False)))

    # -- delivering ------------------------------------------------------------------------
    def can_deliver(self) -> bool:
        """Whether a delivery may be written now: the channel is usable and the connection's
        socket is keeping up (this iteration's output is bounded)."""
        return self.flow_active and not self.closing and self.connection.can_write()

    @property
    def unacked_count(self) -> int:
        return len(self.unacked)

    def deliver(self, consumer: Consumer, entry: Entry) -> None:
        """Send ``entry`` to ``consumer`` (the queue already removed it from its ready list)."""
        tag = self.next_delivery_tag
        self.next_delivery_tag = tag + 1
        queue = consumer.queue
        if entry.redelivered:
            self.counters.redeliver += 1
            queue.counters.redeliver += 1
        if consumer.no_ack:  # (the channel's manual-ack deliveries are counted by tag)
            self.counters.deliver_no_ack += 1
            queue.counters.deliver_no_ack += 1
        else:
            queue.counters.deliver += 1
            self.unacked[tag] = (entry, queue, consumer)
            consumer.unacked += 1
            queue.unacked += 1
            if queue.consumer_timeout:
                self._watch_timeout(tag, consumer, queue.consumer_timeout)
            if self.connection.reading_paused:
                self.connection.delivery_unacked()
        if entry.msg_id is not None:
            queue.stored_delivery(entry, consumer.no_ack)
        message = entry.message
        conn = self.connection
        conn.out_bytes += len(message.body)
        fastpath.write_deliver(
            conn.out,
            self.number,
            consumer.tag_raw,
            tag,
            entry.redelivered,
            message.route_raw,
            quorum_header(entry, False) if queue.is_quorum else message.header,
            message.body,
            conn.frame_max,
        )
        conn.schedule_flush()

    def deliver_get(self, queue: Queue, entry: Entry, no_ack: bool) -> None:
        """Answer basic.get with ``entry``."""
        tag = self.next_delivery_tag
        self.next_delivery_tag = tag + 1
        stats, queue_stats = self.counters, queue.counters
        if entry.redelivered:
            stats.redeliver += 1
            queue_stats.redeliver += 1
        if no_ack:
            stats.get_no_ack += 1
            queue_stats.get_no_ack += 1
        else:
            stats.get += 1
            queue_stats.get += 1
            self.unacked[tag] = (entry, queue, None)
            queue.unacked += 1
            if self.connection.reading_paused:
                self.connection.delivery_unacked()
        if entry.msg_id is not None:
            queue.stored_delivery(entry, no_ack)
        message = entry.message
        conn = self.connection
        conn.out_bytes += len(message.body)
        fastpath.write_delivery(
            conn.out,
            self.number,
            fastpath.get_ok_method(tag, entry.redelivered, message.route_raw, queue.message_count),
            quorum_header(entry, True) if queue.is_quorum else message.header,
            message.body,
            conn.frame_max,
        )
        conn.schedule_flush()

    # -- acknowledgements ------------------------------------------------------------------
    def _collect(self, tag: int, multiple: bool) -> list[tuple[int, Delivery]]:
        """Remove and return (tag, delivery) for what an ack/nack/reject of ``tag`` settles."""
        unacked = self.unacked
        if multiple and tag == 0:
            settled = list(unacked.items())
            unacked.clear()
            return settled
        delivery = unacked.pop(tag, None)
        if delivery is None:
            if tag not in self._timed_out_tags:
                raise errors.PreconditionFailed(f"unknown delivery tag {tag}")
            # its consumer timed out and it was requeued: the ack is late, not wrong
            self._timed_out_tags.discard(tag)
            if not multiple:
                return []
        elif not multiple:
            return [(tag, delivery)]
        earlier = []
        for other in unacked:  # in tag order
            if other > tag:
                break
            earlier.append(other)
        settled = [(other, unacked.pop(other)) for other in earlier]
        if delivery is not None:
            settled.append((tag, delivery))
        return settled

    def ack(self, tag: int, multiple: bool) -> None:
        self._settle_or_hold(self._collect(tag, multiple), None)

    def ack_each(self, payloads: list[bytes]) -> int:
        """Settle the plain basic.acks (one tag each) in ``payloads`` together, in order, as
        ``ack`` would one by one; stop at the first whose tag is not unacknowledged here, or
        at once mid-publish or in a transaction. Returns how many were settled."""
        if self._publish is not None or self.tx_mode:
            return 0
        unacked = self.unacked
        deadlines = self._deadlines
        settled = []
        for payload in payloads:
            tag = fastpath.decode_ack(payload)[0]
            delivery = unacked.pop(tag, None)
            if delivery is None:
                break
            if deadlines:
                deadlines.pop(tag, None)
            settled.append(delivery)
        if settled:
            self._settle(settled, None)
        return len(settled)

    def nack(self, tag: int, multiple: bool, requeue: bool) -> None:
        self._settle_or_hold(self._collect(tag, multiple), requeue)

    def _settle_or_hold(self, settled: list[tuple[int, Delivery]],
                        requeue: bool | None) -> None:
        """Settle now, or at commit in a transaction (the tags leave ``unacked`` now, as in
        RabbitMQ: a second ack of one tag is an error at once, not at commit)."""
        if self._deadlines:
            for tag, _delivery in settled:
                self._deadlines.pop(tag, None)
        if self.tx_mode:
            self.tx_settlements.append((settled, requeue))
        else:
            self._settle([delivery for _tag, delivery in settled], requeue)

    def restore_unacked(self, settled: list[tuple[int, Delivery]]) -> None:
        """tx.rollback: deliveries settled in the transaction are unacknowledged again."""
        if settled:
            self.unacked = dict(sorted([*self.unacked.items(), *settled]))

    def _settle(self, deliveries: list[Delivery], requeue: bool | None) -> None:
        """Finish deliveries: acked (requeue None), discarded (False) or requeued (True)."""
        by_queue: dict[Queue, list[Entry]] = {}
        if requeue is None:
            self.counters.ack += len(deliveries)
        for entry, queue, consumer in deliveries:
            queue.unacked -= 1
            if consumer is not None:
                consumer.unacked -= 1
            entries = by_queue.get(queue)
            if entries is None:
                by_queue[queue] = [entry]
            else:
                entries.append(entry)
        for queue, entries in by_queue.items():
            if queue.deleted:  # its store records are purged: only the bookkeeping is left
                queue.forget(entries)
                continue
            if requeue is None:
                queue.counters.ack += len(entries)
                queue.acked(entries)
            elif requeue:
                queue.requeue(entries)
            else:
                queue.reject(entries)
            queue.wake()
        if self.global_prefetch:
            for consumer in self.consumers.values():
                consumer.queue.wake()

    def requeue_all(self) -> None:
        """Requeue every unacknowledged delivery (channel close, basic.recover)."""
        deliveries = list(self.unacked.values())
        self.unacked.clear()
        self._settle(deliveries, requeue=True)

    # -- consumers -------------------------------------------------------------------------
    # -- consumer timeout (off unless configured) ------------------------------------------
    def _watch_timeout(self, tag: int, consumer: Consumer, timeout: float) -> None:
        loop = self.connection.loop
        self._deadlines[tag] = loop.time() + timeout
        if self._timeout_timer is None:
            self._timeout_timer = loop.call_later(min(timeout, 1.0), self._check_timeouts)

    def _check_timeouts(self) -> None:
        """Cancel each consumer holding a delivery past its queue's consumer timeout."""
        self._timeout_timer = None
        if self.closing or self.connection.channels.get(self.number) is not self:
            return
        now = self.connection.loop.time()
        unacked = self.unacked
        deadlines = self._deadlines
        timed_out: dict[Consumer, None] = {}
        for tag in list(deadlines):
            delivery = unacked.get(tag)
            if delivery is None:  # settled meanwhile
                del deadlines[tag]
            elif deadlines[tag] <= now and delivery[2] is not None:
                timed_out[delivery[2]] = None
        for consumer in timed_out:
            self._time_out(consumer)
        if deadlines:
            self._timeout_timer = self.connection.loop.call_later(1.0, self._check_timeouts)

    def _time_out(self, consumer: Consumer) -> None:
        """That consumer alone is cancelled and its unacked messages requeued."""
        log.warning("consumer %r on channel %d of %s timed out; cancelling it",
                    consumer.tag, self.number, self.connection.peer)
        tags = [tag for tag, delivery in self.unacked.items() if delivery[2] is consumer]
        deliveries = [self.unacked.pop(tag) for tag in tags]
        for tag in tags:
            self._deadlines.pop(tag, None)
        self._timed_out_tags.update(tags)
        self.remove_consumer(consumer)
        self._settle(deliveries, requeue=True)
        self.notify_cancel(consumer)

    def cancel_by_server(self, consumer: Consumer) -> None:
        """The queue went away: drop the consumer and tell the client if it understands."""
        self.consumers.pop(consumer.tag, None)
        self.notify_cancel(consumer)

    def notify_cancel(self, consumer: Consumer) -> None:
        if self.deferred_cancels is not None:  # this channel's queue.delete: after delete-ok
            self.deferred_cancels.append(consumer)
            return
        if self.connection.client_capability("consumer_cancel_notify") and not self.closing:
            self.connection.send_method(
                self.number, make(commands.Basic.Cancel, consumer_tag=consumer.tag, nowait=True)
            )

    def remove_consumer(self, consumer: Consumer) -> None:
        self.consumers.pop(consumer.tag, None)
        queue = consumer.queue
        queue.remove_consumer(consumer)
        if queue.unused_after_consumers and not queue.deleted:
            self.vhost.delete_queue(queue)

    def wake_queues(self, queues: Iterable[Queue] | None = None) -> None:
        for queue in queues if queues is not None else {x.queue for x in self.consumers.values()}:
            queue.wake()

    # -- closing ---------------------------------------------------------------------------
    def close_with_error(self, error: errors.AMQPError) -> None:
        """Send channel.close for a channel error; discard everything but close-ok after."""
        if self.closing:
            return
        self.connection.log_rate_limited(log, logging.INFO, "channel %d on %s closed: %s",
                                         self.number, self.connection.peer, error.reply_text)
        self.release()
        self.closing = True
        self.connection.send_method(
            self.number,
            make(
                commands.Channel.Close,
                reply_code=error.reply_code,
                reply_text=error.reply_text,
                class_id=error.class_id,
                method_id=error.method_id,
            ),
        )

    def release(self) -> None:
        """Give back everything this channel holds: consumers, unacked messages (those a
        transaction settled included), content, and what waited for the store."""
        if not self.released:
            self.connection.broker.statistics.retire(self)
        self.released = True
        if self._timeout_timer is not None:
            self._timeout_timer.cancel()
            self._timeout_timer = None
        for consumer in list(self.consumers.values()):
            self.remove_consumer(consumer)
        held = [delivery for settled, _ in self.tx_settlements for _tag, delivery in settled]
        self.tx_settlements.clear()
        self.requeue_all()
        if held:
            self._settle(held, requeue=True)
        self._reset_content()
        self.tx_publishes.clear()
        if self.inbox:
            self.connection.held(-sum(_frame_size(*frame) for frame in self.inbox))
        self.inbox = None
        for queue in self.throttled_by:
            queue.throttled.discard(self)
        self.throttled_by.clear()
        self._pending.clear()
        self._ahead.clear()
        self._confirm_nacks.clear()
        self.confirmed_seq = self.publish_seq
        store = self.vhost.store if self.vhost is not None else None
        if store is not None:
            store.unwatch(self)

    # -- transactions ----------------------------------------------------------------------
    def commit(self) -> None:
        """tx.commit: deliver the transaction's publishes, then apply its settlements."""
        publishes, self.tx_publishes = self.tx_publishes, []
        settlements, self.tx_settlements = self.tx_settlements, []
        for exchange, routed, mandatory in publishes:
            self._published(routed.message, mandatory,
                            *complete(self.vhost, exchange, routed))
        for settled, requeue in settlements:
            self._settle([delivery for _tag, delivery in settled], requeue)

    def rollback(self) -> None:
        """tx.rollback: forget the publishes; the settled deliveries are unacked again."""
        self.tx_publishes.clear()
        settlements, self.tx_settlements = self.tx_settlements, []
        self.restore_unacked([pair for settled, _ in settlements for pair in settled])

    # -- holding frames: parked (for the store or the socket) or throttled ---------------------
    # A parked channel holds every frame until what it waits for has happened: a durable
    # reply's fsync, or room in the socket's buffer. A throttled channel (its publishes
    # reached a queue past its flow limit, or a resource alarm is on) holds publishes and
    # whatever follows them, while acks, nacks and rejects go straight through: a consumer
    # on the same connection keeps draining the queue, so nothing deadlocks.

    @property
    def throttled(self) -> bool:
        return bool(self.throttled_by) or self.connection.blocked_reason is not None

    def must_hold(self, frame_type: int, payload: object) -> bool:
        """Whether a frame arriving now waits in the inbox (``inbox`` is not None)."""
        if frame_type == c.FRAME_METHOD:
            index = method_index(payload)  # type: ignore[arg-type]
            if index in _SETTLEMENTS and self.settlements_pass():
                return False
            if self.parked or (index == c.BASIC_PUBLISH and self.throttled):
                return True
        elif self.parked or (frame_type == c.FRAME_PUBLISH and self.throttled):
            return True
        return bool(self.inbox)  # behind held frames, in order

    def settlements_pass(self) -> bool:
        """Acks, nacks and rejects overtake held frames (they produce no output and drain
        queues), except between a publish's frames or inside a transaction (where their
        order against tx.commit matters)."""
        return self._publish is None and not self.tx_mode

    def hold(self, frame_type: int, payload: object) -> None:
        assert self.inbox is not None
        self.inbox.append((frame_type, payload))
        self.connection.held(_frame_size(frame_type, payload))

    def store_mark(self) -> int:
        """The store's ticket count now: ``reply`` waits for what is written after it."""
        store = self.vhost.store
        return store.issued if store is not None else 0

    def reply(self, method: Method, mark: int,
              then: Callable[[], None] | None = None) -> None:
        """Send ``method`` once everything written to the store since ``mark`` is durable
        (a durable declare, bind or delete, a commit); meanwhile the channel is parked.
        ``then`` runs right after the reply is written (frames that must follow it)."""
        store = self.vhost.store

        def send() -> None:
            self.connection.send_method(self.number, method)
            if then is not None:
                then()

        if store is None or store.issued == mark or store.issued <= store.durable:
            send()
            return
        self._park()
        store.when_durable(store.issued, lambda: self._unpark(send))

    def park_until_writable(self) -> None:
        """The socket's buffer is full: process nothing more until it has drained."""
        self._park()
        self.connection.wait_writable(self)

    def on_writable(self) -> None:
        self._unpark(None)

    def _park(self) -> None:
        self.parked = True
        if self.inbox is None:
            self.inbox = deque()

    def _unpark(self, then: Callable[[], None] | None) -> None:
        if self.released or not self.parked:
            return
        self.parked = False
        if then is not None:
            then()
        self._resume_soon()

    def _settle_held(self) -> None:
        """Process the acks held behind a throttled publish (held while the channel was
        parked or a content was arriving): the consumer they free may drain the queue."""
        inbox = self.inbox
        if not inbox or not self.settlements_pass():
            return
        held = [frame for frame in inbox if _is_settlement(*frame)]
        if not held:
            return
        kept = deque(frame for frame in inbox if not _is_settlement(*frame))
        inbox.clear()
        inbox.extend(kept)
        connection = self.connection
        for frame_type, payload in held:
            connection.held(-_frame_size(frame_type, payload))
            connection.replay_frame(self.number, frame_type, payload)
            if self.released:
                return

    def throttle(self, queue: Queue) -> None:
        """``queue`` is past its flow limit: this channel's publishes must wait (not in a
        transaction: its publishes wait for tx.commit anyway). The connection decides how:
        it stops reading, or keeps reading and has the channel hold them."""
        if self.tx_mode:
            return
        if queue not in self.throttled_by:
            self.throttled_by.add(queue)
            queue.throttled.add(self)
            self.connection.flow_changed()

    def unthrottle(self, queue: Queue) -> None:
        self.throttled_by.discard(queue)
        self._resume_soon()
        self.connection.flow_changed()

    def hold_publishes(self) -> None:
        """The connection keeps reading while this channel is throttled: hold publishes."""
        if self.inbox is None:
            self.inbox = deque()

    def wake_held(self) -> None:
        """Something that held this channel's frames may have lifted: look again."""
        self._resume_soon()

    def _resume_soon(self) -> None:
        if self.inbox is not None and not self._resume_scheduled:
            self._resume_scheduled = True
            self.connection.loop.call_soon(self._resume)

    def _resume(self) -> None:
        """Process held frames, in order, until something holds the channel again (a
        throttle stops at the next publish; a park stops everything)."""
        self._resume_scheduled = False
        inbox = self.inbox
        if self.released or self.parked or inbox is None:
            return
        connection = self.connection
        for _ in range(_REPLAY_BATCH):
            if not inbox:
                break
            frame_type, payload = inbox[0]
            if self.throttled and _is_publish(frame_type, payload):
                self._settle_held()
                return  # the rest waits for the throttle to lift
            inbox.popleft()
            connection.held(-_frame_size(frame_type, payload))
            self.inbox = None  # let this one through
            connection.replay_frame(self.number, frame_type, payload)
            if self.released:
                return
            again = self.inbox
            if again:  # held once more (the channel parked on it): it stays first
                inbox.extendleft(reversed(again))
            self.inbox = inbox
            if self.parked:
                return
        if inbox:
            self._resume_soon()
        elif not self.throttled:
            self.inbox = None


def _is_settlement(frame_type: int, payload: object) -> bool:
    return frame_type == c.FRAME_METHOD and method_index(payload) in _SETTLEMENTS  # type: ignore[arg-type]


def _is_publish(frame_type: int, payload: object) -> bool:
    return frame_type == c.FRAME_PUBLISH or (
        frame_type == c.FRAME_METHOD and method_index(payload) == c.BASIC_PUBLISH)  # type: ignore[arg-type]


def _frame_size(frame_type: int, payload: object) -> int:
    if frame_type == c.FRAME_PUBLISH:
        return sum(len(part) for part in payload if part is not None)  # type: ignore[union-attr]
    return len(payload)  # type: ignore[arg-type]
