"""Raw-socket protocol error handling, matched against RabbitMQ 3.10.8.

Every expectation below was first observed on a real RabbitMQ 3.10.8 and then encoded
("agreed with RabbitMQ 3.10.8"). Reply texts are asserted by their ``NAME - `` prefix;
RabbitMQ's exact wording is recorded next to each case (often an Erlang term dump, which
Leveret need not copy). After every error a fresh connection must be served normally.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from conftest import BrokerAddress
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from rawamqp import (
    FRAME_BODY,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    PROTOCOL_HEADER,
    MethodFrame,
    RawClient,
    RawFrame,
    connect,
    describe,
    encode_raw_frame,
    method_payload,
)

pytestmark = pytest.mark.timeout(20)

# How long a broker may take to drop a connection after a handshake error. RabbitMQ waits
# 3 s (its anti-brute-force SILENT_CLOSE_DELAY); Leveret may be faster.
SILENT_CLOSE_TIMEOUT = 6.0


def assert_served(broker: BrokerAddress, unique: str) -> None:
    """A fresh connection still works: open a channel, declare a queue, close politely."""
    client = connect(broker.host, broker.port)
    try:
        client.open_channel(1)
        client.send_method(1, commands.Queue.Declare(queue=f"{unique}-alive", exclusive=True))
        ok = client.expect_method(commands.Queue.DeclareOk, channel=1)
        assert ok.queue == f"{unique}-alive"
        client.close_connection()
    finally:
        client.close_socket()


def assert_close(
    close: commands.Connection.Close | commands.Channel.Close,
    prefix: str,
    class_id: int,
    method_id: int,
) -> None:
    assert close.reply_text.startswith(prefix), f"{describe(close)}: wanted prefix {prefix!r}"
    assert (close.class_id, close.method_id) == (class_id, method_id), (
        f"{describe(close)}: wanted class_id={class_id}, method_id={method_id}"
    )


@contextlib.contextmanager
def open_client(broker: BrokerAddress, **handshake: Any) -> Iterator[RawClient]:
    """A raw client past the handshake; the socket is dropped on exit."""
    client = connect(broker.host, broker.port, **handshake)
    try:
        yield client
    finally:
        client.close_socket()


@pytest.fixture
def client(broker: BrokerAddress) -> Iterator[RawClient]:
    """A raw client past the handshake, with channel 1 open."""
    with open_client(broker) as c:
        c.open_channel(1)
        yield c


# -- protocol header -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [b"AMQP\x00\x00\x08\x00", b"HTTP/1.1", b"AMQP\x00\x00\x09\x02", b"GET / HTTP/1.1\r\n\r\n"],
    ids=["amqp-0-8", "http-8-bytes", "amqp-0-9-2", "http-request"],
)
def test_bad_protocol_header(broker: BrokerAddress, unique: str, header: bytes) -> None:
    """An unsupported header is answered with the 0-9-1 header, then the socket is closed.

    agreed with RabbitMQ 3.10.8: exactly b'AMQP\\x00\\x00\\x09\\x01', then EOF/RST, no frames.
    """
    with RawClient(broker.host, broker.port) as c:
        c.send_raw(header)
        assert c.read_exactly(8) == PROTOCOL_HEADER
        assert c.expect_socket_closed() == []
    assert_served(broker, unique)


# -- framing errors: 501 FRAME_ERROR ------------------------------------------------------------


def _frames_fit(frames: list[RawFrame], frame_max: int) -> None:
    for f in frames:
        assert len(f.payload) + 8 <= frame_max, f"server sent a {len(f.payload) + 8}-byte frame"


@pytest.mark.parametrize(
    ("frame_max", "kind"),
    [(4096, "body"), (4096, "method"), (None, "body")],
    ids=["4096-body", "4096-method", "server-offer-body"],
)
def test_frame_larger_than_frame_max(
    broker: BrokerAddress, unique: str, frame_max: int | None, kind: str
) -> None:
    """A frame beyond the negotiated frame_max is a connection error 501.

    agreed with RabbitMQ 3.10.8: connection.close(501, class 0, method 0), e.g.
    'FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,5000,4088}'. (RabbitMQ
    itself only rejects payloads > frame_max, i.e. it tolerates 8 bytes of slack, so the
    frames below overshoot by more than that.)
    """
    with open_client(broker, frame_max=frame_max) as c:
        c.open_channel(1)
        limit = c.frame_max
        if limit == 0:
            pytest.skip("the server offered no frame_max limit")
        oversize = limit + 16
        if kind == "body":
            c.send_method(1, commands.Basic.Publish(exchange="", routing_key=unique))
            c.send(ContentHeader(0, oversize), 1)
            frame = encode_raw_frame(FRAME_BODY, 1, b"x" * oversize)
        else:
            publish = method_payload(commands.Basic.Publish(exchange="", routing_key=unique))
            frame = encode_raw_frame(FRAME_METHOD, 1, publish + b"\0" * oversize)
        # The server may reject the frame from its header alone and close before we are done.
        with contextlib.suppress(OSError):
            c.send_raw(frame)
        close = c.expect_connection_close(501)
        assert_close(close, "FRAME_ERROR - ", 0, 0)
        c.expect_socket_closed()
    assert_served(broker, unique)


def test_frame_of_exactly_frame_max_is_accepted(broker: BrokerAddress, unique: str) -> None:
    """A body frame of exactly frame_max octets (header + payload + end) is fine, and the
    server's own frames never exceed the negotiated frame_max when delivering it back."""
    with open_client(broker, frame_max=4096) as c:
        c.open_channel(1)
        c.send_method(1, commands.Queue.Declare(queue=unique, exclusive=True))
        c.expect_method(commands.Queue.DeclareOk, channel=1)
        body = b"y" * (4096 - 8)
        c.send_method(1, commands.Basic.Publish(exchange="", routing_key=unique))
        c.send_content(1, body)
        c.send_method(1, commands.Basic.Get(queue=unique, no_ack=True))
        frames = [c.read_non_heartbeat() for _ in range(3)]
        assert isinstance(frames[0].value, commands.Basic.GetOk)
        assert isinstance(frames[1].value, ContentHeader)
        assert frames[1].value.body_size == len(body)
        received = b"".join(f.payload for f in frames[2:])
        while len(received) < len(body):
            more = c.read_non_heartbeat()
            frames.append(more)
            received += more.payload
        assert received == body
        _frames_fit(frames, 4096)
        c.close_connection()


