"""Celery's own pytest fixtures (``celery.contrib.pytest``) on Leveret: the recipe from the
README, with a real worker (a thread of this process) and ``task_always_eager`` off."""

from __future__ import annotations

import time
from typing import Any

import pytest

from leveret.testing import Sandbox

# Celery's fixtures are a plugin of their own, not loaded automatically.
pytest_plugins = ["celery.contrib.pytest"]

pytestmark = [pytest.mark.leveret_only, pytest.mark.integration]


@pytest.fixture
def celery_config(leveret_celery_config: dict[str, Any]) -> dict[str, Any]:
    return {**leveret_celery_config, "task_acks_late": True}


def test_worker_runs_tasks_through_the_tests_vhost(celery_app: Any, celery_worker: Any,
                                                   leveret: Sandbox) -> None:
    @celery_app.task(name="tests.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @celery_app.task(name="tests.fail")
    def fail() -> None:
        raise ValueError("on purpose")

    celery_worker.reload()  # tasks defined after the worker started
    assert celery_app.conf.task_always_eager is False
    assert mul.delay(6, 7).get(timeout=10) == 42
    assert [r.get(timeout=10) for r in [mul.delay(i, i) for i in range(5)]] == [
        0, 1, 4, 9, 16]
    with pytest.raises(ValueError, match="on purpose"):
        fail.delay().get(timeout=10)
    assert leveret.queue("celery").consumers == 1  # the worker consumes in the test's vhost
    deadline = time.monotonic() + 5  # acks_late: the ack follows the result
    while leveret.queue("celery").messages and time.monotonic() < deadline:
        time.sleep(0.02)
    assert leveret.queue("celery").messages == 0
