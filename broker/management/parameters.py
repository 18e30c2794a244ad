"""Runtime parameters (dynamic shovels) over HTTP: RabbitMQ's ``/api/parameters/shovel/...``
and the shovel plugin's ``/api/shovels`` status list."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from leveret.broker.administration import DefinitionError
from leveret.broker.management.api import bad_request, broker_of, not_found, reply, viewer_of
from leveret.broker.management.auth import not_authorised
from leveret.broker.management.changes import NO_CONTENT, body_of, created, durable, store_mark

routes = web.RouteTableDef()


def _may_change(request: web.Request) -> None:
    """RabbitMQ: parameters are for ``policymaker`` (and ``administrator``) users."""
    viewer = viewer_of(request)
    if not (viewer.is_admin or "policymaker" in viewer.user.tags):
        raise not_authorised("Not policymaker user", challenge=False)


def _visible(request: web.Request, component: str | None = None,
             vhost: str | None = None) -> list[dict[str, Any]]:
    viewer = viewer_of(request)
    return [p for p in broker_of(request).admin.parameters()
            if viewer.sees_vhost(p["vhost"]) and (component is None or p["component"] == component)
            and (vhost is None or p["vhost"] == vhost)]


@routes.get("/api/parameters")
async def parameters(request: web.Request) -> web.Response:
    _may_change(request)
    return reply(_visible(request))


@routes.get("/api/parameters/{component}")
async def component_parameters(request: web.Request) -> web.Response:
    _may_change(request)
    return reply(_visible(request, request.match_info["component"]))


@routes.get("/api/parameters/{component}/{vhost}")
async def vhost_parameters(request: web.Request) -> web.Response:
    _may_change(request)
    viewer_of(request).require_vhost(request.match_info["vhost"])
    return reply(_visible(request, request.match_info["component"],
                          request.match_info["vhost"]))


@routes.get("/api/parameters/{component}/{vhost}/{name}")
async def parameter(request: web.Request) -> web.Response:
    _may_change(request)
    viewer_of(request).require_vhost(request.match_info["vhost"])
    for found in _visible(request, request.match_info["component"],
                          request.match_info["vhost"]):
        if found["name"] == request.match_info["name"]:
            return reply(found)
    raise not_found()


@routes.put("/api/parameters/{component}/{vhost}/{name}")
async def put_parameter(request: web.Request) -> web.Response:
    _may_change(request)
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    viewer_of(request).require_vhost(vhost)
    body = await body_of(request)
    if "value" not in body:
        raise bad_request("the body must be an object with a 'value'")
    broker = broker_of(request)
    existed = any(p["name"] == name for p in _visible(request, None, vhost))
    mark = store_mark(broker)
    try:
        broker.admin.set_parameter(request.match_info["component"], vhost, name, body["value"])
    except DefinitionError as error:
        raise bad_request(str(error)) from None
    await durable(broker, mark)
    return created(not existed)


@routes.delete("/api/parameters/{component}/{vhost}/{name}")
async def delete_parameter(request: web.Request) -> web.Response:
    _may_change(request)
    viewer_of(request).require_vhost(request.match_info["vhost"])
    broker = broker_of(request)
    mark = store_mark(broker)
    if not broker.admin.clear_parameter(
            request.match_info["component"], request.match_info["vhost"],
            request.match_info["name"]):
        raise not_found()
    await durable(broker, mark)
    return web.Response(status=NO_CONTENT)


@routes.get("/api/shovels")
async def shovels(request: web.Request) -> web.Response:
    viewer = viewer_of(request)
    return reply([s for s in broker_of(request).shovels.status()
                  if viewer.sees_vhost(s["vhost"])])


@routes.get("/api/shovels/{vhost}")
async def vhost_shovels(request: web.Request) -> web.Response:
    viewer_of(request).require_vhost(request.match_info["vhost"])
    return reply(broker_of(request).shovels.status(request.match_info["vhost"]))
