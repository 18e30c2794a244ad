"""Confirm class: confirm.select (publisher confirms)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pamqp import commands

from leveret.protocol import errors

if TYPE_CHECKING:
    from leveret.broker.channel import Channel


def select(ch: Channel, m: commands.Confirm.Select) -> None:
    if ch.tx_mode:
        raise errors.PreconditionFailed("cannot switch from tx to confirm mode")
    ch.confirm_mode = True
    if not m.nowait:
        ch.connection.send_method(ch.number, commands.Confirm.SelectOk())


HANDLERS = {commands.Confirm.Select: select}
