"""Fault injection: the store keeps its promises when the disk is slow, full, failing or damaged.

A confirm, a commit-ok and a durable declare-ok wait for the fsync that covers them and for
nothing else; failed writes are retried, never forgotten; a damaged record costs that record
only. Brokers run in-process (``EmbeddedBroker``) with ``tests.store_faults.FaultyIO`` in
place of the store's system calls; clients are real, over real sockets.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pika
import pika.exceptions
import pytest
from store_faults import EIO, ENOSPC, FaultyIO

from leveret.broker.embedded import EmbeddedBroker
from leveret.broker.store import records
from leveret.broker.store.recovery import recover

pytestmark = pytest.mark.leveret_only

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def _connect(url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    params.socket_timeout = 10
    params.blocked_connection_timeout = 30
    return pika.BlockingConnection(params)


def _drain(url: str, queue: str) -> list[bytes]:
    conn = _connect(url)
    channel = conn.channel()
    bodies = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        bodies.append(body)
    conn.close()
    return bodies


def _wait(predicate, timeout: float = 5.0, step: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def io() -> Iterator[FaultyIO]:
    faulty = FaultyIO()
    yield faulty
    faulty.clear()


# -- a slow disk --------------------------------------------------------------------------
def test_confirm_commit_and_declare_wait_for_a_slow_fsync(data: Path, io: FaultyIO) -> None:
    with EmbeddedBroker(data_dir=data, store_io=io) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        ch.queue_declare("q", durable=True)
        ch.confirm_delivery()
        tx = conn.channel()
        tx.tx_select()
        io.fsync_delay = 0.4
        started = time.monotonic()
        ch.basic_publish("", "q", b"confirmed", PERSISTENT)
        assert time.monotonic() - started >= 0.35, "a confirm came before its fsync"
        started = time.monotonic()
        tx.basic_publish("", "q", b"committed", PERSISTENT)
        tx.tx_commit()
        assert time.monotonic() - started >= 0.35, "commit-ok came before its fsync"
        started = time.monotonic()
        ch.queue_declare("q2", durable=True)
        assert time.monotonic() - started >= 0.35, "declare-ok came before its fsync"
        started = time.monotonic()
        ch.basic_publish("", "q", b"transient", pika.BasicProperties(delivery_mode=1))
        assert time.monotonic() - started < 0.3, "a transient confirm waited for the disk"
        conn.close()


def test_a_slow_fsync_does_not_stall_unrelated_traffic(data: Path, io: FaultyIO) -> None:
    with EmbeddedBroker(data_dir=data, store_io=io) as broker:
        slow = _connect(broker.url)
        slow_ch = slow.channel()
        slow_ch.queue_declare("q", durable=True)
        slow_ch.confirm_delivery()
        fast = _connect(broker.url)
        fast_ch = fast.channel()
        name = fast_ch.queue_declare("", exclusive=True).method.queue
        io.fsync_delay = 1.0
        publisher = threading.Thread(
            target=lambda: slow_ch.basic_publish("", "q", b"slow", PERSISTENT))
        publisher.start()
        time.sleep(0.1)  # the fsync is under way
        worst = 0.0
        for index in range(20):
            started = time.monotonic()
            fast_ch.basic_publish("", name, str(index).encode())
            method = None
            while method is None:
                method, _, _ = fast_ch.basic_get(name, auto_ack=True)
            worst = max(worst, time.monotonic() - started)
        assert publisher.is_alive(), "the fsync was not slow after all"
        assert worst < 0.2, f"transient traffic stalled {worst:.3f}s behind the disk"
        publisher.join(5)
        slow.close()
        fast.close()


def test_every_confirm_covers_records_already_fsynced(data: Path, io: FaultyIO) -> None:
    """Under pipelined confirms with a slow disk, the store's audit checks each confirmed
    record against the size its file had been fsynced to."""
    io.fsync_delay = 0.005

    async def publish(url: str) -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channels = [await connection.channel(publisher_confirms=True) for _ in range(3)]
            await channels[0].declare_queue("audited", durable=True)
            await channels[0].declare_queue("audited-2", durable=True)
            await channels[0].declare_exchange("fan", "fanout", durable=True)
            for queue in ("audited", "audited-2"):
                await (await channels[0].get_queue(queue)).bind("fan")

            async def burst(channel: aio_pika.abc.AbstractChannel, exchange: str) -> None:
                target = channel.default_exchange if not exchange else (
                    await channel.get_exchange(exchange))
                await asyncio.gather(*(target.publish(
                    aio_pika.Message(f"{exchange}-{i}".encode(),
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key="audited") for i in range(600)))

            await asyncio.gather(burst(channels[1], ""), burst(channels[2], "fan"))

    with EmbeddedBroker(data_dir=data, store_io=io, store_audit=True) as broker:
        asyncio.run(publish(broker.url))
        store = broker.broker.store
        assert store.audit_checked >= 1000
        assert store.audit_violations == []


# -- a full or failing disk ------------------------------------------------------------
@pytest.mark.parametrize("fault", ["write", "fsync"])
def test_failed_writes_are_nacked_retried_and_the_log_stays_intact(
    data: Path, io: FaultyIO, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    io.affects = lambda path: path.parent.name == "segments"
    with EmbeddedBroker(data_dir=data, store_io=io, resource_check_interval=0.1) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        ch.queue_declare("q", durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", "q", b"before", PERSISTENT)
        if fault == "write":
            io.write_error = ENOSPC
        else:
            io.fsync_error = EIO
        with pytest.raises(pika.exceptions.NackError):
            ch.basic_publish("", "q", b"refused", PERSISTENT)
        assert broker.broker.store.failed
        io.clear()  # space is back / the disk recovered: the writes are retried
        assert _wait(lambda: broker.broker.store.failed is None)
        conn.process_data_events(time_limit=0.3)  # the disk alarm clears
        ch.basic_publish("", "q", b"after", PERSISTENT)
        conn.close()
    caplog.clear()
    with EmbeddedBroker(data_dir=data) as broker:
        bodies = _drain(broker.url, "q")
    # A nacked publish was not confirmed; its retried write may still deliver it.
    assert bodies == [b"before", b"refused", b"after"]
    assert not [r for r in caplog.records if "torn" in r.getMessage() or "lost" in
                r.getMessage()], "recovery found damage"


def test_a_failed_definitions_write_is_retried_and_nothing_confirmed_is_lost(
    data: Path, io: FaultyIO
) -> None:
    """The declare-ok of a durable queue waits until its definition is on disk."""
    io.affects = lambda path: path.name.startswith("definitions")
    with EmbeddedBroker(data_dir=data, store_io=io, resource_check_interval=0.1) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        io.write_error = ENOSPC
        declared = threading.Event()

        def declare() -> None:
            ch.queue_declare("dq", durable=True)
            declared.set()

        worker = threading.Thread(target=declare)
        worker.start()
        assert not declared.wait(0.6), "declare-ok went out before the definition was written"
        io.clear()
        assert declared.wait(5), "the definitions write was never retried"
        worker.join()
        ch.confirm_delivery()
        for index in range(50):
            ch.basic_publish("", "dq", f"m{index}".encode(), PERSISTENT)
        conn.close()
    with EmbeddedBroker(data_dir=data) as broker:
        assert _drain(broker.url, "dq") == [f"m{i}".encode() for i in range(50)]


def test_a_durable_queue_declared_while_the_disk_is_full_survives(
    data: Path, io: FaultyIO
) -> None:
    with EmbeddedBroker(data_dir=data, store_io=io, resource_check_interval=0.1) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        io.write_error = ENOSPC
        result: list[object] = []
        worker = threading.Thread(target=lambda: result.append(
            ch.queue_declare("full", durable=True)))
        worker.start()
        time.sleep(0.5)
        assert not result
        io.clear()
        worker.join(5)
        assert result
        ch.confirm_delivery()
        for index in range(200):
            ch.basic_publish("", "full", f"m{index}".encode(), PERSISTENT)
        conn.close()
    with EmbeddedBroker(data_dir=data) as broker:
        assert len(_drain(broker.url, "full")) == 200


# -- damaged files ------------------------------------------------------------------------
def _write_messages(data: Path, count: int, queue: str = "q") -> None:
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        for index in range(count):
            ch.basic_publish("", queue, f"body-{index:04d}".encode(), PERSISTENT)
        conn.close()


def _publish_record_fields(segment: bytes, nth: int) -> dict[str, int]:
    """Byte offsets of one field each of the ``nth`` PUBLISH record in a segment."""
    found = [offset for offset, body, _end in records.scan(segment)
             if body is not None and body[0] == records.PUBLISH]
    at = found[nth]
    body = at + records.HEADER_SIZE
    route = body + 17
    key = route + 1 + segment[route]
    header_len = key + 1 + segment[key]
    header = header_len + 4
    body_len = header + int.from_bytes(segment[header_len:header], "big")
    payload = body_len + 4
    queues = payload + int.from_bytes(segment[body_len:payload], "big")
    return {
        "magic": at, "length": at + 5, "crc": at + 9, "type": body, "id": body + 3,
        "published": body + 12, "exchange": route, "routing-key": key,
        "header-length": header_len + 3, "header": header + 2, "body-length": body_len + 3,
        "body": payload + 5, "queue-count": queues + 1, "queue-vhost": queues + 3,
        "queue-name": queues + 5, "delivered-count": queues + 7, "moved-count": queues + 9,
    }


def test_a_bit_flipped_in_any_field_of_a_record_loses_that_record_only(data: Path) -> None:
    _write_messages(data, 20)
    segment = sorted((data / "segments").glob("*.log"))[-1]
    original = segment.read_bytes()
    fields = _publish_record_fields(original, 7)
    for field, offset in fields.items():
        damaged = bytearray(original)
        damaged[offset] ^= 0x10
        segment.write_bytes(bytes(damaged))
        recovered = recover(data / "segments")
        ids = list(recovered.queues[("/", "q")].ids)
        assert len(ids) == 19, f"flipping the {field}: {len(ids)} messages left"
        assert recovered.lost_records == 1, field
    segment.write_bytes(original)
    damaged = bytearray(original)
    damaged[fields["body"]] ^= 0x10
    segment.write_bytes(bytes(damaged))
    with EmbeddedBroker(data_dir=data) as broker:
        bodies = _drain(broker.url, "q")
    assert bodies == [f"body-{i:04d}".encode() for i in range(20) if i != 7]


def test_damage_at_the_end_of_an_older_segment_is_not_cut(data: Path) -> None:
    with EmbeddedBroker(data_dir=data, segment_limit=2048) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        ch.queue_declare("q", durable=True)
        ch.confirm_delivery()
        for index in range(60):
            ch.basic_publish("", "q", f"body-{index:04d}".encode() + b"x" * 200, PERSISTENT)
        conn.close()
    segments = sorted((data / "segments").glob("*.log"))
    assert len(segments) >= 3
    older = segments[0]
    raw = bytearray(older.read_bytes())
    raw[-20] ^= 0x01  # inside its last record
    older.write_bytes(bytes(raw))
    size = older.stat().st_size
    with EmbeddedBroker(data_dir=data) as broker:
        assert older.stat().st_size == size, "an older segment was truncated"
        bodies = _drain(broker.url, "q")
    assert len(bodies) == 59


def test_a_torn_tail_of_the_newest_segment_is_cut(data: Path) -> None:
    _write_messages(data, 20)
    segment = sorted((data / "segments").glob("*.log"))[-1]
    with open(segment, "r+b") as handle:
        handle.truncate(segment.stat().st_size - 5)
    with EmbeddedBroker(data_dir=data) as broker:
        assert _drain(broker.url, "q") == [f"body-{i:04d}".encode() for i in range(19)]
    with EmbeddedBroker(data_dir=data) as broker:
        assert _drain(broker.url, "q") == []


def test_a_damaged_definitions_file_falls_back_to_the_last_good_copy(
    data: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from leveret.broker.store import definitions

    monkeypatch.setattr(definitions, "MIN_SNAPSHOT_CHANGES", 4)
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        for index in range(60):
            ch.queue_declare(f"q{index}", durable=True)
            ch.queue_declare("churn", durable=True)  # superseded changes: snapshots follow
            ch.queue_delete("churn")
        ch.confirm_delivery()
        ch.basic_publish("", "q29", b"kept", PERSISTENT)
        conn.close()
    snapshots = sorted(data.glob("definitions.*.json"), key=lambda p: int(p.name.split(".")[1]))
    assert len(snapshots) >= 2
    newest = snapshots[-1]
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    newest.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING), EmbeddedBroker(data_dir=data) as broker:
        queues = broker.broker.vhosts["/"].queues
        assert all(f"q{i}" in queues for i in range(60))
        assert _drain(broker.url, "q29") == [b"kept"]
    assert any("damaged" in r.getMessage() for r in caplog.records)


def test_a_damaged_definitions_change_costs_that_change_only(data: Path) -> None:
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        for index in range(5):
            ch.queue_declare(f"q{index}", durable=True)
        conn.close()
    log_file = next(data.glob("definitions.*.log"))
    raw = bytearray(log_file.read_bytes())
    position = raw.index(b'"q2"')
    raw[position + 1] ^= 0x01
    log_file.write_bytes(bytes(raw))
    with EmbeddedBroker(data_dir=data) as broker:
        assert sorted(broker.broker.vhosts["/"].queues) == ["q0", "q1", "q3", "q4"]


# -- disk use -----------------------------------------------------------------------------
def test_disk_use_follows_live_data_not_traffic(data: Path) -> None:
    """One long-lived message per stretch of traffic: merges keep the log small."""
    limit = 32 * 1024
    with EmbeddedBroker(data_dir=data, segment_limit=limit) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("old", durable=True)
        ch.queue_declare("busy", durable=True)
        for round_ in range(20):
            ch.basic_publish("", "old", f"keep-{round_}".encode(), PERSISTENT)
            for _ in range(40):
                ch.basic_publish("", "busy", b"x" * 2000, PERSISTENT)
            for _ in range(40):
                method, _, _ = ch.basic_get("busy")
                ch.basic_ack(method.delivery_tag)
        ch.queue_declare("sync", durable=True)  # everything before is durable
        store = broker.broker.store
        assert _wait(lambda: sum(p.stat().st_size for p in (data / "segments").glob("*.log"))
                     <= 3 * limit, timeout=10)
        assert store.compactor.merges + store.compactor.deleted_files > 0
        conn.close()
    with EmbeddedBroker(data_dir=data) as broker:
        assert _drain(broker.url, "old") == [f"keep-{i}".encode() for i in range(20)]
        assert _drain(broker.url, "busy") == []


def test_a_merge_keeps_partly_settled_fanout_copies(data: Path) -> None:
    """A message in two durable queues, settled in one: the merged record keeps the other."""
    limit = 16 * 1024
    with EmbeddedBroker(data_dir=data, segment_limit=limit) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare("fan", "fanout", durable=True)
        for name in ("a", "b"):
            ch.queue_declare(name, durable=True)
            ch.queue_bind(name, "fan")
        for index in range(100):
            ch.basic_publish("fan", "", f"m{index}".encode() + b"y" * 500, PERSISTENT)
        for _ in range(100):  # "a" settles everything; "b" keeps it all
            method, _, _ = ch.basic_get("a")
            ch.basic_ack(method.delivery_tag)
        ch.queue_declare("filler", durable=True)
        for _ in range(100):
            ch.basic_publish("", "filler", b"z" * 1000, PERSISTENT)
            method, _, _ = ch.basic_get("filler")
            ch.basic_ack(method.delivery_tag)
        ch.queue_declare("sync", durable=True)
        assert _wait(lambda: broker.broker.store.compactor.merges > 0, timeout=10)
        conn.close()
    with EmbeddedBroker(data_dir=data) as broker:
        assert _drain(broker.url, "a") == []
        assert [b[: b.index(b"y")] for b in _drain(broker.url, "b")] == [
            f"m{i}".encode() for i in range(100)]


# -- stored bodies on every path ------------------------------------------------------------
def test_large_held_delayed_messages_are_delivered_and_shutdown_is_clean(data: Path) -> None:
    """80 x 1 MB persistent messages held by a durable delayed exchange (once wedged the
    store when bodies were dropped from memory)."""
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare("later", "x-delayed-message", durable=True,
                            arguments={"x-delayed-type": "direct"})
        ch.queue_declare("due", durable=True)
        ch.queue_bind("due", "later", "k")
        body = b"B" * (1024 * 1024)
        for index in range(80):
            ch.basic_publish("later", "k", body + str(index).encode(), pika.BasicProperties(
                delivery_mode=2, headers={"x-delay": 800}))
        assert _wait(lambda: ch.queue_declare("due", durable=True, passive=True)
                     .method.message_count == 80, timeout=20)
        ch.basic_publish("", "due", b"after", PERSISTENT)  # the store still confirms
        conn.close()
    with EmbeddedBroker(data_dir=data) as broker:
        got = _drain(broker.url, "due")
    assert len(got) == 81 and got[-1] == b"after"
    assert sorted(int(b[len(body):]) for b in got[:-1]) == list(range(80))


def test_a_transient_queue_keeps_its_copy_when_the_durable_one_is_gone(data: Path) -> None:
    with EmbeddedBroker(data_dir=data, segment_limit=8 * 1024) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare("both", "fanout", durable=True)
        ch.queue_declare("durable-side", durable=True)
        transient = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind("durable-side", "both")
        ch.queue_bind(transient, "both")
        for index in range(200):
            ch.basic_publish("both", "", f"m{index:03d}".encode() * 20, PERSISTENT)
        for _ in range(200):
            method, _, _ = ch.basic_get("durable-side")
            ch.basic_ack(method.delivery_tag)
        ch.queue_declare("sync", durable=True)
        time.sleep(0.3)  # compaction deletes the settled segments
        got = [ch.basic_get(transient, auto_ack=True)[2] for _ in range(200)]
        assert got == [f"m{i:03d}".encode() * 20 for i in range(200)]
        conn.close()


def test_spilled_messages_expire_and_dead_letter_with_their_bodies(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leveret.broker import queue as queue_module

    monkeypatch.setattr(queue_module, "SPILL_AT", 50)
    monkeypatch.setattr(queue_module, "SPILL_KEEP", 10)
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("dlq", durable=True)
        ch.queue_declare("short", durable=True, arguments={
            "x-message-ttl": 1000, "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dlq"})
        for index in range(300):
            ch.basic_publish("", "short", f"s{index:03d}".encode(), PERSISTENT)
        time.sleep(0.3)
        assert broker.broker.vhosts["/"].queues["short"].ready.in_memory < 300
        assert _wait(lambda: ch.queue_declare("dlq", durable=True, passive=True)
                     .method.message_count == 300, timeout=10)
        conn.close()
        assert _drain(broker.url, "dlq") == [f"s{i:03d}".encode() for i in range(300)]


def test_ttl_is_enforced_after_a_restart_for_messages_on_disk_only(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leveret.broker import queue as queue_module

    monkeypatch.setattr(queue_module, "SPILL_AT", 50)
    monkeypatch.setattr(queue_module, "SPILL_KEEP", 10)
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("dlq", durable=True)
        ch.queue_declare("ttl", durable=True, arguments={
            "x-message-ttl": 1500, "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dlq"})
        for index in range(300):
            ch.basic_publish("", "ttl", f"t{index:03d}".encode(), PERSISTENT)
        conn.close()
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        assert _wait(lambda: ch.queue_declare("ttl", durable=True, passive=True)
                     .method.message_count == 0, timeout=5)
        assert ch.queue_declare("dlq", durable=True, passive=True).method.message_count == 300
        conn.close()


def test_a_delayed_message_is_not_delivered_again_after_a_restart(data: Path) -> None:
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare("later", "x-delayed-message", durable=True,
                            arguments={"x-delayed-type": "direct"})
        ch.queue_declare("due", durable=True)
        ch.queue_bind("due", "later", "k")
        ch.basic_publish("later", "k", b"once", pika.BasicProperties(
            delivery_mode=2, headers={"x-delay": 200}))
        assert _wait(lambda: ch.basic_get("due", auto_ack=True)[2] == b"once", timeout=5)
        ch.queue_declare("sync", durable=True)
        conn.close()
    for _ in range(2):
        with EmbeddedBroker(data_dir=data) as broker:
            time.sleep(0.5)
            assert _drain(broker.url, "due") == []


# -- exception safety ---------------------------------------------------------------------
def test_a_message_that_breaks_dead_lettering_does_not_stop_expiry(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leveret.broker import deadletter

    real = deadletter.with_death

    def fragile(message, *args):  # type: ignore[no-untyped-def]
        if message.body == b"poison":
            raise ValueError("cannot dead-letter this one")
        return real(message, *args)

    monkeypatch.setattr(deadletter, "with_death", fragile)
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        ch.queue_declare("dlq", durable=True)
        ch.queue_declare("src", durable=True, arguments={
            "x-message-ttl": 200, "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dlq"})
        for body in (b"good-1", b"poison", b"good-2", b"good-3"):
            ch.basic_publish("", "src", body, PERSISTENT)
        assert _wait(lambda: ch.queue_declare("dlq", durable=True, passive=True)
                     .method.message_count == 3)
        assert ch.queue_declare("src", durable=True, passive=True).method.message_count == 0
        conn.close()
        assert _drain(broker.url, "dlq") == [b"good-1", b"good-2", b"good-3"]


def test_a_failing_resource_check_keeps_the_alarms_working(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leveret.broker import server

    calls = {"n": 0}
    real = shutil.disk_usage

    def flaky(path):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("transient failure")
        return real(path)

    monkeypatch.setattr(server.shutil, "disk_usage", flaky)
    with EmbeddedBroker(data_dir=data, resource_check_interval=0.05) as broker:
        events: list[str] = []
        conn = _connect(broker.url)
        conn.add_on_connection_blocked_callback(lambda _c, m: events.append(m.method.reason))
        broker.broker.config.disk_free_limit = 10**18
        deadline = time.monotonic() + 5
        while not events and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        assert events == ["low on disk"]
        broker.broker.config.disk_free_limit = 0
        conn.close()


def test_a_failing_dispatch_does_not_stop_other_queues(data: Path) -> None:
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        for name in ("broken", "fine"):
            ch.queue_declare(name)
        queues = broker.broker.vhosts["/"].queues
        real = queues["broken"].dispatch
        failures = {"n": 0}

        def dispatch(budget: int) -> bool:
            if failures["n"] < 3:
                failures["n"] += 1
                raise RuntimeError("dispatch bug")
            return real(budget)

        queues["broken"].dispatch = dispatch  # type: ignore[method-assign]
        got: list[bytes] = []
        ch.basic_consume("broken", lambda c, m, p, b: got.append(b), auto_ack=True)
        ch.basic_consume("fine", lambda c, m, p, b: got.append(b), auto_ack=True)
        for _ in range(5):
            ch.basic_publish("", "broken", b"b")
        for _ in range(5):
            ch.basic_publish("", "fine", b"f")
        deadline = time.monotonic() + 5
        while len(got) < 10 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        assert sorted(got) == [b"b"] * 5 + [b"f"] * 5
        conn.close()


def test_a_queue_whose_definition_was_lost_keeps_its_messages(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The definitions lost the queue (a damaged change) but the log holds its messages:
    the queue is recreated rather than emptied."""
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        ch.queue_declare("other", durable=True)
        ch.queue_declare("keep", durable=True)
        ch.confirm_delivery()
        for index in range(5):
            ch.basic_publish("", "keep", f"k{index}".encode(), PERSISTENT)
        conn.close()
    log_file = next(data.glob("definitions.*.log"))
    raw = bytearray(log_file.read_bytes())
    raw[raw.index(b'"keep"') + 2] ^= 0x01
    log_file.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING), EmbeddedBroker(data_dir=data) as broker:
        assert "keep" in broker.broker.vhosts["/"].queues
        assert _drain(broker.url, "keep") == [f"k{i}".encode() for i in range(5)]
    assert any("definition was lost" in r.getMessage() for r in caplog.records)


