"""Testing Celery tasks with a real worker and broker, ``task_always_eager`` off.

Needs ``pip install leveret celery pytest``. Celery's own fixtures (``celery_app``,
``celery_worker``) come from its plugin ``celery.contrib.pytest``; ``leveret_celery_config``
points them at the test's vhost.
"""

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

pytest_plugins = ["celery.contrib.pytest"]  # usually in your top-level conftest.py


@pytest.fixture
def celery_config(leveret_celery_config):
    return leveret_celery_config  # broker_url: this test's vhost; result_backend: rpc://


def test_task_on_a_worker(celery_app, celery_worker):
    @celery_app.task
    def add(x, y):
        return x + y

    celery_worker.reload()  # a task defined after the worker started
    assert add.delay(2, 3).get(timeout=10) == 5


app = Celery("shop")  # your own app, e.g. `from shop.celery import app`


@app.task
def total(prices):
    return sum(prices)


def test_own_app_on_a_worker(leveret_celery_config, leveret):
    app.conf.update(leveret_celery_config)
    with start_worker(app, perform_ping_check=False):
        assert total.delay([1, 2, 3]).get(timeout=10) == 6
    assert leveret.queue("celery").messages == 0
