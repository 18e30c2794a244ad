"""Leveret stopped with SIGTERM and started again on the same port (same data directory): the
worker reconnects by itself and runs what is published afterwards, and persistent messages on a
durable queue published before the restart are still there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from .app import DEFAULT_QUEUE, HOLDING_QUEUE
from .conftest import Leveret, Records, Worker, start_worker, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.leveret_only, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def worker(leveret: Leveret, e2e_dir: Path, records: Records) -> Iterator[Worker]:
    process = start_worker(leveret.url("pyamqp"), e2e_dir, records.directory, "restart",
                           [DEFAULT_QUEUE])
    yield process
    process.stop()


def restart_and_wait_for_worker(leveret: Leveret, worker: Worker) -> None:
    connected = worker.log_text().count("Connected to ")
    assert leveret.stop() == 0, leveret.log()
    leveret.start()
    wait_until(lambda: worker.log_text().count("Connected to ") > connected, 30,
               lambda: f"the worker did not reconnect:\n{worker.log()}")


def test_worker_reconnects_after_broker_restart(leveret: Leveret, worker: Worker,
                                                rpc_client: Any, records: Records) -> None:
    record = rpc_client.tasks["e2e.record"]
    assert record.delay("before").get(timeout=15) == "before"
    restart_and_wait_for_worker(leveret, worker)
    # The same client app publishes again (kombu reconnects its producer connection).
    for i in range(5):
        record.delay(f"after-{i}")
    for i in range(5):
        records.wait(f"after-{i}", 1, 20)
    # And results come back over rpc:// again.
    assert rpc_client.tasks["e2e.add"].delay(40, 2).get(timeout=15) == 42
    assert worker.running


def test_tasks_published_before_restart_survive(leveret: Leveret, worker: Worker,
                                                rpc_client: Any, records: Records) -> None:
    record = rpc_client.tasks["e2e.record"]
    for i in range(3):  # persistent messages (Celery's default) on a durable queue
        record.apply_async((f"durable-{i}",), queue=HOLDING_QUEUE)
    with Connection(leveret.url("pyamqp"), connect_timeout=5) as connection:
        wait_until(lambda: connection.default_channel.queue_declare(
            HOLDING_QUEUE, passive=True)[1] == 3, 5, "3 messages queued")
    restart_and_wait_for_worker(leveret, worker)
    with Connection(leveret.url("pyamqp"), connect_timeout=5) as connection:
        _, depth, _ = connection.default_channel.queue_declare(HOLDING_QUEUE, passive=True)
    assert depth == 3
    # A fresh connection for the broadcast: the app's pooled one died with the old broker.
    with rpc_client.connection_for_write() as connection:
        replies = rpc_client.control.add_consumer(
            HOLDING_QUEUE, destination=[worker.nodename], reply=True, timeout=5,
            connection=connection)
    assert replies, "no reply to add_consumer"
    for i in range(3):
        records.wait(f"durable-{i}", 1, 15)
