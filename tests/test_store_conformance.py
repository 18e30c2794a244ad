"""Edge cases around what a broker stores and confirms, matched against RabbitMQ 3.10.8.

Every expectation here was agreed with RabbitMQ 3.10.8 (observed first, then encoded);
RabbitMQ's exact wording is recorded next to each case. Covered:

- publisher confirms racing channel.close: acks may come before close-ok, never after it, and
  every publish sent before channel.close is enqueued;
- transactions: a bad basic.ack fails at the ack (not at commit) and the channel's pending
  publishes are discarded; publishes are routed when published (the bindings of that moment),
  mandatory returns come at commit before commit-ok; rolled-back acks/rejects leave the
  delivery unacked;
- a malformed field table in a content header; deeply nested (well-formed) tables;
- invalid UTF-8 in header names and short-string properties;
- malformed client-supplied x-death headers when dead-lettering;
- expiration "0" with a dead-letter exchange in confirm mode.
"""

from __future__ import annotations

import contextlib
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

import amqp
import pika
import pytest
from conftest import EXTERNAL_URL, BrokerAddress
from pamqp import commands
from pamqp import frame as pframe
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pika_helpers import amqp_connect, pika_channel
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

# Property flags of basic's content header (AMQP 0-9-1 section 4.2.6.1 / the XML spec).
FLAG_CONTENT_TYPE = 0x8000
FLAG_HEADERS = 0x2000
FLAG_MESSAGE_ID = 0x0080
FLAG_TYPE = 0x0020

BAD_UTF8 = b"\xff\xfe\xc3("


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
    (pamqp cannot decode invalid UTF-8 or tables nested deeper than Python's recursion)."""
    while True:
        frame_type, channel, size = struct.unpack(">BHI", client.read_exactly(7, timeout))
        payload = client.read_exactly(size, timeout)
        assert client.read_exactly(1, timeout)[0] == FRAME_END
        if frame_type != FRAME_HEARTBEAT:
            return frame_type, channel, payload


def method_ids(payload: bytes) -> tuple[int, int]:
    return struct.unpack(">HH", payload[:4])


def decode_method(channel: int, payload: bytes) -> Any:
    _, _, value = pframe.unmarshal(encode_raw_frame(FRAME_METHOD, channel, payload))
    return value


def shortstr(value: bytes) -> bytes:
    return bytes([len(value)]) + value


def field_table(*fields: bytes) -> bytes:
    content = b"".join(fields)
    return struct.pack(">I", len(content)) + content


def longstr_field(name: bytes, value: bytes) -> bytes:
    return shortstr(name) + b"S" + struct.pack(">I", len(value)) + value


def nested_field(depth: int) -> bytes:
    """Field 'a' holding a table holding field 'a' ... ``depth`` tables deep; the innermost
    table holds leaf='ok'."""
    content = longstr_field(b"leaf", b"ok")
    for _ in range(depth):
        content = b"\x01a" + b"F" + struct.pack(">I", len(content)) + content
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


def sync(client: RawClient, channel: int = 1) -> RawFrame:
    """basic.qos as a round trip: returns qos-ok, or whatever the server sent instead."""
    client.send_method(channel, commands.Basic.Qos(prefetch_count=0))
    return client.read_non_heartbeat()


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


def assert_served(broker: BrokerAddress) -> None:
    """A fresh connection still works."""
    with raw_client(broker) as c:
        declare(c, f"alive-{uuid.uuid4().hex[:8]}", exclusive=True)
        c.close_connection()


@contextlib.contextmanager
def removed_afterwards(broker: BrokerAddress, queue: str) -> Iterator[str]:
    """Make sure a non-exclusive ``queue`` does not outlive the test, whatever happens."""
    try:
        yield queue
    finally:
        with contextlib.suppress(Exception):
            delete_queue(broker, queue)


def delete_queue(broker: BrokerAddress, queue: str) -> int:
    """Delete ``queue`` from a fresh connection; return how many messages it held."""
    with raw_client(broker) as c:
        c.send_method(1, commands.Queue.Delete(queue=queue))
        deleted = c.expect_method(commands.Queue.DeleteOk, channel=1)
        c.close_connection()
    return deleted.message_count


# -- 1. publisher confirms racing channel.close ---------------------------------------------------


@pytest.mark.parametrize("count", [1, 100, 5000])
@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "transient"])
def test_no_confirm_after_channel_close_ok(
    broker: BrokerAddress, unique: str, count: int, persistent: bool
) -> None:
    """In confirm mode, N publishes to a durable queue followed at once by channel.close:
    basic.acks may precede close-ok (covering any prefix of the tags, in order), nothing
    follows close-ok on that channel, and all N messages are enqueued.

    agreed with RabbitMQ 3.10.8, 3 runs each: N=1 never acked (close-ok only), N=100
    persistent never acked, N=100 transient acked up to tags 63..92, N=5000 persistent acked
    up to 869..4600 (one to three multiple acks), N=5000 transient up to 4987..5000; never a
    frame after close-ok; the queue always held N messages.
    """
    queue = f"{unique}-confirm-close"
    with removed_afterwards(broker, queue), raw_client(broker) as c:
        declare(c, queue, durable=True)
        c.send_method(1, commands.Confirm.Select())
        c.expect_method(commands.Confirm.SelectOk, channel=1)
        properties = commands.Basic.Properties(delivery_mode=2 if persistent else 1)
        one = (
            pframe.marshal(commands.Basic.Publish(exchange="", routing_key=queue), 1)
            + pframe.marshal(ContentHeader(0, 10, properties), 1)
            + pframe.marshal(ContentBody(b"0123456789"), 1)
        )
        c.send_raw(one * count + pframe.marshal(commands.Channel.Close(200, "bye", 0, 0), 1))
        acked = 0
        while True:
            f = c.read_non_heartbeat(timeout=20)
            if isinstance(f.value, commands.Channel.CloseOk):
                break
            assert isinstance(f.value, commands.Basic.Ack), f"before close-ok: {f!r}"
            assert acked < f.value.delivery_tag <= count, f"ack {f.value.delivery_tag}"
            assert f.value.multiple or f.value.delivery_tag == acked + 1
            acked = f.value.delivery_tag
        c.expect_silence(1.0)  # in particular no basic.ack for the rest
        c.open_channel(2)
        c.send_method(2, commands.Queue.Delete(queue=queue))
        assert c.expect_method(commands.Queue.DeleteOk, channel=2).message_count == count
        c.close_connection()


