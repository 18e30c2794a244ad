"""Exchange class: declare, delete, bind, unbind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pamqp import commands

if TYPE_CHECKING:
    from leveret.broker.channel import Channel


def declare(ch: Channel, m: commands.Exchange.Declare) -> None:
    mark = ch.store_mark()
    ch.vhost.declare_exchange(
        m.exchange,
        m.exchange_type,
        passive=m.passive,
        durable=m.durable,
        auto_delete=m.auto_delete,
        internal=m.internal,
        arguments=m.arguments or {},
        authz=ch.connection.authz,
    )
    if not m.nowait:
        ch.reply(commands.Exchange.DeclareOk(), mark)


def delete(ch: Channel, m: commands.Exchange.Delete) -> None:
    mark = ch.store_mark()
    ch.vhost.delete_exchange(m.exchange, m.if_unused, ch.connection.authz)
    if not m.nowait:
        ch.reply(commands.Exchange.DeleteOk(), mark)


def bind(ch: Channel, m: commands.Exchange.Bind) -> None:
    ch.connection.authz.check_binding(m.source, "exchange", m.destination)
    vhost = ch.vhost
    source = vhost.get_exchange(m.source)
    destination = vhost.get_exchange(m.destination)
    mark = ch.store_mark()
    vhost.bind(source, destination, m.routing_key, m.arguments or {})
    if not m.nowait:
        ch.reply(commands.Exchange.BindOk(), mark)


def unbind(ch: Channel, m: commands.Exchange.Unbind) -> None:
    ch.connection.authz.check_binding(m.source, "exchange", m.destination)
    vhost = ch.vhost
    source = vhost.exchanges.get(m.source)
    destination = vhost.exchanges.get(m.destination)
    mark = ch.store_mark()
    if source is not None and destination is not None:  # unbind is idempotent in RabbitMQ
        vhost.unbind(source, destination, m.routing_key, m.arguments or {})
    if not m.nowait:
        ch.reply(commands.Exchange.UnbindOk(), mark)


HANDLERS = {
    commands.Exchange.Declare: declare,
    commands.Exchange.Delete: delete,
    commands.Exchange.Bind: bind,
    commands.Exchange.Unbind: unbind,
}
