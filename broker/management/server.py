"""The management listener: the HTTP API (and the dashboard) on the broker's own event loop.

Served by aiohttp: a well-kept asyncio HTTP server with routing, basic-auth friendly
middleware and streaming, so Leveret carries no HTTP parser of its own. When the port is
taken (a second broker on one host, say) the broker still starts and logs one line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from leveret.broker.management import api, auth, changes, dashboard, messages, parameters

if TYPE_CHECKING:
    from leveret.broker.server import Broker

log = logging.getLogger(__name__)


def application(broker: Broker) -> web.Application:
    """The management app: API routes behind basic auth, and the dashboard at ``/``."""
    app = web.Application(middlewares=[json_errors, auth.middleware(broker)],
                          client_max_size=64 * 1024 * 1024)
    app[api.BROKER] = broker
    app.add_routes(api.routes)
    app.add_routes(changes.routes)
    app.add_routes(messages.routes)
    app.add_routes(parameters.routes)
    dashboard.add_routes(app)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answered as JSON, as RabbitMQ does: aiohttp's own (no such path 404,
    wrong method 405, body too large 413) get RabbitMQ's body; an unexpected exception is
    logged once and answered 500, and the broker goes on."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400 or error.content_type == "application/json":
            raise
        if error.status == 404:
            body = {"error": "Object Not Found", "reason": "Not Found"}
        else:
            body = {"error": error.reason.lower().replace(" ", "_"), "reason": error.text}
        headers = {k: v for k, v in error.headers.items() if k.lower() == "allow"}
        return web.Response(status=error.status, text=api.dumps(body), headers=headers,
                            content_type="application/json")
    except asyncio.CancelledError:  # the client went away
        raise
    except Exception as error:
        log.exception("management API: %s %s failed", request.method, request.path_qs)
        body = {"error": "internal_error", "reason": f"{type(error).__name__}: {error}"}
        return web.Response(status=500, text=api.dumps(body), content_type="application/json")


class HttpListener:
    """One aiohttp application on host:port; ``port`` is None while it is not serving."""

    def __init__(self, app: web.Application, what: str) -> None:
        self.app = app
        self.what = what
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=128)
        try:
            await site.start()
        except OSError as error:
            log.warning("%s not started: cannot listen on %s:%d (%s); the broker runs "
                        "without it", self.what, host, port, error.strerror or error)
            await runner.cleanup()
            return
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("%s serving http://%s:%d", self.what,
                 f"[{host}]" if ":" in host else host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.port = None
