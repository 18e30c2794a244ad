"""The embedded broker: start, stop and restart on one instance, ``async with``, its URL,
in-memory and persistent modes, and logging through the host process's ``logging``."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import aio_pika
import pika
import pytest
from pika.exceptions import ConnectionClosedByBroker
from pika_helpers import connect

from leveret.broker.embedded import EmbeddedBroker

pytestmark = pytest.mark.leveret_only


def test_start_stop_restart_on_one_instance() -> None:
    embedded = EmbeddedBroker()
    with embedded:
        port, first = embedded.port, embedded.broker
        assert embedded.url == f"amqp://guest:guest@127.0.0.1:{port}/%2F"
        assert first.store is None  # in memory: no data directory at all
        conn = connect(embedded.url)
        conn.channel().queue_declare("kept-until-restart")
        embedded.restart()
        with pytest.raises(ConnectionClosedByBroker) as closed:
            conn.channel()
        assert closed.value.reply_code == 320
        assert embedded.port == port and embedded.broker is not first
        conn = connect(embedded.url)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):  # in memory: gone
            conn.channel().queue_declare("kept-until-restart", passive=True)
        conn.close()
    assert not embedded.running
    with pytest.raises(RuntimeError, match="not running"):
        embedded.call(lambda: None)
    embedded.start()  # and once more, after a stop
    try:
        assert embedded.port == port and embedded.starts == 3
        connect(embedded.url).close()
    finally:
        embedded.stop()
    embedded.stop()  # stopping a stopped broker does nothing


def test_restart_with_data_dir_keeps_durable_state(tmp_path: Path) -> None:
    with EmbeddedBroker(data_dir=tmp_path / "data") as embedded:
        conn = connect(embedded.url)
        channel = conn.channel()
        channel.confirm_delivery()
        channel.queue_declare("jobs", durable=True)
        channel.basic_publish("", "jobs", b"survives",
                              pika.BasicProperties(delivery_mode=2))
        conn.close()
        embedded.restart()
        conn = connect(embedded.url)
        method, _properties, body = conn.channel().basic_get("jobs", auto_ack=True)
        conn.close()
    assert body == b"survives" and method is not None


def test_failed_start_raises_and_the_instance_can_start_later() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    embedded = EmbeddedBroker(port=port)
    try:
        with pytest.raises(RuntimeError, match="failed to start") as failed:
            embedded.start()
        assert isinstance(failed.value.__cause__, OSError)
        assert not embedded.running
    finally:
        holder.close()
    with embedded:
        assert embedded.port == port
        connect(embedded.url).close()


def test_url_names_the_configured_user_and_vhost() -> None:
    with EmbeddedBroker(users={"app": "p@ss/word"}, default_vhost="orders/eu") as embedded:
        assert embedded.url == f"amqp://app:p%40ss%2Fword@127.0.0.1:{embedded.port}/orders%2Feu"
        conn = connect(embedded.url)
        conn.channel().queue_declare("in-orders-eu")
        conn.close()
        assert embedded.call(lambda: list(embedded.broker.vhosts["orders/eu"].queues)) == [
            "in-orders-eu"]
        assert embedded.url_for(vhost="/", user="x", password="", scheme="pyamqp") == (
            f"pyamqp://x@127.0.0.1:{embedded.port}/%2F")


async def test_async_with_and_acall() -> None:
    async with EmbeddedBroker() as embedded:
        connection = await aio_pika.connect(embedded.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("async-q")
            await channel.default_exchange.publish(aio_pika.Message(b"hi"), "async-q")

            async def depth() -> int:  # a coroutine runs on the broker's loop
                return len(embedded.broker.vhosts["/"].queues["async-q"].ready)

            assert await embedded.acall(depth) == 1
            message = await queue.get(timeout=5)
            assert message.body == b"hi"
            await message.ack()
    assert not embedded.running


def test_logs_go_to_the_host_process_logging(caplog: pytest.LogCaptureFixture) -> None:
    root_handlers = list(logging.getLogger().handlers)
    with caplog.at_level(logging.INFO, logger="leveret"), EmbeddedBroker() as embedded:
        port = embedded.port
    assert logging.getLogger().handlers == root_handlers
    assert logging.getLogger("leveret").handlers == []
    lines = [(r.name, r.getMessage()) for r in caplog.records]
    assert ("leveret.broker.server",
            f"Leveret {_version()} listening on amqp://127.0.0.1:{port} "
            "(data dir: none, nothing is kept)") in lines
    assert ("leveret.broker.server", "Leveret stopped") in lines


def _version() -> str:
    from leveret.broker import __version__

    return __version__
