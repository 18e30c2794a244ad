"""Direct reply-to (``amq.rabbitmq.reply-to``), as RabbitMQ implements it.

A channel that consumes from ``amq.rabbitmq.reply-to`` (no-ack only) gets a private,
unlisted queue named ``amq.rabbitmq.reply-to.<token>``. Messages it publishes with
``reply_to = amq.rabbitmq.reply-to`` have that property rewritten to the private name;
replies published to the default exchange with that routing key go straight to the
consumer. The queue goes away with its consumer.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from leveret.protocol import errors
from leveret.protocol.tables import content_header
from leveret.protocol.validate import decode_properties

if TYPE_CHECKING:
    from leveret.broker.channel import Channel
    from leveret.broker.queue import Queue

REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_PREFIX = REPLY_TO + "."
_REPLY_TO_BYTES = REPLY_TO.encode()


def open_reply_queue(ch: Channel, no_ack: bool) -> Queue:
    """The private queue behind a consume from amq.rabbitmq.reply-to on ``ch``."""
    if not no_ack:
        raise errors.PreconditionFailed("reply consumer cannot acknowledge")
    if ch.reply_queue is not None and not ch.reply_queue.deleted:
        raise errors.PreconditionFailed("reply consumer already set")
    from leveret.broker.queue import Queue

    name = REPLY_PREFIX + secrets.token_urlsafe(24)
    queue = Queue(name, ch.vhost, exclusive_owner=ch.connection, auto_delete=True)
    ch.vhost.reply_queues[name] = queue
    ch.reply_queue = queue
    return queue


def rewrite_reply_to(ch: Channel, header: bytes) -> bytes:
    """Replace ``reply_to = amq.rabbitmq.reply-to`` with the channel's private name."""
    if _REPLY_TO_BYTES not in header:  # cheap test before decoding the properties
        return header
    properties = decode_properties(header)
    if properties.reply_to != REPLY_TO:
        return header
    queue = ch.reply_queue
    if queue is None or queue.deleted:
        raise errors.PreconditionFailed("fast reply consumer does not exist", 60, 40)
    properties.reply_to = queue.name
    return content_header(int.from_bytes(header[4:12], "big"), properties)
