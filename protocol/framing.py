"""Incremental frame reader and frame writers.

``FrameReader`` takes bytes as they arrive and yields complete frames; a partial frame stays
in its buffer for the next call. The buffer is compacted once per ``feed`` call, never per frame.
With ``fuse_publish`` it yields the commonest sequence, a basic.publish method frame followed
by its content header and (at most) one body frame on the same channel, as one item of type
``FRAME_PUBLISH`` whose payload is ``(method, header, body)``: the broker then handles a
message in one step instead of three.

Large frames are not copied more than they must be: a body frame of at least ``VIEW_MIN``
octets that arrived whole in one read is handed out as a memoryview slice of that read, and a
frame of at least ``VIEW_MIN`` octets that spans reads is gathered as a list of the reads
(never re-concatenated with each read) and joined once when its last octet arrives. A
memoryview keeps its whole read alive: the receiver must copy it (``bytes``) before keeping
it beyond the current message (the channel makes a body's frames one object: ``body_of``).

With ``assemble_bodies``, a body of ``VIEW_MIN`` to ``ASSEMBLE_MAX`` octets that does not
arrive in one read is assembled in place: from its first body frame on, the reader writes the
body's frames one after another into one ``BodyBuffer`` of the size its content header gave,
and yields each frame's payload as a slice of it; ``body_of`` then returns the buffer itself,
without a join. Used as a buffered protocol (``get_buffer`` / ``received``), the reader lets
the socket read such a frame's payload straight into its place: the octets of a large body
are copied by the kernel only.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from leveret.protocol import constants as c
from leveret.protocol.errors import FrameError

_FRAME_HEADER = struct.Struct(">BHI")
_pack_header = _FRAME_HEADER.pack
_unpack_header = _FRAME_HEADER.unpack_from
# The smallest payload of each frame type (RabbitMQ's ``analyze_frame``): a method holds its
# class and method ids, a content header its class, weight and body size. Any other type
# (heartbeats included) takes the slow check; a heartbeat must be empty.
_NEVER = 1 << 40
_MIN_PAYLOAD = tuple(
    {c.FRAME_METHOD: 4, c.FRAME_HEADER: 12, c.FRAME_BODY: 0}.get(kind, _NEVER)
    for kind in range(256)
)
_HEARTBEAT = c.FRAME_HEARTBEAT
_PUBLISH_ID = c.BASIC_PUBLISH.to_bytes(4, "big")
_CONTENT_START = struct.Struct(">BHI4xQ")  # a header frame's header, up to the body size
_unpack_content_start = _CONTENT_START.unpack_from
_unpack_body_size = struct.Struct(">Q").unpack_from

VIEW_MIN = 4096
"""Frames from this size on are read without extra copies (see above)."""
ASSEMBLE_MAX = 16 * 1024 * 1024
"""The largest body assembled in place (its buffer is allocated at its first body frame)."""
RECEIVE_BUFFER = 256 * 1024
"""The size of a scratch buffer for ``get_buffer`` reads (uvloop reads 256 KB at a time)."""


class BodyBuffer(bytearray):
    """A message body the reader assembled in place (see the module docstring). It is never
    written after its last frame was read: treat it as bytes."""

    __slots__ = ()


class _Assembly:
    """A body being assembled: its buffer and how much of it frames have claimed."""

    __slots__ = ("buffer", "channel", "claimed", "view")

    def __init__(self, channel: int, size: int) -> None:
        self.channel = channel
        self.buffer = BodyBuffer(size)
        self.view = memoryview(self.buffer)
        self.claimed = 0

Frame = tuple[int, int, bytes]
"""(frame type, channel number, payload); a large body frame's payload may be a memoryview."""

PublishPayload = tuple[bytes, bytes, bytes | None]
"""A fused basic.publish: method payload, content header payload, body (None: no body frame)."""


