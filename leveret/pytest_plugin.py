"""pytest plugin: a real AMQP broker in the test process, a fresh vhost for every test.

Installed with Leveret (the ``pytest11`` entry point), so its fixtures are there in every
test suite of a project that has Leveret installed; with plugin autoloading off, enable it
with ``-p leveret.pytest_plugin``. Fixtures:

- ``amqp_url``: ``amqp://guest:guest@127.0.0.1:<port>/<vhost>``, a vhost of the test's own,
  deleted after the test (its connections are closed, its queues removed).
- ``leveret``: that vhost as a :class:`leveret.testing.Sandbox`: queue counts, peek, restart
  the broker, block publishers, drop or close connections.
- ``leveret_broker``: the session's :class:`~leveret.broker.embedded.EmbeddedBroker`,
  started on first use, in memory (``--leveret-data-dir DIR``: kept in DIR, in
  ``DIR/<worker>`` under pytest-xdist, whose workers each run their own broker).
- ``leveret_broker_settings``: override it (session scope) to configure that broker.
- ``leveret_celery_config``: settings for Celery's ``celery_config`` fixture.

``@pytest.mark.leveret_fresh_broker(**settings)`` gives a test a broker of its own, with
those settings (``persistent=True``: a data directory in the test's ``tmp_path``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported when first used: a test run that uses no broker loads none
    from leveret.broker.embedded import EmbeddedBroker
    from leveret.testing import Sandbox

MARKER = "leveret_fresh_broker"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("leveret", "Leveret embedded AMQP broker")
    group.addoption("--leveret-data-dir", metavar="DIR", default=None,
                    help="persistent mode: the session's broker keeps its data in DIR "
                         "(default: in memory, nothing kept)")
    parser.addini("leveret_data_dir", "data directory of the session's Leveret broker "
                  "(--leveret-data-dir overrides it)", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(persistent=False, **settings): run the test on a Leveret broker "
        "of its own, started for it with these BrokerConfig settings (persistent: with a "
        "data directory in tmp_path)")


@pytest.fixture(scope="session")
def leveret_broker_settings() -> dict[str, Any]:
    """BrokerConfig settings of the session's broker; override to change them."""
    return {}


@pytest.fixture(scope="session")
def leveret_broker(pytestconfig: pytest.Config,
                   leveret_broker_settings: dict[str, Any]) -> Iterator[EmbeddedBroker]:
    """The session's embedded Leveret, on 127.0.0.1 and a free port."""
    from leveret.broker.embedded import EmbeddedBroker

    settings = {"host": "127.0.0.1", "port": 0, **leveret_broker_settings}
    data_dir = pytestconfig.getoption("leveret_data_dir") or pytestconfig.getini(
        "leveret_data_dir")
    if data_dir:
        path = Path(data_dir).expanduser().resolve()
        worker = os.environ.get("PYTEST_XDIST_WORKER")  # each xdist worker: its own broker
        settings["data_dir"] = path / worker if worker else path
    with EmbeddedBroker(**settings) as embedded:
        yield embedded


@pytest.fixture
def _leveret_embedded(request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The broker this test uses: the session's, or its own under the marker."""
    from leveret.broker.embedded import EmbeddedBroker

    marker = request.node.get_closest_marker(MARKER)
    if marker is None:
        yield request.getfixturevalue("leveret_broker")
        return
    settings = {"host": "127.0.0.1", "port": 0, **marker.kwargs}
    if settings.pop("persistent", False) and "data_dir" not in settings:
        settings["data_dir"] = tmp_path_factory.mktemp("leveret-data")
    with EmbeddedBroker(**settings) as embedded:
        yield embedded


@pytest.fixture
def _leveret_sandbox(request: pytest.FixtureRequest, _leveret_embedded: EmbeddedBroker,
                     ) -> Iterator[Sandbox]:
    # The fixtures below build on this name rather than on ``leveret``, so a project's own
    # fixture called ``leveret`` shadows only that one.
    from leveret.testing import Sandbox

    sandbox = Sandbox.create(_leveret_embedded, label=request.node.name)
    yield sandbox
    sandbox.delete()


@pytest.fixture
def leveret(_leveret_sandbox: Sandbox) -> Sandbox:
    """A vhost of the test's own on the embedded broker (deleted after the test), with
    helpers to look inside it and to restart or disturb the broker."""
    return _leveret_sandbox


@pytest.fixture
def amqp_url(_leveret_sandbox: Sandbox) -> str:
    """The URL of the test's own vhost (``amqp://guest:guest@127.0.0.1:<port>/<vhost>``)."""
    return _leveret_sandbox.url


@pytest.fixture
def leveret_celery_config(_leveret_sandbox: Sandbox) -> dict[str, Any]:
    """For Celery's ``celery_config``: the test's vhost as the broker, results over AMQP
    (``rpc://``), tasks run by a worker rather than eagerly.

    Heartbeats are off, as in Celery's own test app: an in-thread worker
    (``celery.contrib.testing.worker.start_worker``) sees its stop flag when its event loop
    wakes, which with heartbeats can take 10 s, start_worker's whole shutdown timeout.
    """
    return {
        "broker_url": _leveret_sandbox.url_for("pyamqp"),
        "result_backend": "rpc://",
        "task_always_eager": False,
        "broker_heartbeat": 0,
    }
