"""Scenario j: a tiny Celery app with one no-op task, used by ``run.py``.

The worker and the publisher are configured through environment variables so that
``run.py`` can point them at either broker:

    LVBENCH_BROKER_URL   kombu URL, e.g. pyamqp://guest:guest@127.0.0.1:5673//
    LVBENCH_QUEUE        task queue (and exchange) name; a fresh one per run
    LVBENCH_EXPECT       number of tasks the run publishes
    LVBENCH_STATE_DIR    directory for the marker files written by the worker:
                         ``ready`` (worker_ready signal), ``first`` (first task executed),
                         ``done`` (the LVBENCH_EXPECT-th task executed); each holds time.time()

Worker (started by run.py, cwd = this directory):

    celery -A celery_noop worker -P threads -c 4 --prefetch-multiplier 4 -Q $LVBENCH_QUEUE \
        --without-gossip --without-mingle --without-heartbeat -l warning

Publisher (prints one JSON line: first/last publish time, publish CPU seconds):

    python celery_noop.py publish 10000
    python celery_noop.py publish-on-go 10000   # connects, prints {"ready": true}, publishes
                                                # after a line on stdin (used by run.py)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from celery import Celery
from celery.signals import worker_ready

BROKER_URL = os.environ.get("LVBENCH_BROKER_URL", "pyamqp://guest:guest@127.0.0.1:5672//")
QUEUE = os.environ.get("LVBENCH_QUEUE", "lvbench-j")
EXPECT = int(os.environ.get("LVBENCH_EXPECT", "0"))
STATE = Path(os.environ.get("LVBENCH_STATE_DIR", "."))

app = Celery("lvbench", broker=BROKER_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    result_backend=None,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_lock = threading.Lock()
_count = 0


def _mark(name: str) -> None:
    tmp = STATE / f".{name}.tmp"
    tmp.write_text(repr(time.time()))
    tmp.rename(STATE / name)


@app.task(name="lvbench.noop", ignore_result=True)
def noop() -> None:
    global _count
    with _lock:
        _count += 1
        n = _count
    if n == 1:
        _mark("first")
    if n == EXPECT:
        _mark("done")


@worker_ready.connect
def _ready(**_kw) -> None:
    _mark("ready")


def publish(n: int, wait_for_go: bool = False) -> dict:
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection(max_retries=3)
        if wait_for_go:  # imported and connected: let the caller start its clocks
            print(json.dumps({"ready": True}), flush=True)
            sys.stdin.readline()
        c0 = time.process_time()
        t_first = time.time()
        for _ in range(n):
            noop.apply_async(producer=producer)
        t_last = time.time()
        cpu = time.process_time() - c0
    return {"n": n, "t_first": t_first, "t_last": t_last, "cpu_s": round(cpu, 3)}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("publish", "publish-on-go"):
        print(json.dumps(publish(int(sys.argv[2]), sys.argv[1] == "publish-on-go")), flush=True)
    else:
        raise SystemExit("usage: celery_noop.py publish|publish-on-go N")
