"""Remote control through Leveret (kombu pidbox: fanout exchanges, reply queues with
x-expires/x-message-ttl arguments), driven by the stock ``celery`` command line."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import TaskRevokedError
from kombu import Connection

from .app import DEFAULT_QUEUE, HOLDING_QUEUE, create_app
from .conftest import Leveret, Records, Worker, close_app, run_celery, start_worker, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.leveret_only, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def url(leveret: Leveret) -> str:
    return leveret.url("amqp")


@pytest.fixture(scope="module")
def worker(url: str, e2e_dir: Path, records: Records) -> Iterator[Worker]:
    process = start_worker(url, e2e_dir, records.directory, "remote", [DEFAULT_QUEUE])
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(url: str, worker: Worker) -> Iterator[Any]:
    app = create_app(broker_url=url, result_backend="rpc://")
    yield app
    close_app(app)


def celery_json(url: str, *args: str) -> Any:
    """Run ``celery <args> -j`` and return the JSON it prints."""
    done = run_celery(url, *args, "-j")
    assert done.returncode == 0, f"celery {' '.join(args)}: {done.stdout}\n{done.stderr}"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, f"celery {' '.join(args)} printed nothing; stderr:\n{done.stderr}"
    return json.loads(lines[-1])


def control(url: str, *args: str) -> dict[str, Any]:
    """``celery control ... -j`` prints a list of one-entry ``{node: reply}`` dicts."""
    replies = celery_json(url, "control", *args, "-t", "10")
    if isinstance(replies, dict):
        return replies
    return {node: reply for entry in replies for node, reply in entry.items()}


def inspect(url: str, worker: Worker, command: str, *args: str) -> Any:
    replies = celery_json(url, "inspect", command, *args, "-d", worker.nodename, "-t", "10")
    assert worker.nodename in replies, replies
    return replies[worker.nodename]


def test_inspect_ping(url: str, worker: Worker) -> None:
    assert inspect(url, worker, "ping") == {"ok": "pong"}


def test_inspect_active(url: str, worker: Worker, client: Any, records: Records) -> None:
    result = client.tasks["e2e.record"].delay("active", 2.5)
    records.wait("active", 1, 10, phase="start")
    active = inspect(url, worker, "active")
    assert [task["id"] for task in active] == [result.id]
    assert active[0]["name"] == "e2e.record"
    assert active[0]["args"] == ["active", 2.5]
    assert result.get(timeout=15) == "active"
    assert inspect(url, worker, "active") == []


def test_inspect_stats(url: str, worker: Worker, leveret: Leveret) -> None:
    stats = inspect(url, worker, "stats")
    assert stats["pool"]["max-concurrency"] == 4
    assert stats["broker"]["hostname"] == "127.0.0.1"
    assert stats["broker"]["port"] == leveret.port
    assert stats["broker"]["transport"] == "amqp"
    assert stats["pid"] == worker.pid


def test_inspect_registered(url: str, worker: Worker) -> None:
    registered = inspect(url, worker, "registered")
    assert {"e2e.add", "e2e.record", "e2e.record_acks_late"} <= set(registered)


def test_inspect_active_queues(url: str, worker: Worker) -> None:
    queues = inspect(url, worker, "active_queues")
    assert [queue["name"] for queue in queues] == [DEFAULT_QUEUE]


def test_control_rate_limit(url: str, worker: Worker) -> None:
    replies = control(url, "rate_limit", "e2e.mul", "10/m", "-d", worker.nodename)
    assert replies[worker.nodename] == {"ok": "new rate limit set successfully"}
    registered = inspect(url, worker, "registered", "rate_limit")
    assert "e2e.mul [rate_limit=10/m]" in registered, registered


def test_revoke_pending_countdown_task(url: str, worker: Worker, client: Any,
                                       records: Records) -> None:
    sent = time.time()
    result = client.tasks["e2e.record"].apply_async(("revoked",), countdown=3)
    wait_until(lambda: any(task["request"]["id"] == result.id
                           for task in inspect(url, worker, "scheduled")),
               10, "the worker never held the countdown task")
    replies = control(url, "revoke", result.id, "-d", worker.nodename)
    assert "revoked" in replies[worker.nodename]["ok"], replies
    assert result.id in inspect(url, worker, "revoked")
    with pytest.raises(TaskRevokedError):
        result.get(timeout=10)
    time.sleep(max(0.0, sent + 4 - time.time()))  # past the countdown
    assert records.of("revoked") == []
    # The worker still works.
    assert client.tasks["e2e.add"].delay(1, 1).get(timeout=10) == 2


def test_purge(url: str, worker: Worker, client: Any, leveret: Leveret) -> None:
    def depth() -> int:
        with Connection(url, connect_timeout=5) as connection:
            return connection.default_channel.queue_declare(HOLDING_QUEUE, passive=True)[1]

    for i in range(5):
        client.tasks["e2e.record"].apply_async((f"purged-{i}",), queue=HOLDING_QUEUE)
    wait_until(lambda: depth() == 5, 5, lambda: f"{depth()} messages queued")
    done = run_celery(url, "purge", "-f", "-Q", HOLDING_QUEUE)
    assert done.returncode == 0, done.stderr
    assert "Purged 5 messages" in done.stdout, done.stdout
    assert depth() == 0


def test_control_shutdown(url: str, e2e_dir: Path, records: Records) -> None:
    doomed = start_worker(url, e2e_dir, records.directory, "shutdown", [DEFAULT_QUEUE])
    try:
        # The worker stops without replying: the command reports that no node replied.
        done = run_celery(url, "control", "shutdown", "-d", doomed.nodename, "-t", "1")
        assert done.returncode == 0 or "No nodes replied" in done.stderr, done.stderr
        assert doomed.wait_exit(15) == 0
        assert "Got shutdown from remote" in doomed.log_text()
    finally:
        doomed.stop(5)
