"""Basic class: qos, consume, cancel, get, recover.

basic.publish, ack, nack and reject are per-message and take the raw-bytes fast path in
``broker.channel``.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from pamqp import commands

from leveret.broker import direct_reply
from leveret.broker.arguments import validate_consumer_priority
from leveret.broker.consumer import Consumer
from leveret.protocol import errors
from leveret.protocol.methods import make

if TYPE_CHECKING:
    from leveret.broker.channel import Channel


def qos(ch: Channel, m: commands.Basic.Qos) -> None:
    if m.prefetch_size:
        raise errors.NotImplemented_(f"prefetch_size!=0 ({m.prefetch_size})")
    if m.global_:
        ch.global_prefetch = m.prefetch_count
    else:
        # RabbitMQ applies a new per-consumer limit to later consumers only; Celery/kombu
        # raise and lower it while consuming (ETA tasks) and need it to apply at once.
        ch.prefetch_count = m.prefetch_count
        ch.global_prefetch = 0  # as in RabbitMQ: a per-consumer qos clears the channel limit
        for consumer in ch.consumers.values():
            consumer.prefetch = m.prefetch_count
    ch.connection.send_method(ch.number, commands.Basic.QosOk())
    ch.wake_queues()


def consume(ch: Channel, m: commands.Basic.Consume) -> None:
    vhost = ch.vhost
    name = m.queue or ch.last_queue
    if not name:
        raise errors.NotFound("no previously declared queue")
    tag = m.consumer_tag or "amq.ctag-" + secrets.token_urlsafe(16)
    if name == direct_reply.REPLY_TO:
        queue = direct_reply.open_reply_queue(ch, m.no_ack)
    else:
        if tag in ch.consumers:
            raise errors.NotAllowed(f"attempt to reuse consumer tag '{tag}'")
        ch.connection.authz.read("queue", name)
        queue = vhost.get_queue(name, ch.connection)
    validate_consumer_priority(queue.name, vhost.name, m.arguments or {})
    if tag in ch.consumers:
        raise errors.NotAllowed(f"attempt to reuse consumer tag '{tag}'")
    if queue.consumers and (m.exclusive or any(c.exclusive for c in queue.consumers)):
        raise errors.AccessRefused(f"queue '{queue.name}' in vhost '{vhost.name}' in exclusive use")
    consumer = Consumer(tag, ch, queue, m.no_ack, m.exclusive, ch.prefetch_count, m.arguments or {})
    ch.consumers[tag] = consumer
    if not m.nowait:
        ch.connection.send_method(ch.number, make(commands.Basic.ConsumeOk, consumer_tag=tag))
    queue.add_consumer(consumer)


def cancel(ch: Channel, m: commands.Basic.Cancel) -> None:
    consumer = ch.consumers.get(m.consumer_tag)
    if consumer is not None:
        ch.remove_consumer(consumer)
    if not m.nowait:
        ch.connection.send_method(
            ch.number, make(commands.Basic.CancelOk, consumer_tag=m.consumer_tag)
        )


def get(ch: Channel, m: commands.Basic.Get) -> None:
    name = m.queue or ch.last_queue
    if not name:
        raise errors.NotFound("no previously declared queue")
    ch.connection.authz.read("queue", name)
    queue = ch.vhost.get_queue(name, ch.connection)
    entry = queue.take()
    if entry is None:
        ch.counters.get_empty += 1
        queue.counters.get_empty += 1
        ch.connection.send_method(ch.number, commands.Basic.GetEmpty())
        return
    ch.deliver_get(queue, entry, m.no_ack)


def recover(ch: Channel, m: commands.Basic.Recover) -> None:
    if not m.requeue:
        raise errors.NotImplemented_("requeue=false")
    ch.requeue_all()
    ch.connection.send_method(ch.number, commands.Basic.RecoverOk())


def recover_async(ch: Channel, m: commands.Basic.RecoverAsync) -> None:
    if not m.requeue:
        raise errors.NotImplemented_("requeue=false")
    ch.requeue_all()


def cancel_ok(ch: Channel, m: commands.Basic.CancelOk) -> None:
    """A client's answer to our server-sent basic.cancel; nothing to do."""


HANDLERS = {
    commands.Basic.Qos: qos,
    commands.Basic.Consume: consume,
    commands.Basic.Cancel: cancel,
    commands.Basic.CancelOk: cancel_ok,
    commands.Basic.Get: get,
    commands.Basic.Recover: recover,
    commands.Basic.RecoverAsync: recover_async,
}
