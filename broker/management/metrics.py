"""The Prometheus metrics app: ``/metrics`` and ``/metrics/per-object``, as RabbitMQ has them.

Each endpoint has a private ``CollectorRegistry`` holding a ``BrokerCollector`` (totals,
or one series per queue, connection and channel) and prometheus_client's process and
platform collectors; ``prometheus_client`` writes the exposition format, the Prometheus
text format or OpenMetrics as the scraper's ``Accept`` header asks. No login is needed,
as with RabbitMQ's plugin. A scrape runs on the broker's event loop and does no I/O but a
statvfs of the data directory and a read of /proc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from leveret.broker.management.collector import BrokerCollector

if TYPE_CHECKING:
    from leveret.broker.server import Broker

_REGISTRY = web.AppKey("registries", dict)


def registry(broker: Broker, per_object: bool) -> CollectorRegistry:
    """A registry of the broker's metrics (``per_object``: labelled per queue, connection
    and channel) and the process's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(broker, per_object))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


async def _serve(request: web.Request, per_object: bool) -> web.Response:
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(request.app[_REGISTRY][per_object])
    return web.Response(body=body, headers={"Content-Type": content_type})


async def totals(request: web.Request) -> web.Response:
    return await _serve(request, per_object=False)


async def per_object(request: web.Request) -> web.Response:
    return await _serve(request, per_object=True)


def application(broker: Broker) -> web.Application:
    """The metrics app: ``/metrics`` (totals) and ``/metrics/per-object``."""
    app = web.Application()
    app[_REGISTRY] = {False: registry(broker, False), True: registry(broker, True)}
    app.router.add_get("/metrics", totals)
    app.router.add_get("/metrics/per-object", per_object)
    return app
