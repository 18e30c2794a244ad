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

from leveret.broker import __version__, auth, tls
from leveret.broker.access import Authorizer
from leveret.broker.channel import Channel
from leveret.broker.stats import RateWindow
from leveret.protocol import constants as c
from leveret.protocol import errors
from leveret.protocol.framing import (
    HEARTBEAT,
    FrameReader,
    erlang_binary,
    gather,
    method_frame,
    octets,
    unfuse,
)
from leveret.protocol.methods import Method, decode_method, encode_method, ids, make, method_index

if TYPE_CHECKING:
    from leveret.broker.server import Broker
    from leveret.broker.vhost import VirtualHost

log = logging.getLogger(__name__)

_CHANNEL_OPEN = commands.Channel.Open.index
_CHANNEL_CLOSE = commands.Channel.Close.index
_CHANNEL_CLOSE_OK = commands.Channel.CloseOk.index
_CONNECTION_CLOSE = commands.Connection.Close.index
_CONNECTION_CLOSE_OK = commands.Connection.CloseOk.index

# Frame parts (about 6 per delivery) one connection may gather in one loop iteration.
OUT_BATCH_PARTS = 6 * 1024
OUT_BATCH_BYTES = 1024 * 1024  # and message bodies
# Output whose bodies pass GATHER_MIN bytes (and average GATHER_AVERAGE per part) goes out
# with one gathered write (writev) of its parts instead of being joined into one copy first;
# the join stays for small messages, where it is the cheaper of the two.
GATHER_MIN = 64 * 1024
GATHER_AVERAGE = 1024

HOLD_HARD_LIMIT = 64 * 1024 * 1024  # held frames past which reading stops in any case
_SETTLEMENTS = frozenset((c.BASIC_ACK, c.BASIC_NACK, c.BASIC_REJECT))
_ACK_ID = c.BASIC_ACK.to_bytes(4, "big")
_ACK_SIZE = 13  # class, method, delivery tag, bits (multiple=false when 0)

# States of the connection's life.
AWAIT_HEADER, AWAIT_START_OK, AWAIT_TUNE_OK, AWAIT_OPEN, OPEN, CLOSING, CLOSED = range(7)
_STATE_NAMES = {AWAIT_START_OK: "starting", AWAIT_TUNE_OK: "tuning", AWAIT_OPEN: "opening"}

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


# Log lines about failed handshakes (bad headers, refused logins, frame errors, timeouts)
# and about channel errors are limited per peer address: at most PEER_LOG_LINES per
# PEER_LOG_WINDOW seconds, plus one saying the rest is suppressed, so that one host cannot
# flood the log.
PEER_LOG_LINES = 5
PEER_LOG_WINDOW = 10.0
_PEER_LOG_MAX = 4096  # addresses remembered
_peer_log: dict[str, list[float]] = {}  # address -> [window start, lines in the window]


def _address(address: object) -> str:
    """host:port of a socket address, with IPv6 hosts in brackets."""
    if not isinstance(address, tuple):
        return str(address)
    host = str(address[0])
    return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"


def _text(value: object) -> object:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def log_about_peer(peer: str, level: int, message: str, *args: object,
                   logger: logging.Logger = log) -> None:
    """``logger.log(level, message, *args)`` unless ``peer``'s address has had its share."""
    address = peer.rpartition(":")[0] or peer
    now = time.monotonic()
    entry = _peer_log.get(address)
    if entry is None or now - entry[0] >= PEER_LOG_WINDOW:
        if len(_peer_log) >= _PEER_LOG_MAX:
            for old in [a for a, e in _peer_log.items() if now - e[0] >= PEER_LOG_WINDOW]:
                del _peer_log[old]
            if len(_peer_log) >= _PEER_LOG_MAX:
                _peer_log.clear()
        entry = _peer_log[address] = [now, 0]
    entry[1] += 1
    if entry[1] <= PEER_LOG_LINES:
        logger.log(level, message, *args)
    elif entry[1] == PEER_LOG_LINES + 1:
        logger.log(level, "further log lines about errors from %s suppressed for up to %gs",
                   address, PEER_LOG_WINDOW)


