"""Celery events through Leveret: a worker started with -E, app.events.Receiver in the test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .app import DEFAULT_QUEUE, create_app
from .conftest import Leveret, Records, Worker, close_app, start_worker, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.leveret_only, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def worker(leveret: Leveret, e2e_dir: Path, records: Records) -> Iterator[Worker]:
    process = start_worker(leveret.url("amqp"), e2e_dir, records.directory, "events",
                           [DEFAULT_QUEUE], extra=["-E"])
    yield process
    process.stop()


class EventLog:
    """An app.events.Receiver capturing every event on a thread, until stopped."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, name="celery-events", daemon=True)

    def _record(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)

    def _run(self) -> None:
        try:
            with self.app.connection_for_read() as connection:
                self.receiver = self.app.events.Receiver(connection,
                                                         handlers={"*": self._record})
                self.receiver.capture(limit=None, timeout=None, wakeup=True)
        except BaseException as error:
            self.error = error

    def of(self, event_type: str, **fields: Any) -> list[dict[str, Any]]:
        with self.lock:
            return [event for event in self.events if event["type"] == event_type
                    and all(event.get(key) == value for key, value in fields.items())]

    def __enter__(self) -> EventLog:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(10)
        assert not self.thread.is_alive(), "the event receiver did not stop"


def test_worker_events_reach_a_receiver(leveret: Leveret, worker: Worker) -> None:
    app = create_app(broker_url=leveret.url("amqp"), result_backend="rpc://")
    app.conf.task_send_sent_event = True
    try:
        with EventLog(app) as log:
            # Heartbeats come every 2 s; the first one shows the receiver's queue is bound.
            wait_until(lambda: log.error or log.of("worker-heartbeat", hostname=worker.nodename),
                       15, lambda: f"no worker-heartbeat; events: {log.events}")
            assert log.error is None, log.error
            result = app.tasks["e2e.add"].delay(4, 5)
            assert result.get(timeout=15) == 9
            for event_type in ("task-sent", "task-received", "task-started", "task-succeeded"):
                wait_until(lambda t=event_type: log.of(t, uuid=result.id), 10,
                           lambda t=event_type: f"no {t} for {result.id}; {log.events}")
            received = log.of("task-received", uuid=result.id)[0]
            assert received["name"] == "e2e.add"
            assert received["hostname"] == worker.nodename
            succeeded = log.of("task-succeeded", uuid=result.id)[0]
            assert succeeded["result"] == "9"
            assert log.error is None, log.error
    finally:
        close_app(app)
