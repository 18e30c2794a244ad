"""Persistence and crash safety: a subprocess broker killed with SIGKILL keeps its promises.

Every message the broker confirmed is there after a restart, exactly once; unacked ones come
back flagged redelivered; transient messages and non-durable queues are gone; durable
bindings route again.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError

pytestmark = [pytest.mark.leveret_only, pytest.mark.integration]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BrokerProcess:
    """A Leveret subprocess on a fixed port and data directory, restartable."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}.log"

    def start(self) -> None:
        with open(self.log, "ab") as log_file:  # the child keeps its own copy of the fd
            self.process = self._spawn(log_file)
        deadline = time.monotonic() + 60
        self._wait_listening(deadline)

    def _spawn(self, log_file) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "leveret",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.extra,
            ],
            stderr=log_file,
            stdout=subprocess.DEVNULL,
        )

    def _wait_listening(self, deadline: float) -> None:
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"broker exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("broker did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(20)

    def connect(self) -> pika.BlockingConnection:
        params = pika.ConnectionParameters(
            "127.0.0.1",
            self.port,
            socket_timeout=10,
            blocked_connection_timeout=10,
            connection_attempts=3,
            retry_delay=0.2,
        )
        return pika.BlockingConnection(params)


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "data")
    process.start()
    yield process
    if process.process is not None and process.process.poll() is None:
        process.process.kill()
        process.process.wait()


def _drain(channel, queue: str) -> list[tuple[bytes, bool]]:
    got = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return got
        got.append((body, method.redelivered))


def _publish_until_killed(broker: BrokerProcess, queue: str, kill_after: float) -> set[bytes]:
    """Publish persistent messages with confirms; SIGKILL the broker meanwhile.

    Returns the bodies the broker confirmed before it died.
    """
    confirmed: set[bytes] = set()
    killer = threading.Timer(kill_after, broker.kill)
    conn = broker.connect()
    channel = conn.channel()
    channel.queue_declare(queue, durable=True)
    channel.confirm_delivery()
    killer.start()
    try:
        for number in range(1_000_000):
            body = f"m{number}".encode()
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
            confirmed.add(body)  # basic_publish returned: the broker confirmed it
    except (AMQPError, OSError):
        pass
    finally:
        killer.join()
    return confirmed


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_confirmed_messages_survive_sigkill(broker_process: BrokerProcess, seed: int) -> None:
    """Kill at a random moment while publishing: every confirmed message is there once."""
    kill_after = random.Random(seed).uniform(0.2, 1.2)
    confirmed = _publish_until_killed(broker_process, "durable-q", kill_after)
    assert confirmed, "nothing was confirmed before the kill"
    broker_process.start()
    conn = broker_process.connect()
    bodies = [body for body, _ in _drain(conn.channel(), "durable-q")]
    conn.close()
    assert len(bodies) == len(set(bodies)), "a message came back twice"
    assert confirmed <= set(bodies), f"lost {len(confirmed - set(bodies))} confirmed messages"
    # What came back is in publish order.
    numbers = [int(b[1:]) for b in bodies]
    assert numbers == sorted(numbers)