# -- 2. transactions -------------------------------------------------------------------------------


def _tx_client(broker: BrokerAddress, unique: str, messages: int = 0) -> tuple[RawClient, str]:
    """Channel 1 transactional, channel 2 an observer, an exclusive queue with ``messages``."""
    c = connect(broker.host, broker.port)
    c.open_channel(1)
    c.open_channel(2)
    queue = f"{unique}-tx"
    declare(c, queue, channel=2, exclusive=True)
    for i in range(messages):
        c.send_method(2, commands.Basic.Publish(exchange="", routing_key=queue))
        c.send_content(2, f"m{i}".encode())
    deadline = time.monotonic() + 3
    while ready_count(c, queue, 2) < messages and time.monotonic() < deadline:
        time.sleep(0.02)
    c.send_method(1, commands.Tx.Select())
    c.expect_method(commands.Tx.SelectOk, channel=1)
    return c, queue


def _get_tag(c: RawClient, queue: str) -> int:
    c.send_method(1, commands.Basic.Get(queue=queue))
    get_ok = c.expect_method(commands.Basic.GetOk, channel=1)
    c.read_non_heartbeat()  # header
    c.read_non_heartbeat()  # body
    return get_ok.delivery_tag


def _expect_unknown_tag_close(f: RawFrame, tag: int) -> None:
    assert isinstance(f.value, commands.Channel.Close), f"expected channel.close, got {f!r}"
    assert f.channel == 1
    close = f.value
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        406,
        f"PRECONDITION_FAILED - unknown delivery tag {tag}",
        60,
        80,
    ), describe(close)


def test_tx_ack_of_unknown_tag_fails_at_the_ack(broker: BrokerAddress, unique: str) -> None:
    """Inside a transaction, basic.ack of a tag never delivered closes the channel at once.

    agreed with RabbitMQ 3.10.8: channel.close(406, 'PRECONDITION_FAILED - unknown delivery
    tag 99', class 60, method 80) instead of the qos-ok that follows the ack.
    """
    c, _ = _tx_client(broker, unique)
    with c:
        c.send_method(1, commands.Basic.Ack(delivery_tag=99))
        _expect_unknown_tag_close(sync(c), 99)


