"""Celery tasks on Leveret: results over rpc://, countdown/ETA, retry, canvas, routing,
priorities, expiry, late acknowledgement. One Leveret and one worker (pyamqp://) per module."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import chain, group
from celery.exceptions import TaskRevokedError
from kombu import Connection

from .app import ALPHA_QUEUE, BETA_QUEUE, DEFAULT_QUEUE, HOLDING_QUEUE, PRIORITY_QUEUE, create_app
from .conftest import Leveret, Records, Worker, close_app, start_worker, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.leveret_only, pytest.mark.timeout(60)]

RESULT_TIMEOUT = 15


@pytest.fixture(scope="module")
def worker(leveret: Leveret, e2e_dir: Path, records: Records) -> Iterator[Worker]:
    process = start_worker(leveret.url("pyamqp"), e2e_dir, records.directory, "tasks",
                           [DEFAULT_QUEUE, ALPHA_QUEUE, BETA_QUEUE])
    yield process
    process.stop()


@pytest.fixture
def client(rpc_client: Any, worker: Worker) -> Any:
    return rpc_client


def queue_depth(leveret: Leveret, queue: str) -> int:
    with Connection(leveret.url("pyamqp"), connect_timeout=5) as connection:
        _, count, _ = connection.default_channel.queue_declare(queue, passive=True)
        return count


def test_delay_and_apply_async_results_over_rpc(client: Any) -> None:
    add = client.tasks["e2e.add"]
    assert add.delay(2, 3).get(timeout=RESULT_TIMEOUT) == 5
    assert add.apply_async((10,), {"y": 32}).get(timeout=RESULT_TIMEOUT) == 42
    results = [add.delay(i, i) for i in range(20)]
    assert [r.get(timeout=RESULT_TIMEOUT) for r in results] == [2 * i for i in range(20)]
    named = client.send_task("e2e.mul", (6, 7))
    assert named.get(timeout=RESULT_TIMEOUT) == 42
    assert named.state == "SUCCESS"


def test_amqp_scheme_client_talks_to_pyamqp_worker(leveret: Leveret, worker: Worker) -> None:
    other = create_app(broker_url=leveret.url("amqp"), result_backend="rpc://")
    try:
        assert other.tasks["e2e.add"].delay(20, 22).get(timeout=RESULT_TIMEOUT) == 42
    finally:
        close_app(other)


def test_task_failure_propagates(client: Any, records: Records) -> None:
    result = client.tasks["e2e.fail_acks_late"].delay("fails-once")
    with pytest.raises(ValueError, match="fails on purpose"):
        result.get(timeout=RESULT_TIMEOUT)
    assert result.state == "FAILURE"


def test_countdown(client: Any) -> None:
    sent = time.time()
    ran_at = client.tasks["e2e.now"].apply_async(countdown=2).get(timeout=RESULT_TIMEOUT)
    assert sent + 1.9 <= ran_at < sent + 10


def test_eta(client: Any) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=2)
    ran_at = client.tasks["e2e.now"].apply_async(eta=eta).get(timeout=RESULT_TIMEOUT)
    assert eta.timestamp() - 0.1 <= ran_at < eta.timestamp() + 8


def test_eta_tasks_beyond_the_prefetch_do_not_block_other_tasks(client: Any,
                                                               records: Records) -> None:
    # 4 threads x prefetch multiplier 4: the worker starts with prefetch_count 16. It holds ETA
    # tasks unacknowledged until they are due and raises its prefetch (basic.qos global=false)
    # for each one; Leveret must apply that to the running consumer, or the 17th message and
    # the plain task behind them wait until the ETAs pass.
    sent = time.time()
    for i in range(20):
        client.tasks["e2e.record"].apply_async((f"eta-held-{i}",), countdown=3)
    assert client.tasks["e2e.add"].delay(1, 1).get(timeout=RESULT_TIMEOUT) == 2
    assert time.time() - sent < 2.5, "the plain task waited for the ETA tasks"
    for i in range(20):
        runs = records.wait(f"eta-held-{i}", 1, 10)
        assert runs[0]["time"] >= sent + 2.9


def test_retry_with_countdown(client: Any, records: Records) -> None:
    sent = time.time()
    outcome = client.tasks["e2e.retrying"].delay("retry", 2).get(timeout=RESULT_TIMEOUT)
    assert outcome["retries"] == 2
    assert outcome["time"] >= sent + 1.9  # two retries, countdown=1 each
    starts = records.of("retry", "start")
    assert [entry["retries"] for entry in starts] == [0, 1, 2]
    assert len({entry["task_id"] for entry in starts}) == 1


def test_chain(client: Any) -> None:
    add, mul = client.tasks["e2e.add"], client.tasks["e2e.mul"]
    workflow = chain(add.s(2, 2), mul.s(4), add.s(1))
    assert workflow.apply_async().get(timeout=RESULT_TIMEOUT) == 17


def test_group(client: Any) -> None:
    add = client.tasks["e2e.add"]
    result = group(add.s(i, i) for i in range(10)).apply_async()
    assert result.get(timeout=RESULT_TIMEOUT) == [2 * i for i in range(10)]
    assert result.successful()


def test_task_routes_to_several_queues(client: Any, leveret: Leveret, worker: Worker) -> None:
    # Celery publishes a task for a queue bound to a direct exchange through the default
    # exchange, with the queue's name as routing key.
    alpha = client.tasks["e2e.route.alpha"].delay().get(timeout=RESULT_TIMEOUT)
    beta = client.tasks["e2e.route.beta"].delay().get(timeout=RESULT_TIMEOUT)
    default = client.tasks["e2e.where"].delay().get(timeout=RESULT_TIMEOUT)
    explicit = client.tasks["e2e.where"].apply_async(queue=BETA_QUEUE).get(timeout=RESULT_TIMEOUT)
    assert (alpha["exchange"], alpha["routing_key"]) == ("", ALPHA_QUEUE)
    assert (beta["exchange"], beta["routing_key"]) == ("", BETA_QUEUE)
    assert (default["exchange"], default["routing_key"]) == ("", DEFAULT_QUEUE)
    assert explicit["routing_key"] == BETA_QUEUE
    assert {alpha["hostname"], beta["hostname"], default["hostname"]} == {worker.nodename}
    # Through the exchange the queues were declared with, by routing key.
    for key in ("alpha", "beta"):
        via_exchange = client.tasks["e2e.where"].apply_async(
            exchange="e2e.routes", routing_key=key).get(timeout=RESULT_TIMEOUT)
        assert (via_exchange["exchange"], via_exchange["routing_key"]) == ("e2e.routes", key)
    # A queue no worker consumes keeps what is routed to it.
    client.tasks["e2e.where"].apply_async(queue=HOLDING_QUEUE)
    wait_until(lambda: queue_depth(leveret, HOLDING_QUEUE) == 1, 5,
               lambda: f"{HOLDING_QUEUE} holds {queue_depth(leveret, HOLDING_QUEUE)} messages")
    with Connection(leveret.url("pyamqp"), connect_timeout=5) as connection:
        connection.default_channel.queue_purge(HOLDING_QUEUE)


@pytest.fixture(scope="module")
def priority_run(rpc_client: Any, leveret: Leveret, e2e_dir: Path, records: Records,
                 worker: Worker) -> list[dict[str, Any]]:
    """Queue low- then high-priority tasks on the x-max-priority queue, then start a worker
    that takes one message at a time; returns the records in execution order."""
    record = rpc_client.tasks["e2e.record"]
    for index in range(3):
        record.apply_async((f"prio-low-{index}",), queue=PRIORITY_QUEUE, priority=1)
    for index in range(3):
        record.apply_async((f"prio-high-{index}",), queue=PRIORITY_QUEUE, priority=9)
    wait_until(lambda: queue_depth(leveret, PRIORITY_QUEUE) == 6, 5, "6 messages queued")
    prio_worker = start_worker(leveret.url("pyamqp"), e2e_dir, records.directory, "prio",
                               [PRIORITY_QUEUE], concurrency=1,
                               extra=["--prefetch-multiplier", "1"])
    try:
        def done() -> list[dict[str, Any]]:
            entries = [e for e in records.all()
                       if e["label"].startswith("prio-") and e["phase"] == "start"]
            return entries if len(entries) >= 6 else []

        return wait_until(done, 20, lambda: f"records: {records.all()[-6:]}")
    finally:
        prio_worker.stop()


def test_priority_property_reaches_the_task(priority_run: list[dict[str, Any]]) -> None:
    by_label = {entry["label"]: entry["priority"] for entry in priority_run}
    assert by_label == {**{f"prio-low-{i}": 1 for i in range(3)},
                        **{f"prio-high-{i}": 9 for i in range(3)}}


def test_priority_queue_delivers_high_priority_first(priority_run: list[dict[str, Any]]) -> None:
    order = [entry["label"].split("-")[1] for entry in priority_run]
    assert order == ["high"] * 3 + ["low"] * 3, [entry["label"] for entry in priority_run]


def test_expires_at_eta_is_revoked(client: Any, records: Records) -> None:
    # The worker holds the ETA task; when the ETA comes the task has expired.
    result = client.tasks["e2e.record"].apply_async(("expired-eta",), countdown=2, expires=1)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=RESULT_TIMEOUT)
    assert result.state == "REVOKED"
    assert records.of("expired-eta") == []


def test_expires_sets_a_message_ttl_the_broker_honours(client: Any, leveret: Leveret) -> None:
    # Celery turns expires= into the message's expiration property (RabbitMQ per-message TTL):
    # an expired message on a queue nobody consumes is dropped by the broker.
    client.tasks["e2e.record"].apply_async(("ttl-dropped",), queue=HOLDING_QUEUE, expires=1)
    try:
        wait_until(lambda: queue_depth(leveret, HOLDING_QUEUE) == 0, 5,
                   lambda: f"{HOLDING_QUEUE} still holds {queue_depth(leveret, HOLDING_QUEUE)}")
    finally:
        with Connection(leveret.url("pyamqp"), connect_timeout=5) as connection:
            connection.default_channel.queue_purge(HOLDING_QUEUE)


def test_expired_before_delivery_is_not_run(client: Any, leveret: Leveret, worker: Worker,
                                            records: Records) -> None:
    result = client.tasks["e2e.record"].apply_async(("expired-queued",), queue=HOLDING_QUEUE,
                                                    expires=1)
    time.sleep(1.5)
    # 0 when the broker dropped the expired message, 1 when it is left to the worker to revoke.
    depth = queue_depth(leveret, HOLDING_QUEUE)
    replies = client.control.add_consumer(HOLDING_QUEUE, destination=[worker.nodename],
                                          reply=True, timeout=5)
    assert replies, "no reply to add_consumer"
    try:
        if depth:
            with pytest.raises(TaskRevokedError):
                result.get(timeout=RESULT_TIMEOUT)
        else:
            time.sleep(1)
        assert records.of("expired-queued") == []
        assert queue_depth(leveret, HOLDING_QUEUE) == 0
    finally:
        client.control.cancel_consumer(HOLDING_QUEUE, destination=[worker.nodename],
                                       reply=True, timeout=5)


def test_acks_late_with_reject_on_worker_lost(client: Any, records: Records) -> None:
    task = client.tasks["e2e.record_acks_late"]
    assert task.acks_late and task.reject_on_worker_lost
    results = [task.delay(f"late-{i}", 0.2) for i in range(8)]
    assert [r.get(timeout=RESULT_TIMEOUT) for r in results] == [f"late-{i}" for i in range(8)]
    # A failure is acknowledged too (task_acks_on_failure_or_timeout): never redelivered.
    failed = client.tasks["e2e.fail_acks_late"].delay("late-fail")
    with pytest.raises(ValueError):
        failed.get(timeout=RESULT_TIMEOUT)
    time.sleep(1)
    for i in range(8):
        assert len(records.of(f"late-{i}", "start")) == 1
        assert records.of(f"late-{i}", "start")[0]["redelivered"] is False
    assert len(records.of("late-fail", "start")) == 1


def test_reject_with_requeue_redelivers(client: Any, records: Records) -> None:
    outcome = client.tasks["e2e.reject_once"].delay("reject").get(timeout=RESULT_TIMEOUT)
    assert outcome == {"redelivered": True}
    starts = records.of("reject", "start")
    assert [entry["redelivered"] for entry in starts] == [False, True]