class FrameReader:
    """Splits a byte stream into AMQP frames.

    ``frame_max`` is the largest frame payload the peer may send. A bigger frame or a
    missing end byte raises ``FrameError`` and the reader has lost sync with the stream: it
    drops what it holds and ignores everything fed after (as RabbitMQ stops reading). A
    complete frame of an unknown type, a non-empty heartbeat, or a method or content header
    too short for its fixed fields raises ``FrameError`` too (RabbitMQ's ``unknown_frame``),
    but the frames after it can still be read (a connection.close-ok, say). Each payload is
    one slice (one copy) of the received bytes, or none for a large body frame (see the module
    docstring); only an incomplete frame at the end is kept for the next call.
    """

    __slots__ = ("_announced", "_assembly", "_buffer", "_dest", "_direct", "_fill", "_large",
                 "_need", "_parts", "_scratch", "assemble_bodies", "failed", "frame_max",
                 "fuse_publish")

    def __init__(self, frame_max: int = c.FRAME_MIN_SIZE, fuse_publish: bool = False,
                 assemble_bodies: bool = False, scratch: bytearray | None = None) -> None:
        self._buffer = b""
        self._parts: list | None = None  # a large frame's payload so far, read by read
        self._large = (0, 0, 0)  # that frame's (type, channel, size)
        self._need = 0  # its payload octets still to come (then its end octet)
        self._dest: memoryview | None = None  # an assembled body frame's place, being filled
        self._fill = 0  # how much of it is filled
        self._assembly: _Assembly | None = None  # the body being assembled, while it takes frames
        self._announced = (-1, 0)  # the last content header's (channel, body size)
        # where reads go (get_buffer): shared by a broker's connections, made when first used
        self._scratch = memoryview(scratch) if scratch is not None else None
        self._direct = False  # the last get_buffer handed out self._dest
        self.frame_max = frame_max
        self.fuse_publish = fuse_publish
        self.assemble_bodies = assemble_bodies
        self.failed = False  # lost sync after a fatal frame error: input is ignored

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        if self._parts is not None:
            return c.FRAME_HEADER_SIZE + self._large[2] - self._need
        if self._dest is not None:
            return c.FRAME_HEADER_SIZE + self._fill
        return len(self._buffer)

    def get_buffer(self) -> memoryview:
        """Where the next read should go (``asyncio.BufferedProtocol.get_buffer``): the rest of
        an assembled body frame's payload, else the scratch buffer (only the 8 octets of a
        frame end and the next frame header while a body being assembled expects more, so
        that its next frame's payload is read into place too)."""
        dest = self._dest
        if dest is not None and self._fill < len(dest):
            self._direct = True
            return dest[self._fill :]
        self._direct = False
        scratch = self._scratch
        if scratch is None:
            scratch = self._scratch = memoryview(bytearray(RECEIVE_BUFFER))
        if dest is not None and self._assembly is not None:
            return scratch[: 1 + c.FRAME_HEADER_SIZE]
        return scratch

    def received(self, nbytes: int) -> bytes:
        """``nbytes`` were read into the last ``get_buffer``: the octets to ``feed`` (b"" when
        they went straight into a body frame's place)."""
        if self._direct:
            self._direct = False
            self._fill += nbytes
            return b""
        return self._scratch[:nbytes].tobytes()  # type: ignore[index]

    def feed(self, data: bytes) -> Iterator[Frame]:
        """Add ``data`` and yield each complete frame now available, in order."""
        if self.failed:
            return
        offset = 0
        large = None
        if self._dest is not None:  # the rest of an assembled body frame
            offset = self._fill_dest(data)
            if offset < 0:
                return
            large = (c.FRAME_BODY, self._large[1], self._dest)
            self._dest = None
            offset += 1
        elif self._parts is not None:  # the rest of a large frame
            need = self._need
            if len(data) <= need:
                self._parts.append(data)
                self._need = need - len(data)
                return
            large = self._large_frame(data, need)
            offset = need + 1
        elif self._buffer:
            data = self._buffer + data
            self._buffer = b""
        end = len(data)
        header_size = c.FRAME_HEADER_SIZE
        min_payload = _MIN_PAYLOAD
        view = None
        try:
            if large is not None:
                yield large
            while end - offset >= header_size:
                frame_type, channel, size = _unpack_header(data, offset)
                if size > self.frame_max:  # RabbitMQ lets the 8 bytes of framing slip
                    self._fail()
                    raise FrameError(
                        f"type {frame_type}, all octets = <<>>: "
                        f"{{frame_too_large,{size},{self.frame_max - c.FRAME_OVERHEAD}}}"
                    )
                start = offset + header_size
                frame_end = start + size
                place = None  # an assembled body's frame: its slice of the body's buffer
                if self.assemble_bodies and (frame_type == c.FRAME_BODY or self._assembly
                                             is not None or frame_type == c.FRAME_HEADER):
                    place = self._place(frame_type, channel, size, data, start)
                if frame_end >= end:  # the rest is to come
                    if place is not None:  # read into its place
                        place[: end - start] = memoryview(data)[start:end]
                        self._large = (frame_type, channel, size)
                        self._dest = place
                        self._fill = end - start
                        offset = end
                    elif size >= VIEW_MIN and min_payload[frame_type] < _NEVER:
                        # a large frame: its reads are gathered until it is whole
                        if view is None:
                            view = memoryview(data)
                        self._large = (frame_type, channel, size)
                        self._parts = [view[start:]]
                        self._need = frame_end - end
                        offset = end
                    break
                if data[frame_end] != c.FRAME_END:
                    raise self._bad_end(frame_type, data[start:frame_end], data[frame_end])
                if place is not None:
                    place[:] = memoryview(data)[start:frame_end]
                    payload = place
                elif size >= VIEW_MIN and frame_type == c.FRAME_BODY:
                    if view is None:
                        view = memoryview(data)
                    payload = view[start:frame_end]
                else:
                    payload = data[start:frame_end]
                offset = frame_end + 1
                if size < min_payload[frame_type] and (frame_type != _HEARTBEAT or size):
                    raise FrameError(f"type {frame_type}, {octets(payload)}: unknown_frame")
                if frame_type == c.FRAME_METHOD and self.fuse_publish and (
                        payload.startswith(_PUBLISH_ID)):
                    fused = self._content_after(data, offset, end, channel)
                    if fused is not None:
                        header, body, offset = fused
                        yield c.FRAME_PUBLISH, channel, (payload, header, body)  # type: ignore[misc]
                        continue
                yield frame_type, channel, payload
        finally:
            if offset < end and not self.failed:
                self._buffer = data[offset:] if offset else data

    def _place(self, frame_type: int, channel: int, size: int, data: bytes,
               start: int) -> memoryview | None:
        """Where an assembled body's frame goes: its slice of the body's buffer, claimed now;
        None for any other frame. A content header announces a body (its size is read when
        the header is in ``data``); any frame of the channel that breaks the sequence (too
        long, not a body frame) ends the assembly, and the frames go the usual way, to be
        refused by the channel as they would be."""
        assembly = self._assembly
        if assembly is not None and assembly.channel == channel:
            claimed = assembly.claimed
            if frame_type == c.FRAME_BODY and claimed + size <= len(assembly.buffer):
                assembly.claimed = claimed + size
                if assembly.claimed == len(assembly.buffer):
                    self._assembly = None  # its last frame: complete once this is read
                return assembly.view[claimed : claimed + size]
            self._assembly = None
        if frame_type == c.FRAME_HEADER:
            self._announced = (channel, _unpack_body_size(data, start + 4)[0]
                               if len(data) >= start + 12 else 0)
        elif frame_type == c.FRAME_BODY and self._announced[0] == channel:
            body_size = self._announced[1]
            self._announced = (-1, 0)
            if VIEW_MIN <= body_size <= ASSEMBLE_MAX and size <= body_size and (
                    size < body_size or start + size >= len(data)) and self._assembly is None:
                # (a body that is one frame, all in this read, needs no assembly)
                self._assembly = _Assembly(channel, body_size)
                return self._place(frame_type, channel, size, data, start)
        return None

    def _fill_dest(self, data: bytes) -> int:
        """Copy what ``data`` holds of the assembled frame being read into its place: the
        offset of the frame's end octet in ``data`` (checked), or -1 while more is to come."""
        dest = self._dest
        assert dest is not None
        fill = self._fill
        need = len(dest) - fill
        if need:
            taken = min(need, len(data))
            dest[fill : fill + taken] = memoryview(data)[:taken]
            self._fill = fill + taken
            if taken == len(data):
                return -1
        else:
            taken = 0
        if not data:
            return -1
        if data[taken] != c.FRAME_END:
            raise self._bad_end(c.FRAME_BODY, bytes(dest), data[taken])
        return taken

    def _large_frame(self, data: bytes, need: int) -> Frame:
        """The large frame gathered so far, completed by the first ``need`` octets of
        ``data`` (which holds its end octet too): its payload joined in one copy."""
        parts = self._parts
        assert parts is not None
        self._parts = None
        frame_type, channel, _size = self._large
        if need:
            parts.append(memoryview(data)[:need])
        payload = b"".join(parts)
        if data[need] != c.FRAME_END:
            raise self._bad_end(frame_type, payload, data[need])
        return frame_type, channel, payload

    def _bad_end(self, frame_type: int, payload: bytes, octet: int) -> FrameError:
        """A frame's end octet is wrong: the reader has lost sync (RabbitMQ's words)."""
        self._fail()
        return FrameError(
            f"type {frame_type}, {octets(payload)}: {{invalid_frame_end_marker,{octet}}}")

    def _fail(self) -> None:
        """Lost sync with the stream: nothing more can be read from it."""
        self.failed = True
        self._buffer = b""
        self._parts = None
        self._dest = None
        self._assembly = None

    def _content_after(
        self, data: bytes, offset: int, end: int, channel: int
    ) -> tuple[bytes, bytes | None, int] | None:
        """The content header and single body frame at ``offset``, with the offset after
        them, when both are complete, well formed and on ``channel``; otherwise None (the
        frames then go through one by one, with every check and error of that path)."""
        header_size = c.FRAME_HEADER_SIZE
        if end - offset < _CONTENT_START.size:
            return None
        frame_type, number, size, body_size = _unpack_content_start(data, offset)
        start = offset + header_size
        frame_end = start + size
        if (frame_type != c.FRAME_HEADER or number != channel or size < 12
                or size > self.frame_max or frame_end >= end or data[frame_end] != c.FRAME_END):
            return None
        header = data[start:frame_end]
        if body_size == 0:
            return header, None, frame_end + 1
        offset = frame_end + 1
        if end - offset < header_size:
            return None
        frame_type, number, size = _unpack_header(data, offset)
        start = offset + header_size
        frame_end = start + size
        if (frame_type != c.FRAME_BODY or number != channel or size != body_size
                or size > self.frame_max or frame_end >= end or data[frame_end] != c.FRAME_END):
            return None
        return header, data[start:frame_end], frame_end + 1