@pytest.mark.parametrize("first_multiple", [False, True], ids=["single", "multiple"])
def test_tx_second_ack_of_a_tag_fails_at_the_second_ack(
    broker: BrokerAddress, unique: str, first_multiple: bool
) -> None:
    """Acking a tag that an earlier ack of the same (uncommitted) transaction already covers
    fails at that second ack, not at commit; nothing of the transaction is applied.

    agreed with RabbitMQ 3.10.8: the first ack is accepted (qos-ok follows); the second is
    channel.close(406, 'PRECONDITION_FAILED - unknown delivery tag 1', class 60, method 80);
    the tx.commit sent afterwards is ignored; the messages stay in the queue.
    """
    c, queue = _tx_client(broker, unique, messages=2)
    with c:
        first = _get_tag(c, queue)
        second = _get_tag(c, queue)
        if first_multiple:
            c.send_method(1, commands.Basic.Ack(delivery_tag=second, multiple=True))
        else:
            c.send_method(1, commands.Basic.Ack(delivery_tag=first))
        assert isinstance(sync(c).value, commands.Basic.QosOk)
        c.send_method(1, commands.Basic.Ack(delivery_tag=first))
        _expect_unknown_tag_close(sync(c), first)
        c.send_method(1, commands.Tx.Commit())
        c.expect_silence(0.3)
        c.send_method(1, commands.Channel.CloseOk())
        # Neither ack was applied: closing the channel requeued both deliveries.
        deadline = time.monotonic() + 3
        while ready_count(c, queue, 2) != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready_count(c, queue, 2) == 2
        c.close_connection()


@pytest.mark.parametrize("bad_ack", ["unknown-tag", "double-ack"])
def test_tx_channel_error_discards_pending_publish(
    broker: BrokerAddress, unique: str, bad_ack: str
) -> None:
    """A transaction holding a publish, then a bad ack: the channel error throws the whole
    transaction away; the publish is never routed (not even by a tx.commit that follows).

    agreed with RabbitMQ 3.10.8: channel.close(406, 'PRECONDITION_FAILED - unknown delivery
    tag N', 60, 80) at the bad ack; the queue gets nothing.
    """
    c, queue = _tx_client(broker, unique, messages=1 if bad_ack == "double-ack" else 0)
    with c:
        if bad_ack == "double-ack":
            tag = _get_tag(c, queue)
            acks = [tag, tag]
        else:
            tag = 5
            acks = [tag]
        c.send_method(1, commands.Basic.Publish(exchange="", routing_key=queue))
        c.send_content(1, b"in-tx")
        for t in acks:
            c.send_method(1, commands.Basic.Ack(delivery_tag=t))
        _expect_unknown_tag_close(sync(c), tag)
        c.send_method(1, commands.Tx.Commit())
        c.expect_silence(0.3)
        c.send_method(1, commands.Channel.CloseOk())
        time.sleep(0.2)
        c.send_method(2, commands.Basic.Get(queue=queue, no_ack=True))
        bodies = []
        while True:
            f = c.read_non_heartbeat()
            if isinstance(f.value, commands.Basic.GetEmpty):
                break
            assert isinstance(f.value, commands.Basic.GetOk), f
            c.read_non_heartbeat()
            bodies.append(c.read_non_heartbeat().payload)
            c.send_method(2, commands.Basic.Get(queue=queue, no_ack=True))
        assert b"in-tx" not in bodies
        assert bodies == ([b"m0"] if bad_ack == "double-ack" else [])
        c.close_connection()


def test_tx_rolled_back_ack_leaves_delivery_unacked(broker: BrokerAddress, unique: str) -> None:
    """An ack undone by tx.rollback leaves the delivery unacked (not requeued): it can be
    acked again in the next transaction, which then removes it for good.

    agreed with RabbitMQ 3.10.8: rollback-ok; queue ready count 0; ack + commit -> commit-ok;
    after channel.close the queue is still empty.
    """
    c, queue = _tx_client(broker, unique, messages=1)
    with c:
        tag = _get_tag(c, queue)
        c.send_method(1, commands.Basic.Ack(delivery_tag=tag))
        c.send_method(1, commands.Tx.Rollback())
        c.expect_method(commands.Tx.RollbackOk, channel=1)
        assert ready_count(c, queue, 2) == 0
        c.send_method(1, commands.Basic.Ack(delivery_tag=tag))
        c.send_method(1, commands.Tx.Commit())
        c.expect_method(commands.Tx.CommitOk, channel=1)
        c.send_method(1, commands.Channel.Close(200, "", 0, 0))
        c.expect_method(commands.Channel.CloseOk, channel=1)
        assert ready_count(c, queue, 2) == 0
        c.close_connection()


