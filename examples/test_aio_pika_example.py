"""Testing aio-pika code against a real broker, a dropped connection included.

Needs ``pip install leveret aio-pika pytest pytest-asyncio``.
"""

import asyncio

import aio_pika
import pytest


@pytest.mark.asyncio
async def test_publish_and_consume(amqp_url):
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("greetings")
        await channel.default_exchange.publish(aio_pika.Message(b"hello"), "greetings")
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():  # acked when the block ends
                    assert message.body == b"hello"
                break


@pytest.mark.asyncio
async def test_robust_connection_survives_a_network_failure(amqp_url, leveret):
    async with await aio_pika.connect_robust(amqp_url, reconnect_interval=0.1) as connection:
        reconnected = asyncio.Event()
        connection.reconnect_callbacks.add(lambda *_: reconnected.set())
        channel = await connection.channel()
        await channel.declare_queue("greetings")
        assert leveret.drop_connections() == 1  # cut without a close frame
        await asyncio.wait_for(reconnected.wait(), 10)
        await channel.default_exchange.publish(aio_pika.Message(b"again"), "greetings")
        assert leveret.queue("greetings").messages == 1