def body_of(parts: list) -> bytes:
    """A message body from its frames' payloads, in order: the ``BodyBuffer`` they were
    assembled in when they are all of it (no copy), else their octets joined once."""
    first = parts[0]
    if type(first) is memoryview:
        whole = first.obj
        if type(whole) is BodyBuffer and sum(map(len, parts)) == len(whole) and all(
                type(part) is memoryview and part.obj is whole for part in parts):
            return whole  # type: ignore[return-value]
        if len(parts) == 1:
            return first.tobytes()
    elif len(parts) == 1:
        return first
    return b"".join(parts)


def unfuse(payload: PublishPayload) -> list[tuple[int, bytes]]:
    """The (frame type, payload) frames a ``FRAME_PUBLISH`` item was made of."""
    method, header, body = payload
    frames = [(c.FRAME_METHOD, method), (c.FRAME_HEADER, header)]
    if body is not None:
        frames.append((c.FRAME_BODY, body))
    return frames


# How Erlang's ~p writes each byte of a printable (Latin-1) binary: escapes for the control
# characters it accepts, and bytes 160-255 as themselves (as surrogate escapes here, so the
# reply text carries the raw byte when encoded with "surrogateescape", as RabbitMQ's does).
_ERLANG_CHAR: dict[int, str] = {
    **{b: chr(b) for b in range(32, 127)},
    **{b: chr(0xDC00 + b) for b in range(160, 256)},
    8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r", 27: "\\e",
    34: '\\"', 92: "\\\\",
}


