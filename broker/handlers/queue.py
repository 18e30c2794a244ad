"""Queue class: declare, bind, unbind, purge, delete."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pamqp import commands

from leveret.broker import direct_reply
from leveret.protocol import errors
from leveret.protocol.methods import make

if TYPE_CHECKING:
    from leveret.broker.channel import Channel
    from leveret.broker.queue import Queue


def _queue_name(ch: Channel, name: str) -> str:
    """An empty queue name means the channel's last declared queue, as in RabbitMQ."""
    if name:
        return name
    if ch.last_queue is None:
        raise errors.NotFound("no previously declared queue")
    return ch.last_queue


def declare(ch: Channel, m: commands.Queue.Declare) -> None:
    if m.queue == direct_reply.REPLY_TO or m.queue.startswith(direct_reply.REPLY_PREFIX):
        _declare_reply_to(ch, m)
        return
    mark = ch.store_mark()
    queue = ch.vhost.declare_queue(
        m.queue,
        ch.connection,
        passive=m.passive,
        durable=m.durable,
        exclusive=m.exclusive,
        auto_delete=m.auto_delete,
        arguments=m.arguments or {},
        authz=ch.connection.authz,
    )
    ch.last_queue = queue.name
    if not m.nowait:
        ch.reply(make(commands.Queue.DeclareOk, queue=queue.name,
                      message_count=queue.message_count, consumer_count=len(queue.consumers)),
                 mark)


def _declare_reply_to(ch: Channel, m: commands.Queue.Declare) -> None:
    """Direct reply-to names, as RabbitMQ 3.10.8 answers them whatever the flags: the
    pseudo-queue as if one consumer held it; a reply queue's name only while it exists."""
    if m.queue == direct_reply.REPLY_TO:
        count, consumers = 0, 1
    else:
        queue = ch.vhost.reply_queues.get(m.queue)
        if queue is None:
            raise ch.vhost.no_queue(m.queue)
        count, consumers = queue.message_count, len(queue.consumers)
    if not m.nowait:
        ch.connection.send_method(ch.number, make(
            commands.Queue.DeclareOk, queue=m.queue, message_count=count,
            consumer_count=consumers))


def bind(ch: Channel, m: commands.Queue.Bind) -> None:
    vhost = ch.vhost
    name = _queue_name(ch, m.queue)
    ch.connection.authz.check_binding(m.exchange, "queue", name)
    source = vhost.get_exchange(m.exchange)
    queue = vhost.get_queue(name, ch.connection)
    mark = ch.store_mark()
    vhost.bind(source, queue, m.routing_key, m.arguments or {})
    if not m.nowait:
        ch.reply(commands.Queue.BindOk(), mark)


def unbind(ch: Channel, m: commands.Queue.Unbind) -> None:
    vhost = ch.vhost
    name = _queue_name(ch, m.queue)
    ch.connection.authz.check_binding(m.exchange, "queue", name)
    source = vhost.exchanges.get(m.exchange)
    queue = vhost.queues.get(name)
    mark = ch.store_mark()
    if source is not None and queue is not None:  # unbind is idempotent in RabbitMQ
        vhost.check_exclusive(queue, ch.connection)
        vhost.unbind(source, queue, m.routing_key, m.arguments or {})
    ch.reply(commands.Queue.UnbindOk(), mark)


def purge(ch: Channel, m: commands.Queue.Purge) -> None:
    name = _queue_name(ch, m.queue)
    ch.connection.authz.read("queue", name)
    queue = ch.vhost.get_queue(name, ch.connection)
    mark = ch.store_mark()
    count = queue.purge()
    if not m.nowait:
        ch.reply(commands.Queue.PurgeOk(message_count=count), mark)


def delete(ch: Channel, m: commands.Queue.Delete) -> None:
    vhost = ch.vhost
    name = _queue_name(ch, m.queue)
    ch.connection.authz.configure("queue", name)
    queue: Queue | None = vhost.queues.get(name)
    mark = ch.store_mark()
    if queue is None:
        count = 0  # RabbitMQ 3.x answers delete-ok with 0 for a missing queue
    else:
        vhost.check_exclusive(queue, ch.connection)
        where = f"queue '{name}' in vhost '{vhost.name}'"
        if m.if_unused and queue.consumers:
            raise errors.PreconditionFailed(f"{where} in use")
        if m.if_empty and queue.message_count:
            raise errors.PreconditionFailed(f"{where} not empty")
        # RabbitMQ answers delete-ok first; the cancel notifications for this channel's own
        # consumers of the queue follow it (they come from the queue's termination).
        ch.deferred_cancels = []
        try:
            count = vhost.delete_queue(queue)
        finally:
            held, ch.deferred_cancels = ch.deferred_cancels, None
        if held:
            def notify() -> None:
                for consumer in held:
                    ch.notify_cancel(consumer)
            if m.nowait:
                notify()
            else:
                ch.reply(commands.Queue.DeleteOk(message_count=count), mark, then=notify)
            return
    if not m.nowait:
        ch.reply(commands.Queue.DeleteOk(message_count=count), mark)


HANDLERS = {
    commands.Queue.Declare: declare,
    commands.Queue.Bind: bind,
    commands.Queue.Unbind: unbind,
    commands.Queue.Purge: purge,
    commands.Queue.Delete: delete,
}
