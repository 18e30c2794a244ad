"""Chords, which the rpc:// backend cannot do: a worker and a client on the SQLAlchemy result
backend (SQLite file), with Leveret as the broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import chain, chord, group

from .app import DEFAULT_QUEUE, create_app
from .conftest import Leveret, Records, Worker, close_app, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.leveret_only, pytest.mark.timeout(60)]

pytest.importorskip("sqlalchemy")

RESULT_TIMEOUT = 20


@pytest.fixture(scope="module")
def backend_url(e2e_dir: Path) -> str:
    return f"db+sqlite:///{e2e_dir / 'results.sqlite'}"


@pytest.fixture(scope="module")
def worker(leveret: Leveret, e2e_dir: Path, records: Records,
           backend_url: str) -> Iterator[Worker]:
    process = start_worker(leveret.url("pyamqp"), e2e_dir, records.directory, "chords",
                           [DEFAULT_QUEUE], backend=backend_url)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(leveret: Leveret, backend_url: str, worker: Worker) -> Iterator[Any]:
    app = create_app(broker_url=leveret.url("amqp"), result_backend=backend_url)
    yield app
    close_app(app)


def test_chord(client: Any) -> None:
    add, xsum = client.tasks["e2e.add"], client.tasks["e2e.xsum"]
    result = chord(add.s(i, i) for i in range(10))(xsum.s())
    assert result.get(timeout=RESULT_TIMEOUT) == 90


def test_group_chained_to_a_task_becomes_a_chord(client: Any) -> None:
    add, mul, xsum = client.tasks["e2e.add"], client.tasks["e2e.mul"], client.tasks["e2e.xsum"]
    workflow = chain(add.s(1, 1), group(mul.s(i) for i in range(1, 5)), xsum.s())
    assert workflow.apply_async().get(timeout=RESULT_TIMEOUT) == 2 * (1 + 2 + 3 + 4)


def test_group_and_chain_on_the_database_backend(client: Any) -> None:
    add, mul = client.tasks["e2e.add"], client.tasks["e2e.mul"]
    assert group(add.s(i, 1) for i in range(5)).apply_async().get(
        timeout=RESULT_TIMEOUT) == [1, 2, 3, 4, 5]
    assert chain(add.s(3, 4), mul.s(6)).apply_async().get(timeout=RESULT_TIMEOUT) == 42