def erlang_binary(data: bytes, limit: int = 64) -> str:
    """Bytes written the way RabbitMQ's error texts show them: <<"text">> or <<1,2,3>>."""
    data = data[:limit]
    chars = _ERLANG_CHAR
    if data and all(b in chars for b in data):
        return '<<"' + "".join(chars[b] for b in data) + '">>'
    return "<<" + ",".join(str(b) for b in data) + ">>"


def erlang_octets(data: bytes, limit: int = 128) -> str:
    """Bytes the way Erlang's ~w writes a binary, every octet a number: <<0,97,98>> (RabbitMQ's
    ``cannot decode`` texts). Octets past ``limit`` are left out: the text is already longer
    than a reply text keeps (``AMQPError.reply_text``)."""
    return "<<" + ",".join(map(str, data[:limit])) + ">>"


def octets(payload: bytes) -> str:
    """RabbitMQ's ``all octets = <<...>>``, or ``first 16 octets = <<...>>`` for a longer
    payload, in frame error texts."""
    if len(payload) <= 16:
        return f"all octets = {erlang_binary(payload)}"
    return f"first 16 octets = {erlang_binary(payload[:16])}"


def method_frame(channel: int, payload: bytes) -> bytes:
    """A method frame around an encoded method (4-byte method index included)."""
    return _pack_header(c.FRAME_METHOD, channel, len(payload)) + payload + c.FRAME_END_BYTE