def test_restart_keeps_exactly_the_durable_state(broker_process: BrokerProcess) -> None:
    conn = broker_process.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("dx", "topic", durable=True)
    ch.exchange_declare("tx", "topic", durable=False)
    ch.queue_declare("dq", durable=True, arguments={"x-max-priority": 5})
    ch.queue_declare("tq", durable=False)
    ch.queue_declare("exq", durable=True, exclusive=True)
    ch.queue_bind("dq", "dx", "a.#")
    ch.queue_bind("tq", "dx", "a.#")
    for index in range(5):
        ch.basic_publish(
            "dx",
            "a.b",
            f"p{index}".encode(),
            pika.BasicProperties(delivery_mode=2, priority=index % 3),
        )
    ch.basic_publish("dx", "a.b", b"transient", pika.BasicProperties(delivery_mode=1))
    held = [ch.basic_get("dq") for _ in range(2)]  # unacked at the crash
    assert all(method is not None for method, _, _ in held)
    ch.basic_ack(held[0][0].delivery_tag)
    # A durable declare-ok comes once everything the store wrote before it is on disk:
    # the ack above is durable now (an ack alone is not waited for, as in RabbitMQ).
    ch.queue_declare("sync-point", durable=True)
    broker_process.kill()

    broker_process.start()
    conn = broker_process.connect()
    ch = conn.channel()
    ch.exchange_declare("dx", passive=True)
    for gone in ("tx", "tq", "exq"):
        probe = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as missing:
            if gone == "tx":
                probe.exchange_declare(gone, passive=True)
            else:
                probe.queue_declare(gone, passive=True)
        assert missing.value.reply_code == 404
    got = _drain(ch, "dq")
    acked_body = held[0][2]
    unacked_body = held[1][2]
    bodies = [body for body, _ in got]
    assert acked_body not in bodies and b"transient" not in bodies
    assert sorted(bodies) == sorted({b"p0", b"p1", b"p2", b"p3", b"p4"} - {acked_body})
    assert (unacked_body, True) in got  # the unacked one is flagged redelivered
    assert all(not redelivered for body, redelivered in got if body != unacked_body)
    # priorities still order the recovered queue
    priorities = {b"p0": 0, b"p1": 1, b"p2": 2, b"p3": 0, b"p4": 1}
    assert [priorities[b] for b in bodies] == sorted((priorities[b] for b in bodies), reverse=True)
    ch.basic_publish("dx", "a.c", b"again", pika.BasicProperties(delivery_mode=2))
    assert ch.basic_get("dq", auto_ack=True)[2] == b"again"  # the durable binding routes
    conn.close()
    assert broker_process.stop() == 0


def test_large_bodies_round_trip_byte_exact_and_after_a_restart(
        broker_process: BrokerProcess) -> None:
    """1 MiB and 5 MiB bodies, persistent and transient, come back byte for byte: consumed
    at once, and the persistent ones again after a restart (read back from the store)."""
    sizes = [1024 * 1024, 5 * 1024 * 1024 + 3]
    bodies = {(size, mode): hashlib.shake_256(f"{size}/{mode}".encode()).digest(size)
              for size in sizes for mode in (1, 2)}
    conn = broker_process.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("big", durable=True)
    for (_size, mode), body in bodies.items():
        ch.basic_publish("", "big", body, pika.BasicProperties(delivery_mode=mode))
    assert sorted(body for body, _ in _drain(ch, "big")) == sorted(bodies.values())
    for (_size, mode), body in bodies.items():
        ch.basic_publish("", "big", body, pika.BasicProperties(delivery_mode=mode))
    conn.close()
    assert broker_process.stop() == 0

    broker_process.start()
    conn = broker_process.connect()
    ch = conn.channel()
    got = sorted(body for body, _ in _drain(ch, "big"))
    assert got == sorted(body for (_size, mode), body in bodies.items() if mode == 2)
    conn.close()
    assert broker_process.stop() == 0


def test_sigterm_flushes_everything(broker_process: BrokerProcess) -> None:
    conn = broker_process.connect()
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    for index in range(300):  # no confirms: the flush at shutdown must still keep them
        ch.basic_publish("", "q", f"n{index}".encode(), pika.BasicProperties(delivery_mode=2))
    conn.close()
    assert broker_process.stop() == 0
    broker_process.start()
    conn = broker_process.connect()
    assert [b for b, _ in _drain(conn.channel(), "q")] == [f"n{i}".encode() for i in range(300)]
    conn.close()


def _segments_settle_to(segments: Path, most: int, timeout: float = 5.0) -> int:
    """The number of segment files once at most ``most`` are left (or ``timeout`` passed).

    Deletion follows the fsync that covers the acks, which may end after the confirm the
    test waited for."""
    deadline = time.monotonic() + timeout
    while len(list(segments.glob("*.log"))) > most and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(list(segments.glob("*.log")))


