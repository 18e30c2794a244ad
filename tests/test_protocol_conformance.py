"""Protocol conformance at the edges of the wire format, matched against RabbitMQ 3.10.8.

Every expectation here was agreed with RabbitMQ 3.10.8 (observed first with raw sockets,
then encoded); RabbitMQ's exact wording is recorded next to each case. Covered:

- invalid UTF-8: basic.publish takes names as bytes (routed, delivered and returned with the
  key as sent; an unknown exchange named as sent; an expiration or user_id that is not UTF-8
  is a 406 quoting it as sent); every other method refuses a shortstr that is not UTF-8 with
  501 'Malformed UTF-8 in shortstr'; field tables in method arguments may hold any bytes;
- channel_max limits the number of open channels, not their numbers;
- connection.update-secret;
- content frames on a channel that is not open; method and content header frames too short
  for their fixed fields, and how RabbitMQ writes their octets;
- work before login is bounded: until tune-ok a frame may hold at most 4096 octets, and every
  error before tune-ok is answered by closing the socket after a pause, with no frame;
  client_properties nested as deep as 4096 octets allow are accepted;
- field tables nested hundreds deep in method arguments (queue.declare);
- floats ('f') and doubles ('d') in field tables keep their type and value when the broker
  writes a table again (a rewritten content header, durable declare arguments).
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from conftest import BrokerAddress
from pamqp import commands
from pamqp import encode as pencode
from pamqp import frame as pframe
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pika_helpers import pika_channel
from rawamqp import (
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    RawClient,
    RawFrame,
    connect,
    describe,
    encode_raw_frame,
)

pytestmark = pytest.mark.timeout(60)

FLAG_EXPIRATION = 0x0100
FLAG_USER_ID = 0x0010

BAD_UTF8 = b"\xff\xfe\xc3("

# How long a broker may take to drop a connection after an error before tune-ok. RabbitMQ
# waits 3 s (its anti-brute-force SILENT_CLOSE_DELAY); Leveret may be faster.
SILENT_CLOSE_TIMEOUT = 6.0


# -- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def raw_client(broker: BrokerAddress, **handshake: Any) -> Iterator[RawClient]:
    """A raw client past the handshake with channel 1 open; the socket is dropped on exit."""
    client = connect(broker.host, broker.port, **handshake)
    try:
        client.open_channel(1)
        yield client
    finally:
        client.close_socket()


def read_undecoded(client: RawClient, timeout: float = 5.0) -> tuple[int, int, bytes]:
    """The next non-heartbeat frame as (type, channel, payload), without pamqp decoding it
    (pamqp cannot decode invalid UTF-8 in a shortstr)."""
    while True:
        frame_type, channel, size = struct.unpack(">BHI", client.read_exactly(7, timeout))
        payload = client.read_exactly(size, timeout)
        assert client.read_exactly(1, timeout)[0] == FRAME_END
        if frame_type != FRAME_HEARTBEAT:
            return frame_type, channel, payload


def method_ids(payload: bytes) -> tuple[int, int]:
    return struct.unpack(">HH", payload[:4])


def close_fields(payload: bytes) -> tuple[int, bytes, int, int]:
    """(reply code, reply text as bytes, class id, method id) of an undecoded close."""
    (code,) = struct.unpack(">H", payload[4:6])
    text = payload[7 : 7 + payload[6]]
    class_id, method_id = struct.unpack(">HH", payload[7 + payload[6] :])
    return code, text, class_id, method_id


def shortstr(value: bytes) -> bytes:
    return bytes([len(value)]) + value


def table(*fields: bytes) -> bytes:
    content = b"".join(fields)
    return struct.pack(">I", len(content)) + content


def nested_field(depth: int, name: bytes = b"a") -> bytes:
    """Field ``name`` holding a table holding field 'a' ... ``depth`` tables deep; the
    innermost table holds leaf='ok'."""
    content = shortstr(b"leaf") + b"S" + struct.pack(">I", 2) + b"ok"
    for level in range(depth):
        key = name if level == depth - 1 else b"a"
        content = shortstr(key) + b"F" + struct.pack(">I", len(content)) + content
    return content


def header_payload(body_size: int, flags: int = 0, properties: bytes = b"") -> bytes:
    """A basic content header payload with hand-encoded property list."""
    return struct.pack(">HHQH", 60, 0, body_size, flags) + properties


def publish_payload(exchange: bytes, routing_key: bytes, mandatory: bool = False) -> bytes:
    """A basic.publish method payload with hand-encoded (possibly invalid) short strings."""
    bits = 1 if mandatory else 0
    return (
        struct.pack(">HHH", 60, 40, 0) + shortstr(exchange) + shortstr(routing_key) + bytes([bits])
    )


def publish_raw(
    client: RawClient,
    header: bytes,
    body: bytes = b"abc",
    exchange: bytes = b"",
    routing_key: bytes = b"",
    mandatory: bool = False,
    channel: int = 1,
) -> None:
    """basic.publish + a hand-built content header + one body frame, in one write."""
    client.send_raw(
        encode_raw_frame(FRAME_METHOD, channel, publish_payload(exchange, routing_key, mandatory))
        + encode_raw_frame(FRAME_HEADER, channel, header)
        + (encode_raw_frame(FRAME_BODY, channel, body) if body else b"")
    )


def declare(client: RawClient, queue: str, channel: int = 1, **kwargs: Any) -> None:
    client.send_method(channel, commands.Queue.Declare(queue=queue, **kwargs))
    client.expect_method(commands.Queue.DeclareOk, channel=channel)


def ready_count(client: RawClient, queue: str, channel: int) -> int:
    client.send_method(channel, commands.Queue.Declare(queue=queue, passive=True))
    return client.expect_method(commands.Queue.DeclareOk, channel=channel).message_count


def consume_one(client: RawClient, queue: str, channel: int = 1) -> tuple[bytes, bytes, bytes]:
    """basic.consume (no-ack) and read one delivery undecoded: (deliver, header, body)."""
    client.send_method(channel, commands.Basic.Consume(queue=queue, no_ack=True))
    client.expect_method(commands.Basic.ConsumeOk, channel=channel)
    frame_type, _, deliver = read_undecoded(client)
    assert frame_type == FRAME_METHOD and method_ids(deliver) == (60, 60), deliver[:40]
    frame_type, _, header = read_undecoded(client)
    assert frame_type == FRAME_HEADER
    (body_size,) = struct.unpack(">Q", header[4:12])
    body = b""
    while len(body) < body_size:
        frame_type, _, chunk = read_undecoded(client)
        assert frame_type == FRAME_BODY
        body += chunk
    return deliver, header, body


def deliver_routing_key(payload: bytes) -> bytes:
    """The routing key of an undecoded basic.deliver payload."""
    offset = 4
    offset += 1 + payload[offset]  # consumer-tag
    offset += 8 + 1  # delivery-tag, redelivered
    offset += 1 + payload[offset]  # exchange
    return payload[offset + 1 : offset + 1 + payload[offset]]


def assert_served(broker: BrokerAddress) -> None:
    """A fresh connection still works."""
    with raw_client(broker) as c:
        declare(c, f"alive-{uuid.uuid4().hex[:8]}", exclusive=True)
        c.close_connection()


# -- 1. invalid UTF-8 -----------------------------------------------------------------------------


@pytest.mark.parametrize("exchange_type", ["topic", "fanout"])
def test_invalid_utf8_routing_key_is_routed_and_delivered_as_sent(
    broker: BrokerAddress, unique: str, exchange_type: str
) -> None:
    """basic.publish with a routing key that is not UTF-8 is accepted; a topic '#' (or
    fanout) binding routes it and basic.deliver carries the key octet for octet.

    agreed with RabbitMQ 3.10.8: basic.ack; basic.deliver routing key b'k\\xff\\xfe\\xc3('.
    """
    with raw_client(broker) as c:
        queue = f"{unique}-utf8-rk"
        exchange = f"{unique}-{exchange_type}"
        declare(c, queue, exclusive=True)
        c.send_method(
            1,
            commands.Exchange.Declare(
                exchange=exchange, exchange_type=exchange_type, auto_delete=True
            ),
        )
        c.expect_method(commands.Exchange.DeclareOk, channel=1)
        c.send_method(1, commands.Queue.Bind(queue=queue, exchange=exchange, routing_key="#"))
        c.expect_method(commands.Queue.BindOk, channel=1)
        c.send_method(1, commands.Confirm.Select())
        c.expect_method(commands.Confirm.SelectOk, channel=1)
        key = b"k" + BAD_UTF8
        publish_raw(c, header_payload(3), exchange=exchange.encode(), routing_key=key)
        c.expect_method(commands.Basic.Ack, channel=1)
        deliver, _, body = consume_one(c, queue)
        assert deliver_routing_key(deliver) == key
        assert body == b"abc"
        c.close_connection()


def test_invalid_utf8_routing_key_unroutable_is_returned(
    broker: BrokerAddress, unique: str
) -> None:
    """A mandatory publish to the default exchange with a non-UTF-8 key (no queue can have
    that name) is returned with the key octet for octet, then acked.

    agreed with RabbitMQ 3.10.8: basic.return(312, 'NO_ROUTE', exchange '', routing key
    b'k\\xff\\xfe\\xc3('), header, body, then basic.ack(1).
    """
    with raw_client(broker) as c:
        c.send_method(1, commands.Confirm.Select())
        c.expect_method(commands.Confirm.SelectOk, channel=1)
        key = b"k" + BAD_UTF8
        publish_raw(c, header_payload(3), routing_key=key, mandatory=True)
        frame_type, channel, payload = read_undecoded(c)
        assert (frame_type, channel, method_ids(payload)) == (FRAME_METHOD, 1, (60, 50))
        assert payload[4:] == struct.pack(">H", 312) + shortstr(b"NO_ROUTE") + shortstr(
            b""
        ) + shortstr(key)
        assert read_undecoded(c)[0] == FRAME_HEADER
        assert read_undecoded(c)[2] == b"abc"
        ack = c.expect_method(commands.Basic.Ack, channel=1)
        assert ack.delivery_tag == 1
        c.close_connection()


def test_invalid_utf8_routing_key_is_dead_lettered_as_sent(
    broker: BrokerAddress, unique: str
) -> None:
    """A message with a routing key that is not UTF-8, dead-lettered (x-message-ttl 0) to a
    fanout exchange: it keeps its key, and x-death's routing-keys holds the key as sent.

    agreed with RabbitMQ 3.10.8: basic.ack; the dead letter is delivered with routing key
    b'k\\xff\\xfe\\xc3(' and its x-death routing-keys is [b'k\\xff\\xfe\\xc3('].
    """
    key = b"k" + BAD_UTF8
    with raw_client(broker) as c:
        source, dead = f"{unique}-utf8-src", f"{unique}-utf8-dlq"
        topic, fanout = f"{unique}-utf8-topic", f"{unique}-utf8-dlx"
        for name, kind in ((topic, "topic"), (fanout, "fanout")):
            c.send_method(1, commands.Exchange.Declare(exchange=name, exchange_type=kind,
                                                       auto_delete=True))  # fmt: skip
            c.expect_method(commands.Exchange.DeclareOk, channel=1)
        declare(c, dead, exclusive=True)
        declare(c, source, exclusive=True, arguments={
            "x-dead-letter-exchange": fanout, "x-message-ttl": 0,
        })  # fmt: skip
        for queue, exchange in ((source, topic), (dead, fanout)):
            c.send_method(1, commands.Queue.Bind(queue=queue, exchange=exchange, routing_key="#"))
            c.expect_method(commands.Queue.BindOk, channel=1)
        c.send_method(1, commands.Confirm.Select())
        c.expect_method(commands.Confirm.SelectOk, channel=1)
        publish_raw(c, header_payload(3), exchange=topic.encode(), routing_key=key)
        c.expect_method(commands.Basic.Ack, channel=1)
        deliver, header, body = consume_one(c, dead)
        assert deliver_routing_key(deliver) == key
        longstr = b"S" + struct.pack(">I", len(key)) + key
        assert b"\x0crouting-keysA" + struct.pack(">I", len(longstr)) + longstr in header
        assert body == b"abc"
        c.close_connection()


def test_invalid_utf8_exchange_name_in_publish_is_404(broker: BrokerAddress) -> None:
    """basic.publish to an exchange name that is not UTF-8 is just an unknown exchange.

    agreed with RabbitMQ 3.10.8: channel.close(404, b"NOT_FOUND - no exchange
    'amq.\\xff\\xfe\\xc3(' in vhost '/'", class 60, method 40), the name octet for octet.
    """
    with raw_client(broker) as c:
        publish_raw(c, header_payload(3), exchange=b"amq." + BAD_UTF8, routing_key=b"k")
        frame_type, channel, payload = read_undecoded(c)
        assert (frame_type, channel, method_ids(payload)) == (FRAME_METHOD, 1, (20, 40))
        (code,) = struct.unpack(">H", payload[4:6])
        text = payload[7 : 7 + payload[6]]
        assert code == 404
        assert text == b"NOT_FOUND - no exchange 'amq." + BAD_UTF8 + b"' in vhost '/'"
        assert payload[7 + payload[6] :] == struct.pack(">HH", 60, 40)
        c.close_connection()


def test_invalid_utf8_expiration_is_406(broker: BrokerAddress, unique: str) -> None:
    """An expiration that is not UTF-8 is an invalid expiration like any other.

    agreed with RabbitMQ 3.10.8: channel.close(406, b'PRECONDITION_FAILED - invalid
    expiration \\'1\\xff\\xfe\\xc3(\\': {leftover_string,"\\xff\\xfe\\xc3("}', 60, 40).
    """
    with raw_client(broker) as c:
        queue = f"{unique}-utf8-exp"
        declare(c, queue, exclusive=True)
        header = header_payload(3, FLAG_EXPIRATION, shortstr(b"1" + BAD_UTF8))
        publish_raw(c, header, routing_key=queue.encode())
        frame_type, channel, payload = read_undecoded(c)
        assert (frame_type, channel, method_ids(payload)) == (FRAME_METHOD, 1, (20, 40))
        (code,) = struct.unpack(">H", payload[4:6])
        text = payload[7 : 7 + payload[6]]
        assert code == 406
        assert text == (b"PRECONDITION_FAILED - invalid expiration '1" + BAD_UTF8
                        + b"': {leftover_string,\"" + BAD_UTF8 + b'\"}')
        assert payload[7 + payload[6] :] == struct.pack(">HH", 60, 40)
        c.send_method(1, commands.Channel.CloseOk())
        c.open_channel(2)
        assert ready_count(c, queue, 2) == 0
        c.close_connection()


def _declare_with_bad_name(kind: str, queue: str) -> bytes:
    bad = b"x" + BAD_UTF8
    if kind == "queue.declare":
        return struct.pack(">HHH", 50, 10, 0) + shortstr(bad) + b"\x00" + struct.pack(">I", 0)
    if kind == "exchange.declare":
        return (struct.pack(">HHH", 40, 10, 0) + shortstr(bad) + shortstr(b"direct") + b"\x00"
                + struct.pack(">I", 0))  # fmt: skip
    return (struct.pack(">HHH", 50, 20, 0) + shortstr(queue.encode()) + shortstr(b"amq.direct")
            + shortstr(bad) + b"\x00" + struct.pack(">I", 0))  # fmt: skip


@pytest.mark.parametrize("kind", ["queue.declare", "exchange.declare", "queue.bind-routing-key"])
def test_invalid_utf8_in_declare_or_bind_is_501(
    broker: BrokerAddress, unique: str, kind: str
) -> None:
    """Unlike basic.publish, queue.declare / exchange.declare / queue.bind refuse a name or
    binding key that is not UTF-8, as a connection-level frame error.

    agreed with RabbitMQ 3.10.8: connection.close(501, 'FRAME_ERROR - Malformed UTF-8 in
    shortstr', class 0, method 0).
    """
    with raw_client(broker) as c:
        queue = f"{unique}-utf8-bind"
        declare(c, queue, exclusive=True)
        c.send_raw(encode_raw_frame(FRAME_METHOD, 1, _declare_with_bad_name(kind, queue)))
        close = c.expect_connection_close(501)
        assert close.reply_text.startswith("FRAME_ERROR - "), describe(close)
        assert (close.class_id, close.method_id) == (0, 0), describe(close)
        c.expect_socket_closed()
    assert_served(broker)


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("basic.consume", struct.pack(">HHH", 60, 20, 0) + shortstr(b"q" + BAD_UTF8)
         + shortstr(b"") + b"\x00" + struct.pack(">I", 0)),
        ("basic.get", struct.pack(">HHH", 60, 70, 0) + shortstr(b"q" + BAD_UTF8) + b"\x00"),
        ("queue.delete", struct.pack(">HHH", 50, 40, 0) + shortstr(b"q" + BAD_UTF8) + b"\x00"),
        ("exchange.delete", struct.pack(">HHH", 40, 20, 0) + shortstr(b"x" + BAD_UTF8)
         + b"\x00"),
        ("basic.cancel", struct.pack(">HH", 60, 30) + shortstr(b"tag" + BAD_UTF8) + b"\x00"),
        ("channel.close-reply-text", struct.pack(">HHH", 20, 40, 200)
         + shortstr(b"bye" + BAD_UTF8) + struct.pack(">HH", 0, 0)),
        # UTF-8 is checked before the contents of a table (here a field of unknown type)
        ("exchange.declare-type-and-malformed-arguments", struct.pack(">HHH", 40, 10, 0)
         + shortstr(b"x") + shortstr(b"t" + BAD_UTF8) + b"\x00" + table(b"\x01aU")),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)  # fmt: skip
def test_invalid_utf8_shortstr_in_other_methods_is_501(
    broker: BrokerAddress, kind: str, payload: bytes
) -> None:
    """Every method but basic.publish refuses a shortstr that is not UTF-8, before looking
    at what it names.

    agreed with RabbitMQ 3.10.8: connection.close(501, 'FRAME_ERROR - Malformed UTF-8 in
    shortstr', class 0, method 0) for each.
    """
    with raw_client(broker) as c:
        c.send_raw(encode_raw_frame(FRAME_METHOD, 1, payload))
        close = c.expect_connection_close(501)
        assert (close.reply_text, close.class_id, close.method_id) == (
            "FRAME_ERROR - Malformed UTF-8 in shortstr", 0, 0,
        ), describe(close)  # fmt: skip
        c.expect_socket_closed()
    assert_served(broker)


def test_invalid_utf8_user_id_is_406_quoting_it_as_sent(broker: BrokerAddress) -> None:
    """A user_id that is not UTF-8 is just not the user's name.

    agreed with RabbitMQ 3.10.8: channel.close(406, b"PRECONDITION_FAILED - user_id property
    set to 'u\\xff\\xfe\\xc3(' but authenticated user was 'guest'", 60, 40).
    """
    with raw_client(broker) as c:
        publish_raw(c, header_payload(3, FLAG_USER_ID, shortstr(b"u" + BAD_UTF8)),
                    routing_key=b"nowhere")  # fmt: skip
        frame_type, channel, payload = read_undecoded(c)
        assert (frame_type, channel, method_ids(payload)) == (FRAME_METHOD, 1, (20, 40))
        assert close_fields(payload) == (
            406,
            b"PRECONDITION_FAILED - user_id property set to 'u" + BAD_UTF8
            + b"' but authenticated user was 'guest'",
            60, 40,
        )  # fmt: skip
        c.close_connection()


def test_invalid_utf8_in_table_of_method_arguments_is_accepted(
    broker: BrokerAddress, unique: str
) -> None:
    """Field tables in method arguments are not checked for UTF-8 (unlike shortstr
    arguments): a queue.declare whose arguments have a field name that is not UTF-8 works.

    agreed with RabbitMQ 3.10.8: queue.declare-ok.
    """
    queue = f"{unique}-utf8-arg"
    arguments = table(shortstr(b"k" + BAD_UTF8) + b"t\x01")
    with raw_client(broker) as c:
        c.send_raw(encode_raw_frame(FRAME_METHOD, 1, struct.pack(">HHH", 50, 10, 0)
                                    + shortstr(queue.encode()) + b"\x08" + arguments))
        assert c.expect_method(commands.Queue.DeclareOk, channel=1).queue == queue
        c.close_connection()


# -- 2. channel_max ------------------------------------------------------------------------------


def test_channel_number_above_channel_max_is_allowed(broker: BrokerAddress, unique: str) -> None:
    """channel_max limits how many channels are open, not their numbers: with channel_max 10
    negotiated, channel 65535 opens and works.

    agreed with RabbitMQ 3.10.8: channel.open-ok on channel 65535 (also on 11 or 2048 with
    channel_max 2047).
    """
    with connect(broker.host, broker.port, channel_max=10) as c:
        c.open_channel(65535)
        declare(c, f"{unique}-high", channel=65535, exclusive=True)
        c.close_connection()


def test_opening_more_channels_than_channel_max_is_530(broker: BrokerAddress) -> None:
    """With channel_max 10, the 11th open channel is refused with a connection error.

    agreed with RabbitMQ 3.10.8: connection.close(530, 'NOT_ALLOWED - number of channels
    opened (10) has reached the negotiated channel_max (10)', class 0, method 0).
    """
    with connect(broker.host, broker.port, channel_max=10) as c:
        for number in range(1, 11):
            c.open_channel(number)
        c.send_method(11, commands.Channel.Open())
        close = c.expect_connection_close(530)
        assert close.reply_text == (
            "NOT_ALLOWED - number of channels opened (10) has reached the negotiated "
            "channel_max (10)"
        )
        assert (close.class_id, close.method_id) == (0, 0)
        c.expect_socket_closed()


def test_closed_channels_free_room_under_channel_max(broker: BrokerAddress) -> None:
    """Closing a channel makes room for another (whatever its number) under channel_max;
    the next one beyond the limit is refused again.

    agreed with RabbitMQ 3.10.8: channels 1..10 open, 5 closed, 300 opens, 301 -> 530.
    """
    with connect(broker.host, broker.port, channel_max=10) as c:
        for number in range(1, 11):
            c.open_channel(number)
        c.send_method(5, commands.Channel.Close(200, "", 0, 0))
        c.expect_method(commands.Channel.CloseOk, channel=5)
        c.open_channel(300)
        c.send_method(301, commands.Channel.Open())
        c.expect_connection_close(530)


def test_channel_limit_comes_before_the_frame_check(broker: BrokerAddress) -> None:
    """With channel_max open channels, any frame on a new channel number is refused for
    the limit first (RabbitMQ starts a channel for it before looking at the frame); a
    channel the server closed counts until the client's close-ok.

    agreed with RabbitMQ 3.10.8: with channel_max 1 and channel 1 open, queue.declare or a
    body frame on channel 2 -> connection.close(530, 'NOT_ALLOWED - number of channels
    opened (1) has reached the negotiated channel_max (1)', 0, 0); with channel_max 2, channel
    2 closed by the server (404) and no close-ok yet, channel.open on 3 -> the same 530 with
    (2); after the close-ok, channel 3 opens.
    """
    limit_text = ("NOT_ALLOWED - number of channels opened ({0}) has reached the negotiated "
                  "channel_max ({0})")  # fmt: skip
    for frame in (
        pframe.marshal(commands.Queue.Declare(queue="q", exclusive=True), 2),
        encode_raw_frame(FRAME_BODY, 2, b"abc"),
    ):
        with connect(broker.host, broker.port, channel_max=1) as c:
            c.open_channel(1)
            c.send_raw(frame)
            close = c.expect_connection_close(530)
            assert (close.reply_text, close.class_id, close.method_id) == (
                limit_text.format(1), 0, 0,
            ), describe(close)  # fmt: skip
    for close_ok in (False, True):
        with connect(broker.host, broker.port, channel_max=2) as c:
            c.open_channel(1)
            c.open_channel(2)
            missing = f"missing-{uuid.uuid4().hex[:8]}"
            c.send_method(2, commands.Queue.Declare(queue=missing, passive=True))
            c.expect_channel_close(2, 404)
            if close_ok:
                c.send_method(2, commands.Channel.CloseOk())
                c.open_channel(3)
                c.close_connection()
            else:
                c.send_method(3, commands.Channel.Open())
                close = c.expect_connection_close(530)
                assert close.reply_text == limit_text.format(2), describe(close)


# -- 3. connection.update-secret ----------------------------------------------------------------


@pytest.mark.parametrize("secret", ["guest", "not-the-password"])
def test_update_secret_is_acknowledged(broker: BrokerAddress, unique: str, secret: str) -> None:
    """connection.update-secret (10,70) is answered with update-secret-ok (10,71) on channel
    0; the connection and its channels go on working. With the internal (PLAIN) user
    backend the new secret is not checked.

    agreed with RabbitMQ 3.10.8: update-secret-ok for 'guest' and for a wrong password
    alike; it logs "user 'guest' updated secret, reason: rotate".
    """
    with raw_client(broker) as c:
        c.send_method(0, commands.Connection.UpdateSecret(new_secret=secret, reason="rotate"))
        c.expect_method(commands.Connection.UpdateSecretOk, channel=0)
        declare(c, f"{unique}-after-secret", exclusive=True)
        c.open_channel(2)
        c.close_connection()
    with pika_channel(broker.url) as (conn, ch):
        conn.update_secret(secret, "rotate")
        assert conn.is_open
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", queue, b"x")
        assert ch.basic_get(queue, auto_ack=True)[2] == b"x"


# -- 4, 5. frames on a channel that is not open; frames too short for their fixed fields --------


@pytest.mark.parametrize(
    "frame",
    [pframe.marshal(ContentHeader(0, 3), 3), pframe.marshal(ContentBody(b"abc"), 3)],
    ids=["content-header", "content-body"],
)
def test_content_frame_on_unopened_channel_is_505(broker: BrokerAddress, frame: bytes) -> None:
    """A content header (or body) on a channel that was never opened is a connection error.

    agreed with RabbitMQ 3.10.8: connection.close(505, 'UNEXPECTED_FRAME - expected method
    frame, got non method frame instead', class 0, method 0).
    """
    with connect(broker.host, broker.port) as c:
        c.send_raw(frame)
        close = c.expect_connection_close(505)
        assert close.reply_text == (
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
        )
        assert (close.class_id, close.method_id) == (0, 0)
        c.expect_socket_closed()
    assert_served(broker)


@pytest.mark.parametrize("size", [0, 1, 2, 3])
@pytest.mark.parametrize("channel", [0, 1, 3], ids=["channel-0", "open-channel", "unopened"])
def test_method_frame_shorter_than_ids_is_501(
    broker: BrokerAddress, size: int, channel: int
) -> None:
    """A method frame whose payload cannot even hold class and method ids is a frame error,
    whatever channel it is on.

    agreed with RabbitMQ 3.10.8: connection.close(501, 'FRAME_ERROR - type 1, all octets =
    <<>>: unknown_frame' (<<0>>, <<0,60>>, <<0,60,0>> for 1-3 octets), class 0, method 0).
    """
    payload = b"\x00\x3c\x00"[:size]
    octets = "<<" + ",".join(str(b) for b in payload) + ">>"
    with raw_client(broker) as c:
        c.send_raw(encode_raw_frame(FRAME_METHOD, channel, payload))
        close = c.expect_connection_close(501)
        assert (close.reply_text, close.class_id, close.method_id) == (
            f"FRAME_ERROR - type 1, all octets = {octets}: unknown_frame", 0, 0,
        ), describe(close)  # fmt: skip
        c.expect_socket_closed()
    assert_served(broker)


# (id, payload, RabbitMQ 3.10.8's reply text as bytes) for a method frame on channel 1
SHORT_FRAME_TEXTS = [
    ("two-printable", b"ab", b'FRAME_ERROR - type 1, all octets = <<"ab">>: unknown_frame'),
    ("quote", b'a"', b'FRAME_ERROR - type 1, all octets = <<"a\\"">>: unknown_frame'),
    ("backslash", b"\\", b'FRAME_ERROR - type 1, all octets = <<"\\\\">>: unknown_frame'),
    ("tab", b"\t", b'FRAME_ERROR - type 1, all octets = <<"\\t">>: unknown_frame'),
    ("newline", b"a\n", b'FRAME_ERROR - type 1, all octets = <<"a\\n">>: unknown_frame'),
    ("latin-1", b"a\xe9", b'FRAME_ERROR - type 1, all octets = <<"a\xe9">>: unknown_frame'),
    ("utf-8", b"\xc3\xa9", b'FRAME_ERROR - type 1, all octets = <<"\xc3\xa9">>: unknown_frame'),
    ("delete", b"\x7f", b"FRAME_ERROR - type 1, all octets = <<127>>: unknown_frame"),
]


@pytest.mark.parametrize(
    ("payload", "text"), [case[1:] for case in SHORT_FRAME_TEXTS],
    ids=[case[0] for case in SHORT_FRAME_TEXTS],
)  # fmt: skip
def test_short_method_frame_octets_are_written_as_rabbitmq_does(
    broker: BrokerAddress, payload: bytes, text: bytes
) -> None:
    """The octets of a bad frame are shown the way Erlang prints a binary: as a string when
    every octet is printable Latin-1 (with \\", \\\\, \\t, \\n escapes; octets 160-255 as
    themselves), else as numbers.

    agreed with RabbitMQ 3.10.8: see the table (reply texts as the octets sent).
    """
    with raw_client(broker) as c:
        c.send_raw(encode_raw_frame(FRAME_METHOD, 1, payload))
        frame_type, channel, close = read_undecoded(c)
        assert (frame_type, channel, method_ids(close)) == (FRAME_METHOD, 0, (10, 50))
        assert close_fields(close) == (501, text, 0, 0)


@pytest.mark.parametrize("size", [0, 4, 11])
@pytest.mark.parametrize("channel", [1, 3], ids=["open-channel", "unopened"])
def test_content_header_shorter_than_its_fields_is_501(
    broker: BrokerAddress, size: int, channel: int
) -> None:
    """A content header frame too short for class, weight and body size is a frame error,
    whatever channel it is on.

    agreed with RabbitMQ 3.10.8: connection.close(501, 'FRAME_ERROR - type 2, all octets =
    <<>>: unknown_frame' (<<0,60,0,0>> for 4 octets), class 0, method 0).
    """
    payload = struct.pack(">HHQ", 60, 0, 3)[:size]
    octets = "<<" + ",".join(str(b) for b in payload) + ">>"
    with raw_client(broker) as c:
        if channel == 1:
            c.send_method(1, commands.Basic.Publish(exchange="", routing_key="nowhere"))
        c.send_raw(encode_raw_frame(FRAME_HEADER, channel, payload))
        close = c.expect_connection_close(501)
        assert (close.reply_text, close.class_id, close.method_id) == (
            f"FRAME_ERROR - type 2, all octets = {octets}: unknown_frame", 0, 0,
        ), describe(close)  # fmt: skip
        c.expect_socket_closed()
    assert_served(broker)


# -- 6. work before login -------------------------------------------------------------------------


def start_ok_payload(client_properties: bytes, response: bytes = b"\0guest\0guest",
                     mechanism: bytes = b"PLAIN") -> bytes:
    """A connection.start-ok payload around hand-encoded client_properties."""
    return (struct.pack(">HH", 10, 11) + client_properties + shortstr(mechanism)
            + struct.pack(">I", len(response)) + response + shortstr(b"en_US"))  # fmt: skip


def start_ok_of_size(size: int) -> bytes:
    """A valid start-ok payload of exactly ``size`` octets (padded in client_properties)."""
    bare = start_ok_payload(pencode.field_table({"product": "x", "pad": ""}))
    payload = start_ok_payload(
        pencode.field_table({"product": "x", "pad": "y" * (size - len(bare))})
    )
    assert len(payload) == size
    return payload


def started(broker: BrokerAddress, timeout: float = SILENT_CLOSE_TIMEOUT) -> RawClient:
    """A raw client that has sent the protocol header and read connection.start."""
    client = RawClient(broker.host, broker.port, timeout=timeout)
    client.send_protocol_header()
    client.expect_method(commands.Connection.Start, channel=0)
    return client


def _silent(broker: BrokerAddress, scenario: Callable[[RawClient], None]) -> list[RawFrame]:
    with started(broker) as c:
        scenario(c)
        return c.expect_socket_closed(SILENT_CLOSE_TIMEOUT)


def _tuning(c: RawClient) -> None:
    """start-ok accepted: the connection waits for tune-ok."""
    c.send_raw(encode_raw_frame(FRAME_METHOD, 0, start_ok_of_size(200)))
    c.expect_method(commands.Connection.Tune, channel=0)


PRE_LOGIN_CASES: dict[str, Callable[[RawClient], None]] = {
    "start-ok-of-4097-octets": lambda c: c.send_raw(
        encode_raw_frame(FRAME_METHOD, 0, start_ok_of_size(4097))),
    "start-ok-of-10000-octets": lambda c: c.send_raw(
        encode_raw_frame(FRAME_METHOD, 0, start_ok_of_size(10000))),
    "half-sent-128k-frame": lambda c: c.send_raw(
        struct.pack(">BHI", FRAME_METHOD, 0, 128 * 1024) + b"x" * 1000),
    "frame-of-5000-octets-instead-of-tune-ok": lambda c: (
        _tuning(c), c.send_raw(encode_raw_frame(FRAME_BODY, 0, b"x" * 5000))),
    "client-properties-too-deep-for-4096": lambda c: c.send_raw(encode_raw_frame(
        FRAME_METHOD, 0, start_ok_payload(table(nested_field(600))))),
    "missing-frame-end": lambda c: c.send_raw(
        encode_raw_frame(FRAME_METHOD, 0, start_ok_of_size(200), end=0)),
    "method-frame-of-one-octet": lambda c: c.send_raw(encode_raw_frame(FRAME_METHOD, 0, b"\0")),
    "truncated-start-ok": lambda c: c.send_raw(
        encode_raw_frame(FRAME_METHOD, 0, struct.pack(">HHI", 10, 11, 0))),
    "mechanism-not-utf-8": lambda c: c.send_raw(encode_raw_frame(
        FRAME_METHOD, 0, start_ok_payload(table(), mechanism=b"\xff\xfe"))),
    "unknown-mechanism": lambda c: c.send_raw(encode_raw_frame(
        FRAME_METHOD, 0, start_ok_payload(table(), mechanism=b"FOO"))),
    "connection.open-before-start-ok": lambda c: c.send_method(
        0, commands.Connection.Open(virtual_host="/")),
    "channel.open-before-tune-ok": lambda c: (
        _tuning(c), c.send_method(1, commands.Channel.Open())),
}  # fmt: skip


@pytest.fixture(scope="module")
def pre_login_results(broker: BrokerAddress) -> Iterator[dict[str, Future[list[RawFrame]]]]:
    """Start every pre-login scenario at once (each waits for the silent close)."""
    with ThreadPoolExecutor(max_workers=len(PRE_LOGIN_CASES)) as pool:
        yield {name: pool.submit(_silent, broker, case) for name, case in PRE_LOGIN_CASES.items()}


@pytest.mark.parametrize("case", list(PRE_LOGIN_CASES))
def test_error_before_tune_ok_closes_the_socket_silently(
    pre_login_results: dict[str, Future[list[RawFrame]]], broker: BrokerAddress, case: str
) -> None:
    """Before tune-ok a frame may hold at most 4096 octets, and any error (that one, a
    framing error, a start-ok that does not decode, an unknown mechanism, a method out of
    turn) is answered with no frame at all: the server closes the socket after a pause.
    A frame header announcing more than 4096 octets is refused at once, without waiting for
    (or buffering) the rest.

    agreed with RabbitMQ 3.10.8: for each, no frame, the socket reset 3 s later.
    """
    frames = pre_login_results[case].result(timeout=SILENT_CLOSE_TIMEOUT + 10)
    assert frames == [], f"expected a silent close, got {frames!r}"
    assert_served(broker)


def test_start_ok_of_4096_octets_is_accepted(broker: BrokerAddress) -> None:
    """4096 octets is the largest frame payload before tune-ok.

    agreed with RabbitMQ 3.10.8: connection.tune, then open-ok.
    """
    with started(broker) as c:
        c.send_raw(encode_raw_frame(FRAME_METHOD, 0, start_ok_of_size(4096)))
        c.tune()
        c.open()
        c.close_connection()


@pytest.mark.parametrize("depth", [16, 17, 100, 500])
def test_deeply_nested_client_properties_are_accepted(broker: BrokerAddress, depth: int) -> None:
    """client_properties nested as deep as a 4096-octet frame allows are decoded (without
    recursion) and the login goes on.

    agreed with RabbitMQ 3.10.8: connection.tune and open-ok at depths 16, 17, 100 and 500
    (3556 octets); 580 deep (4116 octets) is refused for its size (see above).
    """
    properties = table(nested_field(depth, b"deep"), shortstr(b"product") + b"S"
                       + struct.pack(">I", 1) + b"x")  # fmt: skip
    with started(broker) as c:
        c.send_raw(encode_raw_frame(FRAME_METHOD, 0, start_ok_payload(properties)))
        c.tune()
        c.open()
        c.open_channel(1)
        declare(c, f"alive-{uuid.uuid4().hex[:8]}", exclusive=True)
        c.close_connection()


@pytest.mark.slow
def test_half_sent_frame_before_login_is_dropped_at_the_handshake_timeout(
    broker: BrokerAddress,
) -> None:
    """A frame (within the 4096 limit) left half sent before login is not held longer than
    the handshake timeout.

    agreed with RabbitMQ 3.10.8: no frame; the socket is reset 10 s after it was opened.
    """
    with started(broker, timeout=15) as c:
        opened = time.monotonic()
        c.send_raw(struct.pack(">BHI", FRAME_METHOD, 0, 4000) + b"x" * 1000)
        assert c.expect_socket_closed(15) == []
        assert time.monotonic() - opened < 12


@pytest.mark.leveret_only
def test_pre_login_failures_log_one_line_each_rate_limited_per_address(
    embedded: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each failed handshake logs one line, without a traceback, and one address gets at
    most PEER_LOG_LINES lines (plus one saying the rest is suppressed) per window."""
    from leveret.broker import connection

    monkeypatch.setattr(connection, "_peer_log", {})
    monkeypatch.setattr(connection, "PEER_LOG_WINDOW", 60.0)
    broker = BrokerAddress("127.0.0.1", embedded.port)
    oversize = encode_raw_frame(FRAME_METHOD, 0, start_ok_of_size(4097))

    def failure_lines() -> list[logging.LogRecord]:
        # the lines about this peer's failures (the shared broker may meanwhile log the
        # close of an earlier test's connection)
        return [r for r in caplog.records if r.name == "leveret.broker.connection"
                and not r.getMessage().startswith(("closed AMQP connection",
                                                   "accepted AMQP connection"))]

    with caplog.at_level(logging.INFO, logger="leveret.broker.connection"):
        with started(broker) as c:
            c.send_raw(oversize)
            deadline = time.monotonic() + 3
            while not failure_lines() and time.monotonic() < deadline:
                time.sleep(0.01)
        assert len(failure_lines()) == 1, caplog.records
        assert "frame_too_large" in failure_lines()[0].getMessage()
        for _ in range(2 * connection.PEER_LOG_LINES):
            with RawClient(broker.host, broker.port) as c:
                c.send_raw(b"HTTP/1.1")
                c.expect_socket_closed()
        time.sleep(0.1)
    lines = failure_lines()
    assert len(lines) == connection.PEER_LOG_LINES + 1, [r.getMessage() for r in lines]
    assert "suppressed" in lines[-1].getMessage()
    assert not [r for r in lines if r.exc_info]


# -- 7. deeply nested tables in method arguments ---------------------------------------------------


@pytest.mark.parametrize("depth", [600, 2000])
def test_queue_declare_with_deeply_nested_argument(
    broker: BrokerAddress, unique: str, depth: int
) -> None:
    """queue.declare whose arguments hold x-foo, a table nested ``depth`` tables deep: the
    arguments are decoded without recursion and the queue is declared; a passive declare
    finds it.

    agreed with RabbitMQ 3.10.8: queue.declare-ok at depths 600 and 2000.
    """
    queue = f"{unique}-deep-args"
    arguments = table(nested_field(depth, b"x-foo"))
    with raw_client(broker) as c:
        c.send_raw(encode_raw_frame(FRAME_METHOD, 1, struct.pack(">HHH", 50, 10, 0)
                                    + shortstr(queue.encode()) + b"\x04" + arguments))
        assert c.expect_method(commands.Queue.DeclareOk, channel=1).queue == queue
        assert ready_count(c, queue, 1) == 0
        c.close_connection()


@pytest.mark.parametrize("depth", [600, 2000])
def test_durable_queue_and_binding_with_deeply_nested_arguments(
    broker: BrokerAddress, unique: str, depth: int
) -> None:
    """A durable queue declared, and bound, with arguments nested ``depth`` tables deep (the
    definitions store and binding identities handle any depth); unbinding finds the binding.

    agreed with RabbitMQ 3.10.8: declare-ok, bind-ok, unbind-ok, delete-ok.
    """
    queue = f"{unique}-deep-durable"
    arguments = table(nested_field(depth, b"x-foo"))
    with raw_client(broker) as c:
        c.send_raw(encode_raw_frame(FRAME_METHOD, 1, struct.pack(">HHH", 50, 10, 0)
                                    + shortstr(queue.encode()) + b"\x02" + arguments))
        assert c.expect_method(commands.Queue.DeclareOk, channel=1).queue == queue
        for method_id, reply in ((20, commands.Queue.BindOk), (50, commands.Queue.UnbindOk)):
            c.send_raw(encode_raw_frame(
                FRAME_METHOD, 1, struct.pack(">HHH", 50, method_id, 0)
                + shortstr(queue.encode()) + shortstr(b"amq.direct") + shortstr(b"k")
                + (b"\x00" if method_id == 20 else b"") + arguments))
            c.expect_method(reply, channel=1)
        c.send_method(1, commands.Queue.Delete(queue=queue))
        c.expect_method(commands.Queue.DeleteOk, channel=1)
        c.close_connection()


# -- 8. floats and doubles in field tables ---------------------------------------------------------

# Table fields of type 'd' (64-bit) and 'f' (32-bit), some beyond a 32-bit float's range or
# precision, one inside an array.
FLOAT_FIELDS = (
    shortstr(b"d-tenth") + b"d" + struct.pack(">d", 0.1),
    shortstr(b"d-huge") + b"d" + struct.pack(">d", 1e300),
    shortstr(b"d-one") + b"d" + struct.pack(">d", 1.0),
    shortstr(b"f-tenth") + b"f" + struct.pack(">f", 0.1),
    shortstr(b"array") + b"A" + struct.pack(">I", 14) + b"d" + struct.pack(">d", -2.5e-300)
    + b"f" + struct.pack(">f", 3.0),
)


def test_floats_and_doubles_in_rewritten_headers_are_kept_as_sent(
    broker: BrokerAddress, unique: str
) -> None:
    """A content header the broker rewrites (here to remove BCC) keeps every 'd' a double and
    every 'f' a float, value for value: no precision lost, no error for a double beyond a
    32-bit float's range.

    agreed with RabbitMQ 3.10.8: the message is delivered with its headers as sent minus
    BCC, octet for octet.
    """
    queue = f"{unique}-floats"
    bcc = shortstr(b"BCC") + b"A" + struct.pack(">I", 5 + len(queue)) + b"S" + struct.pack(
        ">I", len(queue)) + queue.encode()
    with raw_client(broker) as c:
        declare(c, queue, exclusive=True)
        c.send_method(1, commands.Confirm.Select())
        c.expect_method(commands.Confirm.SelectOk, channel=1)
        publish_raw(c, header_payload(3, 0x2000, table(bcc, *FLOAT_FIELDS)),
                    routing_key=b"nowhere")  # fmt: skip
        c.expect_method(commands.Basic.Ack, channel=1)
        _, header, body = consume_one(c, queue)
        assert header == header_payload(3, 0x2000, table(*FLOAT_FIELDS))
        assert body == b"abc"
        c.close_connection()


def test_durable_declarations_with_double_arguments(broker: BrokerAddress, unique: str) -> None:
    """Durable exchanges, queues and bindings whose arguments hold doubles (one beyond a
    32-bit float's range) are declared and kept like any others.

    agreed with RabbitMQ 3.10.8: exchange.declare-ok, queue.declare-ok, queue.bind-ok, the
    same declarations again (equivalent), then delete-ok for both.
    """
    exchange, queue = f"{unique}-dbl-x".encode(), f"{unique}-dbl-q".encode()
    arguments = table(*FLOAT_FIELDS)
    methods = [
        (struct.pack(">HHH", 40, 10, 0) + shortstr(exchange) + shortstr(b"direct") + b"\x02"
         + arguments, commands.Exchange.DeclareOk),
        (struct.pack(">HHH", 50, 10, 0) + shortstr(queue) + b"\x02" + arguments,
         commands.Queue.DeclareOk),
        (struct.pack(">HHH", 50, 20, 0) + shortstr(queue) + shortstr(exchange) + shortstr(b"k")
         + b"\x00" + arguments, commands.Queue.BindOk),
    ]  # fmt: skip
    with raw_client(broker) as c:
        try:
            for _ in range(2):
                for payload, reply in methods:
                    c.send_raw(encode_raw_frame(FRAME_METHOD, 1, payload))
                    c.expect_method(reply, channel=1)
        finally:
            c.send_method(1, commands.Queue.Delete(queue=queue.decode()))
            c.send_method(1, commands.Exchange.Delete(exchange=exchange.decode()))
        c.expect_method(commands.Queue.DeleteOk, channel=1)
        c.expect_method(commands.Exchange.DeleteOk, channel=1)
        c.close_connection()


# -- 9. method arguments that do not fill the payload exactly --------------------------------------

_PUBLISH_ARGS = struct.pack(">H", 0) + shortstr(b"") + shortstr(b"nowhere") + b"\x00"
_CONTENT = (encode_raw_frame(FRAME_HEADER, 1, header_payload(3))
            + encode_raw_frame(FRAME_BODY, 1, b"abc"))  # fmt: skip

# (id, frames, class, method, the arguments RabbitMQ 3.10.8 quotes in 'cannot decode <<...>>')
UNDECODABLE_METHODS = [
    ("publish-without-its-bits", encode_raw_frame(FRAME_METHOD, 1, struct.pack(">HH", 60, 40)
     + _PUBLISH_ARGS[:-1]), 60, 40, "0,0,0,7,110,111,119,104,101,114,101"),
    ("publish-name-cut-short", encode_raw_frame(FRAME_METHOD, 1, struct.pack(">HH", 60, 40)
     + _PUBLISH_ARGS[:5]) + _CONTENT, 60, 40, "0,0,0,7,110"),
    ("publish-with-trailing-octet", encode_raw_frame(FRAME_METHOD, 1, struct.pack(">HH", 60, 40)
     + _PUBLISH_ARGS + b"\x07") + _CONTENT, 60, 40, "0,0,0,7,110,111,119,104,101,114,101,0,7"),
    ("ack-without-its-bits", encode_raw_frame(FRAME_METHOD, 1, struct.pack(">HHQ", 60, 80, 1)),
     60, 80, "0,0,0,0,0,0,0,1"),
    ("ack-with-trailing-octet", encode_raw_frame(FRAME_METHOD, 1, struct.pack(">HHQB", 60, 80, 0,
     1) + b"z"), 60, 80, "0,0,0,0,0,0,0,0,1,122"),
    ("nack-cut-short", encode_raw_frame(FRAME_METHOD, 1, struct.pack(">HH", 60, 120) + b"\0\0"),
     60, 120, "0,0"),
    ("reject-cut-short", encode_raw_frame(FRAME_METHOD, 1, struct.pack(">HH", 60, 90) + b"\0\0"),
     60, 90, "0,0"),
    ("queue.declare-with-trailing-octet", encode_raw_frame(FRAME_METHOD, 1, struct.pack(
     ">HHH", 50, 10, 0) + shortstr(b"q") + b"\x08" + struct.pack(">I", 0) + b"z"), 50, 10,
     "0,0,1,113,8,0,0,0,0,122"),
    ("qos-with-trailing-octet", encode_raw_frame(FRAME_METHOD, 1, struct.pack(
     ">HHIHB", 60, 10, 0, 1, 0) + b"\0"), 60, 10, "0,0,0,0,0,1,0,0"),
    ("tx.select-with-arguments", encode_raw_frame(FRAME_METHOD, 1, struct.pack(">HH", 90, 10)
     + b"zz"), 90, 10, "122,122"),
    ("channel.open-with-trailing-octets", encode_raw_frame(FRAME_METHOD, 3, struct.pack(
     ">HH", 20, 10) + b"\0zz"), 20, 10, "0,122,122"),
    # the layout is checked before UTF-8
    ("name-not-utf-8-and-trailing-octet", encode_raw_frame(FRAME_METHOD, 1, struct.pack(
     ">HHH", 50, 10, 0) + shortstr(b"\xff") + b"\x00" + struct.pack(">I", 0) + b"z"), 50, 10,
     "0,0,1,255,0,0,0,0,0,122"),
    ("name-not-utf-8-and-table-past-the-end", encode_raw_frame(FRAME_METHOD, 1, struct.pack(
     ">HHH", 60, 20, 0) + shortstr(b"\xff") + shortstr(b"") + b"\x00\x01\xfc\x80"), 60, 20,
     "0,0,1,255,0,0,1,252,128"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("frames", "class_id", "method_id", "octets"), [case[1:] for case in UNDECODABLE_METHODS],
    ids=[case[0] for case in UNDECODABLE_METHODS],
)  # fmt: skip
def test_method_arguments_must_fill_the_payload_exactly(
    broker: BrokerAddress, frames: bytes, class_id: int, method_id: int, octets: str
) -> None:
    """A method frame whose arguments end before the payload does (trailing octets), or run
    past it, is a frame error naming the method: on the per-message methods (basic.publish,
    ack, nack, reject) as on any other. The octets are written as numbers, printable or not.

    agreed with RabbitMQ 3.10.8: connection.close(501, 'FRAME_ERROR - cannot decode
    <<...>>' with the octets after the method ids, class id, method id), see the table.
    """
    with raw_client(broker) as c:
        c.send_raw(frames)
        close = c.expect_connection_close(501)
        assert (close.reply_text, close.class_id, close.method_id) == (
            f"FRAME_ERROR - cannot decode <<{octets}>>", class_id, method_id,
        ), describe(close)  # fmt: skip
        c.expect_socket_closed()
    assert_served(broker)


def test_reply_texts_longer_than_a_shortstr_are_cut_with_an_ellipsis(broker: BrokerAddress) -> None:
    """A reply text that would not fit a shortstr is cut to 252 octets and '...' (octets,
    not characters: a multi-byte character may be cut).

    agreed with RabbitMQ 3.10.8: tx.select with 300 trailing octets -> 'FRAME_ERROR - cannot
    decode <<122,...,12...' (255 octets); basic.publish to exchange 'é' * 120 + '\\xff' ->
    channel.close(404, b"NOT_FOUND - no exchange '\\xc3\\xa9...\\xc3...") of 255 octets.
    """
    with raw_client(broker) as c:
        c.send_raw(encode_raw_frame(FRAME_METHOD, 1, struct.pack(">HH", 90, 10) + b"z" * 300))
        close = c.expect_connection_close(501)
        expected = "FRAME_ERROR - cannot decode <<" + ",".join(["122"] * 300) + ">>"
        assert close.reply_text == expected[:252] + "...", describe(close)
    name = "é".encode() * 120 + b"\xff"
    with raw_client(broker) as c:
        publish_raw(c, header_payload(0), body=b"", exchange=name, routing_key=b"k")
        frame_type, channel, payload = read_undecoded(c)
        assert (frame_type, channel, method_ids(payload)) == (FRAME_METHOD, 1, (20, 40))
        text = b"NOT_FOUND - no exchange '" + name + b"' in vhost '/'"
        assert close_fields(payload) == (404, text[:252] + b"...", 60, 40)
        c.close_connection()


def test_content_header_weight_other_than_zero_is_505(
    broker: BrokerAddress, unique: str
) -> None:
    """The spec says a content header's weight is 0 (found by the fuzz test: Leveret kept
    and delivered a weight of 256).

    agreed with RabbitMQ 3.10.8: connection.close 505 UNEXPECTED_FRAME - expected content
    header for class 60, got non content header frame instead (class 60, method 40), and
    nothing is queued.
    """
    queue = f"{unique}-weight"
    header = header_payload(3)
    weighted = header[:2] + struct.pack(">H", 256) + header[4:]
    with raw_client(broker) as c:
        declare(c, queue)
        publish_raw(c, weighted, routing_key=queue.encode())
        close = c.expect_connection_close(505)
        assert close.reply_text == ("UNEXPECTED_FRAME - expected content header for class 60, "
                                    "got non content header frame instead")
        assert (close.class_id, close.method_id) == (60, 40)
    with raw_client(broker) as c:
        assert ready_count(c, queue, 1) == 0
        c.send_method(1, commands.Queue.Delete(queue=queue))
        c.expect_method(commands.Queue.DeleteOk, channel=1)
        c.close_connection()
