"""FrameReader and frame writers: property tests, no sockets."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp.header import ContentHeader

from leveret.protocol import constants as c
from leveret.protocol.errors import AMQPError, FrameError
from leveret.protocol.framing import (
    VIEW_MIN,
    BodyBuffer,
    FrameReader,
    append_content,
    body_of,
    gather,
    method_frame,
    unfuse,
)
from leveret.protocol.methods import decode_method, encode_method, make

FRAME_MAX = 131072

names = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
methods = st.one_of(
    st.builds(lambda q: make(commands.Queue.Declare, queue=q), names),
    st.builds(lambda e, k: make(commands.Basic.Publish, exchange=e, routing_key=k), names, names),
    st.builds(lambda t, m: commands.Basic.Ack(delivery_tag=t, multiple=m),
              st.integers(0, 2**63 - 1), st.booleans()),
    st.just(commands.Channel.Open()),
)


@st.composite
def frame_streams(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """A byte stream of valid frames and the frames it holds."""
    frames = []
    for _ in range(draw(st.integers(1, 8))):
        channel = draw(st.integers(0, 2047))
        kind = draw(st.sampled_from(["method", "body", "heartbeat"]))
        if kind == "method":
            payload = encode_method(draw(methods))
            frames.append((c.FRAME_METHOD, channel, payload))
        elif kind == "body":
            frames.append((c.FRAME_BODY, channel, draw(st.binary(max_size=300))))
        else:
            frames.append((c.FRAME_HEARTBEAT, 0, b""))
    stream = b"".join(
        ftype.to_bytes(1, "big") + ch.to_bytes(2, "big") + len(p).to_bytes(4, "big") + p + b"\xce"
        for ftype, ch, p in frames
    )
    return stream, frames


@given(frame_streams(), st.lists(st.integers(1, 50), max_size=30))
def test_any_split_yields_the_same_frames(data, cuts) -> None:
    stream, expected = data
    reader = FrameReader(FRAME_MAX)
    got = []
    position = 0
    for cut in cuts:
        got.extend(reader.feed(stream[position : position + cut]))
        position += cut
    got.extend(reader.feed(stream[position:]))
    assert got == expected
    assert reader.pending == 0


@settings(max_examples=300)
@given(st.binary(max_size=400), st.lists(st.integers(1, 64), max_size=10))
def test_random_bytes_end_only_in_a_protocol_error(garbage: bytes, cuts: list[int]) -> None:
    reader = FrameReader(FRAME_MAX)
    position = 0
    try:
        for cut in [*cuts, len(garbage)]:
            for _, _, payload in reader.feed(garbage[position : position + cut]):
                if payload[:1]:
                    with contextlib.suppress(AMQPError):
                        decode_method(payload)
            position += cut
    except AMQPError as error:
        assert error.reply_code in (c.FRAME_ERROR, c.COMMAND_INVALID)


def test_frame_larger_than_frame_max_is_a_frame_error() -> None:
    reader = FrameReader(4096)
    header = bytes([c.FRAME_BODY]) + (1).to_bytes(2, "big") + (5000).to_bytes(4, "big")
    with pytest.raises(FrameError):
        list(reader.feed(header))


def test_missing_end_byte_is_a_frame_error() -> None:
    reader = FrameReader(4096)
    frame = method_frame(1, encode_method(commands.Channel.Open()))
    with pytest.raises(FrameError):
        list(reader.feed(frame[:-1] + b"\x00"))


@given(st.binary(max_size=20000), st.integers(4096, 9000))
def test_content_is_split_to_frame_max(body: bytes, frame_max: int) -> None:
    out: list = []
    header = b"\x00\x3c\x00\x00" + len(body).to_bytes(8, "big") + b"\x00\x00"
    append_content(out, 3, header, body, frame_max)
    stream = b"".join(bytes(part) for part in out)
    reader = FrameReader(frame_max)
    frames = list(reader.feed(stream))
    assert frames[0] == (c.FRAME_HEADER, 3, header)
    assert all(len(p) + 8 <= frame_max for _, _, p in frames)
    assert b"".join(p for t, _, p in frames[1:]) == body


def test_pamqp_agrees_with_our_frames() -> None:
    method = commands.Queue.DeclareOk(queue="abc", message_count=7, consumer_count=1)
    ours = method_frame(5, encode_method(method))
    assert ours == pamqp_frame.marshal(method, 5)


@st.composite
def publish_streams(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int, bytes]], int]:
    """Frames a publisher sends (publish, header, bodies), mixed with other frames and with
    the ways a sequence can fail to be fusable: another channel in between, a body split in
    several frames, a body frame of the wrong size, a header not following its method."""
    frames: list[tuple[int, int, bytes]] = []
    for _ in range(draw(st.integers(1, 6))):
        channel = draw(st.integers(1, 3))
        kind = draw(st.sampled_from(["publish", "publish", "split", "interleaved", "orphan",
                                     "wrong size", "empty", "other"]))
        body = draw(st.binary(min_size=1, max_size=200))
        publish = encode_method(make(commands.Basic.Publish, exchange="", routing_key="q"))
        size = 0 if kind == "empty" else len(body) + (1 if kind == "wrong size" else 0)
        header = pamqp_frame.marshal(ContentHeader(body_size=size, properties=commands.Basic.
                                                   Properties(content_type="text/plain")), 0)
        header = header[7:-1]  # the payload only
        if kind == "other":
            frames.append((c.FRAME_METHOD, channel, encode_method(make(
                commands.Basic.Ack, delivery_tag=1, multiple=False))))
            continue
        if kind == "orphan":
            frames.append((c.FRAME_HEADER, channel, header))
            continue
        frames.append((c.FRAME_METHOD, channel, publish))
        if kind == "interleaved":
            frames.append((c.FRAME_HEARTBEAT, 0, b""))
        frames.append((c.FRAME_HEADER, channel, header))
        if kind == "split":
            frames += [(c.FRAME_BODY, channel, body[:1]), (c.FRAME_BODY, channel, body[1:])]
        elif kind != "empty":
            frames.append((c.FRAME_BODY, channel, body))
    stream = b"".join(
        ftype.to_bytes(1, "big") + ch.to_bytes(2, "big") + len(p).to_bytes(4, "big") + p + b"\xce"
        for ftype, ch, p in frames
    )
    return stream, frames, draw(st.integers(1, 64))


@settings(max_examples=300)
@given(publish_streams(), st.lists(st.integers(1, 80), max_size=20))
def test_fused_publishes_unfuse_to_the_same_frames(data, cuts) -> None:
    """With fuse_publish, any split of the stream yields the same frames once each fused
    publish is expanded, and whole publishes in one buffer come out fused."""
    stream, expected, _ = data
    reader = FrameReader(FRAME_MAX, fuse_publish=True)
    got = []
    position = 0
    for cut in [*cuts, len(stream)]:
        for frame_type, channel, payload in reader.feed(stream[position : position + cut]):
            if frame_type == c.FRAME_PUBLISH:
                got += [(t, channel, p) for t, p in unfuse(payload)]
            else:
                got.append((frame_type, channel, payload))
        position += cut
    assert got == expected
    assert reader.pending == 0


def test_a_whole_publish_in_one_buffer_is_fused() -> None:
    body = b"hello"
    data = pamqp_frame.marshal(make(commands.Basic.Publish, exchange="x", routing_key="k"), 5)
    data += pamqp_frame.marshal(ContentHeader(body_size=len(body)), 5)
    data += pamqp_frame.marshal(pamqp_frame.body.ContentBody(body), 5)
    frames = list(FrameReader(FRAME_MAX, fuse_publish=True).feed(data))
    assert len(frames) == 1
    frame_type, channel, (method, header, got_body) = frames[0]
    assert (frame_type, channel, got_body) == (c.FRAME_PUBLISH, 5, body)
    assert decode_method(method).routing_key == "k"
    assert header[4:12] == len(body).to_bytes(8, "big")


# --- large frames: gathered across reads, body slices without copies ----------------------

_SIZES = st.sampled_from([0, 1, 16, VIEW_MIN - 1, VIEW_MIN, 70_000, FRAME_MAX - 8])


@st.composite
def large_streams(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """Method, content header and body frames (some larger than a read) as a byte stream."""
    frames = []
    for number in range(draw(st.integers(1, 5))):
        channel = draw(st.integers(1, 3))
        frames.append((c.FRAME_METHOD, channel,
                       encode_method(make(commands.Basic.Publish, routing_key="q"))))
        sizes = draw(st.lists(_SIZES, min_size=1, max_size=4))
        header = pamqp_frame.marshal(ContentHeader(body_size=sum(sizes)), channel)[7:-1]
        frames.append((c.FRAME_HEADER, channel, header))
        for index, size in enumerate(sizes):
            fill = bytes((number * 16 + index) % 256 for _ in range(min(size, 251)))
            frames.append((c.FRAME_BODY, channel, (fill * (size // 251 + 1))[:size]))
    stream = b"".join(
        bytes((ftype,)) + ch.to_bytes(2, "big") + len(p).to_bytes(4, "big") + p + b"\xce"
        for ftype, ch, p in frames
    )
    return stream, frames


@settings(max_examples=150, deadline=None)
@given(large_streams(), st.lists(st.integers(1, 300_000), max_size=12), st.booleans())
def test_large_frames_read_the_same_however_the_stream_is_cut(data, cuts, fuse) -> None:
    """Whatever the reads, the same frames come out (fused or not), byte for byte; only
    large body frames may come as memoryview slices; nothing is left pending."""
    stream, expected = data
    reader = FrameReader(FRAME_MAX, fuse_publish=fuse)
    got = []
    position = 0
    for cut in [*cuts, len(stream)]:
        for frame_type, channel, payload in reader.feed(stream[position : position + cut]):
            if frame_type == c.FRAME_PUBLISH:
                got += [(kind, channel, part) for kind, part in unfuse(payload)]
            else:
                got.append((frame_type, channel, payload))
        position += cut
        if position >= len(stream):
            break
    for frame_type, _channel, payload in got:
        assert type(payload) is bytes or (
            frame_type == c.FRAME_BODY and len(payload) >= VIEW_MIN), (frame_type, len(payload))
    assert [(t, ch, bytes(p)) for t, ch, p in got] == expected
    assert reader.pending == 0


def test_a_large_frame_is_gathered_without_re_concatenation() -> None:
    """A frame longer than a read is held read by read (``pending`` counts it) and joined
    once; its end byte is checked when it arrives."""
    body = bytes(range(256)) * 400
    frame = b"\x03\x00\x01" + len(body).to_bytes(4, "big") + body + b"\xce"
    reader = FrameReader(FRAME_MAX)
    for at in range(0, len(frame) - 1, 10_000):
        assert list(reader.feed(frame[at : min(at + 10_000, len(frame) - 1)])) == []
    assert reader.pending == len(frame) - 1
    [(kind, channel, payload)] = reader.feed(b"\xce" + method_frame(1, b"\x00\x3c\x00\x50")[:5])
    assert (kind, channel, payload) == (c.FRAME_BODY, 1, body) and type(payload) is bytes
    assert reader.pending == 5
    bad = FrameReader(FRAME_MAX)
    assert list(bad.feed(frame[:-1])) == []
    with pytest.raises(FrameError, match="invalid_frame_end_marker"):
        list(bad.feed(b"\x00"))
    assert bad.failed and bad.pending == 0


def test_small_bodies_are_copies_large_ones_views() -> None:
    """A small body frame is its own bytes (it must not keep a large read alive while it
    waits in a queue); a large one within one read is a slice of it."""
    big = b"\x03\x00\x01" + (100_000).to_bytes(4, "big") + b"b" * 100_000 + b"\xce"
    small = b"\x03\x00\x01" + (16).to_bytes(4, "big") + b"s" * 16 + b"\xce"
    frames = list(FrameReader(FRAME_MAX).feed(big + small))
    assert type(frames[0][2]) is memoryview and frames[0][2] == b"b" * 100_000
    assert type(frames[1][2]) is bytes and frames[1][2] == b"s" * 16


@given(st.lists(st.binary(max_size=40_000), max_size=12))
def test_gather_keeps_the_bytes_and_large_parts(parts) -> None:
    """gather() writes the same bytes; large parts pass as they are, small runs joined."""
    parts = [memoryview(part) if len(part) % 2 else part for part in parts]
    gathered, total = gather(parts)
    assert b"".join(gathered) == b"".join(parts) and total == sum(map(len, parts))
    large = [part for part in parts if len(part) >= 16 * 1024]
    assert [part for part in gathered if any(part is big for big in large)] == large
    assert not any(len(a) < 16 * 1024 and len(b) < 16 * 1024
                   for a, b in itertools.pairwise(gathered))


@settings(max_examples=150, deadline=None)
@given(large_streams(), st.lists(st.integers(1, 300_000), max_size=12), st.booleans())
def test_buffered_reads_assemble_large_bodies_in_place(data, reads, fuse) -> None:
    """Read as a buffered protocol (each read into what ``get_buffer`` gives, of any size),
    the same frames come out byte for byte; a body that spans reads or frames is assembled
    in one ``BodyBuffer`` that ``body_of`` returns whole, and no read buffer is kept."""
    stream, expected = data
    reader = FrameReader(FRAME_MAX, fuse_publish=fuse, assemble_bodies=True)
    got = []
    position = 0
    sizes = iter([*reads, *[len(stream)] * 10_000])
    while position < len(stream):
        buffer = reader.get_buffer()
        size = min(len(buffer), next(sizes), len(stream) - position)
        buffer[:size] = stream[position : position + size]
        position += size
        for frame_type, channel, payload in reader.feed(reader.received(size)):
            if frame_type == c.FRAME_PUBLISH:
                got += [(kind, channel, part) for kind, part in unfuse(payload)]
            else:
                got.append((frame_type, channel, payload))
    assert [(t, ch, bytes(p)) for t, ch, p in got] == expected
    assert reader.pending == 0
    bodies: list = []
    for frame_type, _channel, payload in got:
        if frame_type == c.FRAME_HEADER:
            bodies.append([])
        elif frame_type == c.FRAME_BODY:
            bodies[-1].append(payload)
            assert type(payload) is bytes or type(payload.obj) in (bytes, BodyBuffer)
    for parts in bodies:
        body = body_of(parts)
        assert body == b"".join(bytes(part) for part in parts)
        if all(isinstance(part, memoryview) and type(part.obj) is BodyBuffer for part in parts):
            assert type(body) is BodyBuffer  # (an empty frame after the last may end it)


def test_a_large_body_is_read_into_its_place() -> None:
    """Once a body spanning reads is known, the socket reads its frames' payloads straight
    into the body's buffer: only the 8 octets between two frames go through the scratch
    buffer, and the body is never copied in user space."""
    chunk = FRAME_MAX - c.FRAME_OVERHEAD
    body = (bytes(range(256)) * 1024)[: 2 * chunk]  # two full frames at frame_max 131072
    stream = b"".join(
        pamqp_frame.marshal(frame, 1) for frame in (
            make(commands.Basic.Publish, routing_key="q"), ContentHeader(body_size=len(body))))
    first = len(stream) + 7 + 100  # the first read: up to 100 octets into the first body frame
    for at in range(0, len(body), chunk):
        piece = body[at : at + chunk]
        stream += b"\x03\x00\x01" + len(piece).to_bytes(4, "big") + piece + b"\xce"
    reader = FrameReader(FRAME_MAX, fuse_publish=True, assemble_bodies=True)
    frames, reads, position = [], [], 0
    while position < len(stream):
        buffer = reader.get_buffer()
        size = min(len(buffer), len(stream) - position, first if not reads else len(buffer))
        buffer[:size] = stream[position : position + size]
        position += size
        data = reader.received(size)
        reads.append((size, bool(data)))
        frames += reader.feed(data)
    assert reads == [(first, True), (chunk - 100, False), (8, True),
                     (len(body) - chunk, False), (1, True)]
    assert [kind for kind, _, _ in frames] == [c.FRAME_METHOD, c.FRAME_HEADER,
                                                c.FRAME_BODY, c.FRAME_BODY]
    assembled = body_of([payload for kind, _, payload in frames if kind == c.FRAME_BODY])
    assert type(assembled) is BodyBuffer and assembled == body
