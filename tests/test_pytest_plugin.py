"""The pytest plugin's fixtures (leveret.pytest_plugin): a vhost per test, looking inside it,
restarts, blocked publishers and dropped connections, and the fresh-broker marker."""

from __future__ import annotations

import time
from urllib.parse import unquote, urlparse

import pika
import pytest
from pika.exceptions import (
    AMQPConnectionError,
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
)
from pika_helpers import connect

from leveret.broker.embedded import EmbeddedBroker
from leveret.testing import Sandbox

pytestmark = pytest.mark.leveret_only

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def test_amqp_url_is_a_vhost_of_the_tests_own(amqp_url: str, leveret: Sandbox,
                                               leveret_broker: EmbeddedBroker) -> None:
    assert leveret.embedded is leveret_broker  # the session's broker: not restarted per test
    assert unquote(urlparse(amqp_url).path[1:]) == leveret.vhost
    assert leveret.vhost.startswith("test_amqp_url_is_a_vhost_of_the_tests_own-")
    conn = connect(amqp_url)
    channel = conn.channel()
    channel.queue_declare("jobs")
    for body in (b"one", b"two", b"three"):
        properties = pika.BasicProperties(headers={"n": body.decode()})
        channel.basic_publish("", "jobs", body, properties)
    assert [m.body for m in leveret.peek("jobs", 2)] == [b"one", b"two"]
    assert leveret.peek("jobs")[0].headers == {"n": "one"}
    assert leveret.queue("jobs").messages_ready == 3  # peeking took nothing
    method, _props, body = channel.basic_get("jobs")
    assert body == b"one"
    stats = leveret.queue("jobs")
    assert (stats.messages_ready, stats.messages_unacknowledged, stats.messages) == (2, 1, 3)
    channel.basic_reject(method.delivery_tag, requeue=True)
    assert leveret.peek("jobs", 5)[0].redelivered is True
    assert leveret.connection_count() == 1
    with pytest.raises(LookupError, match="no queue 'nope'"):
        leveret.queue("nope")
    conn.close()


def test_vhosts_are_isolated_and_deleted_after_use(leveret: Sandbox) -> None:
    other = Sandbox.create(leveret.embedded, label="other")
    for sandbox, count in ((leveret, 1), (other, 2)):
        conn = connect(sandbox.url)
        channel = conn.channel()
        channel.queue_declare("same-name")
        for _ in range(count):
            channel.basic_publish("", "same-name", b"x")
        conn.close()
    assert leveret.queue("same-name").messages == 1
    assert other.queue("same-name").messages == 2
    conn = connect(other.url)
    other.delete()
    with pytest.raises(ConnectionClosedByBroker) as closed:
        conn.channel()
    assert closed.value.reply_code == 320
    assert other.vhost not in leveret.embedded.call(lambda: set(leveret.embedded.broker.vhosts))
    with pytest.raises(AMQPConnectionError):
        connect(other.url)


def test_blocked_publishers(amqp_url: str, leveret: Sandbox) -> None:
    events: list[str] = []
    conn = connect(amqp_url)
    conn.add_on_connection_blocked_callback(lambda _c, m: events.append(m.method.reason))
    conn.add_on_connection_unblocked_callback(lambda _c, _m: events.append("unblocked"))
    with leveret.publishers_blocked("low on disk"):
        conn.process_data_events(time_limit=0.3)
        assert events == ["low on disk"]
    conn.process_data_events(time_limit=0.3)
    assert events == ["low on disk", "unblocked"]
    conn.close()


def test_dropped_and_closed_connections(amqp_url: str, leveret: Sandbox) -> None:
    dropped = connect(amqp_url)
    assert leveret.drop_connections() == 1
    with pytest.raises(AMQPConnectionError) as lost:
        dropped.channel()
    assert not isinstance(lost.value, ConnectionClosedByBroker)  # no close frame: cut
    closed = connect(amqp_url)
    assert leveret.close_connections() == 1
    with pytest.raises(ConnectionClosedByBroker) as forced:
        closed.channel()
    assert forced.value.reply_code == 320
    deadline = time.monotonic() + 5  # the broker sees the close-ok a moment later
    while leveret.connection_count() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert leveret.connection_count() == 0


@pytest.mark.leveret_fresh_broker(persistent=True)
def test_restart_recovers_durable_messages(amqp_url: str, leveret: Sandbox,
                                           leveret_broker: EmbeddedBroker) -> None:
    assert leveret.embedded is not leveret_broker
    assert leveret.embedded.config.data_dir is not None
    conn = connect(amqp_url)
    channel = conn.channel()
    channel.confirm_delivery()
    channel.queue_declare("durable-jobs", durable=True)
    channel.basic_publish("", "durable-jobs", b"kept", PERSISTENT)
    channel.basic_get("durable-jobs")  # delivered, not acked: comes back redelivered
    port = leveret.embedded.port
    leveret.restart()
    assert leveret.embedded.port == port
    peeked = leveret.peek("durable-jobs")
    assert [(m.body, m.redelivered) for m in peeked] == [(b"kept", True)]
    conn = connect(amqp_url)  # the same URL works after the restart
    assert conn.channel().basic_get("durable-jobs", auto_ack=True)[2] == b"kept"
    conn.close()


@pytest.mark.leveret_fresh_broker(users={"app": "secret"})
def test_in_memory_restart_loses_queues_but_keeps_the_url(amqp_url: str,
                                                           leveret: Sandbox) -> None:
    assert amqp_url.startswith("amqp://app:secret@127.0.0.1:")
    conn = connect(amqp_url)
    conn.channel().queue_declare("lost", durable=True)
    leveret.restart()
    assert leveret.queues() == {}
    conn = connect(amqp_url)
    with pytest.raises(ChannelClosedByBroker):
        conn.channel().queue_declare("lost", passive=True)
    conn.close()


@pytest.mark.leveret_fresh_broker(persistent=True)
def test_peek_reads_messages_kept_on_disk_only(amqp_url: str, leveret: Sandbox,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from leveret.broker import queue as queue_module

    monkeypatch.setattr(queue_module, "SPILL_AT", 4)  # a long backlog: 20,000 by default
    monkeypatch.setattr(queue_module, "SPILL_KEEP", 2)
    conn = connect(amqp_url)
    channel = conn.channel()
    channel.confirm_delivery()
    channel.queue_declare("backlog", durable=True)
    for n in range(10):
        channel.basic_publish("", "backlog", b"m%d" % n, PERSISTENT)
    embedded = leveret.embedded

    def in_memory() -> int:
        return embedded.broker.vhosts[leveret.vhost].queues["backlog"].ready.in_memory

    deadline = time.monotonic() + 5
    while embedded.call(in_memory) > 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert embedded.call(in_memory) == 2  # the other eight live on disk only
    assert [m.body for m in leveret.peek("backlog", 20)] == [b"m%d" % n for n in range(10)]
    assert channel.basic_get("backlog", auto_ack=True)[2] == b"m0"  # peeking took nothing
    conn.close()
