"""The management HTTP API's write side: RabbitMQ 3.10's PUT, POST and DELETE endpoints.

Vhosts, users, permissions and definitions change through ``broker.admin`` (administrators
only), exchanges, queues and bindings through the vhost with the user's AMQP permissions
(``Authorizer``), so a change made here is the change an AMQP client would make, durable in
the same way. Each answer waits until the store has the change on disk, as a ``declare-ok``
does. AMQP errors become RabbitMQ's HTTP answers: 403 → 401 "Access refused.", 404 → 404,
others (406 inequivalent arguments, 405 locked) → 400 with the error's text.

Messages (publish, get, the aliveness test) are in ``broker/management/messages.py``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from leveret.broker.access import SHA256, Authorizer
from leveret.broker.administration import FULL_ACCESS, NO_EQUIVALENT, DefinitionError
from leveret.broker.exchange import BUILTIN_TYPES, DELAYED_TYPE
from leveret.broker.management import views
from leveret.broker.management.api import broker_of, dumps, find_exchange, not_found, viewer_of
from leveret.broker.management.auth import not_authorised
from leveret.protocol import constants as c
from leveret.protocol import errors

if TYPE_CHECKING:
    from leveret.broker.server import Broker
    from leveret.broker.vhost import VirtualHost

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

DURABLE_WAIT = 30.0  # seconds an answer waits for the store before it reports a failure
FORCED_BY_API = "Closed via management plugin"  # RabbitMQ 3.10.8's default reason


# -- answers --------------------------------------------------------------------------------------
def bad_request(reason: Any) -> web.HTTPException:
    return json_error(web.HTTPBadRequest, "bad_request", reason)


def json_error(cls: type[web.HTTPException], kind: str, reason: Any) -> web.HTTPException:
    """An HTTP error with RabbitMQ's body ``{"error": kind, "reason": reason}``."""
    return cls(text=dumps({"error": kind, "reason": reason}),
               content_type="application/json")


def refused(error_: errors.AMQPError) -> web.HTTPException:
    """RabbitMQ 3.10.8's answer to an AMQP error of a declare, delete, bind or purge."""
    if error_.reply_code == c.ACCESS_REFUSED:
        return not_authorised("Access refused.", challenge=False)
    if error_.reply_code == c.NOT_FOUND:
        return json_error(web.HTTPNotFound, "not_found", error_.detail)
    return bad_request(error_.detail)


def vhost_not_found() -> web.HTTPException:
    return json_error(web.HTTPNotFound, "not_found", "vhost_not_found")


def created(was_new: bool) -> web.Response:
    return web.Response(status=201 if was_new else 204)


NO_CONTENT = 204


async def durable(broker: Broker, mark: int) -> None:
    """Wait until what was written to the store since ``mark`` is on disk."""
    store = broker.store
    if store is None or store.issued == mark or store.issued <= store.durable:
        return
    done = asyncio.get_running_loop().create_future()
    store.when_durable(store.issued, lambda: done.done() or done.set_result(None))
    try:
        await asyncio.wait_for(done, DURABLE_WAIT)
    except TimeoutError:
        raise json_error(web.HTTPInternalServerError, "internal_error",
                          "the change was made but the store has not written it yet"
                          ) from None


def store_mark(broker: Broker) -> int:
    return broker.store.issued if broker.store is not None else 0


# -- the request ----------------------------------------------------------------------------------
async def body_of(request: web.Request, not_json: str = "not_json") -> dict[str, Any]:
    """The JSON object sent; an empty body is ``{}``; anything else 400 ``not_json``."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request(not_json) from None
    if not isinstance(data, dict):
        raise bad_request(not_json)
    return data


def require_keys(data: dict[str, Any], *keys: str) -> None:
    """RabbitMQ's 400 for missing keys: ``[{key_missing,write},{key_missing,read}]``."""
    missing = [key for key in keys if key not in data]
    if missing:
        raise bad_request("[" + ",".join(f"{{key_missing,{key}}}" for key in missing) + "]")


def flag(data: dict[str, Any], key: str, default: bool = False) -> bool:
    """A boolean field: JSON true/false or the strings "true"/"false", as RabbitMQ takes."""
    value = data.get(key, default)
    if value is True or value == "true":
        return True
    if value is False or value == "false":
        return False
    raise bad_request(["not_boolean", value])