def test_a_record_damaged_after_recovery_costs_that_message_only(
        data: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Spilled messages are read back in runs (one read for adjacent records); a record
    that rots on disk while the broker runs is lost alone, its neighbours delivered."""
    with EmbeddedBroker(data_dir=data) as broker:
        conn = _connect(broker.url)
        ch = conn.channel()
        ch.queue_declare("q", durable=True)
        ch.confirm_delivery()
        for index in range(3000):
            ch.basic_publish("", "q", f"body-{index:05d}".encode(), PERSISTENT)
        conn.close()
    caplog.set_level(logging.ERROR, logger="leveret")
    with EmbeddedBroker(data_dir=data) as broker:  # every message spilled: ids in memory
        segment = next((data / "segments").iterdir())
        raw = bytearray(segment.read_bytes())
        position = raw.index(b"body-01500")
        with open(segment, "r+b") as handle:
            handle.seek(position + 5)
            handle.write(b"X")
        got = _drain(broker.url, "q")
    expected = [f"body-{i:05d}".encode() for i in range(3000) if i != 1500]
    assert got == expected
    assert any("lost a stored message" in r.getMessage() for r in caplog.records)


# -- steps nobody waits for ---------------------------------------------------------------
def test_steps_nobody_waits_for_share_an_fsync(data: Path, io: FaultyIO) -> None:
    """Publishes without confirms (Celery's traffic, one message per write) are gathered for
    UNWATCHED_SYNC_DELAY into one group commit instead of an fsync each."""
    with EmbeddedBroker(data_dir=data, store_io=io) as broker:
        conn = _connect(broker.url)
        channel = conn.channel()
        channel.queue_declare("q", durable=True)
        time.sleep(0.1)
        before = io.fsyncs
        for index in range(200):
            channel.basic_publish("", "q", str(index).encode(), PERSISTENT)
            time.sleep(0.001)  # one publish per read, as a task producer sends them
        assert _wait(lambda: io.fsyncs > before)
        time.sleep(0.1)
        assert io.fsyncs - before <= 200 // 4, io.fsyncs - before
        assert channel.queue_declare("q", passive=True).method.message_count == 200
        conn.close()
    assert sorted(_drain_after_restart(data, "q")) == sorted(str(i).encode() for i in range(200))


def _drain_after_restart(data: Path, queue: str) -> list[bytes]:
    with EmbeddedBroker(data_dir=data) as broker:
        return _drain(broker.url, queue)


def test_a_waiter_sends_the_unhurried_group_commit_at_once(
        data: Path, io: FaultyIO, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the unhurried delay made 10 s: a publish without confirm waits for it, and a
    confirm that comes next has it all written and fsynced at once (within 2 s)."""
    monkeypatch.setattr("leveret.broker.store.store.UNWATCHED_SYNC_DELAY", 10.0)
    with EmbeddedBroker(data_dir=data, store_io=io) as broker:
        conn = _connect(broker.url)
        channel = conn.channel()
        channel.queue_declare("q", durable=True)  # (its declare-ok waited for its fsync)
        before = io.fsyncs
        channel.basic_publish("", "q", b"unconfirmed", PERSISTENT)
        time.sleep(0.5)
        assert io.fsyncs == before  # nobody waits: it gathers
        confirming = conn.channel()
        confirming.confirm_delivery()
        started = time.monotonic()
        confirming.basic_publish("", "q", b"confirmed", PERSISTENT)  # returns once confirmed
        assert time.monotonic() - started < 2.0
        assert io.fsyncs > before
        conn.close()
    assert sorted(_drain_after_restart(data, "q")) == [b"confirmed", b"unconfirmed"]
