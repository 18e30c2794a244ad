"""A tiny blocking raw-socket AMQP 0-9-1 client for protocol conformance tests.

It speaks just enough of the protocol to reach an open connection, then lets a test send
arbitrary frames (or raw bytes) and assert exactly what the server answers. Frames are
encoded and decoded with pamqp; every socket operation is bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, TypeVar

from pamqp import commands, constants
from pamqp import frame as pframe
from pamqp.base import Frame as MethodFrame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader, ProtocolHeader

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD = constants.FRAME_METHOD
FRAME_HEADER = constants.FRAME_HEADER
FRAME_BODY = constants.FRAME_BODY
FRAME_HEARTBEAT = constants.FRAME_HEARTBEAT
FRAME_END = constants.FRAME_END

DEFAULT_TIMEOUT = 5.0

M = TypeVar("M", bound=MethodFrame)


class ConnectionClosedByPeer(Exception):
    """The server closed the TCP connection (EOF or reset)."""


@dataclass
class RawFrame:
    """One frame as read off the wire, plus its pamqp decoding when it has one."""

    frame_type: int
    channel: int
    payload: bytes
    value: Any = None

    @property
    def method(self) -> MethodFrame | None:
        """The decoded method, if this is a method frame."""
        return self.value if isinstance(self.value, MethodFrame) else None

    def __repr__(self) -> str:
        return f"<frame ch={self.channel} {describe(self.value)}>"


def describe(value: Any) -> str:
    """A readable one-liner for a decoded frame value (used in assertion messages)."""
    if isinstance(value, (commands.Connection.Close, commands.Channel.Close)):
        return (
            f"{value.name}({value.reply_code}, {value.reply_text!r}, "
            f"class_id={value.class_id}, method_id={value.method_id})"
        )
    if isinstance(value, MethodFrame):
        return value.name
    if isinstance(value, ContentHeader):
        return f"ContentHeader(body_size={value.body_size})"
    if isinstance(value, ContentBody):
        return f"ContentBody({len(value.value)} octets)"
    return type(value).__name__


def encode_raw_frame(frame_type: int, channel: int, payload: bytes, end: int = FRAME_END) -> bytes:
    """Build a frame by hand (so tests can break any part of it)."""
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes([end])


def method_payload(method: MethodFrame) -> bytes:
    """The payload of a method frame: class id, method id, arguments."""
    return struct.pack(">I", method.index) + method.marshal()


class RawClient:
    """A blocking AMQP client over a plain socket, for poking at a broker."""

    def __init__(self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self._buf = bytearray()
        self.server_properties: dict[str, Any] = {}
        self.frame_max = 0
        self.channel_max = 0
        self.heartbeat = 0
        self.server_frame_max = 0
        self.server_channel_max = 0
        self.server_heartbeat = 0

    # -- plumbing ---------------------------------------------------------------------------

    def close_socket(self) -> None:
        """Drop the TCP connection without any AMQP courtesy."""
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_socket()

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes to the socket."""
        self.sock.sendall(data)

    def send_protocol_header(self, header: bytes = PROTOCOL_HEADER) -> None:
        self.send_raw(header)

    def send(self, value: Any, channel: int = 0) -> None:
        """Encode one pamqp frame value (method, header, body, heartbeat) and send it."""
        self.send_raw(pframe.marshal(value, channel))

    def send_method(self, channel: int, method: MethodFrame) -> None:
        self.send(method, channel)

    def send_content(
        self,
        channel: int,
        body: bytes,
        body_size: int | None = None,
        properties: commands.Basic.Properties | None = None,
    ) -> None:
        """Send a content header (declaring ``body_size``, default ``len(body)``) and one body."""
        size = len(body) if body_size is None else body_size
        self.send(ContentHeader(0, size, properties or commands.Basic.Properties()), channel)
        if body:
            self.send(ContentBody(body), channel)

    def send_heartbeat(self) -> None:
        self.send_raw(encode_raw_frame(FRAME_HEARTBEAT, 0, b""))

    def _recv_some(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for data from the server")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ConnectionClosedByPeer(str(exc)) from exc
        except TimeoutError:
            raise
        if not chunk:
            raise ConnectionClosedByPeer("EOF")
        self._buf += chunk

    def read_exactly(self, n: int, timeout: float | None = None) -> bytes:
        """Read exactly ``n`` raw bytes."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self._buf) < n:
            self._recv_some(deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def read_frame(self, timeout: float | None = None) -> RawFrame:
        """Read one frame; raises ConnectionClosedByPeer on EOF, TimeoutError on silence."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self._buf) < 7:
            self._recv_some(deadline)
        if bytes(self._buf[:4]) == b"AMQP":
            while len(self._buf) < 8:
                self._recv_some(deadline)
            raw = bytes(self._buf[:8])
            del self._buf[:8]
            return RawFrame(-1, 0, raw, ProtocolHeader(*raw[5:8]))
        frame_type, channel, size = struct.unpack(">BHI", self._buf[:7])
        while len(self._buf) < 7 + size + 1:
            self._recv_some(deadline)
        raw = bytes(self._buf[: 7 + size + 1])
        del self._buf[: 7 + size + 1]
        assert raw[-1] == FRAME_END, f"server frame without frame-end byte: {raw!r}"
        _, _, value = pframe.unmarshal(raw)
        return RawFrame(frame_type, channel, raw[7:-1], value)

    def read_non_heartbeat(self, timeout: float | None = None) -> RawFrame:
        """Read the next frame that is not a heartbeat."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            f = self.read_frame(max(0.001, deadline - time.monotonic()))
            if f.frame_type != FRAME_HEARTBEAT:
                return f

    def expect_method(
        self, cls: type[M], channel: int | None = None, timeout: float | None = None
    ) -> M:
        """Read the next non-heartbeat frame and assert it is a ``cls`` method."""
        try:
            f = self.read_non_heartbeat(timeout)
        except TimeoutError:
            raise TimeoutError(f"timed out waiting for {cls.__name__}") from None
        assert isinstance(f.value, cls), f"expected {cls.__name__}, got {f!r}"
        if channel is not None:
            assert f.channel == channel, f"{cls.__name__} on channel {f.channel}, not {channel}"
        return f.value

    # -- handshake --------------------------------------------------------------------------

    def handshake(
        self,
        username: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        heartbeat: int | None = 0,
        frame_max: int | None = None,
        channel_max: int | None = None,
        auth_failure_close: bool = True,
        capabilities: dict[str, Any] | None = None,
        open_vhost: bool = True,
    ) -> None:
        """Header → Start/StartOk → Tune/TuneOk → Open/OpenOk (the last only if ``open_vhost``).

        ``heartbeat``/``frame_max``/``channel_max`` of ``None`` accept the server's offer.
        """
        self.start(username, password, auth_failure_close, capabilities)
        self.tune(heartbeat=heartbeat, frame_max=frame_max, channel_max=channel_max)
        if open_vhost:
            self.open(vhost)

    def start(
        self,
        username: str = "guest",
        password: str = "guest",
        auth_failure_close: bool = True,
        capabilities: dict[str, Any] | None = None,
    ) -> commands.Connection.Start:
        """Send the protocol header, read connection.start, answer start-ok (PLAIN)."""
        self.send_protocol_header()
        start = self.expect_method(commands.Connection.Start, channel=0)
        self.server_properties = dict(start.server_properties or {})
        caps: dict[str, Any] = {
            "publisher_confirms": True,
            "exchange_exchange_bindings": True,
            "basic.nack": True,
            "consumer_cancel_notify": True,
            "connection.blocked": True,
        }
        if auth_failure_close:
            caps["authentication_failure_close"] = True
        if capabilities:
            caps.update(capabilities)
        props: dict[str, Any] = {
            "product": "leveret-rawamqp",
            "platform": "Python",
            "capabilities": caps,
        }
        self.send_method(
            0,
            commands.Connection.StartOk(
                client_properties=props,
                mechanism="PLAIN",
                response=f"\0{username}\0{password}",
                locale="en_US",
            ),
        )
        return start

    def tune(
        self,
        heartbeat: int | None = 0,
        frame_max: int | None = None,
        channel_max: int | None = None,
    ) -> commands.Connection.Tune:
        """Read connection.tune and answer tune-ok (``None`` = accept the server's value)."""
        tune = self.expect_method(commands.Connection.Tune, channel=0)
        self.server_channel_max = tune.channel_max
        self.server_frame_max = tune.frame_max
        self.server_heartbeat = tune.heartbeat
        self.channel_max = tune.channel_max if channel_max is None else channel_max
        self.frame_max = tune.frame_max if frame_max is None else frame_max
        self.heartbeat = tune.heartbeat if heartbeat is None else heartbeat
        self.send_method(
            0,
            commands.Connection.TuneOk(
                channel_max=self.channel_max, frame_max=self.frame_max, heartbeat=self.heartbeat
            ),
        )
        return tune

    def open(self, vhost: str = "/") -> commands.Connection.OpenOk:
        self.send_method(0, commands.Connection.Open(virtual_host=vhost))
        return self.expect_method(commands.Connection.OpenOk, channel=0)

    def open_channel(self, channel: int = 1) -> commands.Channel.OpenOk:
        self.send_method(channel, commands.Channel.Open())
        return self.expect_method(commands.Channel.OpenOk, channel=channel)

    def close_connection(self) -> None:
        """Polite connection.close / close-ok, then drop the socket."""
        self.send_method(0, commands.Connection.Close(200, "bye", 0, 0))
        self.expect_method(commands.Connection.CloseOk, channel=0)
        self.close_socket()

    # -- expectations -----------------------------------------------------------------------

    def expect_connection_close(
        self, reply_code: int, timeout: float | None = None, send_close_ok: bool = True
    ) -> commands.Connection.Close:
        """Assert the server closes the connection with ``reply_code``; answer close-ok.

        Frames on other channels received before the close are skipped over.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        skipped: list[RawFrame] = []
        while True:
            try:
                f = self.read_non_heartbeat(max(0.001, deadline - time.monotonic()))
            except TimeoutError:
                raise TimeoutError(
                    f"timed out waiting for connection.close {reply_code}; saw {skipped!r}"
                ) from None
            except ConnectionClosedByPeer as exc:
                raise AssertionError(
                    f"socket closed ({exc}) instead of connection.close {reply_code}; "
                    f"saw {skipped!r}"
                ) from None
            if isinstance(f.value, commands.Connection.Close):
                break
            skipped.append(f)
        close = f.value
        assert f.channel == 0, f"connection.close on channel {f.channel}"
        assert close.reply_code == reply_code, (
            f"expected connection.close {reply_code}, got {describe(close)}"
        )
        if send_close_ok:
            with contextlib.suppress(OSError):
                self.send_method(0, commands.Connection.CloseOk())
        return close

    def expect_channel_close(
        self, channel: int, reply_code: int, timeout: float | None = None
    ) -> commands.Channel.Close:
        """Assert the server closes ``channel`` with ``reply_code`` (no close-ok is sent)."""
        close = self.expect_method(commands.Channel.Close, channel=channel, timeout=timeout)
        assert close.reply_code == reply_code, (
            f"expected channel.close {reply_code}, got {describe(close)}"
        )
        return close

    def expect_socket_closed(self, timeout: float | None = None) -> list[RawFrame]:
        """Assert the server closes the TCP connection; returns any frames read before EOF."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        frames: list[RawFrame] = []
        while True:
            try:
                frames.append(self.read_frame(max(0.001, deadline - time.monotonic())))
            except ConnectionClosedByPeer:
                return frames
            except TimeoutError:
                raise AssertionError(
                    f"server did not close the socket in time; frames seen: {frames!r}"
                ) from None

    def expect_silence(self, seconds: float) -> None:
        """Assert nothing but heartbeats arrives for ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                f = self.read_frame(remaining)
            except TimeoutError:
                return
            assert f.frame_type == FRAME_HEARTBEAT, f"expected silence, got {f!r}"


def connect(host: str, port: int, timeout: float = DEFAULT_TIMEOUT, **handshake: Any) -> RawClient:
    """A RawClient that has completed the handshake (see ``RawClient.handshake``)."""
    client = RawClient(host, port, timeout)
    try:
        client.handshake(**handshake)
    except BaseException:
        client.close_socket()
        raise
    return client