def table(data: dict[str, Any], key: str = "arguments") -> dict[str, Any]:
    """A JSON object field; missing, null or ``[]`` (as RabbitMQ's UI sends none) is {}."""
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise bad_request(f"{key} must be a JSON object")
    return value


def query_flag(request: web.Request, name: str) -> bool:
    return request.query.get(name) == "true"


def writable_vhost(request: web.Request) -> VirtualHost:
    """The path's vhost for a change: 404 vhost_not_found, or 401 when the user has no
    permissions there (RabbitMQ's order)."""
    name = request.match_info["vhost"]
    vhost = broker_of(request).vhosts.get(name)
    if vhost is None:
        raise vhost_not_found()
    _check_vhost_access(request, name)
    return vhost


def existing_vhost(request: web.Request) -> VirtualHost:
    """The path's vhost for a deletion or an action: 404 Object Not Found when missing."""
    name = request.match_info["vhost"]
    vhost = broker_of(request).vhosts.get(name)
    if vhost is None:
        raise not_found()
    _check_vhost_access(request, name)
    return vhost


def _check_vhost_access(request: web.Request, vhost: str) -> None:
    viewer = viewer_of(request)
    if not broker_of(request).admin.access.may_open(viewer.name, vhost):
        raise not_authorised("User not authorised to access virtual host", challenge=False)


def authorizer(request: web.Request, vhost: VirtualHost) -> Authorizer:
    """The user's AMQP permission checks on ``vhost``, as a connection of theirs has."""
    return Authorizer(broker_of(request).admin.access, viewer_of(request).name, vhost.name)


# -- vhosts ---------------------------------------------------------------------------------------
@routes.put("/api/vhosts/{vhost}")
async def put_vhost(request: web.Request) -> web.Response:
    """Create a vhost; RabbitMQ 3.10.8 gives its creator full permissions on it. The
    description, tags and tracing fields are accepted and not kept."""
    viewer = viewer_of(request)
    viewer.require_admin()
    await body_of(request)
    broker = broker_of(request)
    name = request.match_info["vhost"]
    mark = store_mark(broker)
    try:
        new = broker.admin.add_vhost(name)
        if new:
            broker.admin.set_permissions(viewer.name, name, *FULL_ACCESS)
    except DefinitionError as problem:
        raise bad_request(str(problem)) from None
    await durable(broker, mark)
    return created(new)


@routes.delete("/api/vhosts/{vhost}")
async def delete_vhost(request: web.Request) -> web.Response:
    viewer_of(request).require_admin()
    broker = broker_of(request)
    mark = store_mark(broker)
    if not broker.admin.delete_vhost(request.match_info["vhost"]):
        raise not_found()
    await durable(broker, mark)
    return web.Response(status=NO_CONTENT)


