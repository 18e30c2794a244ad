"""Plain acks that arrive in a row are settled together, with the outcome of one by one.

Most consumers (amqp-perf, Celery's workers, pika apps) ack each message on its own, so one
read often holds dozens of ``basic.ack`` frames (one tag, multiple=false) for one channel.
Leveret settles such a run in one step (``Connection._acks`` / ``Channel.ack_each``). These
tests send the acks in one write and check that nothing but speed changes: the acks before an
unknown tag count and the channel closes at that tag (406, as RabbitMQ 3.10.8 answers, which
agreed with the cases marked so), acks in a transaction wait for the commit, an ack in the
middle of a publish is the connection error it always was, and acks before a frame that
fails the connection still count. The property test compares one write against one frame
per round trip for random runs of acks, nacks, rejects and unknown tags (it holds on
RabbitMQ 3.10.8 too).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import BrokerAddress
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp import frame as pframe
from rawamqp import FRAME_METHOD, RawClient, connect, encode_raw_frame

pytestmark = pytest.mark.timeout(60)


def _frames(channel: int, *methods: object) -> bytes:
    return b"".join(pframe.marshal(method, channel) for method in methods)


def _ack(tag: int) -> commands.Basic.Ack:
    return commands.Basic.Ack(delivery_tag=tag)


def _queue_with(client: RawClient, name: str, count: int) -> None:
    """Declare ``name`` (exclusive to ``client``) and fill it with bodies b'0' .. b'count-1'."""
    client.send_method(1, commands.Queue.Declare(queue=name, exclusive=True))
    client.expect_method(commands.Queue.DeclareOk, channel=1)
    client.send_method(1, commands.Confirm.Select())
    client.expect_method(commands.Confirm.SelectOk, channel=1)
    for index in range(count):
        client.send_method(1, commands.Basic.Publish(routing_key=name))
        client.send_content(1, str(index).encode())
    confirmed = 0
    while confirmed < count:
        ack = client.expect_method(commands.Basic.Ack, channel=1)
        confirmed = ack.delivery_tag if ack.multiple else confirmed + 1


def _deliveries(client: RawClient, channel: int, queue: str, count: int) -> list[int]:
    """Consume ``queue`` with manual acks on ``channel``; the first ``count`` tags."""
    client.send_method(channel, commands.Basic.Consume(queue=queue, consumer_tag="c"))
    client.expect_method(commands.Basic.ConsumeOk, channel=channel)
    tags = []
    while len(tags) < count:
        frame = client.read_non_heartbeat()
        if isinstance(frame.value, commands.Basic.Deliver):
            tags.append(frame.value.delivery_tag)
            client.read_non_heartbeat()  # its content header
            client.read_non_heartbeat()  # and its one body frame
    return tags


def _left(queue: str, owner: RawClient, channel: int) -> list[str]:
    """The bodies ``queue`` holds now (basic.get with no-ack on a fresh channel of its
    owner: the queue is exclusive), marked '*' when redelivered."""
    owner.open_channel(channel)
    bodies = []
    while True:
        owner.send_method(channel, commands.Basic.Get(queue=queue, no_ack=True))
        frame = owner.read_non_heartbeat()
        if isinstance(frame.value, commands.Basic.GetEmpty):
            return bodies
        assert isinstance(frame.value, commands.Basic.GetOk), frame
        redelivered = frame.value.redelivered
        owner.read_non_heartbeat()  # content header
        body = owner.read_non_heartbeat().value.value  # one body frame
        bodies.append(body.decode() + ("*" if redelivered else ""))


@pytest.fixture
def client(broker: BrokerAddress) -> Iterator[RawClient]:
    with connect(broker.host, broker.port) as raw:
        raw.open_channel(1)
        yield raw


def test_fifty_acks_in_one_write_all_count(client: RawClient, broker: BrokerAddress,
                                           unique: str) -> None:
    """Agreed with RabbitMQ 3.10.8."""
    queue = f"{unique}-run"
    _queue_with(client, queue, 60)
    client.open_channel(2)
    tags = _deliveries(client, 2, queue, 60)
    client.send_raw(_frames(2, *(_ack(tag) for tag in tags[:50])))
    client.send_method(2, commands.Channel.Close(200, "bye", 0, 0))
    while not isinstance(client.read_non_heartbeat().value, commands.Channel.CloseOk):
        pass
    # the ten not acked come back, redelivered
    assert _left(queue, client, 3) == [f"{index}*" for index in range(50, 60)]


def test_an_unknown_tag_in_a_run_closes_the_channel_there(client: RawClient,
                                                          broker: BrokerAddress,
                                                          unique: str) -> None:
    """Acks before the unknown tag count; the channel closes with 406 naming it, and the
    acks after it are dropped with the channel (its unacked messages come back).
    Agreed with RabbitMQ 3.10.8."""
    queue = f"{unique}-bad"
    _queue_with(client, queue, 10)
    client.open_channel(2)
    tags = _deliveries(client, 2, queue, 10)
    client.send_raw(_frames(2, *(_ack(tag) for tag in tags[:4]), _ack(99),
                            *(_ack(tag) for tag in tags[5:])))
    close = client.expect_channel_close(2, 406)
    assert close.reply_text == "PRECONDITION_FAILED - unknown delivery tag 99"
    assert (close.class_id, close.method_id) == (60, 80)
    client.send_method(2, commands.Channel.CloseOk())
    assert _left(queue, client, 3) == [f"{index}*" for index in range(4, 10)]


def test_a_tag_acked_twice_in_a_run_is_unknown_the_second_time(client: RawClient,
                                                                broker: BrokerAddress,
                                                                unique: str) -> None:
    """Agreed with RabbitMQ 3.10.8."""
    queue = f"{unique}-twice"
    _queue_with(client, queue, 5)
    client.open_channel(2)
    tags = _deliveries(client, 2, queue, 5)
    client.send_raw(_frames(2, _ack(tags[0]), _ack(tags[1]), _ack(tags[1]), _ack(tags[2])))
    close = client.expect_channel_close(2, 406)
    assert close.reply_text == f"PRECONDITION_FAILED - unknown delivery tag {tags[1]}"
    client.send_method(2, commands.Channel.CloseOk())
    assert _left(queue, client, 3) == ["2*", "3*", "4*"]


def test_acks_in_a_transaction_wait_for_commit(client: RawClient, broker: BrokerAddress,
                                               unique: str) -> None:
    """A run of acks in tx mode is settled at commit, undone by rollback.
    Agreed with RabbitMQ 3.10.8."""
    queue = f"{unique}-tx"
    _queue_with(client, queue, 6)
    client.open_channel(2)
    client.send_method(2, commands.Tx.Select())
    client.expect_method(commands.Tx.SelectOk, channel=2)
    tags = _deliveries(client, 2, queue, 6)
    client.send_raw(_frames(2, *(_ack(tag) for tag in tags[:3]), commands.Tx.Rollback()))
    client.expect_method(commands.Tx.RollbackOk, channel=2)
    client.send_raw(_frames(2, *(_ack(tag) for tag in tags[:2]), commands.Tx.Commit()))
    client.expect_method(commands.Tx.CommitOk, channel=2)
    client.send_method(2, commands.Channel.Close(200, "bye", 0, 0))
    while not isinstance(client.read_non_heartbeat().value, commands.Channel.CloseOk):
        pass
    assert _left(queue, client, 3) == ["2*", "3*", "4*", "5*"]


def test_an_ack_inside_a_publish_is_still_an_unexpected_frame(client: RawClient,
                                                             unique: str) -> None:
    """Agreed with RabbitMQ 3.10.8 (505, the connection closes)."""
    queue = f"{unique}-mid"
    _queue_with(client, queue, 2)
    client.open_channel(2)
    tags = _deliveries(client, 2, queue, 2)
    client.send_raw(_frames(2, commands.Basic.Publish(routing_key=queue), _ack(tags[0]),
                            _ack(tags[1])))
    close = client.expect_connection_close(505)
    assert close.reply_text.startswith("UNEXPECTED_FRAME - expected content header")


@pytest.mark.leveret_only
def test_acks_before_a_frame_error_count(client: RawClient, broker: BrokerAddress,
                                         unique: str) -> None:
    """A run of acks, then a frame with a bad end octet in the same write: the connection
    closes with 501, and the acked messages are not requeued by the close (frame by frame,
    the acks were settled before the bad frame was read). RabbitMQ hands frames to its
    channel processes and races the close: Leveret only."""
    queue = f"{unique}-frame"
    client.send_method(1, commands.Queue.Declare(queue=queue))
    client.expect_method(commands.Queue.DeclareOk, channel=1)
    for index in range(5):
        client.send_method(1, commands.Basic.Publish(routing_key=queue))
        client.send_content(1, str(index).encode())
    client.open_channel(2)
    tags = _deliveries(client, 2, queue, 5)
    bad = encode_raw_frame(FRAME_METHOD, 2, b"\x00\x3c\x00\x50" + bytes(9), end=0x00)
    client.send_raw(_frames(2, *(_ack(tag) for tag in tags[:3])) + bad)
    client.expect_connection_close(501)
    with connect(broker.host, broker.port) as other:
        other.open_channel(1)
        assert _left(queue, other, 2) == ["3*", "4*"]
        other.send_method(1, commands.Queue.Delete(queue=queue))
        other.expect_method(commands.Queue.DeleteOk, channel=1)


# -- one write against one frame per round trip ---------------------------------------------
# An operation: ("ack", i) / ("nack", i) / ("reject", i) of the i-th delivery, ("ack", -1)
# an unknown tag, ("multi", i) ack multiple up to the i-th delivery.
_operation = st.one_of(
    st.tuples(st.sampled_from(["ack", "ack", "ack", "nack", "reject", "multi"]),
              st.integers(0, 7)),
    st.just(("ack", -1)),
)


def _method(operation: tuple[str, int], tags: list[int]) -> object:
    kind, index = operation
    tag = 1000 if index < 0 else tags[index]
    if kind == "ack":
        return _ack(tag)
    if kind == "multi":
        return commands.Basic.Ack(delivery_tag=tag, multiple=True)
    if kind == "nack":
        return commands.Basic.Nack(delivery_tag=tag, requeue=True)
    return commands.Basic.Reject(delivery_tag=tag, requeue=False)


def _outcome(broker: BrokerAddress, queue: str, operations: list[tuple[str, int]],
             one_write: bool) -> tuple[object, list[str]]:
    """Send ``operations`` on 8 fresh deliveries, in one write or one frame per round trip
    (a basic.qos in between, answered once the frame before it was handled); returns (the
    channel's close reply or None, what the queue holds afterwards)."""
    with connect(broker.host, broker.port) as raw:
        raw.open_channel(1)
        _queue_with(raw, queue, 8)
        raw.open_channel(2)
        tags = _deliveries(raw, 2, queue, 8)
        raw.send_method(2, commands.Basic.Cancel(consumer_tag="c"))  # requeued ones stay
        raw.expect_method(commands.Basic.CancelOk, channel=2)
        methods = [_method(operation, tags) for operation in operations]
        closed = None
        if one_write:
            raw.send_raw(_frames(2, *methods, commands.Basic.Qos()))
        else:
            for method in methods:
                raw.send_raw(_frames(2, method, commands.Basic.Qos()))
                frame = raw.read_non_heartbeat()
                if isinstance(frame.value, commands.Channel.Close):
                    closed = frame.value
                    break
                assert isinstance(frame.value, commands.Basic.QosOk), frame
            else:
                raw.send_method(2, commands.Basic.Qos())
        while closed is None:
            frame = raw.read_non_heartbeat()
            if isinstance(frame.value, commands.Channel.Close):
                closed = frame.value
            elif isinstance(frame.value, commands.Basic.QosOk):
                break
        if closed is not None:
            raw.send_method(2, commands.Channel.CloseOk())
            reply = (closed.reply_code, closed.reply_text, closed.class_id, closed.method_id)
        else:
            raw.send_method(2, commands.Channel.Close(200, "bye", 0, 0))
            while not isinstance(raw.read_non_heartbeat().value, commands.Channel.CloseOk):
                pass
            reply = None
        return reply, _left(queue, raw, 3)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(_operation, min_size=1, max_size=14))
def test_one_write_settles_as_one_frame_per_round_trip(broker: BrokerAddress, unique: str,
                                                       operations: list[tuple[str, int]]
                                                       ) -> None:
    together = _outcome(broker, f"{unique}-w", operations, one_write=True)
    apart = _outcome(broker, f"{unique}-r", operations, one_write=False)
    assert together == apart