@pytest.mark.parametrize(
    "method",
    [
        commands.Basic.Reject(delivery_tag=1, requeue=True),
        commands.Basic.Nack(delivery_tag=1, requeue=True),
        commands.Basic.Reject(delivery_tag=1, requeue=False),
    ],
    ids=["reject-requeue", "nack-requeue", "reject-no-requeue"],
)
def test_tx_rolled_back_reject_leaves_delivery_unacked(
    broker: BrokerAddress, unique: str, method: Any
) -> None:
    """basic.reject/nack inside a transaction is held until commit; after tx.rollback the
    delivery is still unacked (not requeued), and an ack of it commits fine.

    agreed with RabbitMQ 3.10.8: qos-ok after the reject; ready count stays 1 (the other
    message) before and after rollback-ok; ack + commit -> commit-ok; after channel.close
    only the other message is left.
    """
    c, queue = _tx_client(broker, unique, messages=2)
    with c:
        assert _get_tag(c, queue) == 1
        c.send_method(1, method)
        assert isinstance(sync(c).value, commands.Basic.QosOk)
        assert ready_count(c, queue, 2) == 1
        c.send_method(1, commands.Tx.Rollback())
        c.expect_method(commands.Tx.RollbackOk, channel=1)
        assert ready_count(c, queue, 2) == 1
        c.send_method(1, commands.Basic.Ack(delivery_tag=1))
        c.send_method(1, commands.Tx.Commit())
        c.expect_method(commands.Tx.CommitOk, channel=1)
        c.send_method(1, commands.Channel.Close(200, "", 0, 0))
        c.expect_method(commands.Channel.CloseOk, channel=1)
        assert ready_count(c, queue, 2) == 1
        c.close_connection()


# (id, what happens between the publish and tx.commit, routed?)
TX_ROUTING_CASES = [
    ("exchange-deleted", "delete-exchange", True),
    ("unbound", "unbind", True),
    ("bound-after-publish", "bind", False),
    ("queue-deleted", "delete-queue", False),
]


@pytest.mark.parametrize(
    ("change", "routed"), [case[1:] for case in TX_ROUTING_CASES],
    ids=[case[0] for case in TX_ROUTING_CASES],
)  # fmt: skip
def test_tx_publish_is_routed_when_published(
    broker: BrokerAddress, unique: str, change: str, routed: bool
) -> None:
    """A transactional publish is routed with the bindings of the moment it is published;
    tx.commit only delivers to the queues chosen then. So deleting the exchange (or the
    binding) before commit does not stop it, and a binding made after the publish does not
    catch it; a mandatory publish whose queues are all gone by then is returned at commit.

    agreed with RabbitMQ 3.10.8: qos-ok after the publish (no error for the exchange about to
    go); at commit either commit-ok alone (routed: the queue holds the message), or
    basic.return(312, 'NO_ROUTE') + header + body, then commit-ok.
    """
    c, queue = _tx_client(broker, unique)
    exchange = f"{unique}-fanout"
    with c:
        c.send_method(2, commands.Exchange.Declare(exchange=exchange, exchange_type="fanout"))
        c.expect_method(commands.Exchange.DeclareOk, channel=2)
        if change != "bind":
            c.send_method(2, commands.Queue.Bind(queue=queue, exchange=exchange))
            c.expect_method(commands.Queue.BindOk, channel=2)
        c.send_method(1, commands.Basic.Publish(exchange=exchange, mandatory=True))
        c.send_content(1, b"tx-routed")
        assert isinstance(sync(c).value, commands.Basic.QosOk)
        if change == "delete-exchange":
            c.send_method(2, commands.Exchange.Delete(exchange=exchange))
            c.expect_method(commands.Exchange.DeleteOk, channel=2)
        elif change == "unbind":
            c.send_method(2, commands.Queue.Unbind(queue=queue, exchange=exchange))
            c.expect_method(commands.Queue.UnbindOk, channel=2)
        elif change == "bind":
            c.send_method(2, commands.Queue.Bind(queue=queue, exchange=exchange))
            c.expect_method(commands.Queue.BindOk, channel=2)
        elif change == "delete-queue":
            c.send_method(2, commands.Queue.Delete(queue=queue))
            c.expect_method(commands.Queue.DeleteOk, channel=2)
        c.send_method(1, commands.Tx.Commit())
        if not routed:
            returned = c.expect_method(commands.Basic.Return, channel=1)
            assert (returned.reply_code, returned.reply_text) == (312, "NO_ROUTE")
            assert isinstance(c.read_non_heartbeat().value, ContentHeader)
            assert c.read_non_heartbeat().payload == b"tx-routed"
        c.expect_method(commands.Tx.CommitOk, channel=1)
        c.expect_silence(0.3)
        if change != "delete-queue":
            time.sleep(0.1)
            assert ready_count(c, queue, 2) == (1 if routed else 0)
        if change != "delete-exchange":
            c.send_method(2, commands.Exchange.Delete(exchange=exchange))
            c.expect_method(commands.Exchange.DeleteOk, channel=2)
        c.close_connection()


