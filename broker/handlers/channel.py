"""Channel class: channel.flow (channel.open and channel.close are in broker.connection)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pamqp import commands

from leveret.protocol import errors

if TYPE_CHECKING:
    from leveret.broker.channel import Channel


def flow(ch: Channel, method: commands.Channel.Flow) -> None:
    # RabbitMQ 3.x accepts active=true and refuses to be asked to stop sending.
    if not method.active:
        raise errors.NotImplemented_("active=false")
    ch.connection.send_method(ch.number, commands.Channel.FlowOk(active=True))


def flow_ok(ch: Channel, method: commands.Channel.FlowOk) -> None:
    """We never send channel.flow, so a flow-ok is simply ignored."""


HANDLERS = {commands.Channel.Flow: flow, commands.Channel.FlowOk: flow_ok}
