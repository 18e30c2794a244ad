"""HTTP basic auth against the broker's users, and what their tags let them see and do.

RabbitMQ's rules: a user needs the ``management``, ``policymaker``, ``monitoring`` or
``administrator`` tag to use the API at all; ``management`` users see the vhosts they have
permissions on and their own connections; ``monitoring`` users see everything; only
``administrator`` users change users, vhosts and permissions or import definitions.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from leveret.broker.access import User

if TYPE_CHECKING:
    from leveret.broker.connection import Connection
    from leveret.broker.server import Broker

MANAGEMENT_TAGS = frozenset({"management", "policymaker", "monitoring", "administrator"})
log = logging.getLogger(__name__)
REALM = 'Basic realm="Leveret Management"'


def not_authorised(reason: str, challenge: bool = True,
                   error: str = "not_authorised") -> web.HTTPUnauthorized:
    headers = {"WWW-Authenticate": REALM} if challenge else None
    return web.HTTPUnauthorized(text=json.dumps({"error": error, "reason": reason},
                                                     separators=(",", ":")),
                                content_type="application/json", headers=headers)


def login_failed() -> web.HTTPUnauthorized:
    """RabbitMQ 3.10.8 spells this one error "not_authorized" (the others "not_authorised")."""
    return not_authorised("Login failed", error="not_authorized")


@dataclass
class Viewer:
    """The logged-in user of one HTTP request."""

    user: User
    broker: Broker

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def is_admin(self) -> bool:
        return "administrator" in self.user.tags

    @property
    def is_monitor(self) -> bool:
        return self.is_admin or "monitoring" in self.user.tags

    def sees_vhost(self, vhost: str) -> bool:
        return self.is_monitor or self.broker.admin.access.may_open(self.name, vhost)

    def visible_vhosts(self) -> list[str]:
        return [name for name in self.broker.vhosts if self.sees_vhost(name)]

    def sees_connection(self, connection: Connection) -> bool:
        return self.is_monitor or connection.username == self.name

    def require_admin(self) -> None:
        if not self.is_admin:
            raise not_authorised("Not administrator user", challenge=False)

    def require_monitor(self) -> None:
        if not self.is_monitor:
            raise not_authorised("Not monitor user", challenge=False)

    def require_vhost(self, vhost: str) -> None:
        """404 for a vhost that does not exist, 401 for one this user may not see."""
        if vhost not in self.broker.vhosts:
            raise web.HTTPNotFound(text='{"error":"Object Not Found","reason":"Not Found"}',
                                   content_type="application/json")
        if not self.sees_vhost(vhost):
            # RabbitMQ 3.10.8's text names no vhost
            raise not_authorised("User not authorised to access virtual host",
                                 challenge=False)


def credentials(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def middleware(broker: Broker) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Authenticate every ``/api/`` request; the dashboard's files need no login."""

    @web.middleware
    async def authenticate(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        given = credentials(request)
        peer = request.remote or ""
        if given is None:
            raise login_failed()
        user, reason = broker.admin.access.authenticate(given[0], given[1], peer)
        if user is None:
            log.warning("HTTP login refused from %s: %s", peer, reason)
            delay = broker.failed_logins.record(peer, time.monotonic())
            if delay:
                await asyncio.sleep(delay)
            raise login_failed()
        if not MANAGEMENT_TAGS & set(user.tags):
            raise not_authorised("Not management user", challenge=False)
        request["viewer"] = Viewer(user, broker)
        return await handler(request)

    return authenticate