# -- users ----------------------------------------------------------------------------------------
def parse_tags(value: Any) -> tuple[str, ...]:
    """Tags as "a,b" (RabbitMQ's UI and rabbitmqadmin) or a list; spaces around are dropped."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise bad_request(["invalid_tags", value])
    return tuple(tag.strip() for tag in value if tag.strip())


@routes.put("/api/users/{user}")
async def put_user(request: web.Request) -> web.Response:
    """Add or replace a user. As RabbitMQ 3.10.8: ``tags`` is required, a password or a
    password hash (base64) but not both; with neither the user cannot log in with one."""
    viewer_of(request).require_admin()
    data = await body_of(request)
    if "tags" not in data:
        raise bad_request("tags_not_present")
    tags = parse_tags(data["tags"])
    password, password_hash = data.get("password"), data.get("password_hash")
    if password is not None and password_hash is not None:
        raise bad_request("both_password_and_password_hash_are_provided")
    if password is not None and not isinstance(password, str):
        raise bad_request(["not_a_string", "password"])
    if password_hash is not None and not _is_base64(password_hash):
        raise bad_request(["not_base64", password_hash])
    algorithm = data.get("hashing_algorithm") or SHA256
    if not isinstance(algorithm, str):
        raise bad_request(["not_a_string", "hashing_algorithm"])
    broker = broker_of(request)
    name = request.match_info["user"]
    new = name not in broker.admin.access.users
    mark = store_mark(broker)
    try:
        broker.admin.put_user(name, password=password, password_hash=password_hash,
                              hashing_algorithm=algorithm, tags=tags)
    except DefinitionError as problem:
        raise bad_request(str(problem)) from None
    await durable(broker, mark)
    return created(new)


def _is_base64(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


@routes.delete("/api/users/{user}")
async def delete_user(request: web.Request) -> web.Response:
    viewer_of(request).require_admin()
    broker = broker_of(request)
    mark = store_mark(broker)
    if not broker.admin.delete_user(request.match_info["user"]):
        raise not_found()
    await durable(broker, mark)
    return web.Response(status=NO_CONTENT)


# -- permissions ----------------------------------------------------------------------------------
@routes.put("/api/permissions/{vhost}/{user}")
async def put_permissions(request: web.Request) -> web.Response:
    viewer_of(request).require_admin()
    data = await body_of(request)
    broker = broker_of(request)
    user, vhost = request.match_info["user"], request.match_info["vhost"]
    if user not in broker.admin.access.users or vhost not in broker.vhosts:
        raise bad_request("vhost_or_user_not_found")
    require_keys(data, "configure", "write", "read")
    patterns = [data[key] for key in ("configure", "write", "read")]
    if not all(isinstance(pattern, str) for pattern in patterns):
        raise bad_request("configure, write and read must be strings")
    new = (user, vhost) not in broker.admin.access.permissions
    mark = store_mark(broker)
    try:
        broker.admin.set_permissions(user, vhost, *patterns)
    except DefinitionError as problem:
        raise bad_request(str(problem)) from None
    await durable(broker, mark)
    return created(new)


@routes.delete("/api/permissions/{vhost}/{user}")
async def delete_permissions(request: web.Request) -> web.Response:
    viewer_of(request).require_admin()
    broker = broker_of(request)
    mark = store_mark(broker)
    if not broker.admin.clear_permissions(request.match_info["user"],
                                          request.match_info["vhost"]):
        raise not_found()
    await durable(broker, mark)
    return web.Response(status=NO_CONTENT)


# -- exchanges ------------------------------------------------------------------------------------
@routes.put("/api/exchanges/{vhost}/{name}")
async def put_exchange(request: web.Request) -> web.Response:
    """Declare an exchange. RabbitMQ 3.10.8's defaults here: type direct, *not* durable."""
    vhost = writable_vhost(request)
    data = await body_of(request)
    name = request.match_info["name"]
    type_ = data.get("type") or "direct"
    if type_ not in BUILTIN_TYPES and type_ != DELAYED_TYPE:
        raise bad_request(f"unknown exchange type '{type_}'")
    durable_, auto_delete = flag(data, "durable"), flag(data, "auto_delete")
    internal, arguments = flag(data, "internal"), table(data)
    if name == "amq.default":
        raise not_authorised("Access refused.", challenge=False)
    broker = broker_of(request)
    new = name not in vhost.exchanges
    mark = store_mark(broker)
    try:
        vhost.declare_exchange(name, type_, passive=False, durable=durable_,
                               auto_delete=auto_delete, internal=internal,
                               arguments=arguments, authz=authorizer(request, vhost))
    except errors.AMQPError as problem:
        raise refused(problem) from None
    await durable(broker, mark)
    return created(new)


@routes.delete("/api/exchanges/{vhost}/{name}")
async def delete_exchange(request: web.Request) -> web.Response:
    existing_vhost(request)
    vhost, exchange = find_exchange(request)
    broker = broker_of(request)
    mark = store_mark(broker)
    try:
        vhost.delete_exchange(exchange.name, query_flag(request, "if-unused"),
                              authz=authorizer(request, vhost))
    except errors.AMQPError as problem:
        raise refused(problem) from None
    await durable(broker, mark)
    return web.Response(status=NO_CONTENT)


