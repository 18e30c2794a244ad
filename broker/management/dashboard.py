"""The web dashboard: static files at ``/`` and ``/static/``, and the charts' history.

The dashboard is plain HTML, CSS and JavaScript in ``static/`` (no build step, nothing
fetched from elsewhere, so it works offline); it logs in with HTTP basic auth and reads and
changes the broker through the management API, as RabbitMQ's own UI does. The only endpoint
of its own is ``GET /api/leveret/history``: the broker's once-a-second message totals, so
the overview charts show the last minutes at once instead of starting empty.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from leveret.broker import __version__
from leveret.broker.management.api import bad_request, broker_of, reply, viewer_of

STATIC = Path(__file__).parent / "static"
NO_CACHE = {"Cache-Control": "no-cache"}  # a new Leveret version serves new files at once

routes = web.RouteTableDef()


def add_routes(app: web.Application) -> None:
    """Serve the dashboard (no login: its files hold nothing secret) and its history."""
    app.add_routes(routes)
    app.router.add_static("/static/", STATIC, append_version=False)


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    """The page, its scripts named with the version so that an upgrade is never half-cached."""
    page = (STATIC / "index.html").read_text("utf-8").replace("{{version}}", __version__)
    return web.Response(text=page, content_type="text/html", headers=NO_CACHE)


@routes.get("/api/leveret/history")
async def history(request: web.Request) -> web.Response:
    """``{"interval": 1, "samples": [[unix time, {counter: total}], ...]}``, oldest first.

    ``?since=T`` keeps only the samples taken after T (a poll asks for what is new). The
    totals are broker-wide, so only monitoring and administrator users may read them.
    """
    viewer_of(request).require_monitor()
    try:
        since = float(request.query.get("since") or 0)
    except ValueError as error:
        raise bad_request("since must be a number") from error
    history = broker_of(request).statistics.history
    return reply({"interval": 1, "samples": [[moment, counts] for moment, counts in history
                                             if moment > since]})
