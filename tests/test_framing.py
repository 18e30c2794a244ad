"""FrameReader and frame writers: property tests, no sockets."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp import frame as pamqp_frame

from protocol import constants as c
from protocol.errors import AMQPError, FrameError
from protocol.framing import FrameReader, append_content, method_frame
from protocol.methods import decode_method, encode_method, make

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
