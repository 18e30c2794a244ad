"""A minimal asyncio AMQP 0-9-1 client for the benchmark harness (scenarios h and i).

Why not pika / aio-pika: scenario h opens 1,000 connections from one process and scenario i
moves 1M messages through one; a general-purpose client's per-connection objects and
per-message decoding would make the client, not the broker, the thing being measured. This
client is deliberately small:

* The handshake and the rare synchronous methods (channel.open, queue.declare, basic.qos,
  basic.consume, confirm.select, queue.delete, connection.close) are encoded and decoded with
  pamqp.
* The per-message frames are handled with ``struct`` only: basic.deliver (delivery tag),
  content header (body size), content body (the first 8 bytes are kept, for latency),
  basic.ack / basic.nack from the broker (publisher confirms). Outgoing messages are
  pre-encoded byte strings written straight into the transport.
* Deliveries can be acknowledged in batches: with ``ack_batch=True`` one
  ``basic.ack(multiple=True)`` per channel is written at the end of every ``data_received``
  call (i.e. per socket read), which is what a client with a prefetch window does.
* Heartbeats: the broker's proposal is accepted (unless ``heartbeat=`` is given) and a
  heartbeat frame is sent every heartbeat/2 seconds.

Server-sent connection.close / channel.close fail every pending call with
:class:`AMQPError`, whose text is the broker's reply code and text verbatim.

Not a general client: no content properties are decoded, no basic.get, no returns (returned
messages are skipped), one consumer per channel.
"""

from __future__ import annotations

import asyncio
import collections
import struct
import time
import urllib.parse
from collections.abc import Callable

from pamqp import commands
from pamqp import frame as pframe
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

FRAME_END = b"\xce"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
_HDR = struct.Struct(">BHI")
_CM = struct.Struct(">HH")
_U64 = struct.Struct(">Q")
_ACK = struct.Struct(">BHIHHQB")  # frame type, channel, size, class, method, tag, bits + end


class AMQPError(Exception):
    """A broker-side close (reply code and text verbatim) or a lost connection."""


def parse_url(url: str) -> dict:
    u = urllib.parse.urlsplit(url)
    vhost = urllib.parse.unquote(u.path[1:]) if len(u.path) > 1 else "/"
    return {
        "host": u.hostname or "127.0.0.1",
        "port": u.port or 5672,
        "user": urllib.parse.unquote(u.username or "guest"),
        "password": urllib.parse.unquote(u.password or "guest"),
        "vhost": vhost,
    }


def ack_frame(channel: int, tag: int, multiple: bool) -> bytes:
    return _ACK.pack(1, channel, 13, 60, 80, tag, 1 if multiple else 0) + FRAME_END


def publish_frames(
    channel: int,
    routing_key: str,
    body: bytes,
    exchange: str = "",
    delivery_mode: int | None = None,
    frame_max: int = 131072,
) -> bytes:
    """basic.publish + content header + body frame(s) of one message, ready to write."""
    props = commands.Basic.Properties(delivery_mode=delivery_mode)
    out = [
        pframe.marshal(commands.Basic.Publish(exchange=exchange, routing_key=routing_key), channel),
        pframe.marshal(ContentHeader(0, len(body), props), channel),
    ]
    step = frame_max - 8
    for i in range(0, len(body), step):
        out.append(pframe.marshal(ContentBody(body[i : i + step]), channel))
    return b"".join(out)


def body_frame_parts(channel: int, size: int) -> tuple[bytes, bytes]:
    """Prefix (frame header) and suffix (frame end) of a single body frame of ``size`` bytes."""
    return _HDR.pack(3, channel, size), FRAME_END