def test_acked_segments_are_deleted(tmp_path: Path) -> None:
    """Segments are removed once everything in them and before them is acknowledged."""
    from leveret.broker.embedded import EmbeddedBroker

    with EmbeddedBroker(data_dir=tmp_path / "d") as embedded:
        embedded.broker.store.segment_limit = 64 * 1024  # roll often
        conn = pika.BlockingConnection(pika.URLParameters(embedded.url))
        ch = conn.channel()
        ch.queue_declare("seg", durable=True)
        ch.confirm_delivery()
        for _ in range(200):
            ch.basic_publish("", "seg", b"x" * 2000, pika.BasicProperties(delivery_mode=2))
        segments = tmp_path / "d" / "segments"
        assert len(list(segments.glob("*.log"))) > 3
        for _ in range(200):
            method, _, _ = ch.basic_get("seg")
            ch.basic_ack(method.delivery_tag)
        ch.basic_publish("", "seg", b"last", pika.BasicProperties(delivery_mode=2))
        assert _segments_settle_to(segments, 2) <= 2
        conn.close()


def _write_messages(data_dir: Path, count: int) -> None:
    from leveret.broker.embedded import EmbeddedBroker

    with EmbeddedBroker(data_dir=data_dir) as embedded:
        conn = pika.BlockingConnection(pika.URLParameters(embedded.url))
        ch = conn.channel()
        ch.queue_declare("q", durable=True)
        ch.confirm_delivery()
        for index in range(count):
            ch.basic_publish(
                "", "q", f"body-{index:04d}".encode(), pika.BasicProperties(delivery_mode=2)
            )
        conn.close()


def _read_messages(data_dir: Path) -> list[bytes]:
    from leveret.broker.embedded import EmbeddedBroker

    with EmbeddedBroker(data_dir=data_dir) as embedded:
        conn = pika.BlockingConnection(pika.URLParameters(embedded.url))
        bodies = [b for b, _ in _drain(conn.channel(), "q")]
        conn.close()
    return bodies


def _segment(data_dir: Path) -> Path:
    return sorted((data_dir / "segments").glob("*.log"))[-1]


def test_torn_tail_is_cut_off(tmp_path: Path) -> None:
    data = tmp_path / "d"
    _write_messages(data, 20)
    segment = _segment(data)
    size = segment.stat().st_size
    with open(segment, "r+b") as handle:  # a crash in the middle of the last record
        handle.truncate(size - 5)
    bodies = _read_messages(data)
    assert bodies == [f"body-{i:04d}".encode() for i in range(19)]
    assert _read_messages(data) == []  # and the store is healthy afterwards


def test_bit_flip_loses_only_that_record(tmp_path: Path) -> None:
    data = tmp_path / "d"
    _write_messages(data, 20)
    segment = _segment(data)
    raw = bytearray(segment.read_bytes())
    position = raw.index(b"body-0007")
    raw[position + 3] ^= 0x40
    segment.write_bytes(bytes(raw))
    bodies = _read_messages(data)
    assert bodies == [f"body-{i:04d}".encode() for i in range(20) if i != 7]


