"""Messages over HTTP: RabbitMQ 3.10's publish, get and aliveness-test endpoints.

A publish goes through ``broker/publish.py`` like any AMQP publish (persistence, CC/BCC,
delayed and alternate exchanges apply) and is answered once the store has it on disk, as
RabbitMQ answers after its publisher confirm.

``get`` with ``ack_requeue_true`` or ``reject_requeue_true`` is a *peek* in Leveret: the
messages stay where they are, in order, and are not flagged redelivered (RabbitMQ takes them
and requeues them, flagged). ``ack_requeue_false`` and ``reject_requeue_false`` take them and
settle them as an ack or a reject would (the stored copy is removed; a reject dead-letters).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pamqp import commands

from leveret.broker.management.api import broker_of, reply, viewer_of
from leveret.broker.management.auth import not_authorised
from leveret.broker.management.changes import (
    authorizer,
    bad_request,
    body_of,
    durable,
    existing_vhost,
    json_error,
    require_keys,
    store_mark,
)
from leveret.broker.message import Message, parse_expiration
from leveret.broker.publish import publish
from leveret.protocol import constants as c
from leveret.protocol import errors, fastpath
from leveret.protocol.tables import Double, Timestamp, content_header

if TYPE_CHECKING:
    from leveret.broker.message import Entry
    from leveret.broker.queue import Queue

routes = web.RouteTableDef()

ACKMODES = ("ack_requeue_true", "reject_requeue_true", "ack_requeue_false",
            "reject_requeue_false")
PEEK_MODES = ("ack_requeue_true", "reject_requeue_true")
ALIVENESS_QUEUE = "aliveness-test"

# (JSON key, pamqp attribute) of the basic properties, in the AMQP order
SHORTSTR_PROPERTIES = (("content_type", "content_type"), ("content_encoding", "content_encoding"),
                       ("correlation_id", "correlation_id"), ("reply_to", "reply_to"),
                       ("expiration", "expiration"), ("message_id", "message_id"),
                       ("type", "message_type"), ("user_id", "user_id"), ("app_id", "app_id"),
                       ("cluster_id", "cluster_id"))
OCTET_PROPERTIES = ("delivery_mode", "priority")


# -- AMQP values as JSON and back -----------------------------------------------------------------
def json_value(value: Any) -> Any:
    """A decoded field value as RabbitMQ's API shows it (timestamps in seconds)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {json_value(k) if isinstance(k, bytes) else k: json_value(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


