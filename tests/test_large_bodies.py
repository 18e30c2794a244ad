"""Large bodies through Connection objects over fake transports: the queue keeps bytes of
its own (never a slice of a read), and gathered writes carry the same bytes as a join."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp.header import ContentHeader, ProtocolHeader

from leveret.broker import connection as connection_module
from leveret.broker.config import BrokerConfig
from leveret.broker.connection import Connection
from leveret.broker.server import Broker
from leveret.protocol import constants as c
from leveret.protocol.framing import BodyBuffer, FrameReader

FRAME_MAX = 131072


class Transport:
    """Records each write and gathered write."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.gathered = 0

    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def writelines(self, parts: list) -> None:
        self.gathered += 1
        self.chunks.append(b"".join(parts))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 1)

    def close(self) -> None:
        pass

    abort = close
    pause_reading = resume_reading = close


def _frames(*items: tuple[int, object]) -> bytes:
    return b"".join(pamqp_frame.marshal(value, channel) for channel, value in items)


def _publish(body: bytes) -> bytes:
    piece = FRAME_MAX - 8
    return _frames((1, commands.Basic.Publish(exchange="", routing_key="q")),
                   (1, ContentHeader(body_size=len(body))),
                   *((1, pamqp_frame.body.ContentBody(body[at : at + piece]))
                     for at in range(0, len(body), piece)))


async def _connect(broker: Broker) -> tuple[Connection, Transport]:
    conn, transport = Connection(broker), Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(ProtocolHeader().marshal() + _frames(
        (0, commands.Connection.StartOk(client_properties={"capabilities": {}},
                                        mechanism="PLAIN", response="\0guest\0guest")),
        (0, commands.Connection.TuneOk(channel_max=2047, frame_max=FRAME_MAX, heartbeat=0)),
        (0, commands.Connection.Open(virtual_host="/")),
        (1, commands.Channel.Open()),
    ))
    return conn, transport


def _bodies(stream: bytes) -> list[bytes]:
    """The bodies of the deliveries in a stream the broker wrote."""
    bodies, parts, size = [], [], 0
    for frame_type, _channel, payload in FrameReader(FRAME_MAX).feed(stream):
        if frame_type == c.FRAME_HEADER:
            parts, size = [], int.from_bytes(payload[4:12], "big")
            if not size:
                bodies.append(b"")
        elif frame_type == c.FRAME_BODY:
            parts.append(bytes(payload))
            if sum(map(len, parts)) == size:
                bodies.append(b"".join(parts))
    return bodies


def _read_buffered(connection: Connection, stream: bytes, most: int) -> None:
    """``stream`` as a buffered-protocol transport gives it: each read at most ``most``
    octets, into whatever ``get_buffer`` returns."""
    at = 0
    while at < len(stream):
        buffer = connection.get_buffer(-1)
        size = min(len(buffer), most, len(stream) - at)
        buffer[:size] = stream[at : at + size]
        connection.buffer_updated(size)
        at += size


@pytest.mark.parametrize("buffered", [False, True], ids=["data_received", "get_buffer"])
async def test_queued_bodies_are_their_own_and_deliveries_byte_exact(buffered: bool) -> None:
    """Bodies small and large, arriving in reads cut anywhere, sit in the queue as bytes of
    their own or (large ones spanning reads) the buffer they were assembled in, never a
    memoryview of a read, and are delivered byte for byte, large output with gathered
    writes."""
    broker = Broker(BrokerConfig(port=0))
    await broker.start()
    try:
        publisher, _ = await _connect(broker)
        publisher.data_received(_frames((1, commands.Queue.Declare(queue="q"))))
        sizes = [16, 5000, 70_000, FRAME_MAX - 8, FRAME_MAX, 1024 * 1024 + 3, 16]
        sent = [hashlib.shake_256(str(size).encode()).digest(size) for size in sizes]
        stream = b"".join(_publish(body) for body in sent)
        if buffered:
            _read_buffered(publisher, stream, 65_000)
        else:
            for at in range(0, len(stream), 65_000):  # reads cut frames anywhere
                publisher.data_received(stream[at : at + 65_000])
        lone = hashlib.shake_256(b"lone").digest(70_000)  # its body frame alone in a read
        sent.append(lone)
        whole = _publish(lone)
        publisher.data_received(whole[: -(70_000 + 8)])
        publisher.data_received(whole[-(70_000 + 8) :] + _publish(b"tail"))
        sent.append(b"tail")
        queue = broker.vhosts["/"].queues["q"]
        assert queue.message_count == len(sent)
        held = [entry.message.body for entry in queue.ready.peek(len(sent))]  # type: ignore[union-attr]
        assert {type(body) for body in held} <= {bytes, BodyBuffer}
        assert [type(body) for body in held[4:6]] == [BodyBuffer] * 2  # multi-frame bodies
        assert held == sent
        consumer, transport = await _connect(broker)
        consumer.data_received(_frames(
            (1, commands.Basic.Consume(queue="q", consumer_tag="c", no_ack=True))))
        for _ in range(50):
            await asyncio.sleep(0)
            if not queue.message_count:
                break
        await asyncio.sleep(0)
        assert _bodies(b"".join(transport.chunks)) == sent
        assert transport.gathered >= 1
    finally:
        await broker.stop()


def test_small_output_is_joined() -> None:
    """The gathered write is for large bodies only."""
    assert connection_module.GATHER_MIN >= 16 * 1024


async def test_bodies_are_assembled_only_after_login() -> None:
    """Before connection.open succeeded no body buffer is ever allocated (a content header
    could otherwise announce ASSEMBLE_MAX octets for the price of a few frames)."""
    broker = Broker(BrokerConfig(port=0))
    await broker.start()
    try:
        connection = Connection(broker)
        connection.connection_made(Transport())  # type: ignore[arg-type]
        assert connection.reader.assemble_bodies is False
        connection.data_received(ProtocolHeader().marshal())
        assert connection.reader.assemble_bodies is False
        opened, _ = await _connect(broker)
        assert opened.reader.assemble_bodies is True
    finally:
        await broker.stop()