def test_frame_without_frame_end(broker: BrokerAddress, unique: str) -> None:
    """A frame whose last octet is not 0xCE is a connection error 501.

    agreed with RabbitMQ 3.10.8: connection.close(501, class 0, method 0),
    'FRAME_ERROR - type 1, all octets = <<0,50,0,10,...>>: {invalid_frame_end_marker,0}'.
    """
    with open_client(broker) as c:
        c.open_channel(1)
        declare = method_payload(commands.Queue.Declare(queue=unique, exclusive=True))
        c.send_raw(encode_raw_frame(FRAME_METHOD, 1, declare, end=0x00))
        close = c.expect_connection_close(501)
        assert_close(close, "FRAME_ERROR - ", 0, 0)
        c.expect_socket_closed()
    assert_served(broker, unique)


# (name, raw frame, reply code, prefix, class, method, RabbitMQ 3.10.8's exact reply_text)
MALFORMED_FRAMES = [
    (
        "unknown-frame-type",
        encode_raw_frame(9, 0, b"xx"),
        501, "FRAME_ERROR - ", 0, 0,
        'FRAME_ERROR - type 9, all octets = <<"xx">>: unknown_frame',
    ),
    (
        "heartbeat-with-payload",
        encode_raw_frame(FRAME_HEARTBEAT, 0, b"xx"),
        501, "FRAME_ERROR - ", 0, 0,
        'FRAME_ERROR - type 8, all octets = <<"xx">>: unknown_frame',
    ),
    (
        "heartbeat-on-channel-1",
        encode_raw_frame(FRAME_HEARTBEAT, 1, b""),
        505, "UNEXPECTED_FRAME - ", 0, 0,
        "UNEXPECTED_FRAME - type 8, all octets = <<>>",
    ),
    (
        "truncated-method-arguments",
        encode_raw_frame(FRAME_METHOD, 1, struct.pack(">HH", 50, 10) + b"\x00"),
        501, "FRAME_ERROR - ", 50, 10,
        "FRAME_ERROR - cannot decode <<0>>",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("frame", "code", "prefix", "class_id", "method_id", "rabbitmq_text"),
    [case[1:] for case in MALFORMED_FRAMES],
    ids=[case[0] for case in MALFORMED_FRAMES],
)
def test_malformed_frame(
    client: RawClient,
    broker: BrokerAddress,
    unique: str,
    frame: bytes,
    code: int,
    prefix: str,
    class_id: int,
    method_id: int,
    rabbitmq_text: str,
) -> None:
    """Malformed frames are connection errors. agreed with RabbitMQ 3.10.8 (see table)."""
    client.send_raw(frame)
    close = client.expect_connection_close(code)
    assert_close(close, prefix, class_id, method_id)
    client.expect_socket_closed()
    assert_served(broker, unique)


# -- channel errors: 504 CHANNEL_ERROR ----------------------------------------------------------

UNOPENED_CHANNEL_CASES = [
    # (id, channel, method, class, method id, RabbitMQ 3.10.8's exact reply_text)
    ("queue.declare", 3, commands.Queue.Declare(queue="q", exclusive=True), 50, 10,
     "CHANNEL_ERROR - expected 'channel.open'"),
    ("channel.close", 5, commands.Channel.Close(200, "", 0, 0), 20, 40,
     "CHANNEL_ERROR - expected 'channel.open'"),
    ("channel.close-ok", 5, commands.Channel.CloseOk(), 20, 41,
     "CHANNEL_ERROR - expected 'channel.open'"),
    ("queue.declare-on-0", 0, commands.Queue.Declare(queue="q", exclusive=True), 50, 10,
     "CHANNEL_ERROR - unexpected method in connection state running"),
    ("channel.open-on-0", 0, commands.Channel.Open(), 20, 10,
     "CHANNEL_ERROR - unexpected method in connection state running"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("channel", "method", "class_id", "method_id", "rabbitmq_text"),
    [case[1:] for case in UNOPENED_CHANNEL_CASES],
    ids=[case[0] for case in UNOPENED_CHANNEL_CASES],
)
def test_method_on_channel_not_open(
    broker: BrokerAddress,
    unique: str,
    channel: int,
    method: MethodFrame,
    class_id: int,
    method_id: int,
    rabbitmq_text: str,
) -> None:
    """A method on a channel that was never opened (or a channel method on channel 0) is a
    connection error 504. agreed with RabbitMQ 3.10.8 (see table)."""
    with open_client(broker) as c:
        c.send_method(channel, method)
        close = c.expect_connection_close(504)
        assert_close(close, "CHANNEL_ERROR - ", class_id, method_id)
        c.expect_socket_closed()
    assert_served(broker, unique)


def test_second_channel_open(client: RawClient, broker: BrokerAddress, unique: str) -> None:
    """channel.open on an already open channel is a connection error 504.

    agreed with RabbitMQ 3.10.8: connection.close(504, class 20, method 10),
    "CHANNEL_ERROR - second 'channel.open' seen".
    """
    client.send_method(1, commands.Channel.Open())
    close = client.expect_connection_close(504)
    assert_close(close, "CHANNEL_ERROR - ", 20, 10)
    client.expect_socket_closed()
    assert_served(broker, unique)


# -- connection.open / authentication ---------------------------------------------------------


def test_open_unknown_vhost(broker: BrokerAddress, unique: str) -> None:
    """connection.open of a missing vhost is refused with 530.

    agreed with RabbitMQ 3.10.8: connection.close(530, class 10, method 40),
    'NOT_ALLOWED - vhost <name> not found'.
    """
    with RawClient(broker.host, broker.port) as c:
        c.handshake(open_vhost=False)
        c.send_method(0, commands.Connection.Open(virtual_host=f"{unique}-novhost"))
        close = c.expect_connection_close(530)
        assert_close(close, "NOT_ALLOWED - ", 10, 40)
        assert f"{unique}-novhost" in close.reply_text
        c.expect_socket_closed()
    assert_served(broker, unique)


@pytest.mark.parametrize(
    ("username", "password"), [("guest", "wrong"), ("no-such-user", "guest")],
    ids=["wrong-password", "unknown-user"],
)  # fmt: skip
def test_auth_failure_with_authentication_failure_close(
    broker: BrokerAddress, unique: str, username: str, password: str
) -> None:
    """With the authentication_failure_close capability, bad credentials get a 403 close.

    agreed with RabbitMQ 3.10.8: connection.close(403, class 0, method 0) sent at once,
    'ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details
    see the broker logfile.'; after our close-ok the socket is closed immediately.
    """
    with RawClient(broker.host, broker.port) as c:
        c.start(username=username, password=password, auth_failure_close=True)
        close = c.expect_connection_close(403)
        assert_close(close, "ACCESS_REFUSED - ", 0, 0)
        assert "PLAIN" in close.reply_text
        assert c.expect_socket_closed() == []
    assert_served(broker, unique)


# -- handshake errors answered by silently closing the socket --------------------------------
#
# agreed with RabbitMQ 3.10.8: for all of these RabbitMQ sends *no* frame at all and closes
# the socket 3 s later. The cases run concurrently so the whole group costs ~3 s.


def _auth_failure_without_capability(broker: BrokerAddress, username: str) -> list[RawFrame]:
    with RawClient(broker.host, broker.port, timeout=SILENT_CLOSE_TIMEOUT) as c:
        c.start(username=username, password="wrong", auth_failure_close=False)
        return c.expect_socket_closed(SILENT_CLOSE_TIMEOUT)


def _bad_tune_ok(broker: BrokerAddress, field: str, value: Callable[[int], int]) -> list[RawFrame]:
    with RawClient(broker.host, broker.port, timeout=SILENT_CLOSE_TIMEOUT) as c:
        c.start()
        tune = c.expect_method(commands.Connection.Tune, channel=0)
        tune_ok = {
            "channel_max": tune.channel_max,
            "frame_max": tune.frame_max,
            "heartbeat": 0,
        }
        tune_ok[field] = value(getattr(tune, field))
        c.send_method(0, commands.Connection.TuneOk(**tune_ok))
        # A well-behaved client would now send connection.open; it must not be answered.
        c.send_method(0, commands.Connection.Open(virtual_host="/"))
        return c.expect_socket_closed(SILENT_CLOSE_TIMEOUT)


SILENT_CLOSE_CASES: dict[str, Callable[[BrokerAddress], list[RawFrame]]] = {
    "wrong-password-no-capability": lambda b: _auth_failure_without_capability(b, "guest"),
    "unknown-user-no-capability": lambda b: _auth_failure_without_capability(b, "no-such-user"),
    "frame_max-4095": lambda b: _bad_tune_ok(b, "frame_max", lambda _offer: 4095),
    "frame_max-1": lambda b: _bad_tune_ok(b, "frame_max", lambda _offer: 1),
    "frame_max-above-offer": lambda b: _bad_tune_ok(b, "frame_max", lambda offer: offer + 1),
    # 0 means "no limit", which exceeds RabbitMQ's offer of 131072.
    "frame_max-0": lambda b: _bad_tune_ok(b, "frame_max", lambda _offer: 0),
    "channel_max-above-offer": lambda b: _bad_tune_ok(b, "channel_max", lambda offer: offer + 1),
    "channel_max-0": lambda b: _bad_tune_ok(b, "channel_max", lambda _offer: 0),
}


@pytest.fixture(scope="module")
def silent_close_results(broker: BrokerAddress) -> Iterator[dict[str, Future[list[RawFrame]]]]:
    """Start every silent-close scenario at once; tests then collect their own result."""
    with ThreadPoolExecutor(max_workers=len(SILENT_CLOSE_CASES)) as pool:
        yield {name: pool.submit(case, broker) for name, case in SILENT_CLOSE_CASES.items()}


@pytest.mark.parametrize("case", list(SILENT_CLOSE_CASES))
def test_handshake_error_closes_socket_silently(
    silent_close_results: dict[str, Future[list[RawFrame]]],
    broker: BrokerAddress,
    unique: str,
    case: str,
) -> None:
    """Bad credentials without authentication_failure_close, and a tune-ok with frame_max
    below 4096 / above the offer (or channel_max above the offer), make the server drop the
    socket without sending any frame (in particular no connection.open-ok)."""
    frames = silent_close_results[case].result(timeout=SILENT_CLOSE_TIMEOUT + 5)
    assert frames == [], f"expected a silent close, got {frames!r}"
    assert_served(broker, unique)


# -- content errors: 505 UNEXPECTED_FRAME -----------------------------------------------------


def _publish(c: RawClient, routing_key: str) -> None:
    c.send_method(1, commands.Basic.Publish(exchange="", routing_key=routing_key))


def _declare(c: RawClient, rk: str) -> None:
    c.send_method(1, commands.Queue.Declare(queue=f"{rk}-x", exclusive=True))


CONTENT_CASES: list[tuple[str, Callable[[RawClient, str], None], int, int, str]] = [
    # (id, scenario(client, routing key), class, method, RabbitMQ 3.10.8's exact reply_text)
    (
        "body-without-header",
        lambda c, rk: (_publish(c, rk), c.send(ContentBody(b"abc"), 1)),
        60, 40,
        "UNEXPECTED_FRAME - expected content header for class 60, "
        "got non content header frame instead",
    ),
    (
        "body-without-publish",
        lambda c, rk: c.send(ContentBody(b"abc"), 1),
        0, 0,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
    ),
    (
        "header-without-publish",
        lambda c, rk: c.send(ContentHeader(0, 3), 1),
        0, 0,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
    ),
    (
        "method-instead-of-header",
        lambda c, rk: (_publish(c, rk), _declare(c, rk)),
        60, 40,
        "UNEXPECTED_FRAME - expected content header for class 60, "
        "got non content header frame instead",
    ),
    (
        "method-in-middle-of-body",
        lambda c, rk: (
            _publish(c, rk), c.send(ContentHeader(0, 10), 1),
            c.send(ContentBody(b"abc"), 1), _declare(c, rk),
        ),
        60, 40,
        "UNEXPECTED_FRAME - expected content body, got non content body frame instead",
    ),
    (
        # The empty message itself is complete and valid, so route it nowhere.
        "body-after-empty-content",
        lambda c, rk: (_publish(c, f"{rk}-unrouted"), c.send(ContentHeader(0, 0), 1),
                       c.send(ContentBody(b"x"), 1)),
        0, 0,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
    ),
    (
        "header-for-wrong-class",
        lambda c, rk: (_publish(c, rk),
                       c.send_raw(encode_raw_frame(2, 1, struct.pack(">HHQH", 50, 0, 3, 0)))),
        60, 40,
        "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
    ),
    (
        # RabbitMQ does not notice the overrun when the body frame arrives: it keeps waiting
        # for "more" body, and the error surfaces with the next non-body frame (basic.qos).
        "body-longer-than-header",
        lambda c, rk: (_publish(c, rk), c.send(ContentHeader(0, 3), 1),
                       c.send(ContentBody(b"abcdef"), 1),
                       c.send_method(1, commands.Basic.Qos(prefetch_count=1))),
        60, 40,
        "UNEXPECTED_FRAME - expected content body, got non content body frame instead",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("scenario", "class_id", "method_id", "rabbitmq_text"),
    [case[1:] for case in CONTENT_CASES],
    ids=[case[0] for case in CONTENT_CASES],
)
def test_content_frame_errors(
    client: RawClient,
    broker: BrokerAddress,
    unique: str,
    scenario: Callable[[RawClient, str], None],
    class_id: int,
    method_id: int,
    rabbitmq_text: str,
) -> None:
    """Content frames out of order are connection errors 505; the message is not routed.

    agreed with RabbitMQ 3.10.8 (see table).
    """
    client.send_method(1, commands.Queue.Declare(queue=unique))  # non-exclusive: outlives us
    client.expect_method(commands.Queue.DeclareOk, channel=1)
    scenario(client, unique)
    close = client.expect_connection_close(505)
    assert_close(close, "UNEXPECTED_FRAME - ", class_id, method_id)
    client.expect_socket_closed()

    with open_client(broker) as c:
        c.open_channel(1)
        c.send_method(1, commands.Queue.Delete(queue=unique))
        deleted = c.expect_method(commands.Queue.DeleteOk, channel=1)
        assert deleted.message_count == 0, "a malformed publish was routed"
        c.close_connection()
    assert_served(broker, unique)


def test_content_may_interleave_across_channels(client: RawClient, unique: str) -> None:
    """Frames of other channels may arrive between a publish's method, header and body."""
    client.open_channel(2)
    client.send_method(1, commands.Queue.Declare(queue=unique, exclusive=True))
    client.expect_method(commands.Queue.DeclareOk, channel=1)
    client.send_method(1, commands.Basic.Publish(exchange="", routing_key=unique))
    client.send_method(2, commands.Queue.Declare(queue=f"{unique}-2", exclusive=True))
    client.send(ContentHeader(0, 6), 1)
    client.send_method(2, commands.Basic.Qos(prefetch_count=5))
    client.send(ContentBody(b"abc"), 1)
    client.send_raw(encode_raw_frame(FRAME_HEARTBEAT, 0, b""))
    client.send(ContentBody(b"def"), 1)
    client.send_method(1, commands.Basic.Get(queue=unique, no_ack=True))
    # Channels are independent: only the order *within* each channel is defined.
    by_channel: dict[int, list[RawFrame]] = {1: [], 2: []}
    while len(by_channel[1]) < 3 or len(by_channel[2]) < 2:
        f = client.read_non_heartbeat()
        assert f.channel in by_channel, f"unexpected {f!r}"
        by_channel[f.channel].append(f)
    declare_ok, qos_ok = (f.value for f in by_channel[2])
    assert isinstance(declare_ok, commands.Queue.DeclareOk)
    assert declare_ok.queue == f"{unique}-2"
    assert isinstance(qos_ok, commands.Basic.QosOk)
    get_ok, header, body = by_channel[1]
    assert isinstance(get_ok.value, commands.Basic.GetOk)
    assert get_ok.value.routing_key == unique
    assert isinstance(header.value, ContentHeader)
    assert header.value.body_size == 6
    assert body.frame_type == FRAME_BODY
    assert body.payload == b"abcdef"
    client.close_connection()


# -- channel.close handshake --------------------------------------------------------------------


def test_methods_after_server_channel_close_are_discarded(client: RawClient, unique: str) -> None:
    """Once the server has sent channel.close, everything on that channel except close-ok
    is dropped unanswered; close-ok frees the channel id for a new channel.open.

    agreed with RabbitMQ 3.10.8: channel.close(404, class 50, method 10),
    "NOT_FOUND - no queue '<name>' in vhost '/'"; no replies to the discarded methods
    (not even a second error for the second passive declare); no reply to close-ok.
    """
    missing = f"{unique}-missing"
    client.send_method(1, commands.Queue.Declare(queue=missing, passive=True))
    close = client.expect_channel_close(1, 404)
    assert_close(close, "NOT_FOUND - ", 50, 10)
    assert missing in close.reply_text

    client.send_method(1, commands.Queue.Declare(queue=unique, exclusive=True))
    client.send_method(1, commands.Basic.Qos(prefetch_count=1))
    client.send_method(1, commands.Basic.Publish(exchange="", routing_key=unique))
    client.send_content(1, b"dropped")
    client.send_method(1, commands.Exchange.Declare(exchange=unique, exchange_type="bogus"))
    client.send_method(1, commands.Queue.Declare(queue=missing, passive=True))
    client.expect_silence(0.5)

    client.send_method(1, commands.Channel.CloseOk())
    client.expect_silence(0.3)
    client.open_channel(1)
    # The discarded queue.declare really was discarded: the queue does not exist.
    client.send_method(1, commands.Queue.Declare(queue=unique, passive=True))
    client.expect_channel_close(1, 404)
    client.send_method(1, commands.Channel.CloseOk())
    client.open_channel(1)
    client.send_method(1, commands.Queue.Declare(queue=unique, exclusive=True))
    assert client.expect_method(commands.Queue.DeclareOk, channel=1).queue == unique
    client.close_connection()


# -- channel.flow -------------------------------------------------------------------------------


def test_channel_flow_active_true(client: RawClient, unique: str) -> None:
    """channel.flow(active=True) is answered with flow-ok(active=True); the channel lives on."""
    client.send_method(1, commands.Channel.Flow(active=True))
    flow_ok = client.expect_method(commands.Channel.FlowOk, channel=1)
    assert flow_ok.active is True
    client.send_method(1, commands.Queue.Declare(queue=unique, exclusive=True))
    client.expect_method(commands.Queue.DeclareOk, channel=1)
    client.close_connection()


def test_channel_flow_active_false(client: RawClient, broker: BrokerAddress, unique: str) -> None:
    """channel.flow(active=False) from a client is not supported.

    agreed with RabbitMQ 3.10.8: connection.close(540, class 20, method 20),
    'NOT_IMPLEMENTED - active=false'.
    """
    client.send_method(1, commands.Channel.Flow(active=False))
    close = client.expect_connection_close(540)
    assert_close(close, "NOT_IMPLEMENTED - ", 20, 20)
    client.expect_socket_closed()
    assert_served(broker, unique)