class Connection(asyncio.BufferedProtocol):
    """The server side of one AMQP connection. Reads go into the broker's receive buffer, or
    straight into the place of a large message body (``FrameReader.get_buffer``);
    ``data_received`` takes bytes too (tests, embedded use)."""

    def __init__(self, broker: Broker, tls: bool = False) -> None:
        self.broker = broker
        self.config = broker.config
        self.tls = tls
        # EXTERNAL (the client certificate's CN) is offered on TLS connections only.
        self.mechanisms = [m for m in self.config.auth_mechanisms if tls or m != "EXTERNAL"]
        self.loop = broker.loop
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.state = AWAIT_HEADER
        # (bodies are assembled in place once the client is logged in: see _open)
        self.reader = FrameReader(frame_max=self.config.frame_max, fuse_publish=True,
                                  scratch=broker.receive_buffer)
        self._header_buffer = b""
        self.out: list[bytes] = []
        self._out_full = False
        self.out_bytes = 0  # message bodies gathered in self.out this iteration
        # traffic, as RabbitMQ's connection stats name it
        self.recv_oct = self.recv_cnt = self.send_oct = self.send_cnt = 0
        self.rates = RateWindow()  # of recv_oct and send_oct, for the management API
        self.connected_at = time.time()
        self._flush_scheduled = False
        self._confirm_channels: dict[Channel, None] = {}
        self.writable = True
        self.channels: dict[int, Channel] = {}
        self.vhost: VirtualHost | None = None
        self.username = ""
        self.peer_host = ""
        self.local = "?"
        self.opened_at = 0.0
        self.close_reason = ""  # for the log line when the connection ends
        self.authz: Authorizer = None  # type: ignore[assignment]  # set by connection.open
        self.client_properties: dict[str, Any] = {}
        self.mechanism = ""  # the SASL mechanism the client logged in with
        self.frame_max = self.config.frame_max
        self.channel_max = self.config.channel_max
        self.heartbeat = 0
        self.last_received = time.monotonic()
        self.last_sent = self.last_received
        self._timer: asyncio.TimerHandle | None = None
        self.blocked_reason: str | None = None
        self.has_published = False
        self.reading_paused = False
        self.held_bytes = 0  # frames held by parked or throttled channels
        self._write_waiters: dict[Channel, None] = {}  # parked until the socket drains
        self._write_stall: asyncio.TimerHandle | None = None
        self._hard_limit_logged = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = _address(peer)
        self.peer_host = str(peer[0]) if isinstance(peer, tuple) else ""
        local = transport.get_extra_info("sockname")
        self.local = _address(local)
        limit = self.config.connection_max
        if limit is not None and len(self.broker.connections) >= limit:
            log_about_peer(self.peer, logging.WARNING, "connection %s refused: node connection "
                           "limit (%d) is reached", self.peer, limit)
            self.state = CLOSED
            transport.abort()
            return
        self.broker.connections.add(self)
        self.broker.statistics.connections_opened += 1
        self._timer = self.loop.call_later(self.config.handshake_timeout, self._handshake_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self in self.broker.connections:  # (one refused at accept never was)
            self.broker.connections.discard(self)
            self.broker.statistics.connections_closed += 1
        if self._write_stall is not None:
            self._write_stall.cancel()
            self._write_stall = None
        self._write_waiters.clear()
        self._release_all()
        if self.vhost is not None:  # a client that logged in: RabbitMQ's closing line
            reason = self.close_reason or (f"connection lost: {exc}" if exc is not None
                                           else "client dropped the socket")
            log.info("closed AMQP connection %s (user '%s', vhost '%s') after %.1fs: %s",
                     self.peer, self.username, self.vhost.name,
                     time.monotonic() - self.opened_at, reason)
        elif exc is not None:
            log.info("connection %s lost: %s", self.peer, exc)

    def pause_writing(self) -> None:
        """The socket's buffer is full: deliveries stop, channels park at their next frame,
        confirms wait; a client that reads nothing for ``write_timeout`` is dropped."""
        self.writable = False
        if self._write_stall is None and self.config.write_timeout:
            self._write_stall = self.loop.call_later(self.config.write_timeout,
                                                     self._write_stalled)

    def resume_writing(self) -> None:
        self.writable = True
        if self._write_stall is not None:
            self._write_stall.cancel()
            self._write_stall = None
        waiters, self._write_waiters = self._write_waiters, {}
        for channel in waiters:
            channel.on_writable()
        for channel in self.channels.values():
            channel.wake_queues()
        if self._confirm_channels:
            self.schedule_flush()

    def wait_writable(self, channel: Channel) -> None:
        self._write_waiters[channel] = None

    def _write_stalled(self) -> None:
        self._write_stall = None
        if self.transport is not None and not self.writable:
            log.warning("connection %s: the client read nothing for %ss with %d bytes owed; "
                        "closing it", self.peer, self.config.write_timeout,
                        self.transport.get_write_buffer_size())
            self.transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        data = self.reader.received(nbytes)
        if data:
            self.data_received(data)
        else:  # read into a body's place: nothing to parse yet
            self._count_read(nbytes)

    def _count_read(self, nbytes: int) -> None:
        self.last_received = time.monotonic()
        self.recv_oct += nbytes
        self.recv_cnt += 1

    def data_received(self, data: bytes) -> None:
        self._count_read(len(data))
        if self.state == AWAIT_HEADER:
            data = self._read_protocol_header(data)
            if not data:
                return
        channels = self.channels
        # Plain acks (one tag each, as most consumers send them) that follow each other on
        # one channel are settled together: ``acks`` holds their payloads until another
        # frame comes, or the read ends.
        acks: list[bytes] = []
        acks_on = -1
        try:
            for frame_type, number, payload in self.reader.feed(data):
                plain_ack = (frame_type == c.FRAME_METHOD and len(payload) == _ACK_SIZE
                             and payload.startswith(_ACK_ID) and not payload[12])
                if acks and (number != acks_on or not plain_ack):
                    taken, acks = acks, []
                    self._acks(acks_on, taken)
                # Fast path: a whole publish, a content frame, or a method not of the channel
                # class, on an open channel of an open connection goes straight to its channel.
                channel = channels.get(number)
                if (channel is not None and channel.inbox is None and self.writable
                        and self.out_bytes < OUT_BATCH_BYTES and self.state == OPEN
                        and not channel.closing):
                    if plain_ack:
                        acks.append(payload)
                        acks_on = number
                        continue
                    if frame_type == c.FRAME_PUBLISH:
                        channel.handle_publish(*payload)
                        continue
                    if ((frame_type != c.FRAME_METHOD or payload[1] != c.CLASS_CHANNEL)
                            and frame_type != c.FRAME_HEARTBEAT):
                        channel.handle_frame(frame_type, payload)
                        continue
                if acks:  # a frame off the fast path never overtakes the acks before it
                    taken, acks = acks, []
                    self._acks(acks_on, taken)
                self._frame(frame_type, number, payload)
            if acks:
                taken, acks = acks, []
                self._acks(acks_on, taken)
        except errors.AMQPError as error:
            self._acks_before_error(acks_on, acks)
            self.close_with_error(error)
        except Exception as error:
            self._acks_before_error(acks_on, acks)
            self._internal_error(error)
        if self.held_bytes and not self.reading_paused:
            self._update_reading()

    def _acks(self, number: int, payloads: list[bytes]) -> None:
        """Plain basic.acks in a row on channel ``number`` (taken on the fast path): settled
        together, up to the first the channel cannot settle that way (an unknown tag...);
        that one and the rest go one by one, with every check and error of that path."""
        taken = self.channels[number].ack_each(payloads)
        for payload in payloads[taken:]:
            self._frame(c.FRAME_METHOD, number, payload)

    def _acks_before_error(self, number: int, payloads: list[bytes]) -> None:
        """Acks that came before a frame that failed the connection count, as they would
        have one by one (their messages are not requeued by the close)."""
        if payloads:
            try:
                self._acks(number, payloads)
            except Exception:  # the connection closes anyway: the first error is its reason
                log.debug("acks before a connection error failed too", exc_info=True)

    def _frame(self, frame_type: int, number: int, payload: object) -> None:
        """A frame off the fast path (or held by its channel and processed now)."""
        channel = self.channels.get(number)
        if channel is not None and self.state == OPEN and not channel.closing:
            if (channel.inbox is None and not self.has_room()
                    and frame_type != c.FRAME_HEARTBEAT
                    and not (_is_settlement(frame_type, payload) and channel.settlements_pass())):
                channel.park_until_writable()  # its replies would only pile up
            if channel.inbox is not None and channel.must_hold(frame_type, payload):
                channel.hold(frame_type, payload)
                return
            if frame_type == c.FRAME_PUBLISH:
                channel.handle_publish(*payload)  # type: ignore[misc]
                return
            if ((frame_type != c.FRAME_METHOD or payload[1] != c.CLASS_CHANNEL)  # type: ignore[index]
                    and frame_type != c.FRAME_HEARTBEAT):
                channel.handle_frame(frame_type, payload)  # type: ignore[arg-type]
                return
        if frame_type == c.FRAME_PUBLISH:
            for one_type, one_payload in unfuse(payload):  # type: ignore[arg-type]
                self._other_frame(one_type, number, one_payload)
        else:
            self._other_frame(frame_type, number, payload)  # type: ignore[arg-type]

    def replay_frame(self, number: int, frame_type: int, payload: object) -> None:
        """A frame its channel held back, processed now as if it had just arrived."""
        try:
            self._frame(frame_type, number, payload)
        except errors.AMQPError as error:
            self.close_with_error(error)
        except Exception as error:
            self._internal_error(error)

    def _internal_error(self, error: Exception) -> None:
        """A bug must cost this connection only: log it and close with 541."""
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

    def has_room(self) -> bool:
        """Whether more output may be produced now: the socket keeps up and this
        iteration's message bodies are under OUT_BATCH_BYTES."""
        return self.writable and self.out_bytes < OUT_BATCH_BYTES

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
        """Write this iteration's output: pending confirms first, then one socket write.
        Confirms wait while the socket's buffer is full (they coalesce meanwhile)."""
        self._flush_scheduled = False
        if self._confirm_channels and self.writable:
            channels, self._confirm_channels = self._confirm_channels, {}
            for channel in channels:
                if not channel.released:
                    channel.pending_confirms(self.out)
        bodies, self.out_bytes = self.out_bytes, 0
        out = self.out
        if out and self.transport is not None and not self.transport.is_closing():
            if bodies >= GATHER_MIN and bodies >= len(out) * GATHER_AVERAGE:
                parts, size = gather(out)
                out.clear()
                self.transport.writelines(parts)
            else:
                data = b"".join(out)
                out.clear()
                self.transport.write(data)
                size = len(data)
            self.send_oct += size
            self.send_cnt += 1
            self.last_sent = time.monotonic()
        else:
            self.out.clear()
        if self._out_full:  # deliveries held back for this iteration may go now
            self._out_full = False
            if self.writable:
                for channel in self.channels.values():
                    channel.wake_queues()
        if self._write_waiters and self.writable:  # parked for this iteration's output only
            waiters, self._write_waiters = self._write_waiters, {}
            for channel in waiters:
                channel.on_writable()

    def send_method(self, channel: int, method: Method) -> None:
        self.out.append(method_frame(channel, encode_method(method)))
        self.schedule_flush()

    def confirms_ready(self, channel: Channel) -> None:
        self._confirm_channels[channel] = None
        self.schedule_flush()

    def log_rate_limited(self, logger: logging.Logger, level: int, message: str,
                         *args: object) -> None:
        """Log about this client, within its address's share (see ``log_about_peer``)."""
        log_about_peer(self.peer, level, message, *args, logger=logger)

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
            log_about_peer(self.peer, logging.INFO, "connection %s sent a bad protocol header %r",
                           self.peer, header)
            self._write_now(c.PROTOCOL_HEADER)
            self._close_transport()
            return b""
        self.state = AWAIT_START_OK
        # Until tune-ok a frame may hold at most 4096 octets (RabbitMQ's limit before
        # login): an unauthenticated peer cannot make the broker buffer or parse more.
        self.reader.frame_max = c.FRAME_MIN_SIZE
        self.send_method(
            0,
            commands.Connection.Start(
                version_major=0,
                version_minor=9,
                server_properties=server_properties(self.config.cluster_name),
                mechanisms=" ".join(self.mechanisms),
                locales="en_US",
            ),
        )
        return rest

    def _connection_frame(self, frame_type: int, payload: bytes) -> None:
        if frame_type == c.FRAME_HEARTBEAT:
            return
        if frame_type != c.FRAME_METHOD:
            raise errors.UnexpectedFrame("expected method frame, got non method frame instead")
        try:
            method = decode_method(payload)
        except errors.FrameError as error:  # on channel 0 RabbitMQ names the method
            index = method_index(payload)
            raise error.with_method(index >> 16, index & 0xFFFF) from None
        index = method.index
        state = self.state
        if index == _CONNECTION_CLOSE:
            self.close_reason = (f"client closed it: {method.reply_code} "  # type: ignore[attr-defined]
                                 f"{method.reply_text}")  # type: ignore[attr-defined]
            self._client_close()
        elif state == AWAIT_START_OK and isinstance(method, commands.Connection.StartOk):
            self._start_ok(method)
        elif state == AWAIT_TUNE_OK and isinstance(method, commands.Connection.TuneOk):
            self._tune_ok(method)
        elif state == AWAIT_OPEN and isinstance(method, commands.Connection.Open):
            self._open(method)
        elif state == OPEN and isinstance(method, commands.Connection.UpdateSecret):
            # RabbitMQ's internal (PLAIN) user backend takes any new secret as it comes.
            log.info("connection %s: user '%s' updated secret, reason: %s",
                     self.peer, self.username, method.reason)
            self.send_method(0, commands.Connection.UpdateSecretOk())
        else:  # before tune-ok this closes silently (close_with_error)
            state_name = _STATE_NAMES.get(state, "running")
            raise errors.ChannelErrorHard(
                f"unexpected method in connection state {state_name}", *ids(method)
            )

    def _start_ok(self, method: commands.Connection.StartOk) -> None:
        self.client_properties = method.client_properties or {}
        mechanism = method.mechanism
        self.mechanism = mechanism
        if mechanism not in self.mechanisms:
            known = "invalid" if mechanism in auth.MECHANISMS else "unknown"
            raise errors.CommandInvalid(f"{known} authentication mechanism '{mechanism}'")
        access = self.broker.admin.access
        if mechanism == "EXTERNAL":
            name = self._certificate_user()
            user, reason = (access.external(name) if name is not None
                            else (None, "no verified client certificate with a CN"))
        else:
            credentials = auth.parse_response(mechanism, method.response)
            if credentials is None:
                user, reason = None, "malformed credentials"
            else:
                user, reason = access.authenticate(*credentials, self.peer_host)
        if user is None:
            self._login_refused(mechanism, reason)
            return
        self.username = user.name
        self.state = AWAIT_TUNE_OK
        self.send_method(
            0,
            commands.Connection.Tune(
                channel_max=self.config.channel_max,
                frame_max=self.config.frame_max,
                heartbeat=self.config.heartbeat,
            ),
        )

    def _certificate_user(self) -> str | None:
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        if ssl_object is None:
            return None
        return tls.common_name(ssl_object.getpeercert())

    def _login_refused(self, mechanism: str, reason: str) -> None:
        """Log the failure with the peer's address and answer as RabbitMQ does; a peer
        that keeps failing waits longer for each answer (it costs the broker nothing)."""
        log_about_peer(self.peer, logging.WARNING, "connection %s: login refused (%s): %s",
                       self.peer, mechanism, reason)
        delay = self.broker.failed_logins.record(self.peer_host, time.monotonic())
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.state = CLOSING
        if self.client_capability("authentication_failure_close"):
            refused = errors.ConnectionAccessRefused(
                f"Login was refused using authentication mechanism {mechanism}. "
                "For details see the broker logfile.")
            self.loop.call_later(delay, self._refuse_login, refused)
            return
        self.loop.call_later(delay, self._refuse_silently, None)

    def _refuse_login(self, refused: errors.AMQPError) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.state = AWAIT_START_OK  # (CLOSING only kept frames out while we waited)
        self.close(refused.reply_code, refused.reply_text)

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
        limit = vhost.limits.get("max-connections")
        if limit is not None and sum(
                1 for conn in self.broker.connections if conn.vhost is vhost) >= limit:
            log_about_peer(self.peer, logging.WARNING, "connection %s refused: vhost '%s' "
                           "connection limit (%d) is reached", self.peer, vhost.name, limit)
            raise errors.NotAllowed(
                f"access to vhost '{vhost.name}' refused for user '{self.username}': "
                f"connection limit ({limit}) is reached", *ids(method))
        access = self.broker.admin.access
        if not access.may_open(self.username, vhost.name):
            raise errors.NotAllowed(
                f"access to vhost '{vhost.name}' refused for user '{self.username}'",
                *ids(method))
        self.vhost = vhost
        self.authz = Authorizer(access, self.username, vhost.name)
        self.state = OPEN
        # A body's buffer is allocated at its first frame (up to ASSEMBLE_MAX): never for
        # a client that has not logged in.
        self.reader.assemble_bodies = True
        self.send_method(0, make(commands.Connection.OpenOk, known_hosts=""))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.heartbeat:
            self._timer = self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick)
        if self.broker.blocked_reason is not None:
            self.block(self.broker.blocked_reason)
        self.opened_at = time.monotonic()
        props = self.client_properties
        client = " ".join(str(_text(props.get(key))) for key in ("product", "version")
                          if props.get(key))
        log.info("accepted AMQP connection %s -> %s: user '%s', vhost '%s', client %s",
                 self.peer, self.local, self.username, vhost.name, client or "unnamed")

    def _refuse_silently(self, reason: str | None) -> None:
        """Fail the handshake as RabbitMQ does: no frame, the socket closed after a pause;
        nothing more is read from the peer meanwhile. ``reason`` None: already logged."""
        if reason is not None:
            log_about_peer(self.peer, logging.WARNING,
                           "connection %s refused during handshake: %s", self.peer, reason)
        self.state = CLOSING
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.config.close_timeout, self._abort)

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.state < OPEN:
            log_about_peer(self.peer, logging.INFO, "connection %s: handshake timed out",
                           self.peer)
            self._close_transport()

    # -- heartbeats ------------------------------------------------------------------------
    def _heartbeat_tick(self) -> None:
        self._timer = None
        if self.state >= CLOSED or self.transport is None:
            return
        now = time.monotonic()
        if self.reading_paused:  # the broker is the one not reading: the monitor waits
            self.last_received = now
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
        if self.state != OPEN:  # before connection.open (before tune-ok: silently)
            raise errors.UnexpectedFrame(f"type {frame_type}, {octets(payload)}")
        channel = self.channels.get(number)
        if channel is None:
            # As RabbitMQ: any frame on a new channel number takes a channel, so the limit on
            # open channels (channel_max counts channels, whatever their numbers; one closed
            # by the server counts until its close-ok) comes first; then the frame must be a
            # channel.open.
            opened = len(self.channels)
            if opened >= self.channel_max:
                raise errors.NotAllowed(
                    f"number of channels opened ({opened}) has reached the negotiated "
                    f"channel_max ({self.channel_max})"
                )
            if frame_type != c.FRAME_METHOD:
                raise errors.UnexpectedFrame("expected method frame, got non method frame instead")
            method = decode_method(payload)  # its fields are checked (501) as any method's
            if method.index == _CHANNEL_OPEN:
                self.channels[number] = Channel(self, number)
                self.broker.statistics.channels_opened += 1
                self.send_method(number, make(commands.Channel.OpenOk, channel_id=""))
                return
            raise errors.ChannelErrorHard("expected 'channel.open'", *ids(method))
        if channel.closing:  # we sent channel.close: frames are checked, then dropped
            index = channel.discard_frame(frame_type, payload)
            if index == _CHANNEL_CLOSE:  # crossing ours: answered; the number stays taken
                self.send_method(number, commands.Channel.CloseOk())
            elif index == _CHANNEL_CLOSE_OK:
                del self.channels[number]
            elif index == _CHANNEL_OPEN:
                raise errors.ChannelErrorHard("second 'channel.open' seen", 20, 10)
            return
        if frame_type == c.FRAME_METHOD:
            index = method_index(payload)
            if index in (_CHANNEL_CLOSE, _CHANNEL_OPEN):
                decode_method(payload)  # its fields are checked (501) as any method's
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
        if self.state < AWAIT_OPEN:  # before tune-ok RabbitMQ answers no error: it hangs up
            self._refuse_silently(error.reply_text)
            return
        log.debug("closing connection %s: %s", self.peer, error.reply_text)
        self.close(error.reply_code, error.reply_text, error.class_id, error.method_id)

    def close(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Start a server-initiated close: release channels, send close, await close-ok."""
        if self.state >= CLOSING:
            return
        self._release_all()
        self.state = CLOSING
        self.close_reason = f"broker closed it: {code} {text}"
        self._confirm_channels.clear()
        self.send_method(  # after the replies to what came before the error (RabbitMQ's order)
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
    # Publishers are slowed per channel (see Channel.must_hold): a throttled channel's
    # publishes wait in its inbox while everything else keeps flowing. The socket stops being
    # read when a channel holds frames (or an alarm blocks a publisher) and this connection
    # holds no unacknowledged delivery: then nothing it could send would drain a queue, so
    # pausing cannot deadlock a consumer on the same connection, and the kernel rather than
    # the broker buffers what a fast publisher sends. Past HOLD_HARD_LIMIT reading stops
    # regardless. While reading is paused the heartbeat monitor is suspended (the broker,
    # not the client, is the one not reading).

    def held(self, delta: int) -> None:
        """A channel held (or let go of) ``delta`` bytes of frames."""
        before = self.held_bytes
        self.held_bytes = after = before + delta
        if (not before) != (not after) or after > HOLD_HARD_LIMIT:
            self._update_reading()

    def delivery_unacked(self) -> None:
        """A delivery now awaits this client's ack: read it, so the ack can arrive."""
        if self.reading_paused:
            self._update_reading()

    def flow_changed(self) -> None:
        """A channel of this connection was throttled or released."""
        self._update_reading()

    def block(self, reason: str) -> None:
        """connection.blocked: tell the client (if it understands) and hold its publishes."""
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
        for channel in self.channels.values():
            channel.wake_held()
        self._update_reading()

    def started_publishing(self) -> None:
        """The first publish: from now on a resource alarm stops reading from this client."""
        self.has_published = True
        self._update_reading()

    def _holds_deliveries(self) -> bool:
        return any(channel.unacked for channel in self.channels.values())

    def _update_reading(self) -> None:
        """Read from the socket unless it is safe and useful to stop (see above)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        held = self.held_bytes
        flow = any(channel.throttled_by for channel in self.channels.values())
        alarm = self.blocked_reason is not None and self.has_published
        paused = bool(flow or held or alarm) and not self._holds_deliveries()
        if not paused and (flow or alarm):  # reading goes on: publishes are held instead
            for channel in self.channels.values():
                if channel.throttled:
                    channel.hold_publishes()
        if held > HOLD_HARD_LIMIT:
            if not self._hard_limit_logged:
                self._hard_limit_logged = True
                log.warning("connection %s: %d bytes held while its publishes wait; "
                            "reading paused", self.peer, held)
            paused = True
        if paused != self.reading_paused:
            self.reading_paused = paused
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()


def _is_settlement(frame_type: int, payload: object) -> bool:
    return frame_type == c.FRAME_METHOD and method_index(payload) in _SETTLEMENTS  # type: ignore[arg-type]
