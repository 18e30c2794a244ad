"""The Prometheus metrics app: ``/metrics`` and ``/metrics/per-object``, as RabbitMQ has them.

A scrape reads the broker's state on its event loop (``BrokerCollector.read``: numbers and
labels, no I/O but a statvfs of the data directory), then builds the metric families and
writes them in a thread: for a per-object scrape that is about nine tenths of the work, and
the loop keeps serving clients meanwhile. The reading goes into a private
``CollectorRegistry`` with prometheus_client's process and platform collectors, and
``prometheus_client`` writes the exposition format: the Prometheus text format, or
OpenMetrics when the scraper's ``Accept`` header asks for it. No login is needed, as with
RabbitMQ's plugin.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from leveret.broker.management.collector import BrokerCollector

if TYPE_CHECKING:
    from leveret.broker.server import Broker

_COLLECTORS = web.AppKey("collectors", dict)
_PROCESS = web.AppKey("process", list)


def registry(*collectors: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


async def _serve(request: web.Request, per_object: bool) -> web.Response:
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    reading = request.app[_COLLECTORS][per_object].read()  # on the loop: broker state
    body = await asyncio.to_thread(encode, registry(reading, *request.app[_PROCESS]))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def totals(request: web.Request) -> web.Response:
    return await _serve(request, per_object=False)


async def per_object(request: web.Request) -> web.Response:
    return await _serve(request, per_object=True)


def application(broker: Broker) -> web.Application:
    """The metrics app: ``/metrics`` (totals) and ``/metrics/per-object``."""
    app = web.Application()
    app[_COLLECTORS] = {False: BrokerCollector(broker, per_object=False),
                        True: BrokerCollector(broker, per_object=True)}
    app[_PROCESS] = [ProcessCollector(registry=None), PlatformCollector(registry=None)]
    app.router.add_get("/metrics", totals)
    app.router.add_get("/metrics/per-object", per_object)
    return app
