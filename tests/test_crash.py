"""Randomized crash test: kill -9 under confirmed persistent load with mixed features.

Each round restarts the broker on the same data directory, checks what the previous round
left, then runs a load (fanout to two durable queues with a consumer acking one of them,
messages expiring into a dead-letter queue, a delayed-message exchange, transactions) and
kills the broker at a random moment. After the restart every confirmed (or committed)
message is present exactly once, except those the consumer acked, which may be absent.

The default run does two rounds; ``-m slow`` runs ``LEVERET_CRASH_ROUNDS`` (default 25).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import pytest
from test_persistence import BrokerProcess

pytestmark = [pytest.mark.leveret_only, pytest.mark.integration]

PERSISTENT = aio_pika.DeliveryMode.PERSISTENT


@dataclass
class Ledger:
    """What the broker promised during one round."""

    fan: set[str] = field(default_factory=set)  # confirmed into A and B
    acked_a: set[str] = field(default_factory=set)  # acks sent for deliveries from A
    expiring: set[str] = field(default_factory=set)  # confirmed into "ttl" (-> "dead")
    delayed: set[str] = field(default_factory=set)  # confirmed into the delayed exchange
    committed: set[str] = field(default_factory=set)  # committed into "T"


async def _declare(url: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        fan = await channel.declare_exchange("fan", "fanout", durable=True)
        for name in ("A", "B"):
            queue = await channel.declare_queue(name, durable=True)
            await queue.bind(fan)
        await channel.declare_queue("dead", durable=True)
        await channel.declare_queue("ttl", durable=True, arguments={
            "x-message-ttl": 300, "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dead"})
        later = await channel.declare_exchange(
            "later", "x-delayed-message", durable=True,
            arguments={"x-delayed-type": "direct"})
        c_queue = await channel.declare_queue("C", durable=True)
        await c_queue.bind(later, "k")
        await channel.declare_queue("T", durable=True)


async def _load(url: str, ledger: Ledger, round_: int, stop: asyncio.Event) -> None:
    connection = await aio_pika.connect(url)
    prefix = f"r{round_}"

    async def confirmed(exchange_name: str, key: str, kind: str, into: set[str],
                        headers: bool = False) -> None:
        channel = await connection.channel(publisher_confirms=True)
        exchange = (channel.default_exchange if not exchange_name
                    else await channel.get_exchange(exchange_name))
        number = 0
        while not stop.is_set():
            batch = [f"{prefix}-{kind}-{number + i}" for i in range(20)]
            number += 20
            messages = [aio_pika.Message(
                body.encode(), delivery_mode=PERSISTENT,
                headers={"x-delay": random.randint(0, 400)} if headers else None)
                for body in batch]
            await asyncio.gather(*(exchange.publish(m, routing_key=key) for m in messages))
            into.update(batch)

    async def transactional() -> None:
        channel = await connection.channel(publisher_confirms=False)
        number = 0
        while not stop.is_set():
            transaction = channel.transaction()
            await transaction.select()
            batch = [f"{prefix}-tx-{number + i}" for i in range(5)]
            number += 5
            for body in batch:
                await channel.default_exchange.publish(
                    aio_pika.Message(body.encode(), delivery_mode=PERSISTENT), routing_key="T")
            await transaction.commit()
            ledger.committed.update(batch)

    async def consume() -> None:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=50)
        queue = await channel.get_queue("A")
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                ledger.acked_a.add(message.body.decode())
                if stop.is_set():
                    return

    tasks = [asyncio.ensure_future(t) for t in (
        confirmed("fan", "", "fan", ledger.fan),
        confirmed("", "ttl", "ttl", ledger.expiring),
        confirmed("later", "k", "delayed", ledger.delayed, headers=True),
        transactional(), consume())]
    try:
        await asyncio.gather(*tasks)
    except Exception:  # the broker was killed: every client call fails now
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 1)


async def _drain(url: str) -> dict[str, list[str]]:
    connection = await aio_pika.connect(url)
    found: dict[str, list[str]] = {}
    async with connection:
        channel = await connection.channel()
        for name in ("A", "B", "ttl", "dead", "C", "T"):
            queue = await channel.get_queue(name)
            bodies = []
            while True:
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    break
                bodies.append(message.body.decode())
            found[name] = bodies
    return found


def _check(ledger: Ledger, found: dict[str, list[str]]) -> list[str]:
    problems = []
    for name, bodies in found.items():
        twice = [body for body, count in Counter(bodies).items() if count > 1]
        if twice:
            problems.append(f"{name}: {len(twice)} duplicates, e.g. {twice[:3]}")

    def once(expected: set[str], where: list[str], what: str) -> None:
        missing = expected - set(where)
        if missing:
            problems.append(f"{what}: {len(missing)} confirmed messages lost, "
                            f"e.g. {sorted(missing)[:3]}")

    once(ledger.fan, found["B"], "B")
    once(ledger.fan - ledger.acked_a, found["A"], "A")
    once(ledger.expiring, found["dead"] + found["ttl"], "ttl/dead")
    overlap = set(found["dead"]) & set(found["ttl"])
    if overlap:
        problems.append(f"{len(overlap)} messages both in ttl and dead")
    once(ledger.delayed, found["C"], "C")
    once(ledger.committed, found["T"], "T")
    return problems


def _crash_rounds(tmp_path: Path, rounds: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    broker = BrokerProcess(tmp_path / "data")
    report = []
    ledger = None
    try:
        for round_ in range(rounds + 1):
            broker.start()
            url = f"amqp://guest:guest@127.0.0.1:{broker.port}/%2F"
            if ledger is None:
                asyncio.run(_declare(url))
            else:
                time.sleep(0.9)  # due delayed messages and expiring ones settle
                found = asyncio.run(_drain(url))
                problems = _check(ledger, found)
                report.append(
                    f"round {round_}: fan {len(ledger.fan)}, acked {len(ledger.acked_a)}, "
                    f"ttl {len(ledger.expiring)}, delayed {len(ledger.delayed)}, "
                    f"tx {len(ledger.committed)}: "
                    + ("; ".join(problems) if problems else "all there"))
                assert not problems, report[-1]
            if round_ == rounds:
                break
            ledger = Ledger()
            kill_after = rng.uniform(0.2, 1.2)

            async def run(url: str = url, ledger: Ledger = ledger,
                          kill_after: float = kill_after, round_: int = round_) -> None:
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                assert broker.process is not None
                loop.call_later(kill_after, os.kill, broker.process.pid, signal.SIGKILL)
                loop.call_later(kill_after, stop.set)
                await asyncio.wait_for(_load(url, ledger, round_, stop), 30)

            asyncio.run(run())
            assert broker.process is not None
            broker.process.wait(10)
    finally:
        if broker.process is not None and broker.process.poll() is None:
            broker.process.kill()
            broker.process.wait()
    return report


def test_kill_9_under_mixed_confirmed_load_short(tmp_path: Path) -> None:
    _crash_rounds(tmp_path, rounds=2, seed=7)


@pytest.mark.slow
def test_kill_9_under_mixed_confirmed_load_many_rounds(tmp_path: Path) -> None:
    rounds = int(os.environ.get("LEVERET_CRASH_ROUNDS", "25"))
    report = _crash_rounds(tmp_path, rounds=rounds, seed=int(time.time()))
    print("\n".join(report))