class Connection(asyncio.Protocol):
    """One AMQP connection. Open it with :func:`connect`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self._replies: dict[int, collections.deque] = collections.defaultdict(collections.deque)
        self._closed_error: AMQPError | None = None
        self.closed = loop.create_future()
        # per channel: [delivery tag or None (a returned message), bytes remaining, head]
        self._content: dict[int, list] = {}
        self.on_deliver: dict[int, Callable[[int, bytes], None]] = {}
        self.on_confirm: dict[int, Callable[[int, bool, bool], None]] = {}
        self.ack_batch: set[int] = set()  # channels whose deliveries are acked per read
        self._pending_ack: dict[int, int] = {}
        self._paused = False
        self._resume: asyncio.Future | None = None
        self._hb_handle: asyncio.TimerHandle | None = None
        self.heartbeat = 0
        self.frame_max = 131072
        self.server_properties: dict = {}
        self.blocked = 0
        self.cancelled: list[tuple[int, str]] = []

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        # registered here: the broker's connection.start may be read before
        # create_connection() returns to the caller
        self.start_fut = self.expect(0, commands.Connection.Start)
        transport.write(b"AMQP\x00\x00\x09\x01")

    def connection_lost(self, exc) -> None:
        self._fail(AMQPError(f"connection lost: {exc!r}" if exc else "connection closed"))
        if self._hb_handle:
            self._hb_handle.cancel()
        if self._resume and not self._resume.done():
            self._resume.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._resume and not self._resume.done():
            self._resume.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        n = len(buf)
        pos = 0
        unpack_hdr = _HDR.unpack_from
        content = self._content
        while n - pos >= 8:
            ftype, ch, size = unpack_hdr(buf, pos)
            end = pos + 7 + size
            if end >= n:
                break
            if ftype == 3:  # content body
                st = content.get(ch)
                if st is not None:
                    if st[2] is None:
                        st[2] = bytes(buf[pos + 7 : pos + 7 + min(8, size)])
                    st[1] -= size
                    if st[1] <= 0:
                        self._complete(ch, st)
            elif ftype == 1:
                cls, meth = _CM.unpack_from(buf, pos + 7)
                if cls == 60 and meth == 60:  # basic.deliver
                    ctag_len = buf[pos + 11]
                    tag = _U64.unpack_from(buf, pos + 12 + ctag_len)[0]
                    content[ch] = [tag, -1, None]
                elif cls == 60 and (meth == 80 or meth == 120):  # confirm ack / nack
                    tag = _U64.unpack_from(buf, pos + 11)[0]
                    cb = self.on_confirm.get(ch)
                    if cb is not None:
                        cb(tag, bool(buf[pos + 19] & 1), meth == 120)
                elif cls == 60 and meth == 50:  # basic.return: skip its content
                    content[ch] = [None, -1, None]
                else:
                    self._method(ch, bytes(buf[pos : end + 1]))
            elif ftype == 2:  # content header
                st = content.get(ch)
                if st is not None:
                    st[1] = _U64.unpack_from(buf, pos + 11)[0]
                    if st[1] == 0:
                        st[2] = b""
                        self._complete(ch, st)
            # ftype 8 (heartbeat): nothing to do
            pos = end + 1
        if pos:
            del buf[:pos]
        if self._pending_ack:
            t = self.transport
            for ch, tag in self._pending_ack.items():
                t.write(ack_frame(ch, tag, True))
            self._pending_ack.clear()

    def _complete(self, ch: int, st: list) -> None:
        del self._content[ch]
        tag = st[0]
        if tag is None:
            return
        cb = self.on_deliver.get(ch)
        if cb is not None:
            cb(tag, st[2])
        if ch in self.ack_batch:
            self._pending_ack[ch] = tag

    def _method(self, ch: int, raw: bytes) -> None:
        _, _, m = pframe.unmarshal(raw)
        if isinstance(m, commands.Connection.Close):
            self._write_method(0, commands.Connection.CloseOk())
            self._fail(AMQPError(f"connection closed by broker: {m.reply_code} {m.reply_text}"))
            return
        if isinstance(m, commands.Channel.Close):
            self._write_method(ch, commands.Channel.CloseOk())
            err = AMQPError(f"channel {ch} closed by broker: {m.reply_code} {m.reply_text}")
            waiters = self._replies.pop(ch, ())
            for _, fut in waiters:
                if not fut.done():
                    fut.set_exception(err)
            return
        if isinstance(m, commands.Basic.Cancel):
            self.cancelled.append((ch, m.consumer_tag))
            return
        if isinstance(m, commands.Connection.Blocked):
            self.blocked += 1
            return
        if isinstance(m, commands.Connection.Unblocked):
            return
        q = self._replies.get(ch)
        if not q:
            return  # unsolicited (e.g. consume-ok of a nowait call): ignore
        expected, fut = q.popleft()
        if fut.done():
            return
        if isinstance(m, expected):
            fut.set_result(m)
        else:
            fut.set_exception(AMQPError(f"expected {expected.__name__}, got {m.name}"))

    def _fail(self, err: AMQPError) -> None:
        if self._closed_error is None:
            self._closed_error = err
        for q in self._replies.values():
            for _, fut in q:
                if not fut.done():
                    fut.set_exception(err)
        self._replies.clear()
        if not self.closed.done():
            self.closed.set_result(err)

    # ------------------------------------------------------------------ calls
    def _write_method(self, ch: int, method) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(pframe.marshal(method, ch))

    def expect(self, ch: int, reply_cls) -> asyncio.Future:
        fut = self.loop.create_future()
        if self._closed_error is not None:
            fut.set_exception(self._closed_error)
        else:
            self._replies[ch].append((reply_cls, fut))
        return fut

    async def rpc(self, ch: int, method, reply_cls):
        fut = self.expect(ch, reply_cls)
        self._write_method(ch, method)
        return await fut

    def write(self, data: bytes) -> None:
        if self._closed_error is not None:
            raise self._closed_error
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        while self._paused and self._closed_error is None:
            self._resume = self.loop.create_future()
            await self._resume
        if self._closed_error is not None:
            raise self._closed_error

    def _hb(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(HEARTBEAT_FRAME)
        self._hb_handle = self.loop.call_later(self.heartbeat / 2, self._hb)

    # ------------------------------------------------------------------ conveniences
    async def channel(self, ch: int = 1) -> int:
        await self.rpc(ch, commands.Channel.Open(), commands.Channel.OpenOk)
        return ch

    async def queue_declare(self, ch: int, queue: str, **kw) -> commands.Queue.DeclareOk:
        return await self.rpc(
            ch, commands.Queue.Declare(queue=queue, **kw), commands.Queue.DeclareOk
        )

    async def queue_delete(self, ch: int, queue: str) -> commands.Queue.DeleteOk:
        return await self.rpc(ch, commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk)

    async def qos(self, ch: int, prefetch: int) -> None:
        await self.rpc(ch, commands.Basic.Qos(prefetch_count=prefetch), commands.Basic.QosOk)

    async def consume(
        self, ch: int, queue: str, on_deliver, no_ack: bool = False, ack_batch: bool = True
    ) -> str:
        self.on_deliver[ch] = on_deliver
        if not no_ack and ack_batch:
            self.ack_batch.add(ch)
        ok = await self.rpc(
            ch, commands.Basic.Consume(queue=queue, no_ack=no_ack), commands.Basic.ConsumeOk
        )
        return ok.consumer_tag

    async def confirm_select(self, ch: int, on_confirm) -> None:
        self.on_confirm[ch] = on_confirm
        await self.rpc(ch, commands.Confirm.Select(), commands.Confirm.SelectOk)

    async def close(self, timeout: float = 10.0) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            if self._closed_error is None:
                await asyncio.wait_for(
                    self.rpc(
                        0, commands.Connection.Close(200, "bye", 0, 0), commands.Connection.CloseOk
                    ),
                    timeout,
                )
        except (TimeoutError, AMQPError, ConnectionError):
            pass
        finally:
            if self._hb_handle:
                self._hb_handle.cancel()
            self.transport.close()


async def connect(
    url: str,
    heartbeat: int | None = None,
    name: str = "leveret-bench",
    timeout: float = 30.0,
    write_high_water: int = 1 << 20,
) -> Connection:
    """Open a connection (PLAIN auth). ``heartbeat=None`` accepts the broker's proposal."""
    p = parse_url(url)
    loop = asyncio.get_running_loop()

    async def handshake() -> Connection:
        _, conn = await loop.create_connection(lambda: Connection(loop), p["host"], p["port"])
        conn.transport.set_write_buffer_limits(high=write_high_water)
        start = await conn.start_fut
        conn.server_properties = dict(start.server_properties or {})
        tune_fut = conn.expect(0, commands.Connection.Tune)
        conn._write_method(
            0,
            commands.Connection.StartOk(
                client_properties={
                    "product": "leveret-bench amqp_lite",
                    "connection_name": name,
                    "capabilities": {"consumer_cancel_notify": True, "publisher_confirms": True},
                },
                mechanism="PLAIN",
                response=f"\0{p['user']}\0{p['password']}",
                locale="en_US",
            ),
        )
        tune = await tune_fut
        hb = tune.heartbeat if heartbeat is None else heartbeat
        conn.heartbeat = hb
        conn.frame_max = tune.frame_max or 131072
        conn._write_method(
            0,
            commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=conn.frame_max, heartbeat=hb
            ),
        )
        await conn.rpc(
            0, commands.Connection.Open(virtual_host=p["vhost"]), commands.Connection.OpenOk
        )
        if hb:
            conn._hb_handle = loop.call_later(hb / 2, conn._hb)
        return conn

    return await asyncio.wait_for(handshake(), timeout)


def now_ns() -> int:
    return time.perf_counter_ns()