def amqp_value(value: Any) -> Any:
    """A JSON value as a field value (a float stays a double)."""
    if isinstance(value, float):
        return Double(value)
    if isinstance(value, dict):
        return {str(k): amqp_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [amqp_value(v) for v in value]
    return value


def properties_json(properties: commands.Basic.Properties) -> dict[str, Any] | list[Any]:
    """The properties that are set; none at all is ``[]``, as RabbitMQ 3.10.8 answers."""
    out: dict[str, Any] = {}
    for key, attribute in SHORTSTR_PROPERTIES:
        value = getattr(properties, attribute)
        if value is not None and not (key == "cluster_id" and value == ""):
            out[key] = json_value(value)
    for key in OCTET_PROPERTIES:
        if getattr(properties, key) is not None:
            out[key] = getattr(properties, key)
    if properties.timestamp is not None:
        out["timestamp"] = json_value(properties.timestamp)
    if properties.headers is not None:
        out["headers"] = json_value(properties.headers)
    return out or []


def properties_of(data: Any) -> commands.Basic.Properties:
    """Basic properties from RabbitMQ's JSON form; unknown keys are ignored (as there)."""
    if isinstance(data, list) and not data:
        data = {}
    if not isinstance(data, dict):
        raise bad_request(["not_a_json_object", "properties"])
    properties = commands.Basic.Properties()
    for key, attribute in SHORTSTR_PROPERTIES:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise bad_request(["not_string", key])
        if len(value.encode("utf-8")) > 255:
            raise bad_request(["too_long", key])
        setattr(properties, attribute, value)
    for key in (*OCTET_PROPERTIES, "timestamp"):
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (
                key != "timestamp" and value > 255):
            raise bad_request(["not_int", key])
        setattr(properties, key, Timestamp(value) if key == "timestamp" else value)
    headers = data.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            raise bad_request(["not_a_json_object", "headers"])
        properties.headers = amqp_value(headers)
    return properties


def _amqp_failure(problem: errors.AMQPError) -> web.HTTPException:
    """An AMQP error as RabbitMQ 3.10.8's publish endpoint words it: 400 with the code."""
    return bad_request(f"{problem.reply_code} {problem.reply_text}")


# -- publish --------------------------------------------------------------------------------------
@routes.post("/api/exchanges/{vhost}/{name}/publish")
async def publish_message(request: web.Request) -> web.Response:
    vhost = existing_vhost(request)
    data = await body_of(request)
    require_keys(data, "properties", "routing_key", "payload", "payload_encoding")
    routing_key, payload = data["routing_key"], data["payload"]
    if not isinstance(routing_key, str) or len(routing_key.encode("utf-8")) > 255:
        raise bad_request(["invalid_routing_key", routing_key])
    if not isinstance(payload, str):
        raise bad_request(["not_string", "payload"])
    encoding = data["payload_encoding"]
    if encoding == "string":
        body = payload.encode("utf-8")
    elif encoding == "base64":
        try:
            body = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(["not_base64", payload]) from None
    else:
        raise bad_request(["unsupported_encoding", encoding])
    properties = properties_of(data["properties"])
    name = request.match_info["name"]
    name = "" if name == "amq.default" else name
    broker = broker_of(request)
    user = viewer_of(request).name
    mark = store_mark(broker)
    try:
        authorizer(request, vhost).write("exchange", name)
        exchange = vhost.exchanges.get(name)
        if exchange is None:
            raise vhost.no_exchange(name)
        if exchange.internal:
            raise errors.AccessRefused(f"cannot publish to internal exchange '{name}' in "
                                       f"vhost '{vhost.name}'")
        limit = broker.config.max_message_size
        if len(body) > limit:
            raise errors.PreconditionFailed(
                f"message size {len(body)} is larger than configured max size {limit}")
        if properties.user_id is not None and properties.user_id != user:
            raise errors.PreconditionFailed(f"user_id property set to '{properties.user_id}' "
                                            f"but authenticated user was '{user}'")
        ttl = (parse_expiration(properties.expiration) if properties.expiration is not None
               else None)
        message = Message(fastpath.route_raw(name, routing_key),
                          content_header(len(body), properties), body)
        message.ttl = ttl
        routed, refused, _ticket, _queues = publish(vhost, exchange, message)
    except errors.AMQPError as problem:
        raise _amqp_failure(problem) from None
    await durable(broker, mark)
    if refused:  # a queue's x-overflow reject-publish: RabbitMQ 3.10.8's nack answer
        raise bad_request("rejected Unable to publish message. Check queue limits.")
    return reply({"routed": routed})


# -- get --------------------------------------------------------------------------------------
def _count(value: Any, key: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(["not_integer", value if key == "truncate" else key])
    return value


def _text(body: bytes) -> str | None:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def message_json(message: Message, redelivered: bool, remaining: int, encoding: str,
                 truncate: int | None) -> dict[str, Any]:
    """One item of RabbitMQ's get answer; ``auto`` sends valid UTF-8 as a string."""
    body = bytes(message.body if truncate is None else message.body[:truncate])
    payload, payload_encoding = _text(body) if encoding == "auto" else None, "string"
    if payload is None:
        payload, payload_encoding = base64.b64encode(body).decode("ascii"), "base64"
    return {"payload_bytes": len(message.body), "redelivered": redelivered,
            "exchange": message.exchange, "routing_key": message.routing_key,
            "message_count": remaining, "properties": properties_json(message.properties),
            "payload": payload, "payload_encoding": payload_encoding}


def take(queue: Queue, count: int, ack: bool) -> list[tuple[Entry, int]]:
    """Take up to ``count`` ready messages and settle them at once as an ack (``ack``) or a
    reject without requeue would: (entry, messages left after it) for each."""
    taken: list[tuple[Entry, int]] = []
    while len(taken) < count:
        entry = queue.take()
        if entry is None:
            break
        taken.append((entry, queue.message_count))
    stats = queue.stats
    stats.get += len(taken)
    stats.redeliver += sum(1 for entry, _left in taken if entry.redelivered)
    if not taken:
        stats.get_empty += 1
        return taken
    entries = [entry for entry, _left in taken]
    if ack:
        stats.ack += len(entries)
        queue.acked(entries)
    else:
        queue.reject(entries)
    return taken


@routes.post("/api/queues/{vhost}/{name}/get")
async def get_messages(request: web.Request) -> web.Response:
    vhost = existing_vhost(request)
    data = await body_of(request)
    require_keys(data, "count", "ackmode", "encoding")
    count = _count(data["count"], "count")
    ackmode, encoding = data["ackmode"], data["encoding"]
    if ackmode not in ACKMODES:
        raise bad_request(["unsupported_ackmode", ackmode])
    if encoding not in ("auto", "base64"):
        raise bad_request("Unsupported encoding. Please use auto or base64.")
    truncate = data.get("truncate")
    truncate = None if truncate in (None, "") else _count(truncate, "truncate")
    name = request.match_info["name"]
    broker = broker_of(request)
    try:
        authorizer(request, vhost).read("queue", name)
        queue = vhost.get_queue(name, None)
    except errors.AMQPError as problem:  # as RabbitMQ 3.10.8's get words them
        if problem.reply_code == c.ACCESS_REFUSED:
            raise not_authorised(problem.reply_text, challenge=False) from None
        if problem.reply_code == c.NOT_FOUND:
            raise json_error(web.HTTPNotFound, "not_found", problem.reply_text) from None
        raise _amqp_failure(problem) from None
    if count < 1:
        return reply([])
    if ackmode in PEEK_MODES:
        queue.touch()
        ready = queue.message_count
        peeked = queue.peek(count)
        return reply([message_json(message, redelivered, ready - n - 1, encoding, truncate)
                      for n, (message, redelivered) in enumerate(peeked)])
    mark = store_mark(broker)
    taken = take(queue, count, ack=ackmode == "ack_requeue_false")
    answer = [message_json(entry.message, entry.redelivered, left, encoding, truncate)
              for entry, left in taken]
    await durable(broker, mark)
    return reply(answer)


# -- aliveness --------------------------------------------------------------------------------
@routes.get("/api/aliveness-test/{vhost}")
async def aliveness_test(request: web.Request) -> web.Response:
    """RabbitMQ's check: declare queue ``aliveness-test``, publish a message to it through
    the default exchange and get it back."""
    vhost = existing_vhost(request)
    authz = authorizer(request, vhost)
    body = b"test_message"
    try:
        queue = vhost.declare_queue(ALIVENESS_QUEUE, None, passive=False,  # type: ignore[arg-type]
                                    durable=False, exclusive=False, auto_delete=False,
                                    arguments={}, authz=authz)
        authz.write("exchange", "")
        message = Message(fastpath.route_raw("", ALIVENESS_QUEUE),
                          content_header(len(body), commands.Basic.Properties()), body)
        publish(vhost, vhost.exchanges[""], message)
        authz.read("queue", ALIVENESS_QUEUE)
    except errors.AMQPError as problem:
        if problem.reply_code == c.ACCESS_REFUSED:
            raise not_authorised(problem.reply_text, challenge=False) from None
        raise bad_request(problem.reply_text) from None
    if not take(queue, 1, ack=True):
        return reply({"status": "failed", "reason": "the test message did not come back"})
    return reply({"status": "ok"})

