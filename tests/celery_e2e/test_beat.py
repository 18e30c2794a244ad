"""celery beat on Leveret: a one-second schedule runs the periodic task again and again."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from .app import DEFAULT_QUEUE
from .conftest import Leveret, Records, start_beat, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.leveret_only, pytest.mark.timeout(60)]


def test_beat_runs_the_periodic_task_repeatedly(leveret: Leveret, e2e_dir: Path,
                                                records: Records) -> None:
    url = leveret.url("pyamqp")
    worker = start_worker(url, e2e_dir, records.directory, "beatworker", [DEFAULT_QUEUE])
    beat = start_beat(url, e2e_dir, records.directory)
    try:
        runs = records.wait("beat", 3, 20)
    finally:
        beat.stop(10)
        worker.stop()
    assert len({entry["task_id"] for entry in runs}) == len(runs)
    times = sorted(entry["time"] for entry in runs)
    gaps = [later - earlier for earlier, later in pairwise(times)]
    assert all(0.3 < gap < 5 for gap in gaps), gaps
    assert "Sending due task e2e-tick (e2e.record)" in beat.log_text()