def test_other_format_version_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "FORMAT").write_text("leveret-store 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "leveret", "serve", "--port", "0", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "store format 'leveret-store 0'" in result.stderr


def test_two_brokers_cannot_share_a_data_dir(broker_process: BrokerProcess) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "leveret",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(broker_process.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "in use by another Leveret" in result.stderr


def test_confirms_wait_for_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A persistent publish is confirmed only after an fsync of the log."""
    from leveret.broker.embedded import EmbeddedBroker
    from leveret.broker.store import segments

    synced: list[float] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        segments.os, "fsync", lambda fd: (synced.append(time.monotonic()), real_fsync(fd))[1]
    )
    with EmbeddedBroker(data_dir=tmp_path / "d") as embedded:
        conn = pika.BlockingConnection(pika.URLParameters(embedded.url))
        ch = conn.channel()
        ch.queue_declare("q", durable=True)
        ch.confirm_delivery()
        before = len(synced)
        ch.basic_publish("", "q", b"persistent", pika.BasicProperties(delivery_mode=2))
        assert len(synced) > before
        transient_before = len(synced)
        ch.basic_publish("", "q", b"transient", pika.BasicProperties(delivery_mode=1))
        assert len(synced) == transient_before  # transient messages need no fsync
        conn.close()


def test_long_backlog_lives_on_disk_and_comes_back_in_order(tmp_path: Path) -> None:
    """Past the in-memory limit a durable queue keeps only ids; order and content survive
    spilling, a restart, purge of ready messages and requeues."""
    from leveret.broker import queue as queue_module
    from leveret.broker.embedded import EmbeddedBroker

    data = tmp_path / "d"
    count = 3000
    old = (queue_module.SPILL_AT, queue_module.SPILL_KEEP)
    queue_module.SPILL_AT, queue_module.SPILL_KEEP = 500, 100
    try:
        with EmbeddedBroker(data_dir=data) as embedded:
            conn = pika.BlockingConnection(pika.URLParameters(embedded.url))
            ch = conn.channel()
            ch.queue_declare("big", durable=True)
            ch.confirm_delivery()
            for index in range(count):
                ch.basic_publish(
                    "", "big", f"{index:05d}".encode(), pika.BasicProperties(delivery_mode=2)
                )
            time.sleep(0.3)  # let the spill pass run
            queue = embedded.broker.vhosts["/"].queues["big"]
            assert queue.ready.in_memory < count
            first = [ch.basic_get("big", auto_ack=True)[2] for _ in range(10)]
            assert first == [f"{i:05d}".encode() for i in range(10)]
            _method, _, body = ch.basic_get("big")  # held unacked over the restart
            assert body == b"00010"
            conn.close()
        with EmbeddedBroker(data_dir=data) as embedded:
            conn = pika.BlockingConnection(pika.URLParameters(embedded.url))
            got = _drain(conn.channel(), "big")
            conn.close()
        assert [body for body, _ in got] == [f"{i:05d}".encode() for i in range(10, count)]
        assert got[0][1] is True and not any(redelivered for _, redelivered in got[1:])
    finally:
        queue_module.SPILL_AT, queue_module.SPILL_KEEP = old


def test_purge_keeps_unacked_messages_over_a_restart(tmp_path: Path) -> None:
    from leveret.broker.embedded import EmbeddedBroker

    data = tmp_path / "d"
    with EmbeddedBroker(data_dir=data) as embedded:
        conn = pika.BlockingConnection(pika.URLParameters(embedded.url))
        ch = conn.channel()
        ch.queue_declare("p", durable=True)
        ch.confirm_delivery()
        for index in range(5):
            ch.basic_publish("", "p", f"m{index}".encode(), pika.BasicProperties(delivery_mode=2))
        ch.basic_get("p")  # m0 stays unacked
        assert ch.queue_purge("p").method.message_count == 4
        conn.close()
    with EmbeddedBroker(data_dir=data) as embedded:
        conn = pika.BlockingConnection(pika.URLParameters(embedded.url))
        assert _drain(conn.channel(), "p") == [(b"m0", True)]
        conn.close()


def _durable_delayed_exchange(broker_process: BrokerProcess, exchange: str,
                              queue: str) -> BlockingChannel:
    """A confirming channel, with a durable delayed exchange bound to a durable queue by "k"."""
    ch = broker_process.connect().channel()
    ch.confirm_delivery()
    ch.exchange_declare(
        exchange, "x-delayed-message", durable=True, arguments={"x-delayed-type": "direct"}
    )
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, exchange, "k")
    return ch


def test_delayed_messages_survive_a_restart(broker_process: BrokerProcess) -> None:
    """A durable x-delayed-message exchange keeps persistent held messages on disk."""
    ch = _durable_delayed_exchange(broker_process, "delays", "due")
    published = time.monotonic()
    ch.basic_publish(
        "delays", "k", b"later", pika.BasicProperties(delivery_mode=2, headers={"x-delay": 1500})
    )
    broker_process.kill()
    broker_process.start()
    conn = broker_process.connect()
    ch = conn.channel()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        method, _, body = ch.basic_get("due", auto_ack=True)
        if method is not None:  # never before it is due, however quick the restart was
            assert body == b"later"
            assert time.monotonic() - published >= 1.4
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the delayed message never arrived after the restart")
    conn.close()


def test_delayed_message_keeps_its_expiration_across_a_restart(
    broker_process: BrokerProcess,
) -> None:
    """A held persistent message with an expiration still expires after a restart."""
    ch = _durable_delayed_exchange(broker_process, "delays-ttl", "due-ttl")
    ch.basic_publish("delays-ttl", "k", b"short-lived", pika.BasicProperties(
        delivery_mode=2, expiration="300", headers={"x-delay": 1000}))
    broker_process.kill()
    broker_process.start()
    conn = broker_process.connect()
    ch = conn.channel()
    time.sleep(2.0)  # due after 1 s, expired 300 ms later
    assert ch.queue_declare("due-ttl", durable=True, passive=True).method.message_count == 0
    conn.close()


def test_one_old_message_does_not_pin_the_log(tmp_path: Path) -> None:
    """A long-lived message keeps its own segment, not every segment written after it."""
    from leveret.broker.embedded import EmbeddedBroker

    data = tmp_path / "d"
    with EmbeddedBroker(data_dir=data) as embedded:
        embedded.broker.store.segment_limit = 64 * 1024  # roll often
        conn = pika.BlockingConnection(pika.URLParameters(embedded.url))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("old", durable=True)
        ch.queue_declare("busy", durable=True)
        ch.basic_publish("", "old", b"keep me", pika.BasicProperties(delivery_mode=2))
        for _ in range(300):
            ch.basic_publish("", "busy", b"x" * 2000, pika.BasicProperties(delivery_mode=2))
        for _ in range(300):
            method, _, _ = ch.basic_get("busy")
            ch.basic_ack(method.delivery_tag)
        ch.basic_publish("", "busy", b"last", pika.BasicProperties(delivery_mode=2))
        assert _segments_settle_to(data / "segments", 3) <= 3
        conn.close()
    with EmbeddedBroker(data_dir=data) as embedded:
        conn = pika.BlockingConnection(pika.URLParameters(embedded.url))
        ch = conn.channel()
        assert _drain(ch, "old") == [(b"keep me", False)]
        assert _drain(ch, "busy") == [(b"last", False)]
        conn.close()


def test_segments_roll_under_a_steady_stream(tmp_path: Path) -> None:
    """With an fsync always in flight, the log still moves on to new segment files."""
    from leveret.broker.embedded import EmbeddedBroker

    with EmbeddedBroker(data_dir=tmp_path / "d") as embedded:
        embedded.broker.store.segment_limit = 64 * 1024
        conn = pika.BlockingConnection(pika.URLParameters(embedded.url))
        ch = conn.channel()
        ch.queue_declare("stream", durable=True)
        for _ in range(1000):  # no confirms: the publisher never waits for an fsync
            ch.basic_publish("", "stream", b"y" * 2000, pika.BasicProperties(delivery_mode=2))
        ch.queue_declare("stream", passive=True)
        sizes = [p.stat().st_size for p in (tmp_path / "d" / "segments").glob("*.log")]
        assert len(sizes) > 5  # a segment may pass the limit by one group commit, no more
        assert max(sizes) < 1024 * 1024
        conn.close()


def test_disk_alarm_blocks_and_unblocks_publishers(tmp_path: Path) -> None:
    """Free disk below the limit: connection.blocked, as RabbitMQ's disk alarm; then unblocked."""
    from leveret.broker.embedded import EmbeddedBroker

    with EmbeddedBroker(
        data_dir=tmp_path / "d", disk_free_limit=0, resource_check_interval=0.1
    ) as embedded:
        events: list[str] = []
        conn = pika.BlockingConnection(pika.URLParameters(embedded.url))
        conn.add_on_connection_blocked_callback(lambda _c, m: events.append(m.method.reason))
        conn.add_on_connection_unblocked_callback(lambda _c, _m: events.append("unblocked"))
        embedded.broker.config.disk_free_limit = 10**18  # the disk is "full"
        deadline = time.monotonic() + 5
        while not events and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert events == ["low on disk"]
        embedded.broker.config.disk_free_limit = 0  # space is back
        deadline = time.monotonic() + 5
        while "unblocked" not in events and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert events == ["low on disk", "unblocked"]
        conn.channel().queue_declare("", exclusive=True)
        conn.close()
