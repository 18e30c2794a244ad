"""One client connection: handshake, frame routing, heartbeats, batched writes, close.

The Connection class also handles the AMQP ``connection`` class and channel.open/close,
since those drive its own state. Everything else is routed to a ``Channel``.
Writes go to ``self.out`` and are flushed once per event-loop iteration.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import time
from typing import TYPE_CHECKING, Any

from pamqp import commands

from broker import __version__, auth
from broker.channel import Channel
from protocol import constants as c
from protocol import errors
from protocol.framing import HEARTBEAT, FrameReader, erlang_binary, method_frame, unfuse
from protocol.methods import Method, decode_method, encode_method, ids, make, method_index

if TYPE_CHECKING:
    from broker.queue import Queue
    from broker.server import Broker
    from broker.vhost import VirtualHost

log = logging.getLogger(__name__)

_CHANNEL_OPEN = commands.Channel.Open.index
_CHANNEL_CLOSE = commands.Channel.Close.index
_CHANNEL_CLOSE_OK = commands.Channel.CloseOk.index
_CONNECTION_CLOSE = commands.Connection.Close.index
_CONNECTION_CLOSE_OK = commands.Connection.CloseOk.index

# Frame parts (about 6 per delivery) one connection may gather in one loop iteration.
OUT_BATCH_PARTS = 6 * 1024
OUT_BATCH_BYTES = 1024 * 1024  # and message bodies

# States of the connection's life.
AWAIT_HEADER, AWAIT_START_OK, AWAIT_TUNE_OK, AWAIT_OPEN, OPEN, CLOSING, CLOSED = range(7)

CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "consumer_priorities": True,
    "direct_reply_to": True,
}


def server_properties(cluster_name: str) -> dict[str, Any]:
    return {
        "product": "Leveret",
        "version": __version__,
        "platform": f"Python {platform.python_version()}",
        "copyright": "Copyright (c) the Leveret authors",
        "information": "Licensed under the MIT license. A pure-Python AMQP 0-9-1 broker.",
        "cluster_name": cluster_name,
        "capabilities": dict(CAPABILITIES),
    }


class Connection(asyncio.Protocol):
    """The server side of one AMQP connection."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.config = broker.config
        self.loop = broker.loop
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.state = AWAIT_HEADER
        self.reader = FrameReader(frame_max=self.config.frame_max, fuse_publish=True)
        self._header_buffer = b""
        self.out: list[bytes] = []
        self._out_full = False
        self.out_bytes = 0  # message bodies gathered in self.out this iteration
        self._flush_scheduled = False
        self._confirm_channels: dict[Channel, None] = {}
        self.writable = True
        self.channels: dict[int, Channel] = {}
        self.vhost: VirtualHost | None = None
        self.username = ""
        self.client_properties: dict[str, Any] = {}
        self.frame_max = self.config.frame_max
        self.channel_max = self.config.channel_max
        self.heartbeat = 0
        self.last_received = time.monotonic()
        self.last_sent = self.last_received
        self._timer: asyncio.TimerHandle | None = None
        self.blocked_reason: str | None = None
        self.has_published = False
        self._throttled_by: set[Queue] = set()
        self._reading_paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.broker.connections.add(self)
        self._timer = self.loop.call_later(self.config.handshake_timeout, self._handshake_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.broker.connections.discard(self)
        for queue in self._throttled_by:
            queue.throttled.discard(self)
        self._throttled_by.clear()
        self._release_all()
        if exc is not None:
            log.info("connection %s lost: %s", self.peer, exc)

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        for channel in self.channels.values():
            channel.wake_queues()

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        if self.state == AWAIT_HEADER:
            data = self._read_protocol_header(data)
            if not data:
                return
        channels = self.channels
        try:
            for frame_type, number, payload in self.reader.feed(data):
                # Fast path: a whole publish, a content frame, or a method not of the channel
                # class, on an open channel of an open connection goes straight to its channel.
                channel = channels.get(number)
                if (channel is not None and self.state == OPEN and not channel.closing
                        and channel.inbox is None):
                    if frame_type == c.FRAME_PUBLISH:
                        channel.handle_publish(*payload)
                        continue
                    if ((frame_type != c.FRAME_METHOD or payload[1] != c.CLASS_CHANNEL)
                            and frame_type != c.FRAME_HEARTBEAT):
                        channel.handle_frame(frame_type, payload)
                        continue
                if frame_type == c.FRAME_PUBLISH:
                    for one_type, one_payload in unfuse(payload):  # type: ignore[arg-type]
                        self._other_frame(one_type, number, one_payload)
                else:
                    self._other_frame(frame_type, number, payload)
        except errors.AMQPError as error:
            self.close_with_error(error)
        except Exception as error:  # a bug must cost this connection only
            log.exception("internal error on connection %s", self.peer)
            self.close_with_error(errors.InternalError(f"{type(error).__name__}: {error}"))

    def replay_frame(self, number: int, frame_type: int, payload: object) -> None:
        """A frame a parked channel held back, processed now as if it had just arrived."""
        try:
            if frame_type == c.FRAME_PUBLISH:
                channel = self.channels.get(number)
                if channel is not None and self.state == OPEN and not channel.closing:
                    channel.handle_publish(*payload)  # type: ignore[misc]
                    return
                for one_type, one_payload in unfuse(payload):  # type: ignore[arg-type]
                    self._other_frame(one_type, number, one_payload)
            else:
                self._other_frame(frame_type, number, payload)  # type: ignore[arg-type]
        except errors.AMQPError as error:
            self.close_with_error(error)
        except Exception as error:  # a bug must cost this connection only
            log.exception("internal error on connection %s", self.peer)
            self.close_with_error(errors.InternalError(f"{type(error).__name__}: {error}"))

    def _other_frame(self, frame_type: int, number: int, payload: bytes) -> None:
        """A frame off the fast path: while closing, on channel 0, or channel open/close."""
        if self.state >= CLOSING:
            self._frame_while_closing(frame_type, number, payload)
        elif number == 0:
            self._connection_frame(frame_type, payload)
        else:
            self._channel_frame(frame_type, number, payload)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    # -- writing ---------------------------------------------------------------------------
    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.broker.dispatcher.want_flush(self)

    def can_write(self) -> bool:
        """Room for more deliveries: the transport is not paused and this loop iteration's
        output is under OUT_BATCH_PARTS and OUT_BATCH_BYTES (so one busy publisher cannot
        balloon memory)."""
        if not self.writable:
            return False
        if len(self.out) < OUT_BATCH_PARTS and self.out_bytes < OUT_BATCH_BYTES:
            return True
        self._out_full = True
        return False

    def flush(self) -> None:
        """Write this iteration's output: pending confirms first, then one socket write."""
        self._flush_scheduled = False
        if self._confirm_channels:
            channels, self._confirm_channels = self._confirm_channels, {}
            for channel in channels:
                if not channel.released:
                    channel.pending_confirms(self.out)
        self.out_bytes = 0
        if self.out and self.transport is not None and not self.transport.is_closing():
            data = b"".join(self.out)
            self.out.clear()
            self.transport.write(data)
            self.last_sent = time.monotonic()
        else:
            self.out.clear()
        if self._out_full:  # deliveries held back for this iteration may go now
            self._out_full = False
            if self.writable:
                for channel in self.channels.values():
                    channel.wake_queues()

    def send_method(self, channel: int, method: Method) -> None:
        self.out.append(method_frame(channel, encode_method(method)))
        self.schedule_flush()

    def confirms_ready(self, channel: Channel) -> None:
        self._confirm_channels[channel] = None
        self.schedule_flush()

    def client_capability(self, name: str) -> bool:
        caps = self.client_properties.get("capabilities")
        return isinstance(caps, dict) and bool(caps.get(name))

    # -- handshake -------------------------------------------------------------------------
    def _read_protocol_header(self, data: bytes) -> bytes:
        buffered = self._header_buffer + data
        if len(buffered) < 8 and c.PROTOCOL_HEADER.startswith(buffered):
            self._header_buffer = buffered
            return b""
        header, rest = buffered[:8], buffered[8:]
        self._header_buffer = b""
        if header != c.PROTOCOL_HEADER:
            log.info("connection %s sent a bad protocol header %r", self.peer, header)
            self._write_now(c.PROTOCOL_HEADER)
            self._close_transport()
            return b""
        self.state = AWAIT_START_OK
        self.send_method(
            0,
            commands.Connection.Start(
                version_major=0,
                version_minor=9,
                server_properties=server_properties(self.config.cluster_name),
                mechanisms=" ".join(auth.MECHANISMS),
                locales="en_US",
            ),
        )
        return rest

    def _connection_frame(self, frame_type: int, payload: bytes) -> None:
        if frame_type == c.FRAME_HEARTBEAT:
            return
        if frame_type != c.FRAME_METHOD:
            raise errors.UnexpectedFrame("expected method frame, got non method frame instead")
        method = decode_method(payload)
        index = method.index
        state = self.state
        if index == _CONNECTION_CLOSE:
            self._client_close()
        elif index == _CONNECTION_CLOSE_OK:
            self._close_transport()
        elif state == AWAIT_START_OK and isinstance(method, commands.Connection.StartOk):
            self._start_ok(method)
        elif state == AWAIT_TUNE_OK and isinstance(method, commands.Connection.TuneOk):
            self._tune_ok(method)
        elif state == AWAIT_OPEN and isinstance(method, commands.Connection.Open):
            self._open(method)
        elif state == OPEN:
            raise errors.ChannelErrorHard(
                "unexpected method in connection state running", *ids(method)
            )
        else:
            raise errors.CommandInvalid(f"unexpected method {method.name} in this state")

    def _start_ok(self, method: commands.Connection.StartOk) -> None:
        self.client_properties = method.client_properties or {}
        mechanism = method.mechanism
        if mechanism not in auth.MECHANISMS:
            raise errors.CommandInvalid(f"unknown authentication mechanism '{mechanism}'")
        credentials = auth.parse_response(mechanism, method.response)
        if credentials is None or not auth.check(self.config.users, *credentials):
            user = credentials[0] if credentials else "?"
            log.warning(
                "connection %s: login refused for user '%s' (%s)", self.peer, user, mechanism
            )
            if self.client_capability("authentication_failure_close"):
                raise errors.ConnectionAccessRefused(
                    f"Login was refused using authentication mechanism {mechanism}. "
                    "For details see the broker logfile."
                )
            self._refuse_silently("login refused")
            return
        self.username = credentials[0]
        self.state = AWAIT_TUNE_OK
        self.send_method(
            0,
            commands.Connection.Tune(
                channel_max=self.config.channel_max,
                frame_max=self.config.frame_max,
                heartbeat=self.config.heartbeat,
            ),
        )

    def _tune_ok(self, method: commands.Connection.TuneOk) -> None:
        frame_max, channel_max = method.frame_max, method.channel_max
        problem = None
        if not c.FRAME_MIN_SIZE <= frame_max <= self.config.frame_max:
            problem = f"frame_max={frame_max} outside {c.FRAME_MIN_SIZE}..{self.config.frame_max}"
        elif not 1 <= channel_max <= self.config.channel_max:
            problem = f"channel_max={channel_max} outside 1..{self.config.channel_max}"
        if problem:
            # RabbitMQ answers a bad tune-ok with no frame at all and drops the socket later.
            self._refuse_silently(problem)
            return
        self.frame_max = frame_max
        self.reader.frame_max = frame_max
        self.channel_max = channel_max
        self.heartbeat = method.heartbeat
        self.state = AWAIT_OPEN

    def _open(self, method: commands.Connection.Open) -> None:
        vhost = self.broker.vhosts.get(method.virtual_host)
        if vhost is None:
            raise errors.NotAllowed(f"vhost {method.virtual_host} not found", *ids(method))
        self.vhost = vhost
        self.state = OPEN
        self.send_method(0, make(commands.Connection.OpenOk, known_hosts=""))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.heartbeat:
            self._timer = self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick)
        if self.broker.blocked_reason is not None:
            self.block(self.broker.blocked_reason)
        log.debug("connection %s opened vhost %s as %s", self.peer, vhost.name, self.username)

    def _refuse_silently(self, reason: str) -> None:
        """Fail the handshake as RabbitMQ does: no frame, the socket closed after a pause."""
        log.warning("connection %s refused during handshake: %s", self.peer, reason)
        self.state = CLOSING
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.config.close_timeout, self._abort)

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.state < OPEN:
            log.info("connection %s: handshake timed out", self.peer)
            self._close_transport()

    # -- heartbeats ------------------------------------------------------------------------
    def _heartbeat_tick(self) -> None:
        self._timer = None
        if self.state >= CLOSED or self.transport is None:
            return
        now = time.monotonic()
        if now - self.last_received > 2 * self.heartbeat:
            log.warning(
                "connection %s: missed heartbeats from client, timeout: %ds",
                self.peer,
                self.heartbeat,
            )
            self.transport.abort()
            return
        if now - self.last_sent >= self.heartbeat / 2:
            self.out.append(HEARTBEAT)
            self.schedule_flush()
        self._timer = self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick)

    # -- channels --------------------------------------------------------------------------
    def _channel_frame(self, frame_type: int, number: int, payload: bytes) -> None:
        if frame_type == c.FRAME_HEARTBEAT:
            raise errors.UnexpectedFrame(f"type 8, all octets = {erlang_binary(payload)}")
        if self.state != OPEN:
            raise errors.ChannelErrorHard(f"unexpected frame on channel {number} before open")
        channel = self.channels.get(number)
        if channel is not None and channel.inbox is not None:  # parked: in order, later
            channel.inbox.append((frame_type, payload))
            return
        if channel is None:
            if frame_type == c.FRAME_METHOD and method_index(payload) == _CHANNEL_OPEN:
                if number > self.channel_max:
                    raise errors.ChannelErrorHard(f"channel number {number} out of range")
                self.channels[number] = Channel(self, number)
                self.send_method(number, make(commands.Channel.OpenOk, channel_id=""))
                return
            index = method_index(payload) if frame_type == c.FRAME_METHOD else 0
            raise errors.ChannelErrorHard("expected 'channel.open'", index >> 16, index & 0xFFFF)
        if frame_type == c.FRAME_METHOD:
            index = method_index(payload)
            if channel.closing:  # we sent channel.close: only close/close-ok count now
                if index in (_CHANNEL_CLOSE_OK, _CHANNEL_CLOSE):
                    if index == _CHANNEL_CLOSE:
                        self.send_method(number, commands.Channel.CloseOk())
                    del self.channels[number]
                return
            if index == _CHANNEL_CLOSE:
                self._confirm_channels.pop(channel, None)
                channel.pending_confirms(self.out)  # what is answerable goes before close-ok
                channel.release()
                del self.channels[number]
                self.send_method(number, commands.Channel.CloseOk())
                return
            if index == _CHANNEL_OPEN:
                raise errors.ChannelErrorHard("second 'channel.open' seen", 20, 10)
            if index == _CHANNEL_CLOSE_OK:
                return  # stray close-ok: nothing to finish
        elif channel.closing:
            return
        channel.handle_frame(frame_type, payload)

    # -- closing ---------------------------------------------------------------------------
    def _frame_while_closing(self, frame_type: int, channel: int, payload: bytes) -> None:
        if channel != 0 or frame_type != c.FRAME_METHOD:
            return
        index = method_index(payload)
        if index == _CONNECTION_CLOSE_OK:
            self._close_transport()
        elif index == _CONNECTION_CLOSE:
            self.out.append(method_frame(0, encode_method(commands.Connection.CloseOk())))
            self._close_transport()

    def _client_close(self) -> None:
        self._release_all()
        self.state = CLOSING
        self.send_method(0, commands.Connection.CloseOk())
        self._close_transport()

    def close_with_error(self, error: errors.AMQPError) -> None:
        """Send connection.close for ``error`` and wait (bounded) for close-ok."""
        if self.state >= CLOSING:
            return
        log.info("closing connection %s: %s", self.peer, error.reply_text)
        self.close(error.reply_code, error.reply_text, error.class_id, error.method_id)

    def close(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Start a server-initiated close: release channels, send close, await close-ok."""
        if self.state >= CLOSING:
            return
        self._release_all()
        self.state = CLOSING
        self.out.clear()
        self._confirm_channels.clear()
        self.send_method(
            0,
            make(
                commands.Connection.Close,
                reply_code=code,
                reply_text=text,
                class_id=class_id,
                method_id=method_id,
            ),
        )
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.config.close_timeout, self._abort)

    def _abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abort()

    def _write_now(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close_transport(self) -> None:
        """Flush what is queued, then close the socket."""
        self.flush()
        self.state = max(self.state, CLOSING)
        if self.transport is not None:
            self.transport.close()

    def _release_all(self) -> None:
        channels = list(self.channels.values())
        self.channels.clear()
        for channel in channels:
            channel.release()
        if self.vhost is not None:
            self.vhost.connection_closed(self)

    # -- flow control ----------------------------------------------------------------------
    def throttle(self, queue: Queue) -> None:
        """Stop reading from this publisher until ``queue`` has drained (credit-flow-like)."""
        if queue not in self._throttled_by:
            self._throttled_by.add(queue)
            queue.throttled.add(self)
            self._update_reading()

    def unthrottle(self, queue: Queue) -> None:
        self._throttled_by.discard(queue)
        self._update_reading()

    def block(self, reason: str) -> None:
        """connection.blocked: tell the client (if it understands) and stop reading publishes."""
        if self.blocked_reason is not None:
            return
        self.blocked_reason = reason
        if self.client_capability("connection.blocked"):
            self.send_method(0, make(commands.Connection.Blocked, reason=reason))
        self._update_reading()

    def unblock(self) -> None:
        if self.blocked_reason is None:
            return
        self.blocked_reason = None
        if self.client_capability("connection.blocked"):
            self.send_method(0, commands.Connection.Unblocked())
        self._update_reading()

    def started_publishing(self) -> None:
        """The first publish: from now on a resource alarm stops reading from this client."""
        self.has_published = True
        self._update_reading()

    def _update_reading(self) -> None:
        """Read from the socket unless throttled or blocked by an alarm (publishers only)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        paused = bool(self._throttled_by) or (
            self.blocked_reason is not None and self.has_published
        )
        if paused != self._reading_paused:
            self._reading_paused = paused
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()
