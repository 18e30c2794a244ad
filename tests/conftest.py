"""Shared fixtures: one Leveret broker per test session, on an ephemeral port.

Set ``LEVERET_TEST_URL`` (e.g. ``amqp://guest:guest@127.0.0.1:5673/%2F``, the broker that
``../shared/tools/rabbitmq-local.sh start`` runs) to run the same tests against another broker,
such as a real RabbitMQ: tests marked ``leveret_only`` are then skipped.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pytest

EXTERNAL_URL = os.environ.get("LEVERET_TEST_URL")

# Leveret's own pytest plugin (installed as a pytest11 entry point of the same name, which
# this does not load twice): the suite's embedded broker is its session broker.
pytest_plugins = ["leveret.pytest_plugin"]


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker under test listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if EXTERNAL_URL:
        skip = pytest.mark.skip(reason="Leveret-only behaviour; LEVERET_TEST_URL points elsewhere")
        marker = "leveret_only"
    else:
        skip = pytest.mark.skip(reason="RabbitMQ behaviour Leveret deliberately differs from")
        marker = "rabbitmq_only"
    for item in items:
        if marker in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def _embedded_broker(request: pytest.FixtureRequest) -> object:
    """The plugin's ``leveret_broker``; not started when LEVERET_TEST_URL is set."""
    return None if EXTERNAL_URL else request.getfixturevalue("leveret_broker")


@pytest.fixture(scope="session")
def broker(_embedded_broker: object) -> BrokerAddress:
    """The broker under test: an embedded Leveret, or the one named by LEVERET_TEST_URL."""
    if EXTERNAL_URL:
        parsed = urlparse(EXTERNAL_URL)
        return BrokerAddress(parsed.hostname or "127.0.0.1", parsed.port or 5672)
    return BrokerAddress("127.0.0.1", _embedded_broker.port)  # type: ignore[attr-defined]


@pytest.fixture
def embedded(_embedded_broker: object) -> object:
    """The embedded Leveret itself (``broker.embedded.EmbeddedBroker``), for Leveret-only tests."""
    if _embedded_broker is None:
        pytest.skip("needs the embedded Leveret broker")
    return _embedded_broker


if EXTERNAL_URL:  # otherwise the plugin's amqp_url: a fresh vhost for each test

    @pytest.fixture
    def amqp_url() -> str:
        return EXTERNAL_URL


@pytest.fixture
def unique() -> str:
    """A fresh name prefix, so tests sharing one broker never collide."""
    return f"t-{uuid.uuid4().hex[:12]}"