# -- queues ---------------------------------------------------------------------------------------
@routes.put("/api/queues/{vhost}/{name}")
async def put_queue(request: web.Request) -> web.Response:
    """Declare a queue (``x-queue-type`` among the arguments). RabbitMQ 3.10.8's defaults
    here: *not* durable; ``exclusive`` is ignored (an HTTP request owns no connection)."""
    vhost = writable_vhost(request)
    data = await body_of(request)
    name = request.match_info["name"]
    durable_, auto_delete, arguments = flag(data, "durable"), flag(data, "auto_delete"), table(
        data)
    broker = broker_of(request)
    new = name not in vhost.queues
    mark = store_mark(broker)
    try:
        vhost.declare_queue(name, None, passive=False, durable=durable_,  # type: ignore[arg-type]
                            exclusive=False, auto_delete=auto_delete, arguments=arguments,
                            authz=authorizer(request, vhost))
    except errors.AMQPError as problem:
        raise refused(problem) from None
    await durable(broker, mark)
    return created(new)


def _queue_for_change(request: web.Request) -> Any:
    vhost = existing_vhost(request)
    queue = vhost.queues.get(request.match_info["name"])
    if queue is None:
        raise not_found()
    return vhost, queue


@routes.delete("/api/queues/{vhost}/{name}")
async def delete_queue(request: web.Request) -> web.Response:
    vhost, queue = _queue_for_change(request)
    broker = broker_of(request)
    mark = store_mark(broker)
    where = f"queue '{queue.name}' in vhost '{vhost.name}'"
    try:
        authorizer(request, vhost).configure("queue", queue.name)
        vhost.check_exclusive(queue, None)
        if query_flag(request, "if-unused") and queue.consumers:
            raise errors.PreconditionFailed(f"{where} in use")
        if query_flag(request, "if-empty") and queue.message_count:
            raise errors.PreconditionFailed(f"{where} not empty")
    except errors.AMQPError as problem:
        raise refused(problem) from None
    vhost.delete_queue(queue)
    await durable(broker, mark)
    return web.Response(status=NO_CONTENT)


@routes.delete("/api/queues/{vhost}/{name}/contents")
async def purge_queue(request: web.Request) -> web.Response:
    vhost, queue = _queue_for_change(request)
    broker = broker_of(request)
    mark = store_mark(broker)
    try:
        authorizer(request, vhost).read("queue", queue.name)
        vhost.check_exclusive(queue, None)
    except errors.AMQPError as problem:
        raise refused(problem) from None
    queue.purge()
    await durable(broker, mark)
    return web.Response(status=NO_CONTENT)


# -- bindings -------------------------------------------------------------------------------------
def _binding_ends(request: web.Request, kind: str) -> tuple[VirtualHost, Any, Any]:
    """(vhost, source, destination) of a new binding, with RabbitMQ's checks in order:
    permissions (write on the destination, read on the source), then existence."""
    vhost = writable_vhost(request)
    source_name = request.match_info["source"]
    source_name = "" if source_name == "amq.default" else source_name
    dest_name = request.match_info["destination"]
    try:
        authorizer(request, vhost).check_binding(source_name, kind, dest_name)
        source = vhost.get_exchange(source_name)
        dest = (vhost.get_queue(dest_name, None) if kind == "queue"
                else vhost.get_exchange(dest_name))
    except errors.AMQPError as problem:
        raise refused(problem) from None
    return vhost, source, dest


async def _bind(request: web.Request, kind: str) -> web.Response:
    vhost, source, dest = _binding_ends(request, kind)
    data = await body_of(request)
    key = data.get("routing_key", "")
    if not isinstance(key, str):  # RabbitMQ 3.10.8 keeps a number as a number: text here
        key = json.dumps(key)
    arguments = table(data)
    broker = broker_of(request)
    mark = store_mark(broker)
    try:
        vhost.bind(source, dest, key, arguments)
    except errors.AMQPError as problem:
        raise refused(problem) from None
    await durable(broker, mark)
    # RabbitMQ answers with a Location relative to the bindings URL: "<dest>/<props>",
    # the properties key quoted once more (a.# is a.%23 in lists, a.%2523 here)
    location = f"{quote(dest.name, safe='')}/{quote(views.properties_key(key, arguments), safe='')}"
    return web.Response(status=201, headers={"Location": location})


@routes.post("/api/bindings/{vhost}/e/{source}/q/{destination}")
async def bind_queue(request: web.Request) -> web.Response:
    return await _bind(request, "queue")


