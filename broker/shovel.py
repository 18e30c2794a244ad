"""``leveret shovel``: move the messages of a queue on one broker to another broker, once.

The shovel consumes the source queue (``--prefetch`` messages unacknowledged at a time),
publishes each message to the destination, a queue through the default exchange or an
exchange with a routing key, on a channel in confirm mode, and acknowledges it at the
source only once the destination has confirmed it. Publishes are pipelined: up to
``--prefetch`` messages wait for their confirms at once, published in the order they were
consumed, so the destination gets the source's order (a refused message, below, is the
exception: it stays behind in the source).

Delivery is at least once. A message is never acked at the source before the destination
has it, so none is lost; but one can arrive twice: when the shovel, the source connection or
the source broker dies between the destination's confirm and the source's ack, the source
delivers the message again (to the next run) although the destination already has it.

Properties and headers are published as they were delivered (``delivery_mode``,
``priority``, ``expiration``, ``x-death``...), with two caveats: ``expiration`` is the
message's original TTL (AMQP does not tell a consumer what remains of it), so the clock
restarts at the destination; and a message without a ``message_id`` gets a random one, which
the client library (aiormq) uses to match a returned message to its publish.

Publishes are mandatory. A message the destination refuses (a nack, e.g. a full queue with
``x-overflow=reject-publish``) or returns (nothing bound for its routing key) is put back at
the source (nack with requeue) and counted as failed; the shovel then stops taking messages,
settles those in flight and exits with status 1, leaving the rest in the source queue. (A
return is matched by ``message_id``: should two messages in flight share one and only one of
them be unroutable, the wrong one could be taken for returned.)

``--drain`` stops once the source queue is empty (its passive declare counts no ready
messages and none is in flight); without it the shovel runs until SIGINT or SIGTERM. Either
way it stops cleanly: it cancels its consumer, waits for the outstanding confirms, acks or
requeues accordingly and prints a summary (moved, failed, left in the source queue).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
import time
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands

DEFAULT_PREFETCH = 500
DRAIN_POLL = 0.2  # seconds between looks at an idle source queue under --drain
RATE_INTERVAL = 1.0  # seconds between rate lines
CONNECT_TIMEOUT = 30.0  # seconds


class ShovelError(Exception):
    """A connection or a queue the shovel needs is unusable; the message says which."""


@dataclasses.dataclass
class Summary:
    """What one run did; ``left`` is None when the source queue could not be counted."""

    moved: int = 0
    failed: int = 0
    left: int | None = None

    def __str__(self) -> str:
        left = "unknown" if self.left is None else self.left
        return f"moved {self.moved}, failed {self.failed}, left in the source queue {left}"


def redact(uri: str) -> str:
    """The URI without its password, for messages."""
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:
        return "<invalid URI>"
    if password is None:
        return uri
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


class Shovel:
    """One run from ``src_queue`` at ``src_uri`` to ``dest_queue`` or ``dest_exchange``.

    With an exchange and no ``dest_key`` each message keeps the routing key it was published
    with at the source.
    """

    def __init__(self, src_uri: str, src_queue: str, dest_uri: str, *,
                 dest_queue: str | None = None, dest_exchange: str | None = None,
                 dest_key: str | None = None, drain: bool = False,
                 prefetch: int = DEFAULT_PREFETCH, rate_to: TextIO | None = None) -> None:
        if (dest_queue is None) == (dest_exchange is None):
            raise ValueError("give exactly one of dest_queue and dest_exchange")
        self.src_uri, self.src_queue, self.dest_uri = src_uri, src_queue, dest_uri
        self.dest_queue, self.dest_exchange, self.dest_key = dest_queue, dest_exchange, dest_key
        self.drain, self.prefetch, self.rate_to = drain, prefetch, rate_to
        self.summary = Summary()
        self.received = 0  # deliveries taken, including those handed back
        self._outstanding: set[int] = set()  # delivery tags neither acked nor handed back
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop = asyncio.Event()
        self._stopping = False
        self._cancelled: asyncio.Future[None] | None = None
        self._src_channel: aiormq.abc.AbstractChannel | None = None
        self._dest_channel: aiormq.abc.AbstractChannel | None = None
        self._consumer_tag: str | None = None
        self._started = 0.0  # when consuming began (time.monotonic)
        self.stopped_by_request = False  # stop() was called (not a refusal or a failure)
        self._rate_mark = (0.0, 0)  # (when, moved) at the last rate line

    def stop(self) -> None:
        """Ask the run to stop cleanly (signal handlers call this)."""
        self.stopped_by_request = True
        self._stop.set()

    @property
    def consuming(self) -> bool:
        """Whether the run has connected both sides and consumes the source queue."""
        return self._started > 0

    async def run(self) -> Summary:
        """Move messages until drained or stopped; ShovelError when a side is unusable."""
        src = await _connect(self.src_uri, "source")
        try:
            dest = await _connect(self.dest_uri, "destination")
            try:
                await self._run(src, dest)
            finally:
                with contextlib.suppress(Exception):
                    await dest.close()
        finally:
            with contextlib.suppress(Exception):
                await src.close()
        return self.summary

    async def _run(self, src: aiormq.abc.AbstractConnection,
                   dest: aiormq.abc.AbstractConnection) -> None:
        self._src_channel = src_channel = await src.channel(publisher_confirms=False)
        self._dest_channel = dest_channel = await dest.channel(publisher_confirms=True)
        await self._check_queues(src_channel, dest_channel)
        await src_channel.basic_qos(prefetch_count=self.prefetch)
        self._cancelled = asyncio.get_running_loop().create_future()
        ok = await src_channel.basic_consume(self.src_queue, self._on_message)
        self._consumer_tag = ok.consumer_tag
        self._started = time.monotonic()
        self._rate_mark = (self._started, 0)
        watchers = [asyncio.ensure_future(self._stop.wait())]
        if self.rate_to is not None:
            watchers.append(asyncio.ensure_future(self._rate_display()))
        if self.drain:
            watchers.append(asyncio.ensure_future(self._drained()))
        src_closed, dest_closed = src.closing, dest.closing

        def check_connections() -> None:
            lost = (_lost(src_closed, "source", self.src_uri)
                    or _lost(dest_closed, "destination", self.dest_uri))
            if lost is not None:  # what was not acked goes back to the source queue
                self.summary.left = None
                self.summary.failed += len(self._outstanding)
                self._outstanding.clear()
                raise lost

        try:
            await asyncio.wait([*watchers, src_closed, dest_closed],
                               return_when=asyncio.FIRST_COMPLETED)
            check_connections()
            for watcher in watchers:
                if watcher.done() and watcher.exception() is not None:
                    raise ShovelError(f"source queue {self.src_queue!r}: "
                                      f"{watcher.exception()}")
            await self._cancel_consumer()
            # every message taken is acked or handed back, unless a connection drops
            watchers.append(asyncio.ensure_future(self._idle.wait()))
            await asyncio.wait([watchers[-1], src_closed, dest_closed],
                               return_when=asyncio.FIRST_COMPLETED)
            check_connections()
            try:
                declared = await src_channel.queue_declare(self.src_queue, passive=True)
                self.summary.left = declared.message_count
            except aiormq.exceptions.ChannelNotFoundEntity:
                self.summary.left = 0  # an auto-delete queue went with the shovel's consumer
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as error:
            await asyncio.sleep(0)  # let the closing futures settle
            check_connections()
            raise ShovelError(f"connection error: {error}") from None
        finally:
            for watcher in (*watchers, src_closed, dest_closed):
                watcher.cancel()
            if self.rate_to is not None:
                self._print_rate(final=True)

    async def _check_queues(self, src_channel: aiormq.abc.AbstractChannel,
                            dest_channel: aiormq.abc.AbstractChannel) -> None:
        try:
            declared = await src_channel.queue_declare(self.src_queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise ShovelError(f"source queue {self.src_queue!r} not found at "
                              f"{redact(self.src_uri)}") from None
        self.summary.left = declared.message_count
        try:
            if self.dest_queue is not None:
                await dest_channel.queue_declare(self.dest_queue, passive=True)
            elif self.dest_exchange:  # "" is the default exchange, always there
                await dest_channel.exchange_declare(self.dest_exchange, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            what = (f"queue {self.dest_queue!r}" if self.dest_queue is not None
                    else f"exchange {self.dest_exchange!r}")
            raise ShovelError(f"destination {what} not found at "
                              f"{redact(self.dest_uri)}") from None

    async def _on_message(self, message: DeliveredMessage) -> None:
        """Publish one delivery; ack it at the source once confirmed, else hand it back."""
        tag = message.delivery_tag
        assert tag is not None and self._src_channel is not None
        assert self._dest_channel is not None
        self.received += 1
        self._outstanding.add(tag)
        self._idle.clear()
        try:
            if self._stopping:  # delivered while the consumer was being cancelled
                await self._hand_back(tag)
                return
            if self.dest_queue is not None:
                exchange, key = "", self.dest_queue
            else:
                assert self.dest_exchange is not None
                exchange = self.dest_exchange
                key = self.dest_key if self.dest_key is not None else message.routing_key or ""
            try:
                confirm = await self._dest_channel.basic_publish(
                    message.body, exchange=exchange, routing_key=key,
                    properties=message.header.properties, mandatory=True)
            except aiormq.exceptions.DeliveryError:  # nacked or returned
                confirm = None
            except Exception:  # the destination went away; the watchers report it
                confirm = None
            if isinstance(confirm, commands.Basic.Ack):
                await self._src_channel.basic_ack(tag)
                self._settle(tag, moved=True)
                return
            self._begin_stop()
            await self._hand_back(tag, failed=True)
        except (Exception, asyncio.CancelledError) as error:
            # the source went away (closing its channel cancels this task): the message is
            # back in its queue
            if tag in self._outstanding:
                self._settle(tag, failed=True)
            self._begin_stop()
            if isinstance(error, asyncio.CancelledError):
                raise

    def _settle(self, tag: int, moved: bool = False, failed: bool = False) -> None:
        """Count a delivery that was acked, or handed back (refused when ``failed``)."""
        self._outstanding.discard(tag)
        self.summary.moved += moved
        self.summary.failed += failed
        if not self._outstanding:
            self._idle.set()

    async def _hand_back(self, tag: int, failed: bool = False) -> None:
        """Requeue a delivery at the source once no more deliveries can come."""
        assert self._cancelled is not None and self._src_channel is not None
        await asyncio.shield(self._cancelled)
        with contextlib.suppress(Exception):
            await self._src_channel.basic_nack(tag, requeue=True)
        self._settle(tag, failed=failed)

    def _begin_stop(self) -> None:
        self._stop.set()
        self._stopping = True

    async def _cancel_consumer(self) -> None:
        """Cancel the consumer once; deliveries after this are handed back."""
        self._stopping = True
        assert self._cancelled is not None and self._src_channel is not None
        if self._cancelled.done():
            return
        try:
            if self._consumer_tag is not None:
                await self._src_channel.basic_cancel(self._consumer_tag)
        finally:
            if not self._cancelled.done():
                self._cancelled.set_result(None)

    async def _drained(self) -> None:
        """Return once the source queue has no ready message and none is in flight."""
        assert self._src_channel is not None
        while True:
            await asyncio.sleep(DRAIN_POLL)
            if self._outstanding:
                continue
            before = self.received
            # shielded: aiormq closes a channel whose RPC is cancelled (as at a stop)
            declared = await asyncio.shield(
                self._src_channel.queue_declare(self.src_queue, passive=True))
            await asyncio.sleep(0)  # deliveries sent before the declare-ok start first
            if declared.message_count == 0 and not self._outstanding and before == self.received:
                return

    async def _rate_display(self) -> None:
        while True:
            await asyncio.sleep(RATE_INTERVAL)
            self._print_rate()

    def _print_rate(self, final: bool = False) -> None:
        """A rate line on ``rate_to`` (redrawn in place on a terminal); the last one gives
        the average over the run."""
        assert self.rate_to is not None
        now, moved = time.monotonic(), self.summary.moved
        then, moved_then = (self._started, 0) if final else self._rate_mark
        self._rate_mark = (now, moved)
        rate = (moved - moved_then) / (now - then) if now > then else 0.0
        line = (f"shovel: {moved} moved, {self.summary.failed} failed, "
                f"{len(self._outstanding)} in flight, {rate:.0f} msg/s"
                + (f" on average over {now - then:.1f} s" if final else ""))
        if self.rate_to.isatty():
            self.rate_to.write(f"\r\x1b[K{line}" + ("\n" if final else ""))
        else:
            self.rate_to.write(line + "\n")
        self.rate_to.flush()


async def _connect(uri: str, side: str) -> aiormq.abc.AbstractConnection:
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            return await aiormq.connect(uri)
    except (TimeoutError, OSError, aiormq.exceptions.AMQPError, ValueError) as error:
        reason = str(error) or type(error).__name__
        raise ShovelError(f"cannot connect to the {side} {redact(uri)}: {reason}") from None


def _lost(closed: asyncio.Future, side: str, uri: str) -> ShovelError | None:
    if not closed.done():
        return None
    error = None if closed.cancelled() else closed.exception()
    reason = f": {error}" if error else ""
    return ShovelError(f"lost the connection to the {side} {redact(uri)}{reason}")


def command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``leveret shovel``; 0 when everything taken moved, 1 otherwise, 2 on bad usage."""
    if args.dest_key is not None and args.dest_exchange is None:
        parser.error("--dest-key needs --dest-exchange")
    if args.prefetch < 1:
        parser.error("--prefetch must be at least 1")
    for option, uri in (("--src-uri", args.src_uri), ("--dest-uri", args.dest_uri)):
        try:
            parts = urlsplit(uri)
            usable = parts.scheme in ("amqp", "amqps") and bool(parts.hostname)
            _ = parts.port  # ValueError when it is not a number
        except ValueError:
            usable = False
        if not usable:
            parser.error(f"{option} must be an amqp:// or amqps:// URI with a host")
    shovel = Shovel(args.src_uri, args.src_queue, args.dest_uri, dest_queue=args.dest_queue,
                    dest_exchange=args.dest_exchange, dest_key=args.dest_key,
                    drain=args.drain, prefetch=args.prefetch,
                    rate_to=None if args.quiet else sys.stderr)
    try:
        summary = asyncio.run(_run_with_signals(shovel))
    except ShovelError as error:
        print(f"leveret shovel: {error}", file=sys.stderr)
        if shovel.received:
            print(f"leveret shovel: {shovel.summary}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the signal handlers were in place
        return 130
    print(f"leveret shovel: {summary}")
    return 1 if summary.failed else 0


async def _run_with_signals(shovel: Shovel) -> Summary:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, shovel.stop)
    return await shovel.run()