def test_tx_mandatory_return_is_sent_at_commit_before_commit_ok(
    broker: BrokerAddress, unique: str
) -> None:
    """A mandatory unroutable publish in a transaction: nothing at publish time; at commit
    basic.return (with its content) comes first, then commit-ok.

    agreed with RabbitMQ 3.10.8: qos-ok after the publish; then Basic.Return(312,
    'NO_ROUTE'), ContentHeader(body_size=4), ContentBody(4 octets), Tx.CommitOk.
    """
    c, queue = _tx_client(broker, unique)
    with c:
        c.send_method(
            1, commands.Basic.Publish(exchange="", routing_key=f"{queue}-nowhere", mandatory=True)
        )
        c.send_content(1, b"lost")
        assert isinstance(sync(c).value, commands.Basic.QosOk)
        c.send_method(1, commands.Tx.Commit())
        returned = c.expect_method(commands.Basic.Return, channel=1)
        assert (returned.reply_code, returned.reply_text, returned.routing_key) == (
            312,
            "NO_ROUTE",
            f"{queue}-nowhere",
        )
        header = c.read_non_heartbeat()
        assert isinstance(header.value, ContentHeader) and header.value.body_size == 4
        assert c.read_non_heartbeat().payload == b"lost"
        c.expect_method(commands.Tx.CommitOk, channel=1)
        c.close_connection()


# -- 3. malformed and deeply nested header tables -------------------------------------------------

GOOD_FIELD = longstr_field(b"key", b"val")

# (id, the headers property as sent, RabbitMQ 3.10.8's crash reason in its log)
MALFORMED_TABLES = [
    ("unknown-type-Z", field_table(b"\x03key", b"Z", b"\x00\x00"),
     "function_clause in rabbit_binary_parser:parse_table(<<3,107,101,121,90,0,0>>)"),
    ("unknown-type-after-good-field", field_table(GOOD_FIELD, b"\x03bad", b"Z"),
     "function_clause in rabbit_binary_parser:parse_table(<<3,98,97,100,90>>)"),
    ("table-length-past-header", struct.pack(">I", 1000) + GOOD_FIELD,
     "badmatch in rabbit_framing_amqp_0_9_1:decode_properties/2"),
    ("table-length-past-header-by-1", struct.pack(">I", len(GOOD_FIELD) + 1) + GOOD_FIELD,
     "badmatch in rabbit_framing_amqp_0_9_1:decode_properties/2"),
    ("string-length-past-table",
     field_table(b"\x03key", b"S", struct.pack(">I", 100), b"val"),
     "function_clause in rabbit_binary_parser:parse_table"),
    ("field-name-past-table", field_table(b"\x09ke"),
     "function_clause in rabbit_binary_parser:parse_table(<<\"\\tke\">>)"),
    ("trailing-octets-after-properties", field_table(GOOD_FIELD) + b"\xff\xff",
     "badmatch (<<255,255>>) in rabbit_framing_amqp_0_9_1:decode_properties/2"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "rabbitmq_log"), [case[1:] for case in MALFORMED_TABLES],
    ids=[case[0] for case in MALFORMED_TABLES],
)  # fmt: skip
def test_malformed_headers_table_closes_the_connection(
    broker: BrokerAddress, unique: str, headers: bytes, rabbitmq_log: str
) -> None:
    """A content header whose headers table does not parse is a connection error, and the
    message is not enqueued.

    agreed with RabbitMQ 3.10.8 except for the reply: its channel process crashes decoding the
    properties (see the table for the logged reason) and the connection is closed with exactly
    connection.close(541, 'INTERNAL_ERROR', class 0, method 0); Leveret says what it is, 502
    SYNTAX_ERROR naming the property (README: where Leveret deliberately differs). Both: the
    basic.qos sent after the message is not answered; after close-ok the socket is closed;
    the queue holds nothing.
    """
    queue = f"{unique}-bad-table"
    with removed_afterwards(broker, queue):
        with raw_client(broker) as c:
            declare(c, queue)  # not exclusive: it must outlive this connection
            publish_raw(c, header_payload(3, FLAG_HEADERS, headers), routing_key=queue.encode())
            c.send_method(1, commands.Basic.Qos(prefetch_count=0))
            if EXTERNAL_URL:
                close = c.expect_connection_close(541)
                assert close.reply_text.startswith("INTERNAL_ERROR"), describe(close)
            else:
                close = c.expect_connection_close(502)
                assert close.reply_text.startswith("SYNTAX_ERROR - malformed"), describe(close)
            assert (close.class_id, close.method_id) == (0, 0), describe(close)
            c.expect_socket_closed()
        assert delete_queue(broker, queue) == 0
    assert_served(broker)


