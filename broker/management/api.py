"""The management HTTP API's read side: RabbitMQ 3.10's GET endpoints and JSON shapes.

Each handler runs on the broker's event loop and reads broker state directly; what a user
may see is decided by :class:`~leveret.broker.management.auth.Viewer`. Changes (PUT, POST,
DELETE) are in ``broker/management/changes.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from leveret.broker.management import views
from leveret.broker.management.auth import Viewer
from leveret.broker.management.listing import (
    BadQuery,
    Listing,
    Selection,
    answer,
    column_reader,
    dotted,
    select,
    sorts_by_rendering,
)

if TYPE_CHECKING:
    from leveret.broker.channel import Channel
    from leveret.broker.connection import Connection
    from leveret.broker.consumer import Consumer
    from leveret.broker.queue import Queue
    from leveret.broker.server import Broker
    from leveret.broker.vhost import VirtualHost

routes = web.RouteTableDef()
BROKER: web.AppKey[Broker] = web.AppKey("broker")

NOT_FOUND = '{"error":"Object Not Found","reason":"Not Found"}'


def dumps(data: Any) -> str:
    """JSON without spaces, as RabbitMQ writes it (a 50,000-queue list is 10% smaller)."""
    return json.dumps(data, separators=(",", ":"))


def reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json")


def not_found() -> web.HTTPNotFound:
    return web.HTTPNotFound(text=NOT_FOUND, content_type="application/json")


def bad_request(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=dumps({"error": "bad_request", "reason": reason}),
                              content_type="application/json")


def broker_of(request: web.Request) -> Broker:
    return request.app[BROKER]


def viewer_of(request: web.Request) -> Viewer:
    return request["viewer"]


def vhost_of(request: web.Request) -> VirtualHost:
    """The ``{vhost}`` of the path, checked against what the user may see."""
    name = request.match_info["vhost"]
    viewer_of(request).require_vhost(name)
    return broker_of(request).vhosts[name]


async def listed(request: web.Request, objects: Iterable[Any], how: Listing
                 ) -> web.StreamResponse:
    """A list endpoint's answer. A long list is rendered and written in chunks, the event
    loop serving AMQP clients in between, and no chunk's JSON objects outlive it (50,000
    queues' worth at once would make the garbage collector's passes long)."""
    query = request.query
    objects = list(objects)
    try:
        if sorts_by_rendering(how, query):  # a rate, say: render each once for its value
            how = await _with_rendered_key(objects, how, query["sort"])
        selection = select(objects, how, query)
    except BadQuery as error:
        raise bad_request(str(error)) from error
    read = column_reader(selection, how)
    if read is not None:
        return await _answer(request, selection, selection.items, read, columns_done=True)
    if selection.rendered:
        return await _answer(request, selection, selection.items, lambda chunk: chunk)
    return await _answer(request, selection, selection.items,
                         lambda chunk: [how.render(one) for one in chunk])


CHUNK = 250  # items rendered (or written) between two turns of the event loop (~20 ms)


async def _with_rendered_key(objects: list[Any], how: Listing, sort: str) -> Listing:
    """``how`` with ``sort`` as a key, its values taken from renders made in chunks."""
    values: dict[int, Any] = {}
    for start in range(0, len(objects), CHUNK):
        if start:
            await asyncio.sleep(0)
        for one in objects[start:start + CHUNK]:
            values[id(one)] = dotted(how.render(one), sort)
    return dataclasses.replace(how, keys={**how.keys, sort: lambda one: values[id(one)]})


async def _answer(request: web.Request, selection: Selection, items: list[Any],
                  render: Callable[[list[Any]], list[dict[str, Any]]],
                  columns_done: bool = False) -> web.StreamResponse:
    """A paged answer or a short list at once; a long list streamed a chunk at a time."""
    if selection.page is not None or len(items) <= CHUNK:
        return reply(answer(selection, render(items), columns_done))
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    try:
        for start in range(0, len(items), CHUNK):
            shown = answer(selection, render(items[start:start + CHUNK]), columns_done)
            text = dumps(shown)[1:-1]  # the items, without [ ]
            await response.write(("[" if not start else ",").encode() + text.encode())
            await asyncio.sleep(0)
        await response.write(b"]")
        await response.write_eof()
    except ConnectionResetError:  # the client went away: nothing to answer
        pass
    return response


# -- how each kind is listed ----------------------------------------------------------------------
QUEUES = Listing(
    render=views.queue_json, name=lambda q: q.name,
    keys={"name": lambda q: q.name, "vhost": lambda q: q.vhost.name,
          "messages": lambda q: q.message_count + q.unacked,
          "messages_ready": lambda q: q.message_count,
          "messages_unacknowledged": lambda q: q.unacked,
          "consumers": lambda q: len(q.consumers), "durable": lambda q: q.durable,
          "auto_delete": lambda q: q.auto_delete, "type": views.queue_type,
          "memory": views.queue_memory},
    default_sort=("vhost", "name"),
    shown_as_keys=frozenset({"name", "vhost", "messages", "messages_ready",
                             "messages_unacknowledged", "consumers", "durable", "auto_delete",
                             "type", "memory"}))
EXCHANGES = Listing(
    render=lambda pair: views.exchange_json(*pair), name=lambda pair: pair[1].name,
    keys={"name": lambda pair: pair[1].name, "vhost": lambda pair: pair[0].name,
          "type": lambda pair: pair[1].type, "durable": lambda pair: pair[1].durable},
    default_sort=("vhost", "name"),
    shown_as_keys=frozenset({"name", "vhost", "type", "durable"}))
CONNECTIONS = Listing(
    render=views.connection_json, name=views.connection_name,
    keys={"name": views.connection_name, "user": lambda c: c.username,
          "channels": lambda c: len(c.channels), "recv_oct": lambda c: c.recv_oct,
          "send_oct": lambda c: c.send_oct, "connected_at": lambda c: c.connected_at},
    default_sort=("name",),
    shown_as_keys=frozenset({"name", "user", "channels", "recv_oct", "send_oct"}))
CHANNELS = Listing(
    render=views.channel_json, name=views.channel_name,
    keys={"name": views.channel_name, "number": lambda ch: ch.number,
          "consumer_count": lambda ch: len(ch.consumers),
          "messages_unacknowledged": lambda ch: ch.unacked_count},
    default_sort=("name",),
    shown_as_keys=frozenset({"name", "number", "consumer_count", "messages_unacknowledged"}))
PLAIN = Listing(render=lambda item: item, name=lambda item: str(item.get("name", "")))


def _queues(broker: Broker, vhosts: Iterable[str]) -> Iterator[Queue]:
    for name in vhosts:
        vhost = broker.vhosts.get(name)
        if vhost is not None:
            yield from vhost.queues.values()


def _connections(request: web.Request, vhost: str | None = None) -> list[Connection]:
    viewer = viewer_of(request)
    return [conn for conn in broker_of(request).connections
            if conn.vhost is not None and viewer.sees_connection(conn)
            and (vhost is None or conn.vhost.name == vhost)]


def _channels(request: web.Request, vhost: str | None = None) -> list[Channel]:
    return [channel for conn in _connections(request, vhost)
            for channel in conn.channels.values()]


def _consumers(request: web.Request, vhost: str | None = None) -> list[Consumer]:
    return [consumer for channel in _channels(request, vhost)
            for consumer in channel.consumers.values()]


def find_connection(request: web.Request) -> Connection:
    name = request.match_info["name"]
    for conn in _connections(request):
        if views.connection_name(conn) == name:
            return conn
    raise not_found()


def find_queue(request: web.Request) -> Queue:
    queue = vhost_of(request).queues.get(request.match_info["name"])
    if queue is None:
        raise not_found()
    return queue


# -- the node -------------------------------------------------------------------------------------
@routes.get("/api/overview")
async def overview(request: web.Request) -> web.Response:
    data = views.overview_json(broker_of(request))
    viewer = viewer_of(request)
    if not viewer.is_monitor:  # a management user's totals cover its own vhosts only
        broker = broker_of(request)
        data["queue_totals"] = views.queue_totals(_queues(broker, viewer.visible_vhosts()))
    return reply(data)


@routes.get("/api/nodes")
async def nodes(request: web.Request) -> web.Response:
    viewer_of(request).require_monitor()
    return reply([views.node_json(broker_of(request))])


@routes.get("/api/nodes/{node}")
async def node(request: web.Request) -> web.Response:
    viewer_of(request).require_monitor()
    if request.match_info["node"] != views.NODE:
        raise not_found()
    return reply(views.node_json(broker_of(request)))


@routes.get("/api/whoami")
async def whoami(request: web.Request) -> web.Response:
    user = viewer_of(request).user
    return reply({"name": user.name, "tags": list(user.tags)})


@routes.get("/api/extensions")
async def extensions(request: web.Request) -> web.Response:
    return reply([])


# -- health ---------------------------------------------------------------------------------------
@routes.get("/api/healthchecks/node")
async def healthcheck_node(request: web.Request) -> web.Response:
    alarms = sorted(broker_of(request).alarms)
    if alarms:
        return reply({"status": "failed", "reason": "resource alarm(s) in effect: "
                      + ", ".join(alarms)})
    return reply({"status": "ok"})


# RabbitMQ 3.10's resource names in alarm health checks (rabbit_alarm's format_as_map)
ALARM_RESOURCES = {"low on memory": "memory", "low on disk": "disk space"}


@routes.get("/api/health/checks/alarms")
@routes.get("/api/health/checks/local-alarms")
async def health_alarms(request: web.Request) -> web.Response:
    alarms = sorted(broker_of(request).alarms)
    if alarms:
        reason = ("There are alarms in effect in the cluster"
                  if request.path.endswith("/alarms") else "There are alarms in effect on the node")
        return reply({"status": "failed", "reason": reason,
                      "alarms": [{"node": views.NODE, "resource": ALARM_RESOURCES.get(a, a)}
                                 for a in alarms]}, status=503)
    return reply({"status": "ok"})


# -- vhosts, users, permissions ---------------------------------------------------------------
@routes.get("/api/vhosts")
async def vhosts(request: web.Request) -> web.Response:
    broker = broker_of(request)
    shown = [views.vhost_json(broker, broker.vhosts[name])
             for name in viewer_of(request).visible_vhosts()]
    return await listed(request, shown, PLAIN)


@routes.get("/api/vhosts/{vhost}")
async def vhost(request: web.Request) -> web.Response:
    return reply(views.vhost_json(broker_of(request), vhost_of(request)))


@routes.get("/api/users")
async def users(request: web.Request) -> web.Response:
    viewer_of(request).require_admin()
    access = broker_of(request).admin.access
    return await listed(request, [views.user_json(u) for u in access.users.values()], PLAIN)


@routes.get("/api/users/{user}")
async def user(request: web.Request) -> web.Response:
    viewer_of(request).require_admin()
    found = broker_of(request).admin.access.users.get(request.match_info["user"])
    if found is None:
        raise not_found()
    return reply(views.user_json(found))


def _permissions(request: web.Request, user: str | None = None,
                 vhost: str | None = None) -> list[dict[str, str]]:
    access = broker_of(request).admin.access
    return [{"user": u, "vhost": v, **p.to_json()} for (u, v), p in access.permissions.items()
            if (user is None or u == user) and (vhost is None or v == vhost)]


@routes.get("/api/permissions")
async def permissions(request: web.Request) -> web.Response:
    viewer_of(request).require_admin()
    return reply(_permissions(request))


@routes.get("/api/permissions/{vhost}/{user}")
async def permission(request: web.Request) -> web.Response:
    viewer_of(request).require_admin()
    found = _permissions(request, request.match_info["user"], request.match_info["vhost"])
    if not found:
        raise not_found()
    return reply(found[0])


@routes.get("/api/users/{user}/permissions")
async def user_permissions(request: web.Request) -> web.Response:
    viewer_of(request).require_admin()
    if request.match_info["user"] not in broker_of(request).admin.access.users:
        raise not_found()
    return reply(_permissions(request, user=request.match_info["user"]))


@routes.get("/api/vhosts/{vhost}/permissions")
async def vhost_permissions(request: web.Request) -> web.Response:
    viewer_of(request).require_admin()
    return reply(_permissions(request, vhost=vhost_of(request).name))


# -- connections, channels, consumers ---------------------------------------------------------
@routes.get("/api/connections")
async def connections(request: web.Request) -> web.Response:
    return await listed(request, _connections(request), CONNECTIONS)


@routes.get("/api/vhosts/{vhost}/connections")
async def vhost_connections(request: web.Request) -> web.Response:
    return await listed(request, _connections(request, vhost_of(request).name), CONNECTIONS)


@routes.get("/api/connections/{name}")
async def connection(request: web.Request) -> web.Response:
    return reply(views.connection_json(find_connection(request)))


@routes.get("/api/connections/{name}/channels")
async def connection_channels(request: web.Request) -> web.Response:
    found = find_connection(request)
    return await listed(request, list(found.channels.values()), CHANNELS)


@routes.get("/api/channels")
async def channels(request: web.Request) -> web.Response:
    return await listed(request, _channels(request), CHANNELS)


@routes.get("/api/vhosts/{vhost}/channels")
async def vhost_channels(request: web.Request) -> web.Response:
    return await listed(request, _channels(request, vhost_of(request).name), CHANNELS)


@routes.get("/api/channels/{name}")
async def channel(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    for found in _channels(request):
        if views.channel_name(found) == name:
            return reply(views.channel_json(found))
    raise not_found()


@routes.get("/api/consumers")
async def consumers(request: web.Request) -> web.Response:
    return reply([views.consumer_json(c) for c in _consumers(request)])


@routes.get("/api/consumers/{vhost}")
async def vhost_consumers(request: web.Request) -> web.Response:
    name = vhost_of(request).name
    return reply([views.consumer_json(c) for c in _consumers(request, name)])


# -- exchanges ------------------------------------------------------------------------------------
@routes.get("/api/exchanges")
async def exchanges(request: web.Request) -> web.Response:
    broker = broker_of(request)
    pairs = [(broker.vhosts[name], ex) for name in viewer_of(request).visible_vhosts()
             for ex in broker.vhosts[name].exchanges.values()]
    return await listed(request, pairs, EXCHANGES)


@routes.get("/api/exchanges/{vhost}")
async def vhost_exchanges(request: web.Request) -> web.Response:
    found = vhost_of(request)
    return await listed(request, [(found, ex) for ex in found.exchanges.values()], EXCHANGES)


def find_exchange(request: web.Request) -> tuple[VirtualHost, Any]:
    found = vhost_of(request)
    name = request.match_info["name"]
    exchange = found.exchanges.get("" if name == "amq.default" else name)
    if exchange is None:
        raise not_found()
    return found, exchange


@routes.get("/api/exchanges/{vhost}/{name}")
async def exchange(request: web.Request) -> web.Response:
    data = views.exchange_json(*find_exchange(request))
    data["incoming"] = data["outgoing"] = []  # RabbitMQ 3.10.8's per-link rates (basic mode)
    return reply(data)


@routes.get("/api/exchanges/{vhost}/{name}/bindings/source")
async def exchange_bindings_source(request: web.Request) -> web.Response:
    found, ex = find_exchange(request)
    return reply([b for b in views.vhost_bindings(found) if b["source"] == ex.name])


@routes.get("/api/exchanges/{vhost}/{name}/bindings/destination")
async def exchange_bindings_destination(request: web.Request) -> web.Response:
    found, ex = find_exchange(request)
    return reply([b for b in views.vhost_bindings(found)
                  if b["destination_type"] == "exchange" and b["destination"] == ex.name])


# -- queues ---------------------------------------------------------------------------------------
@routes.get("/api/queues")
async def queues(request: web.Request) -> web.Response:
    broker = broker_of(request)
    return await listed(request, _queues(broker, viewer_of(request).visible_vhosts()), QUEUES)


@routes.get("/api/queues/{vhost}")
async def vhost_queues(request: web.Request) -> web.Response:
    return await listed(request, vhost_of(request).queues.values(), QUEUES)


@routes.get("/api/queues/{vhost}/{name}")
async def queue(request: web.Request) -> web.Response:
    found = find_queue(request)
    data = views.queue_json(found)
    data["consumer_details"] = [views.consumer_json(c) for c in found.consumers]
    data["incoming"] = data["deliveries"] = []
    return reply(data)


@routes.get("/api/queues/{vhost}/{name}/bindings")
async def queue_bindings(request: web.Request) -> web.Response:
    found = find_queue(request)
    return reply([b for b in views.vhost_bindings(found.vhost)
                  if b["destination_type"] == "queue" and b["destination"] == found.name])


# -- bindings -------------------------------------------------------------------------------------
@routes.get("/api/bindings")
async def bindings(request: web.Request) -> web.Response:
    broker = broker_of(request)
    return reply([b for name in viewer_of(request).visible_vhosts()
                  for b in views.vhost_bindings(broker.vhosts[name])])


@routes.get("/api/bindings/{vhost}")
async def vhost_bindings(request: web.Request) -> web.Response:
    return reply(views.vhost_bindings(vhost_of(request)))


def _between(request: web.Request, kind: str) -> list[dict[str, Any]]:
    found = vhost_of(request)
    source, dest = request.match_info["source"], request.match_info["destination"]
    if source not in found.exchanges or (
            dest not in (found.queues if kind == "queue" else found.exchanges)):
        raise not_found()
    return [b for b in views.vhost_bindings(found) if b["source"] == source
            and b["destination"] == dest and b["destination_type"] == kind]


@routes.get("/api/bindings/{vhost}/e/{source}/q/{destination}")
async def bindings_to_queue(request: web.Request) -> web.Response:
    return reply(_between(request, "queue"))


@routes.get("/api/bindings/{vhost}/e/{source}/e/{destination}")
async def bindings_to_exchange(request: web.Request) -> web.Response:
    return reply(_between(request, "exchange"))


@routes.get("/api/bindings/{vhost}/e/{source}/{kind:[qe]}/{destination}/{props}")
async def binding(request: web.Request) -> web.Response:
    kind = "queue" if request.match_info["kind"] == "q" else "exchange"
    for found in _between(request, kind):
        if found["properties_key"] == request.match_info["props"]:
            return reply(found)
    raise not_found()


# -- definitions ----------------------------------------------------------------------------------
@routes.get("/api/definitions")
async def definitions(request: web.Request) -> web.Response:
    viewer_of(request).require_admin()
    # ?quorum=true (Leveret's): classic durable queues as quorum queues, for a cluster
    quorum = request.query.get("quorum") == "true"
    return reply(broker_of(request).admin.export_definitions(quorum=quorum))


@routes.get("/api/definitions/{vhost}")
async def vhost_definitions(request: web.Request) -> web.Response:
    viewer_of(request).require_admin()
    name = vhost_of(request).name
    full = broker_of(request).admin.export_definitions()
    kept = {key: [item for item in full[key] if item.get("vhost") == name]
            for key in ("queues", "exchanges", "bindings", "policies", "parameters")}
    return reply({"rabbit_version": full["rabbit_version"],
                  "rabbitmq_version": full["rabbitmq_version"],
                  "product_name": full["product_name"],
                  "product_version": full["product_version"], **kept})
