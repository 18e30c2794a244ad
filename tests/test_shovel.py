"""``leveret shovel`` between real brokers over real sockets: two embedded Leveret brokers, and
Leveret <-> RabbitMQ when one answers on 127.0.0.1:5673 (``../shared/tools/rabbitmq-local.sh``)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from leveret.broker.cli import main
from leveret.broker.embedded import EmbeddedBroker
from leveret.broker.shovel import Shovel, Summary

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5673/%2F"
ROOT = Path(__file__).resolve().parent.parent


def _rabbitmq_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5673), timeout=1).close()
    except OSError:
        return False
    return True


needs_rabbitmq = pytest.mark.skipif(
    not _rabbitmq_up(), reason="no RabbitMQ on 127.0.0.1:5673 (../shared/tools/rabbitmq-local.sh)")


@pytest.fixture
def source() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(port=0) as broker:
        yield broker


@pytest.fixture
def dest() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(port=0) as broker:
        yield broker


@contextlib.contextmanager
def _channel(url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        yield connection.channel()
    finally:
        connection.close()


def _properties(i: int) -> pika.BasicProperties:
    """Mixed properties: every third message has a message_id, priorities 0-9 (the queues have
    no x-max-priority, so order is publish order), x-death headers."""
    return pika.BasicProperties(
        delivery_mode=2, priority=i % 10, content_type="application/json",
        content_encoding="utf-8", correlation_id=f"c{i}", reply_to="replies",
        expiration="600000", message_id=f"m{i}" if i % 3 == 0 else None,
        timestamp=1_700_000_000 + i, type="task", app_id="tests",
        headers={"i": i, "nested": {"a": [1, "two", decimal.Decimal("3.5")]}, "flag": i % 2 == 0,
                 "x-death": [{"count": 1, "reason": "rejected", "queue": "work",
                              "exchange": "", "routing-keys": ["work"],
                              "time": datetime.datetime(2026, 1, 1, 12, tzinfo=datetime.UTC)}]})


def _publish(url: str, queue: str, count: int, declare: bool = True) -> None:
    with _channel(url) as channel:
        if declare:
            channel.queue_declare(queue, durable=True)
        channel.confirm_delivery()
        for i in range(count):
            channel.basic_publish("", queue, f"body {i}".encode(), _properties(i))


def _take_all(url: str, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    taken = []
    with _channel(url) as channel:
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return taken
            taken.append((properties, body))


def _count(url: str, queue: str) -> int:
    with _channel(url) as channel:
        return channel.queue_declare(queue, passive=True).method.message_count


def _shovel(src: str, src_queue: str, dest_url: str, **options: object) -> Summary:
    return asyncio.run(Shovel(src, src_queue, dest_url, drain=True, **options).run())


def _check_moved(taken: list[tuple[pika.BasicProperties, bytes]], count: int) -> None:
    """All ``count`` messages, in order, properties and headers as published."""
    assert [body for _, body in taken] == [f"body {i}".encode() for i in range(count)]
    for i, (properties, _) in enumerate(taken):
        sent = _properties(i)
        for name in ("delivery_mode", "priority", "content_type", "content_encoding",
                     "correlation_id", "reply_to", "expiration", "timestamp", "type",
                     "app_id", "headers"):
            assert getattr(properties, name) == getattr(sent, name), (i, name)
        if sent.message_id is not None:
            assert properties.message_id == sent.message_id
        else:  # aiormq gives one to a message without (see broker/shovel.py)
            assert properties.message_id


def test_drain_moves_every_message_once_in_order(source: EmbeddedBroker,
                                                 dest: EmbeddedBroker) -> None:
    _publish(source.url, "work", 300)
    with _channel(dest.url) as channel:
        channel.queue_declare("work", durable=True)
    summary = _shovel(source.url, "work", dest.url, dest_queue="work", prefetch=50)
    assert summary == Summary(moved=300, failed=0, left=0)
    assert _count(source.url, "work") == 0
    _check_moved(_take_all(dest.url, "work"), 300)


def test_to_an_exchange_with_a_routing_key(source: EmbeddedBroker, dest: EmbeddedBroker) -> None:
    _publish(source.url, "orders", 20)
    with _channel(dest.url) as channel:
        channel.exchange_declare("events", "topic", durable=True)
        for queue, pattern in (("keyed", "shovelled.*"), ("own-key", "orders")):
            channel.queue_declare(queue, durable=True)
            channel.queue_bind(queue, "events", pattern)
    summary = _shovel(source.url, "orders", dest.url, dest_exchange="events",
                      dest_key="shovelled.orders")
    assert summary == Summary(moved=20, failed=0, left=0)
    assert _count(dest.url, "own-key") == 0
    _check_moved(_take_all(dest.url, "keyed"), 20)
    # without --dest-key each message keeps its own routing key (here the source queue's name)
    _publish(source.url, "orders", 5, declare=False)
    assert _shovel(source.url, "orders", dest.url, dest_exchange="events").moved == 5
    assert [body for _, body in _take_all(dest.url, "own-key")] == [
        f"body {i}".encode() for i in range(5)]


def test_refused_messages_stay_in_the_source(source: EmbeddedBroker,
                                             dest: EmbeddedBroker) -> None:
    """Acked at the source only once confirmed: a full reject-publish queue nacks the rest."""
    _publish(source.url, "work", 10)
    with _channel(dest.url) as channel:
        channel.queue_declare("small", durable=True,
                              arguments={"x-max-length": 3, "x-overflow": "reject-publish"})
    summary = _shovel(source.url, "work", dest.url, dest_queue="small", prefetch=1)
    assert summary == Summary(moved=3, failed=1, left=7)
    assert [body for _, body in _take_all(dest.url, "small")] == [b"body 0", b"body 1",
                                                                  b"body 2"]
    left = _take_all(source.url, "work")
    assert sorted(body for _, body in left) == sorted(f"body {i}".encode() for i in range(3, 10))
    # pipelined, all ten in flight: every refusal counts and nothing is lost
    _publish(source.url, "work", 10, declare=False)
    summary = _shovel(source.url, "work", dest.url, dest_queue="small")
    assert summary == Summary(moved=3, failed=7, left=7)
    assert _count(source.url, "work") == 7 and _count(dest.url, "small") == 3


def test_unroutable_messages_stay_in_the_source(source: EmbeddedBroker,
                                                dest: EmbeddedBroker) -> None:
    _publish(source.url, "work", 4)
    with _channel(dest.url) as channel:
        channel.exchange_declare("nowhere", "direct")
    summary = _shovel(source.url, "work", dest.url, dest_exchange="nowhere", dest_key="k")
    assert summary.moved == 0 and summary.failed >= 1 and summary.left == 4


def _run(*args: str, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "leveret", "shovel", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_command_drains_with_a_rate_display_and_summary(source: EmbeddedBroker,
                                                        dest: EmbeddedBroker) -> None:
    _publish(source.url, "work", 50)
    with _channel(dest.url) as channel:
        channel.queue_declare("copy", durable=True)
    process = _run("--src-uri", source.url, "--src-queue", "work", "--dest-uri", dest.url,
                   "--dest-queue", "copy", "--drain", "--prefetch", "20")
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "moved 50, failed 0, left in the source queue 0" in out
    assert "msg/s" in err
    _check_moved(_take_all(dest.url, "copy"), 50)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_command_stops_cleanly_on_a_signal(source: EmbeddedBroker, dest: EmbeddedBroker,
                                           signum: int) -> None:
    _publish(source.url, "work", 30)
    with _channel(dest.url) as channel:
        channel.queue_declare("copy", durable=True)
    process = _run("--src-uri", source.url, "--src-queue", "work", "--dest-uri", dest.url,
                   "--dest-queue", "copy", "--quiet")
    deadline = time.monotonic() + 15
    while _count(dest.url, "copy") < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # still running: without --drain it waits for more
    assert process.poll() is None
    _publish(source.url, "work", 5, declare=False)
    while _count(dest.url, "copy") < 35 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert "moved 35, failed 0, left in the source queue 0" in out
    assert err == ""  # --quiet
    assert _count(source.url, "work") == 0


def test_losing_the_destination_exits_1_and_loses_nothing(source: EmbeddedBroker,
                                                          tmp_path: Path) -> None:
    _publish(source.url, "work", 1000)
    with EmbeddedBroker(port=0, data_dir=tmp_path / "dest") as dest:
        with _channel(dest.url) as channel:
            channel.queue_declare("copy", durable=True)
        process = _run("--src-uri", source.url, "--src-queue", "work", "--dest-uri", dest.url,
                       "--dest-queue", "copy", "--quiet", "--prefetch", "50")
        deadline = time.monotonic() + 15
        while _count(dest.url, "copy") < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        dest.stop()
        out, err = process.communicate(timeout=15)
        assert process.returncode == 1, (out, err)
        assert "lost the connection to the destination" in err
        assert "leveret shovel: moved " in err  # the summary, left unknown
        dest.start()
        arrived = _count(dest.url, "copy")
    left = _count(source.url, "work")
    # at least once: nothing acked at the source that the destination did not keep, and
    # duplicates only within what was in flight
    assert arrived + left >= 1000
    assert arrived + left <= 1000 + 50


def test_kill_9_mid_way_then_rerun_loses_nothing(source: EmbeddedBroker,
                                                 dest: EmbeddedBroker) -> None:
    _publish(source.url, "work", 1000)
    with _channel(dest.url) as channel:
        channel.queue_declare("copy", durable=True)
    process = _run("--src-uri", source.url, "--src-queue", "work", "--dest-uri", dest.url,
                   "--dest-queue", "copy", "--quiet", "--prefetch", "50", "--drain")
    deadline = time.monotonic() + 15
    while _count(dest.url, "copy") < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()
    process.communicate(timeout=15)
    again = _run("--src-uri", source.url, "--src-queue", "work", "--dest-uri", dest.url,
                 "--dest-queue", "copy", "--quiet", "--drain")
    out, err = again.communicate(timeout=30)
    assert again.returncode == 0, err
    assert "failed 0, left in the source queue 0" in out
    bodies = [body for _, body in _take_all(dest.url, "copy")]
    assert set(bodies) == {f"body {i}".encode() for i in range(1000)}
    assert len(bodies) <= 1000 + 50  # duplicates only among what was in flight


@pytest.mark.parametrize("args", [
    [],
    ["--src-uri", "amqp://h", "--src-queue", "q", "--dest-uri", "amqp://h"],
    ["--src-uri", "amqp://h", "--src-queue", "q", "--dest-uri", "amqp://h",
     "--dest-queue", "q", "--dest-exchange", "x"],
    ["--src-uri", "amqp://h", "--src-queue", "q", "--dest-uri", "amqp://h",
     "--dest-queue", "q", "--dest-key", "k"],
    ["--src-uri", "amqp://h", "--src-queue", "q", "--dest-uri", "amqp://h",
     "--dest-queue", "q", "--prefetch", "0"],
    ["--src-uri", "http://h", "--src-queue", "q", "--dest-uri", "amqp://h",
     "--dest-queue", "q"],
    ["--src-uri", "amqp://h:port", "--src-queue", "q", "--dest-uri", "amqp://h",
     "--dest-queue", "q"],
])
def test_bad_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["shovel", *args])
    assert exited.value.code == 2
    assert "usage: leveret shovel" in capsys.readouterr().err


def test_connection_errors_exit_1(source: EmbeddedBroker,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"amqp://guest:secret@127.0.0.1:{sock.getsockname()[1]}/"
    with _channel(source.url) as channel:
        channel.queue_declare("work")
    assert main(["shovel", "--src-uri", source.url, "--src-queue", "work", "--dest-uri",
                 closed, "--dest-queue", "q", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to the destination" in err and "secret" not in err
    assert main(["shovel", "--src-uri", source.url, "--src-queue", "missing", "--dest-uri",
                 source.url, "--dest-queue", "q", "--quiet"]) == 1
    assert "source queue 'missing' not found" in capsys.readouterr().err


@contextlib.contextmanager
def _rabbitmq_queue() -> Iterator[str]:
    queue = f"leveret-shovel-{uuid.uuid4().hex[:12]}"
    try:
        yield queue
    finally:
        with _channel(RABBITMQ_URL) as channel:
            channel.queue_delete(queue)


@needs_rabbitmq
def test_leveret_to_rabbitmq(source: EmbeddedBroker) -> None:
    _publish(source.url, "work", 200)
    with _rabbitmq_queue() as queue:
        with _channel(RABBITMQ_URL) as channel:
            channel.queue_declare(queue, durable=True)
        summary = _shovel(source.url, "work", RABBITMQ_URL, dest_queue=queue)
        assert summary == Summary(moved=200, failed=0, left=0)
        _check_moved(_take_all(RABBITMQ_URL, queue), 200)


@needs_rabbitmq
def test_rabbitmq_refusals_stay_in_the_source(source: EmbeddedBroker) -> None:
    _publish(source.url, "work", 10)
    with _rabbitmq_queue() as queue:
        with _channel(RABBITMQ_URL) as channel:
            channel.queue_declare(queue, arguments={"x-max-length": 3,
                                                    "x-overflow": "reject-publish"})
        summary = _shovel(source.url, "work", RABBITMQ_URL, dest_queue=queue)
        assert summary == Summary(moved=3, failed=7, left=7)
        assert _count(RABBITMQ_URL, queue) == 3
    # unroutable at RabbitMQ: returned (publishes are mandatory), so kept at the source
    summary = _shovel(source.url, "work", RABBITMQ_URL, dest_exchange="amq.direct",
                      dest_key=f"nowhere-{uuid.uuid4().hex}")
    assert summary.moved == 0 and summary.failed >= 1 and summary.left == 7


@needs_rabbitmq
def test_rabbitmq_to_leveret(dest: EmbeddedBroker) -> None:
    with _rabbitmq_queue() as queue:
        _publish(RABBITMQ_URL, queue, 200)
        with _channel(dest.url) as channel:
            channel.queue_declare("work", durable=True)
        summary = _shovel(RABBITMQ_URL, queue, dest.url, dest_queue="work")
        assert summary == Summary(moved=200, failed=0, left=0)
        assert _count(RABBITMQ_URL, queue) == 0
        _check_moved(_take_all(dest.url, "work"), 200)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@needs_rabbitmq
def test_100k_persistent_messages_both_ways_none_lost_or_altered(tmp_path: Path) -> None:
    """Issue-sized: 100,000 persistent messages with mixed properties, Leveret (on disk) ->
    RabbitMQ -> Leveret, each move checked message by message, in order."""
    count = 100_000
    with EmbeddedBroker(port=0, data_dir=tmp_path / "a") as first, \
            EmbeddedBroker(port=0, data_dir=tmp_path / "b") as second, \
            _rabbitmq_queue() as queue:
        _publish(first.url, "work", count)
        with _channel(RABBITMQ_URL) as channel:
            channel.queue_declare(queue, durable=True)
        assert _shovel(first.url, "work", RABBITMQ_URL, dest_queue=queue) == Summary(
            moved=count, failed=0, left=0)
        with _channel(second.url) as channel:
            channel.queue_declare("work", durable=True)
        assert _shovel(RABBITMQ_URL, queue, second.url, dest_queue="work") == Summary(
            moved=count, failed=0, left=0)
        second.restart()  # and they are on disk
        _check_moved(_take_all(second.url, "work"), count)