@pytest.mark.parametrize("depth", [500, 2000])
def test_deeply_nested_headers_delivered_intact(
    broker: BrokerAddress, unique: str, depth: int
) -> None:
    """A well-formed headers table nested ``depth`` tables deep is accepted (acked) and
    delivered to a consumer byte for byte.

    agreed with RabbitMQ 3.10.8: basic.ack; the delivered content header is identical to
    the one published (3530 octets at depth 500, 14030 at 2000; also 70030 at 10000).
    """
    with raw_client(broker) as c:
        queue = f"{unique}-deep"
        declare(c, queue, exclusive=True)
        c.send_method(1, commands.Confirm.Select())
        c.expect_method(commands.Confirm.SelectOk, channel=1)
        header = header_payload(3, FLAG_HEADERS, field_table(nested_field(depth)))
        publish_raw(c, header, routing_key=queue.encode())
        c.expect_method(commands.Basic.Ack, channel=1)
        _, delivered, body = consume_one(c, queue)
        assert delivered == header
        assert body == b"abc"
        c.close_connection()


@pytest.mark.parametrize("depth", [500, 2000])
def test_deeply_nested_headers_through_headers_exchange(
    broker: BrokerAddress, unique: str, depth: int
) -> None:
    """The same deep table next to a matching top-level header is routed by a headers
    exchange and delivered intact.

    agreed with RabbitMQ 3.10.8: no basic.return, basic.ack, identical content header.
    """
    with raw_client(broker) as c:
        queue = f"{unique}-deep-hx"
        exchange = f"{unique}-hx"
        declare(c, queue, exclusive=True)
        c.send_method(
            1,
            commands.Exchange.Declare(exchange=exchange, exchange_type="headers", auto_delete=True),
        )
        c.expect_method(commands.Exchange.DeclareOk, channel=1)
        c.send_method(
            1,
            commands.Queue.Bind(
                queue=queue, exchange=exchange, arguments={"x-match": "any", "zz": "1"}
            ),
        )
        c.expect_method(commands.Queue.BindOk, channel=1)
        c.send_method(1, commands.Confirm.Select())
        c.expect_method(commands.Confirm.SelectOk, channel=1)
        header = header_payload(
            3, FLAG_HEADERS, field_table(longstr_field(b"zz", b"1"), nested_field(depth))
        )
        publish_raw(c, header, exchange=exchange.encode(), mandatory=True)
        c.expect_method(commands.Basic.Ack, channel=1)
        _, delivered, body = consume_one(c, queue)
        assert delivered == header
        assert body == b"abc"
        c.close_connection()


@pytest.mark.parametrize("depth", [500, 2000])
def test_deeply_nested_headers_dead_lettered(
    broker: BrokerAddress, unique: str, depth: int
) -> None:
    """The deep table survives dead-lettering (x-message-ttl 0 into a DLX): the dead letter's
    headers hold the original nested field unchanged, plus x-death.

    agreed with RabbitMQ 3.10.8: basic.ack; the dead letter's header is 236 octets longer
    (x-death, x-first-death-*) and contains the nested field's encoding verbatim.
    """
    with raw_client(broker) as c:
        queue = f"{unique}-deep-src"
        dead = f"{unique}-deep-dlq"
        declare(c, dead, exclusive=True)
        declare(c, queue, exclusive=True, arguments={
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead,
            "x-message-ttl": 0,
        })  # fmt: skip
        c.send_method(1, commands.Confirm.Select())
        c.expect_method(commands.Confirm.SelectOk, channel=1)
        field = nested_field(depth)
        header = header_payload(3, FLAG_HEADERS, field_table(field))
        publish_raw(c, header, routing_key=queue.encode())
        c.expect_method(commands.Basic.Ack, channel=1)
        _, delivered, body = consume_one(c, dead)
        assert field in delivered
        assert b"x-death" in delivered
        assert body == b"abc"
        c.close_connection()


# -- 4. invalid UTF-8 -----------------------------------------------------------------------------

INVALID_UTF8_PROPERTIES = [
    ("header-name", FLAG_HEADERS, field_table(longstr_field(b"h" + BAD_UTF8, b"v"))),
    ("header-longstr-value", FLAG_HEADERS, field_table(longstr_field(b"h", BAD_UTF8))),
    ("content-type", FLAG_CONTENT_TYPE, shortstr(b"t/" + BAD_UTF8)),
    ("message-id", FLAG_MESSAGE_ID, shortstr(b"id" + BAD_UTF8)),
    ("type", FLAG_TYPE, shortstr(b"ty" + BAD_UTF8)),
]


