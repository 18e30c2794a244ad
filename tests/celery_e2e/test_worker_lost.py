"""A worker killed with SIGKILL while it holds acks_late tasks: Leveret requeues its unacked
messages and another worker runs them; no task is lost."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from .app import DEFAULT_QUEUE
from .conftest import Leveret, Records, start_worker, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.leveret_only, pytest.mark.timeout(60)]

TASKS = 8
SECONDS = 1.5


def test_sigkilled_worker_acks_late_tasks_run_on_another_worker(
        leveret: Leveret, e2e_dir: Path, records: Records, rpc_client: Any) -> None:
    url = leveret.url("amqp")
    doomed = start_worker(url, e2e_dir, records.directory, "doomed", [DEFAULT_QUEUE])
    survivor = None
    try:
        task = rpc_client.tasks["e2e.record_acks_late"]
        labels = [f"lost-{i}" for i in range(TASKS)]
        for label in labels:
            task.delay(label, SECONDS)
        # The doomed worker prefetches all of them (4 threads x prefetch multiplier 4) and
        # starts four; then a second worker joins, with nothing left for it to take.
        wait_until(lambda: len([e for e in records.all() if e["phase"] == "start"]) >= 4, 15,
                   lambda: f"the doomed worker started nothing: {records.all()}")
        survivor = start_worker(url, e2e_dir, records.directory, "survivor", [DEFAULT_QUEUE])
        doomed.kill()
        assert not [e for e in records.all() if e["phase"] == "done"], \
            "a task finished before the kill; make SECONDS longer"

        def all_done() -> bool:
            done = {e["label"] for e in records.all() if e["phase"] == "done"}
            return done >= set(labels)

        wait_until(all_done, 30, lambda: f"not all tasks ran again: {records.all()}")
    finally:
        doomed.stop(5)
        if survivor is not None:
            survivor.stop()

    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in records.all():
        by_label[entry["label"]].append(entry)
    started_on_doomed = {label for label, entries in by_label.items()
                         if any(e["hostname"] == "doomed@e2e" for e in entries)}
    assert started_on_doomed, "the doomed worker ran nothing"
    for label in labels:
        entries = by_label[label]
        done = [e for e in entries if e["phase"] == "done"]
        assert done, f"{label} lost: {entries}"
        assert all(e["hostname"] == "survivor@e2e" for e in done), entries
        survivor_starts = [e for e in entries
                           if e["phase"] == "start" and e["hostname"] == "survivor@e2e"]
        # Every message the doomed worker held comes back flagged redelivered.
        assert all(e["redelivered"] for e in survivor_starts), entries
