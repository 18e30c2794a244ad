"""Tx class: select, commit, rollback. Publishes and acks are held until commit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pamqp import commands

from leveret.protocol import errors

if TYPE_CHECKING:
    from leveret.broker.channel import Channel


def select(ch: Channel, m: commands.Tx.Select) -> None:
    if ch.confirm_mode:
        raise errors.PreconditionFailed("cannot switch from confirm to tx mode")
    ch.tx_mode = True
    ch.connection.send_method(ch.number, commands.Tx.SelectOk())


def _require_tx(ch: Channel) -> None:
    if not ch.tx_mode:
        raise errors.PreconditionFailed("channel is not transactional")


def commit(ch: Channel, m: commands.Tx.Commit) -> None:
    """Apply the transaction; commit-ok once its persistent publishes are on disk."""
    _require_tx(ch)
    mark = ch.store_mark()
    ch.commit()
    ch.reply(commands.Tx.CommitOk(), mark)


def rollback(ch: Channel, m: commands.Tx.Rollback) -> None:
    _require_tx(ch)
    ch.rollback()
    ch.connection.send_method(ch.number, commands.Tx.RollbackOk())


HANDLERS = {
    commands.Tx.Select: select,
    commands.Tx.Commit: commit,
    commands.Tx.Rollback: rollback,
}