@pytest.mark.parametrize(
    ("flags", "properties"), [case[1:] for case in INVALID_UTF8_PROPERTIES],
    ids=[case[0] for case in INVALID_UTF8_PROPERTIES],
)  # fmt: skip
def test_invalid_utf8_in_properties_is_delivered_as_sent(
    broker: BrokerAddress, unique: str, flags: int, properties: bytes
) -> None:
    """Invalid UTF-8 in a header name, a header's string value or a short-string property is
    accepted and delivered octet for octet.

    agreed with RabbitMQ 3.10.8: basic.ack, then a delivery whose content header is
    identical to the published one.
    """
    with raw_client(broker) as c:
        queue = f"{unique}-utf8"
        declare(c, queue, exclusive=True)
        c.send_method(1, commands.Confirm.Select())
        c.expect_method(commands.Confirm.SelectOk, channel=1)
        header = header_payload(3, flags, properties)
        publish_raw(c, header, routing_key=queue.encode(), mandatory=True)
        c.expect_method(commands.Basic.Ack, channel=1)
        _, delivered, body = consume_one(c, queue)
        assert delivered == header
        assert body == b"abc"
        c.close_connection()


# -- 5. malformed x-death from a client ------------------------------------------------------------


def _dead_letter_roundtrip(
    broker: BrokerAddress, unique: str, x_death: Any, how: str
) -> tuple[amqp.Connection, amqp.Channel, str, str]:
    """Publish a message carrying ``x_death`` to a queue with a DLX and reject it (or let it
    expire). Returns the still-open connection, a channel, the source and the dead queue."""
    conn = amqp_connect(broker.url)
    ch = conn.channel()
    source, dead = f"{unique}-src", f"{unique}-dlq"
    ch.queue_declare(dead, exclusive=True)
    arguments: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    if how == "expire":
        arguments["x-message-ttl"] = 50
    ch.queue_declare(source, exclusive=True, arguments=arguments)
    ch.confirm_select()
    ch.basic_publish(
        amqp.Message(b"body", application_headers={"x-death": x_death, "keep": "me"}),
        exchange="",
        routing_key=source,
    )
    if how == "reject":
        message = ch.basic_get(source)
        assert message is not None
        ch.basic_reject(message.delivery_tag, requeue=False)
    return conn, ch, source, dead


def _get_dead(ch: amqp.Channel, dead: str, timeout: float = 3.0) -> amqp.Message:
    deadline = time.monotonic() + timeout
    while True:
        message = ch.basic_get(dead, no_ack=True)
        if message is not None:
            return message
        assert time.monotonic() < deadline, f"nothing was dead-lettered into {dead!r}"
        time.sleep(0.02)


def _reason(how: str) -> str:
    return "expired" if how == "expire" else "rejected"


@pytest.mark.parametrize("how", ["reject", "expire"])
@pytest.mark.parametrize("x_death", ["abc", 7, {"count": 1}], ids=["string", "int", "table"])
def test_x_death_that_is_not_an_array_is_replaced(
    broker: BrokerAddress, unique: str, x_death: Any, how: str
) -> None:
    """A client-supplied x-death that is not an array is thrown away and replaced by a
    fresh array holding this death (count 1); other headers are kept.

    agreed with RabbitMQ 3.10.8: dead-lettered; it logs a warning 'Message has invalid x-death
    header (type: longstr). Resetting header <<"abc">>' (signedint / table likewise).
    """
    conn, ch, source, dead = _dead_letter_roundtrip(broker, unique, x_death, how)
    try:
        message = _get_dead(ch, dead)
        headers = message.headers
        assert headers["keep"] == "me"
        (death,) = headers["x-death"]
        assert (death["queue"], death["reason"], death["count"]) == (source, _reason(how), 1)
        assert (death["exchange"], death["routing-keys"]) == ("", [source])
    finally:
        conn.close()


@pytest.mark.parametrize("how", ["reject", "expire"])
@pytest.mark.parametrize("count", ["abc", 2.5], ids=["string-count", "float-count"])
def test_foreign_x_death_entry_with_odd_count_is_kept_verbatim(
    broker: BrokerAddress, unique: str, count: Any, how: str
) -> None:
    """An x-death entry for another queue whose count is not an integer is left as it is,
    after the new entry for this death.

    agreed with RabbitMQ 3.10.8: x-death == [{count 1, queue <source>, reason, ...},
    {the foreign entry exactly as sent, count 'abc' / 2.5}].
    """
    foreign = {"queue": "elsewhere", "reason": _reason(how), "exchange": "",
               "routing-keys": ["k"], "count": count}  # fmt: skip
    conn, ch, source, dead = _dead_letter_roundtrip(broker, unique, [foreign], how)
    try:
        message = _get_dead(ch, dead)
        new, old = message.headers["x-death"]
        assert (new["queue"], new["reason"], new["count"]) == (source, _reason(how), 1)
        assert old == foreign
    finally:
        conn.close()