@routes.post("/api/bindings/{vhost}/e/{source}/e/{destination}")
async def bind_exchange(request: web.Request) -> web.Response:
    return await _bind(request, "exchange")


@routes.delete("/api/bindings/{vhost}/e/{source}/{kind:[qe]}/{destination}/{props}")
async def unbind(request: web.Request) -> web.Response:
    """Remove the binding the properties key names: 404 unless it exists, then the
    permissions an AMQP unbind needs."""
    kind = "queue" if request.match_info["kind"] == "q" else "exchange"
    vhost = existing_vhost(request)
    source_name = request.match_info["source"]
    source = vhost.exchanges.get("" if source_name == "amq.default" else source_name)
    dest_name = request.match_info["destination"]
    dest = (vhost.queues if kind == "queue" else vhost.exchanges).get(dest_name)
    wanted = request.match_info["props"]
    for (bound, key, _frozen), arguments in list(source.table.bindings.items()
                                                 if source is not None else ()):
        if bound is dest and views.properties_key(key, arguments) == wanted:
            broker = broker_of(request)
            mark = store_mark(broker)
            try:
                authorizer(request, vhost).check_binding(source.name, kind, dest_name)
                vhost.unbind(source, dest, key, arguments)
            except errors.AMQPError as problem:
                raise refused(problem) from None
            await durable(broker, mark)
            return web.Response(status=NO_CONTENT)
    raise not_found()


# -- connections ----------------------------------------------------------------------------------
@routes.delete("/api/connections/{name}")
async def close_connection(request: web.Request) -> web.Response:
    """Close an AMQP connection with 320 CONNECTION_FORCED and the ``X-Reason`` header's
    text (RabbitMQ's default: "Closed via management plugin"). Users close their own
    connections; monitoring and administrator users any."""
    name = request.match_info["name"]
    viewer = viewer_of(request)
    for connection in list(broker_of(request).connections):
        if connection.vhost is None or views.connection_name(connection) != name:
            continue
        if not viewer.sees_connection(connection):
            raise not_authorised("User not authorised to access object", challenge=False)
        reason = request.headers.get("X-Reason") or FORCED_BY_API
        log.info("connection %s closed through the management API by user '%s': %s",
                 name, viewer.name, reason)
        connection.close(c.CONNECTION_FORCED, f"CONNECTION_FORCED - {reason}", 0, 0)
        return web.Response(status=NO_CONTENT)
    raise not_found()


# -- definitions ----------------------------------------------------------------------------------
async def _import(request: web.Request, data: dict[str, Any]) -> web.Response:
    """Apply definitions; what Leveret has no equivalent for (policies, parameters) is
    logged and skipped; anything else that fails is a 400 naming it."""
    broker = broker_of(request)
    mark = store_mark(broker)
    try:
        problems = broker.admin.import_definitions(data)
    except (DefinitionError, KeyError, TypeError, AttributeError) as problem:
        raise bad_request(f"invalid definitions: {problem!r}") from None
    for problem in problems:
        log.warning("definitions imported over HTTP: %s", problem)
    await durable(broker, mark)
    failures = [problem for problem in problems if not problem.endswith(NO_EQUIVALENT)]
    if failures:
        raise bad_request("; ".join(failures))
    return web.Response(status=NO_CONTENT)


@routes.post("/api/definitions")
async def import_definitions(request: web.Request) -> web.Response:
    viewer_of(request).require_admin()
    return await _import(request, await body_of(request, "failed_to_parse_json"))


@routes.post("/api/definitions/{vhost}")
async def import_vhost_definitions(request: web.Request) -> web.Response:
    """One vhost's exchanges, queues, bindings (and policies) into the path's vhost; users,
    vhosts and permissions in the file are ignored, as RabbitMQ ignores them."""
    viewer_of(request).require_admin()
    name = request.match_info["vhost"]
    if name not in broker_of(request).vhosts:
        raise vhost_not_found()
    data = await body_of(request, "failed_to_parse_json")
    kept: dict[str, Any] = {}
    for key in ("exchanges", "queues", "bindings", "policies", "parameters"):
        items = data.get(key) or []
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise bad_request(f"{key} must be a list of objects")
        kept[key] = [{**item, "vhost": name} for item in items]
    return await _import(request, kept)

