"""Stock clients (pika, aio-pika, py-amqp) connect, churn 100 channels and close cleanly."""

from __future__ import annotations

from typing import Any

import aio_pika
import amqp
import pika
import pika.channel
import pika.exceptions
import pytest
from conftest import BrokerAddress
from rawamqp import connect

N_CHANNELS = 100

# Capabilities RabbitMQ 3.10.8 advertises in connection.start (all True).
EXPECTED_CAPABILITIES = (
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "consumer_priorities",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.timeout(30)
def test_pika_blocking_100_channels(broker: BrokerAddress) -> None:
    """pika BlockingConnection opens 100 channels at once, closes them, then the connection."""
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        channels = [conn.channel() for _ in range(N_CHANNELS)]
        numbers = {ch.channel_number for ch in channels}
        assert len(numbers) == N_CHANNELS
        assert all(ch.is_open for ch in channels)
        for ch in channels:
            ch.close()
        assert all(ch.is_closed for ch in channels)
        # The connection is still fully usable after the churn.
        ch = conn.channel()
        ch.queue_declare("", exclusive=True)
        ch.close()
    finally:
        conn.close()
    assert conn.is_closed


@pytest.mark.timeout(30)
def test_pika_select_connection_100_channels(broker: BrokerAddress) -> None:
    """pika SelectConnection (callback style) does the same, bounded by an ioloop timer."""
    state: dict[str, Any] = {"opened": 0, "closed": 0, "close_reason": None, "error": None}
    channels: list[pika.channel.Channel] = []

    def on_channel_closed(_ch: pika.channel.Channel, _reason: Exception) -> None:
        state["closed"] += 1
        if state["closed"] == N_CHANNELS:
            conn.close()

    def on_channel_open(ch: pika.channel.Channel) -> None:
        state["opened"] += 1
        ch.add_on_close_callback(on_channel_closed)
        channels.append(ch)
        if state["opened"] == N_CHANNELS:
            for c in channels:
                c.close()

    def on_open(connection: pika.SelectConnection) -> None:
        for _ in range(N_CHANNELS):
            connection.channel(on_open_callback=on_channel_open)

    def on_open_error(_connection: pika.SelectConnection, err: BaseException) -> None:
        state["error"] = err
        conn.ioloop.stop()

    def on_close(_connection: pika.SelectConnection, reason: BaseException) -> None:
        state["close_reason"] = reason
        conn.ioloop.stop()

    def on_timeout() -> None:
        state["error"] = TimeoutError("SelectConnection scenario did not finish in 20 s")
        conn.ioloop.stop()

    conn = pika.SelectConnection(
        pika.URLParameters(broker.url),
        on_open_callback=on_open,
        on_open_error_callback=on_open_error,
        on_close_callback=on_close,
    )
    timer = conn.ioloop.call_later(20, on_timeout)
    try:
        conn.ioloop.start()
    finally:
        conn.ioloop.remove_timeout(timer)
        if not conn.is_closed:
            conn.close()
            conn.ioloop.start()
        conn.ioloop.close()

    assert state["error"] is None, state["error"]
    assert state["opened"] == N_CHANNELS
    assert state["closed"] == N_CHANNELS
    assert len({ch.channel_number for ch in channels}) == N_CHANNELS
    reason = state["close_reason"]
    assert isinstance(reason, pika.exceptions.ConnectionClosedByClient), reason
    assert reason.reply_code == 200


@pytest.mark.timeout(30)
async def test_aio_pika_100_channels(broker: BrokerAddress) -> None:
    """aio-pika opens 100 channels, closes them, then closes the connection."""
    conn = await aio_pika.connect(broker.url, timeout=10)
    try:
        channels = [await conn.channel() for _ in range(N_CHANNELS)]
        assert all(not ch.is_closed for ch in channels)
        for ch in channels:
            await ch.close()
        assert all(ch.is_closed for ch in channels)
        ch = await conn.channel()
        await ch.declare_queue("", exclusive=True)
        await ch.close()
    finally:
        await conn.close()
    assert conn.is_closed


@pytest.mark.timeout(30)
def test_py_amqp_100_channels(broker: BrokerAddress) -> None:
    """py-amqp (the transport under kombu/Celery) opens and closes 100 channels."""
    conn = amqp.Connection(
        host=f"{broker.host}:{broker.port}",
        userid="guest",
        password="guest",
        virtual_host="/",
        connect_timeout=10,
    )
    conn.connect()
    try:
        channels = [conn.channel() for _ in range(N_CHANNELS)]
        assert len({ch.channel_id for ch in channels}) == N_CHANNELS
        assert all(ch.is_open for ch in channels)
        for ch in channels:
            ch.close()
        assert not any(ch.is_open for ch in channels)
        ch = conn.channel()
        ch.queue_declare("", exclusive=True)
        ch.close()
    finally:
        conn.close()
    assert not conn.connected


@pytest.mark.timeout(15)
def test_server_properties(broker: BrokerAddress) -> None:
    """connection.start carries the informational fields and the capability table."""
    client = connect(broker.host, broker.port)
    try:
        props = client.server_properties
        for key in ("product", "version", "platform", "copyright", "information"):
            assert key in props, f"server_properties lacks {key!r}: {props!r}"
            assert _text(props[key]), f"server_properties[{key!r}] is empty"
        caps = props.get("capabilities")
        assert isinstance(caps, dict), f"capabilities is not a table: {caps!r}"
        for key in EXPECTED_CAPABILITIES:
            assert caps.get(key) is True, f"capability {key!r} missing or not True: {caps!r}"
        client.close_connection()
    finally:
        client.close_socket()


@pytest.mark.timeout(15)
def test_server_properties_seen_by_clients(broker: BrokerAddress) -> None:
    """pika and py-amqp both parse the same capability table."""
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        caps = conn._impl.server_properties["capabilities"]
        assert all(caps.get(k) is True for k in EXPECTED_CAPABILITIES), caps
    finally:
        conn.close()
    aconn = amqp.Connection(host=f"{broker.host}:{broker.port}", connect_timeout=10)
    aconn.connect()
    try:
        assert all(aconn.server_capabilities.get(k) is True for k in EXPECTED_CAPABILITIES)
    finally:
        aconn.close()


@pytest.mark.leveret_only
@pytest.mark.timeout(15)
def test_server_product_is_leveret(broker: BrokerAddress) -> None:
    """Leveret identifies itself as such."""
    client = connect(broker.host, broker.port)
    try:
        assert _text(client.server_properties["product"]) == "Leveret"
        client.close_connection()
    finally:
        client.close_socket()