@pytest.mark.parametrize("how", ["reject", "expire"])
@pytest.mark.parametrize(
    ("count", "expected"), [(3, 4), (-5, -4), (None, 1)], ids=["3", "negative", "missing"]
)
def test_matching_x_death_entry_count_is_incremented(
    broker: BrokerAddress, unique: str, count: int | None, expected: int, how: str
) -> None:
    """A client-supplied x-death entry for this queue and reason is this death's entry: its
    count goes up by one (a missing count counts as a first death), other fields stay.

    agreed with RabbitMQ 3.10.8: count 3 -> 4, -5 -> -4, missing -> 1; the entry keeps the
    fields it had (RabbitMQ 3.10 adds no 'time' to an existing entry).
    """

    def entry(source: str) -> dict[str, Any]:
        e: dict[str, Any] = {"queue": source, "reason": _reason(how), "exchange": "",
                             "routing-keys": [source]}  # fmt: skip
        if count is not None:
            e["count"] = count
        return e

    source = f"{unique}-src"
    conn, ch, _, dead = _dead_letter_roundtrip(broker, unique, [entry(source)], how)
    try:
        message = _get_dead(ch, dead)
        (death,) = message.headers["x-death"]
        assert death["count"] == expected
        assert {k: v for k, v in death.items() if k not in ("count", "time")} == {
            k: v for k, v in entry(source).items() if k != "count"
        }
    finally:
        conn.close()


@pytest.mark.parametrize("how", ["reject", "expire"])
@pytest.mark.parametrize("case", ["matching-string-count", "array-of-strings"])
def test_unusable_x_death_does_not_break_connections_or_queue(
    broker: BrokerAddress, unique: str, case: str, how: str
) -> None:
    """An x-death the broker cannot update (this queue's entry with a string count, or an
    array entry that is not a table) does not cost the client its connection or channel, and
    the source queue goes on (empty).

    agreed with RabbitMQ 3.10.8 only that far: RabbitMQ's queue process crashes ({badarith,
    increment_xdeath_event_count} / function_clause in queue_and_reason_matcher) and is
    restarted ('Restarting crashed queue'), and the message is lost -- no dead letter. What
    ends up in the dead-letter queue is therefore not checked here.
    """
    source = f"{unique}-src"
    x_death: Any = (
        [{"queue": source, "reason": _reason(how), "exchange": "", "count": "abc"}]
        if case == "matching-string-count"
        else ["abc"]
    )
    conn, ch, _, _dead = _dead_letter_roundtrip(broker, unique, x_death, how)
    try:
        time.sleep(0.5)
        assert conn.connected
        declared = ch.queue_declare(source, passive=True)
        assert declared.message_count == 0
        ch.basic_publish(amqp.Message(b"next"), exchange="", routing_key=f"{unique}-dlq")
    finally:
        if conn.connected:
            conn.close()
    assert_served(broker)


# -- 6. expiration "0" with a DLX ------------------------------------------------------------------


@pytest.mark.parametrize("delivery_mode", [1, 2], ids=["transient", "persistent"])
def test_expiration_zero_with_dlx_is_confirmed_and_dead_lettered(
    broker: BrokerAddress, unique: str, delivery_mode: int
) -> None:
    """expiration '0' into a queue with a DLX and no consumer, in confirm mode: acked, and
    dead-lettered at once as 'expired' with original-expiration '0' (no expiration left).

    agreed with RabbitMQ 3.10.8: basic.ack(1) only (no return); source queue 0, dead-letter
    queue 1; x-death [{count 1, reason 'expired', queue, exchange '', routing-keys [queue],
    original-expiration '0', time}], x-first-death-* set.
    """
    with pika_channel(broker.url) as (_conn, ch):
        source, dead = f"{unique}-src", f"{unique}-dlq"
        ch.queue_declare(dead, exclusive=True)
        ch.queue_declare(source, exclusive=True, arguments={
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead,
        })  # fmt: skip
        ch.confirm_delivery()
        ch.basic_publish("", source, b"zero",
                         pika.BasicProperties(expiration="0", delivery_mode=delivery_mode),
                         mandatory=True)  # fmt: skip
        deadline = time.monotonic() + 3
        while True:
            method, props, body = ch.basic_get(dead, auto_ack=True)
            if method is not None or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert body == b"zero"
        assert props.expiration is None
        (death,) = props.headers["x-death"]
        assert (death["count"], death["reason"], death["queue"], death["exchange"]) == (
            1, "expired", source, "",
        )  # fmt: skip
        assert death["routing-keys"] == [source]
        assert death["original-expiration"] == "0"
        assert props.headers["x-first-death-reason"] == "expired"
        assert ch.queue_declare(source, passive=True).method.message_count == 0
