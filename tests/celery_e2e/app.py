"""The Celery application the end-to-end tests run: stock Celery, configured from the environment.

Worker, beat and command-line processes load it with ``celery -A tests.celery_e2e.app``; the
environment says where Leveret is (``LEVERET_E2E_BROKER_URL``), which result backend to use
(``LEVERET_E2E_RESULT_BACKEND``), where tasks record their executions
(``LEVERET_E2E_RECORD_DIR``) and whether to install the beat schedule (``LEVERET_E2E_BEAT``).
The test process builds its own client apps with :func:`create_app`.

Every task has an explicit name, because the test process imports this module as
``celery_e2e.app`` while the workers import it as ``tests.celery_e2e.app``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from kombu import Exchange, Queue

BROKER_ENV = "LEVERET_E2E_BROKER_URL"
BACKEND_ENV = "LEVERET_E2E_RESULT_BACKEND"
RECORD_ENV = "LEVERET_E2E_RECORD_DIR"
BEAT_ENV = "LEVERET_E2E_BEAT"

RECORD_FILE = "executions.jsonl"

DEFAULT_QUEUE = "celery"
ALPHA_QUEUE = "q.alpha"
BETA_QUEUE = "q.beta"
PRIORITY_QUEUE = "q.prio"
HOLDING_QUEUE = "q.holding"  # no worker consumes it unless a test says so
MAX_PRIORITY = 10

ROUTES_EXCHANGE = Exchange("e2e.routes", type="direct", durable=True)


def task_queues() -> list[Queue]:
    return [
        Queue(DEFAULT_QUEUE, Exchange(DEFAULT_QUEUE, type="direct"), routing_key=DEFAULT_QUEUE),
        Queue(ALPHA_QUEUE, ROUTES_EXCHANGE, routing_key="alpha"),
        Queue(BETA_QUEUE, ROUTES_EXCHANGE, routing_key="beta"),
        Queue(PRIORITY_QUEUE, Exchange("e2e.prio", type="direct"), routing_key="prio",
              queue_arguments={"x-max-priority": MAX_PRIORITY}),
        Queue(HOLDING_QUEUE, Exchange("e2e.holding", type="direct"), routing_key="holding"),
    ]


TASK_ROUTES = {
    "e2e.route.alpha": {"queue": ALPHA_QUEUE},
    "e2e.route.beta": {"queue": BETA_QUEUE},
}


def create_app(broker_url: str | None = None, result_backend: str | None = None,
               beat: bool = False) -> Celery:
    """A Celery app with the e2e configuration and tasks; ``None`` reads the environment."""
    app = Celery("leveret_e2e", set_as_current=False)
    app.conf.update(
        broker_url=broker_url or os.environ.get(BROKER_ENV, "pyamqp://guest:guest@127.0.0.1//"),
        result_backend=result_backend or os.environ.get(BACKEND_ENV, "rpc://"),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        enable_utc=True,
        timezone="UTC",
        task_queues=task_queues(),
        task_default_queue=DEFAULT_QUEUE,
        task_default_exchange=DEFAULT_QUEUE,
        task_default_routing_key=DEFAULT_QUEUE,
        task_routes=TASK_ROUTES,
        task_queue_max_priority=None,
        result_expires=None,
        worker_redirect_stdouts=False,
    )
    if beat:
        app.conf.beat_schedule = {
            "e2e-tick": {"task": "e2e.record", "schedule": 1.0, "args": ("beat",)},
        }
    register_tasks(app)
    return app


# ---------------------------------------------------------------------------------------------
# Execution records: one JSON line per event, appended (O_APPEND) to RECORD_DIR/RECORD_FILE.

_record_lock = threading.Lock()


def record_path(directory: str | os.PathLike[str] | None = None) -> Path:
    return Path(directory or os.environ[RECORD_ENV]) / RECORD_FILE


def write_record(task: Task, label: str, phase: str, **extra: Any) -> None:
    request = task.request
    delivery = request.delivery_info or {}
    entry = {
        "label": label,
        "phase": phase,
        "task": task.name,
        "task_id": request.id,
        "hostname": request.hostname,
        "pid": os.getpid(),
        "time": time.time(),
        "redelivered": delivery.get("redelivered"),
        "routing_key": delivery.get("routing_key"),
        "priority": delivery.get("priority"),
        "retries": request.retries,
        **extra,
    }
    line = (json.dumps(entry) + "\n").encode()
    with _record_lock:
        fd = os.open(record_path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_records(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    path = record_path(directory)
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written right now
                continue
    return entries


# ---------------------------------------------------------------------------------------------
# Tasks


def register_tasks(app: Celery) -> None:
    @app.task(shared=False, name="e2e.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(shared=False, name="e2e.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(shared=False, name="e2e.xsum")
    def xsum(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task(shared=False, name="e2e.now")
    def now() -> float:
        return time.time()

    @app.task(shared=False, name="e2e.record", bind=True)
    def record(self: Task, label: str, seconds: float = 0.0) -> str:
        write_record(self, label, "start")
        if seconds:
            time.sleep(seconds)
        write_record(self, label, "done")
        return label

    @app.task(shared=False, name="e2e.record_acks_late", bind=True, acks_late=True,
              reject_on_worker_lost=True)
    def record_acks_late(self: Task, label: str, seconds: float = 0.0) -> str:
        write_record(self, label, "start")
        if seconds:
            time.sleep(seconds)
        write_record(self, label, "done")
        return label

    @app.task(shared=False, name="e2e.fail_acks_late", bind=True, acks_late=True,
              reject_on_worker_lost=True)
    def fail_acks_late(self: Task, label: str) -> None:
        write_record(self, label, "start")
        raise ValueError(f"{label} fails on purpose")

    @app.task(shared=False, name="e2e.reject_once", bind=True, acks_late=True)
    def reject_once(self: Task, label: str) -> dict[str, Any]:
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        write_record(self, label, "start")
        if not redelivered:
            raise Reject("first delivery: requeue", requeue=True)
        return {"redelivered": redelivered}

    @app.task(shared=False, name="e2e.retrying", bind=True, max_retries=5)
    def retrying(self: Task, label: str, fails: int) -> dict[str, Any]:
        write_record(self, label, "start")
        if self.request.retries < fails:
            raise self.retry(countdown=1)
        return {"retries": self.request.retries, "time": time.time()}

    # e2e.route.* are routed by TASK_ROUTES (task_routes), not by the caller.
    for name in ("e2e.where", "e2e.route.alpha", "e2e.route.beta"):
        app.task(shared=False, name=name, bind=True)(_where)


def _where(self: Task) -> dict[str, Any]:
    delivery = self.request.delivery_info or {}
    return {"hostname": self.request.hostname, "routing_key": delivery.get("routing_key"),
            "exchange": delivery.get("exchange")}


app = create_app(beat=bool(os.environ.get(BEAT_ENV)))
