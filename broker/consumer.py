"""A consumer: a channel's subscription to a queue, with its own prefetch credit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from leveret.protocol.fastpath import shortstr

if TYPE_CHECKING:
    from leveret.broker.channel import Channel
    from leveret.broker.queue import Queue


class Consumer:
    """basic.consume state: tag, acknowledgement mode and prefetch credit."""

    __slots__ = (
        "arguments",
        "channel",
        "exclusive",
        "no_ack",
        "prefetch",
        "priority",
        "queue",
        "tag",
        "tag_raw",
        "unacked",
    )

    def __init__(
        self,
        tag: str,
        channel: Channel,
        queue: Queue,
        no_ack: bool,
        exclusive: bool,
        prefetch: int,
        arguments: dict[str, Any],
    ) -> None:
        self.tag = tag
        self.tag_raw = shortstr(tag)
        self.channel = channel
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch  # 0 = unlimited
        self.unacked = 0
        self.arguments = arguments
        priority = arguments.get("x-priority", 0)
        self.priority = priority if isinstance(priority, int) else 0

    def can_take(self) -> bool:
        """Whether a delivery now stays within every limit that applies to this consumer."""
        channel = self.channel
        if self.no_ack:
            return channel.can_deliver()
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        if channel.global_prefetch and channel.unacked_count >= channel.global_prefetch:
            return False
        return channel.can_deliver()

    def __repr__(self) -> str:
        return f"<Consumer {self.tag!r} on {self.queue.name!r}>"