HEARTBEAT = _pack_header(c.FRAME_HEARTBEAT, 0, 0) + c.FRAME_END_BYTE


def append_content(
    out: list, channel: int, header_payload: bytes, body: bytes, frame_max: int
) -> None:
    """Append a content header frame and as many body frames as ``frame_max`` requires."""
    out += (
        _pack_header(c.FRAME_HEADER, channel, len(header_payload)),
        header_payload,
        c.FRAME_END_BYTE,
    )
    size = len(body)
    if not size:
        return
    chunk = frame_max - c.FRAME_OVERHEAD
    if size <= chunk:
        out += (_pack_header(c.FRAME_BODY, channel, size), body, c.FRAME_END_BYTE)
        return
    view = memoryview(body)
    for start in range(0, size, chunk):
        piece = view[start : start + chunk]
        out += (_pack_header(c.FRAME_BODY, channel, len(piece)), piece, c.FRAME_END_BYTE)


GATHER_PART_MIN = 16 * 1024
"""Parts at least this long go to a gathered write as they are; shorter runs are joined."""


def gather(parts: list, large: int = GATHER_PART_MIN) -> tuple[list, int]:
    """``parts`` for a gathered write (``writelines``): large parts (bodies, or memoryview
    slices of them) as they are, each run of small ones joined into one; with the total
    length. No large part is copied."""
    gathered: list = []
    run: list = []
    total = 0
    for part in parts:
        size = len(part)
        total += size
        if size < large:
            run.append(part)
            continue
        if run:
            gathered.append(b"".join(run))
            run = []
        gathered.append(part)
    if run:
        gathered.append(b"".join(run))
    return gathered, total
