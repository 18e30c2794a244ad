"""Message statistics: plain counters on the hot path, turned into rates only when read.

Every channel, queue and exchange owns a ``MessageStats`` whose fields are the keys of
RabbitMQ's ``message_stats`` (``publish``, ``deliver``, ``ack`` ...). The per-message cost is
an integer increment on the objects a message passes through; nothing is timed, queued or
logged per message. Totals for a vhost or the whole broker are the sum over live channels
plus what closed channels left behind (``Statistics.retire``), so they never go backwards.

Rates are differences between two samples of a counter set. ``RateWindow`` takes a sample
when it is read at least a second after the last one, so 50,000 idle queues cost nothing
until someone asks; the broker-wide totals are sampled once a second for the live charts.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leveret.broker.channel import Channel
    from leveret.broker.server import Broker

FIELDS = (
    "publish",  # channel: basic.publish received; queue: messages enqueued
    "publish_in",  # exchange: messages published to it
    "publish_out",  # exchange: messages it routed somewhere
    "confirm",  # publishes confirmed (basic.ack/nack sent in confirm mode)
    "return_unroutable",  # mandatory publishes returned with NO_ROUTE
    "drop_unroutable",  # publishes that reached no queue and were dropped
    "deliver",  # basic.deliver with manual acknowledgement
    "deliver_no_ack",  # basic.deliver with no_ack
    "get",  # basic.get-ok with manual acknowledgement
    "get_no_ack",  # basic.get-ok with no_ack
    "get_empty",  # basic.get-empty
    "ack",  # deliveries acknowledged
    "redeliver",  # deliveries (or gets) of a message flagged redelivered
)

RATE_INTERVAL = 1.0  # seconds between two samples of a rate
HISTORY_SECONDS = 600  # broker-wide samples kept for the dashboard's charts


class MessageStats:
    """Monotonic message counters, RabbitMQ's ``message_stats`` keys (see FIELDS)."""

    __slots__ = FIELDS

    def __init__(self) -> None:
        for name in FIELDS:
            setattr(self, name, 0)

    def add(self, other: MessageStats) -> None:
        for name in FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def counts(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in FIELDS)

    def as_dict(self) -> dict[str, int]:
        """Counters as RabbitMQ names them, with the derived ``deliver_get`` sum."""
        counts = {name: getattr(self, name) for name in FIELDS}
        counts["deliver_get"] = (counts["deliver"] + counts["deliver_no_ack"] + counts["get"]
                                 + counts["get_no_ack"])
        return counts


def total(stats: Iterable[MessageStats]) -> MessageStats:
    summed = MessageStats()
    for one in stats:
        summed.add(one)
    return summed


class RateWindow:
    """Rates of one counter set between its last two samples, taken lazily on read.

    ``idle_since`` is the wall-clock time of the first sample in which nothing had changed
    (RabbitMQ's ``idle_since``), or None while the counters move.
    """

    __slots__ = ("_last", "_previous", "idle_since")

    def __init__(self) -> None:
        self._last: tuple[float, tuple[int, ...]] | None = None
        self._previous: tuple[float, tuple[int, ...]] | None = None
        self.idle_since: float | None = None

    def rates(self, counts: tuple[int, ...], now: float | None = None) -> tuple[float, ...]:
        """Per-second rates of ``counts`` (same order as given) over the last interval."""
        now = time.monotonic() if now is None else now
        last = self._last
        if last is None or now - last[0] >= RATE_INTERVAL:
            if last is not None and last[1] == counts:
                if self.idle_since is None:
                    self.idle_since = time.time()
            else:
                self.idle_since = None
            self._previous, self._last = last, (now, counts)
        previous, last = self._previous, self._last
        assert last is not None
        if previous is None or len(previous[1]) != len(last[1]):
            return (0.0,) * len(counts)
        elapsed = last[0] - previous[0]
        return tuple((b - a) / elapsed for a, b in zip(previous[1], last[1], strict=True))


class Statistics:
    """The broker's totals: per-vhost message counters and a second-by-second history."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.retired: dict[str, MessageStats] = {}  # vhost -> counts of closed channels
        self.history: deque[tuple[float, dict[str, int]]] = deque(maxlen=HISTORY_SECONDS)
        self.windows: dict[object, RateWindow] = {}  # vhost name / None (all) -> rates
        self._timer: asyncio.TimerHandle | None = None
        # since start: connections accepted and gone, channels opened and released
        self.connections_opened = self.connections_closed = 0
        self.channels_opened = self.channels_closed = 0

    def retire(self, channel: Channel) -> None:
        """A channel closes: keep its counts in its vhost's totals."""
        self.channels_closed += 1
        if channel.vhost is None:
            return
        retired = self.retired.get(channel.vhost.name)
        if retired is None:
            retired = self.retired[channel.vhost.name] = MessageStats()
        retired.add(channel.stats)

    def vhost_totals(self, vhost: str) -> MessageStats:
        summed = MessageStats()
        retired = self.retired.get(vhost)
        if retired is not None:
            summed.add(retired)
        for connection in self.broker.connections:
            if connection.vhost is not None and connection.vhost.name == vhost:
                for channel in connection.channels.values():
                    summed.add(channel.stats)
        return summed

    def totals(self) -> MessageStats:
        summed = total(self.retired.values())
        for connection in self.broker.connections:
            for channel in connection.channels.values():
                summed.add(channel.stats)
        return summed

    def window(self, key: object) -> RateWindow:
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = RateWindow()
        return window

    def forget_vhost(self, vhost: str) -> None:
        self.retired.pop(vhost, None)
        self.windows.pop(vhost, None)

    # -- the once-a-second sample for the charts ------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = loop.call_later(RATE_INTERVAL, self._sample, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sample(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = loop.call_later(RATE_INTERVAL, self._sample, loop)
        self.history.append((time.time(), self.totals().as_dict()))
