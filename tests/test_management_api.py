"""Leveret's management HTTP API over real HTTP, with state made by real AMQP clients (pika).

Every GET endpoint, every change, users' tags and permissions, the peek (``get`` with
``ack_requeue_true``: nothing taken, nothing flagged redelivered, also for messages restored
from disk), the destructive gets through the normal settle path, publishes through the one
publish path, paging of a few thousand queues, and errors answered as JSON.
``test_management_compat.py`` runs the answers tools read against RabbitMQ 3.10.8 too.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from management_helpers import Api, q
from pamqp import commands

from leveret.broker.embedded import EmbeddedBroker
from leveret.broker.message import Message
from leveret.broker.publish import publish
from leveret.protocol import fastpath
from leveret.protocol.tables import content_header

pytestmark = pytest.mark.timeout(60)

# RabbitMQ 3.10.8's stored form of the password "x" (GET /api/users/<name> there)
RABBIT_HASH_OF_X = "TtGN+cPoIzcAFcyTpgw5hgMJqAEYeBajNe+DfyJdlqt+iJMM"


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(management_port=0) as embedded:
        yield embedded


def api_of(embedded: EmbeddedBroker) -> Api:
    return Api(f"http://127.0.0.1:{embedded.broker.management_port}")


@pytest.fixture
def api(server: EmbeddedBroker) -> Api:
    return api_of(server)


@pytest.fixture
def vhost(api: Api) -> Iterator[str]:
    """A fresh vhost, made through the API (its creator, guest, gets every permission)."""
    name = f"mgmt-{uuid.uuid4().hex[:8]}"
    assert api.put(f"/api/vhosts/{q(name)}").status == 201
    yield name
    api.delete(f"/api/vhosts/{q(name)}")


@pytest.fixture
def user(api: Api) -> Iterator[Any]:
    """``user(tags)``: a fresh user with password "pw" and those tags; deleted afterwards."""
    made: list[str] = []

    def make(tags: str = "management") -> str:
        name = f"u-{uuid.uuid4().hex[:8]}"
        assert api.put(f"/api/users/{name}", {"password": "pw", "tags": tags}).status == 201
        made.append(name)
        return name

    yield make
    for name in made:
        api.delete(f"/api/users/{name}")


def amqp(embedded: EmbeddedBroker, vhost: str, name: str = "", user: str | None = None,
         password: str | None = None) -> pika.BlockingConnection:
    params = pika.URLParameters(embedded.url_for(vhost=vhost, user=user, password=password))
    if name:
        params.client_properties = {"connection_name": name}
    return pika.BlockingConnection(params)


def publish_n(embedded: EmbeddedBroker, vhost: str, queue: str, bodies: list[bytes],
              persistent: bool = False, **declare: Any) -> None:
    connection = amqp(embedded, vhost)
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue, **declare)
    for body in bodies:
        channel.basic_publish("", queue, body, pika.BasicProperties(
            delivery_mode=2 if persistent else None))
    connection.close()


def consume_all(embedded: EmbeddedBroker, vhost: str, queue: str) -> list[tuple[bytes, bool]]:
    """(body, redelivered) of every message, taken over AMQP with basic.get and acked."""
    connection = amqp(embedded, vhost)
    channel = connection.channel()
    out = []
    while True:
        method, _props, body = channel.basic_get(queue)
        if method is None:
            break
        out.append((body, method.redelivered))
        channel.basic_ack(method.delivery_tag)
    connection.close()
    return out


def get(api: Api, vhost: str, queue: str, count: int, ackmode: str = "ack_requeue_true",
        encoding: str = "auto") -> list[dict[str, Any]]:
    return api.ok("POST", f"/api/queues/{q(vhost)}/{q(queue)}/get",
                  {"count": count, "ackmode": ackmode, "encoding": encoding})


# -- every GET endpoint ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene(server: EmbeddedBroker) -> Iterator[dict[str, Any]]:
    """A vhost with a queue, exchanges, bindings and a consuming connection, for the reads."""
    api = api_of(server)
    vhost = f"scene-{uuid.uuid4().hex[:6]}"
    api.ok("PUT", f"/api/vhosts/{vhost}")
    connection = amqp(server, vhost, name="scene-conn")
    channel = connection.channel()
    channel.queue_declare("sq", durable=True, arguments={"x-max-length": 100})
    channel.exchange_declare("sx", "topic")
    channel.exchange_declare("sx2", "fanout")
    channel.queue_bind("sq", "sx", "a.#")
    channel.exchange_bind("sx2", "sx", "b.#")
    channel.confirm_delivery()
    for n in range(3):
        channel.basic_publish("sx", "a.b", b"m%d" % n)
    consumer = connection.channel()
    consumer.basic_qos(prefetch_count=1)
    consumer.basic_consume("sq", lambda *args: None, consumer_tag="scene-ctag")
    connection.process_data_events(0.3)
    found = [c for c in api.ok("GET", "/api/connections")
             if c["client_properties"].get("connection_name") == "scene-conn"]
    conn_name = found[0]["name"]
    yield {"vhost": vhost, "conn": conn_name, "channel": f"{conn_name} (1)"}
    connection.close()
    api.delete(f"/api/vhosts/{vhost}")


def _has(key: str, value: Any) -> Any:
    return lambda data, scene: any(item.get(key) == value.format(**scene) for item in data)


READS: list[tuple[str, Any]] = [
    ("/api/overview", lambda d, s: d["object_totals"]["queues"] >= 1
     and d["rabbitmq_version"] == "3.10.8" and d["queue_totals"]["messages"] >= 3),
    ("/api/nodes", lambda d, s: d[0]["name"] == "leveret@localhost" and d[0]["running"]),
    ("/api/nodes/leveret@localhost", lambda d, s: d["name"] == "leveret@localhost"),
    ("/api/whoami", lambda d, s: d == {"name": "guest", "tags": ["administrator"]}),
    ("/api/extensions", lambda d, s: d == []),
    ("/api/healthchecks/node", lambda d, s: d == {"status": "ok"}),
    ("/api/health/checks/alarms", lambda d, s: d == {"status": "ok"}),
    ("/api/health/checks/local-alarms", lambda d, s: d == {"status": "ok"}),
    ("/api/vhosts", _has("name", "{vhost}")),
    ("/api/vhosts/{vhost}", lambda d, s: d["name"] == s["vhost"] and d["messages"] == 3),
    ("/api/users", _has("name", "guest")),
    ("/api/users/guest", lambda d, s: d["tags"] == ["administrator"]),
    ("/api/permissions", _has("vhost", "{vhost}")),
    ("/api/permissions/{vhost}/guest", lambda d, s: d["configure"] == ".*"),
    ("/api/users/guest/permissions", _has("vhost", "{vhost}")),
    ("/api/vhosts/{vhost}/permissions", lambda d, s: [p["user"] for p in d] == ["guest"]),
    ("/api/connections", _has("name", "{conn}")),
    ("/api/vhosts/{vhost}/connections", lambda d, s: [c["name"] for c in d] == [s["conn"]]),
    ("/api/connections/{conn}", lambda d, s: d["vhost"] == s["vhost"] and d["channels"] == 2),
    ("/api/connections/{conn}/channels", lambda d, s: len(d) == 2),
    ("/api/channels", _has("name", "{channel}")),
    ("/api/vhosts/{vhost}/channels", lambda d, s: len(d) == 2),
    ("/api/channels/{channel}", lambda d, s: d["number"] == 1 and d["confirm"]),
    ("/api/consumers", _has("consumer_tag", "scene-ctag")),
    ("/api/consumers/{vhost}", lambda d, s: d[0]["queue"] == {"name": "sq", "vhost": s["vhost"]}),
    ("/api/exchanges", _has("name", "sx")),
    ("/api/exchanges/{vhost}", lambda d, s: {"", "amq.direct", "sx", "sx2"} <= {
        x["name"] for x in d}),
    ("/api/exchanges/{vhost}/sx", lambda d, s: d["type"] == "topic"
     and d["message_stats"]["publish_in"] == 3),
    ("/api/exchanges/{vhost}/amq.default", lambda d, s: d["name"] == ""),
    ("/api/exchanges/{vhost}/sx/bindings/source", lambda d, s: {
        (b["destination"], b["routing_key"]) for b in d} == {("sq", "a.#"), ("sx2", "b.#")}),
    ("/api/exchanges/{vhost}/sx2/bindings/destination", lambda d, s: d[0]["source"] == "sx"),
    ("/api/queues", _has("name", "sq")),
    ("/api/queues/{vhost}", lambda d, s: [x["name"] for x in d] == ["sq"]),
    ("/api/queues/{vhost}/sq", lambda d, s: d["messages"] == 3 and d["messages_ready"] == 2
     and d["consumer_details"][0]["consumer_tag"] == "scene-ctag"),
    ("/api/queues/{vhost}/sq/bindings", lambda d, s: [b["source"] for b in d] == ["", "sx"]),
    ("/api/bindings", _has("destination", "sx2")),
    ("/api/bindings/{vhost}", lambda d, s: len(d) == 3),
    ("/api/bindings/{vhost}/e/sx/q/sq", lambda d, s: [b["properties_key"] for b in d] == [
        "a.%23"]),
    ("/api/bindings/{vhost}/e/sx/e/sx2", lambda d, s: d[0]["routing_key"] == "b.#"),
    ("/api/bindings/{vhost}/e/sx/q/sq/a.%2523", lambda d, s: d["destination"] == "sq"),
    ("/api/definitions", lambda d, s: any(x["name"] == "sq" for x in d["queues"])),
    ("/api/definitions/{vhost}", lambda d, s: [x["name"] for x in d["queues"]] == ["sq"]),
    ("/api/aliveness-test/{vhost}", lambda d, s: d == {"status": "ok"}),
]


@pytest.mark.parametrize(("path", "check"), READS, ids=[path for path, _ in READS])
def test_every_get_endpoint(api: Api, scene: dict[str, Any], path: str, check: Any) -> None:
    url = path.format(**{k: q(v) for k, v in scene.items()})
    answer = api.get(url)
    assert answer.status == 200, answer.text
    assert answer.header("Content-Type").startswith("application/json")
    assert check(answer.json, scene), answer.text[:2000]


def test_missing_objects_are_404(api: Api, scene: dict[str, Any]) -> None:
    vhost = q(scene["vhost"])
    for path in ("/api/vhosts/nope", "/api/queues/nope", f"/api/queues/{vhost}/nope",
                 f"/api/exchanges/{vhost}/nope", "/api/users/nope", "/api/nodes/nope",
                 "/api/connections/nope", "/api/channels/nope",
                 f"/api/bindings/{vhost}/e/sx/q/nope",
                 "/api/no-such-endpoint", "/no-such-page"):
        answer = api.get(path)
        assert (answer.status, answer.json) == (404, {"error": "Object Not Found",
                                                      "reason": "Not Found"}), path


# -- authentication and tags --------------------------------------------------------------------
def test_login_failures_are_401_with_a_challenge(api: Api) -> None:
    for answer in (api.as_user("guest", "wrong").get("/api/overview"),
                   api.as_user("nobody", "x").get("/api/overview"),
                   api.as_user(None).get("/api/overview"),
                   api.as_user(None).get("/api/overview", headers={"Authorization": "Basic !!!"})):
        assert answer.status == 401
        assert answer.header("WWW-Authenticate") == 'Basic realm="Leveret Management"'
        assert answer.json == {"error": "not_authorized", "reason": "Login failed"}


def test_a_user_without_a_management_tag_cannot_log_in(api: Api, user: Any) -> None:
    name = user("")
    answer = api.as_user(name, "pw").get("/api/overview")
    assert (answer.status, answer.json["reason"]) == (401, "Not management user")
    assert answer.header("WWW-Authenticate") is None


def test_management_users_see_their_vhosts_and_connections_only(
        server: EmbeddedBroker, api: Api, vhost: str, user: Any) -> None:
    name = user("management")
    other = f"{vhost}-other"
    api.ok("PUT", f"/api/vhosts/{other}")
    try:
        api.ok("PUT", f"/api/permissions/{q(vhost)}/{name}",
               {"configure": ".*", "write": ".*", "read": ".*"})
        publish_n(server, vhost, "mine", [b"1"])
        publish_n(server, other, "theirs", [b"2"])
        own = amqp(server, vhost, "own-conn", user=name, password="pw")
        guests = amqp(server, other, "guest-conn")
        me = api.as_user(name, "pw")
        assert [v["name"] for v in me.ok("GET", "/api/vhosts")] == [vhost]
        assert {x["name"] for x in me.ok("GET", "/api/queues")} == {"mine"}
        assert [c["user"] for c in me.ok("GET", "/api/connections")] == [name]
        assert me.get(f"/api/queues/{q(other)}").json == {
            "error": "not_authorised", "reason": "User not authorised to access virtual host"}
        assert me.get("/api/nodes").status == 401
        assert me.get("/api/users").json["reason"] == "Not administrator user"
        assert me.put("/api/users/x", {"password": "x", "tags": ""}).status == 401
        assert me.put(f"/api/vhosts/{vhost}-x").status == 401
        assert me.post("/api/definitions", {}).status == 401
        monitor = user("monitoring")
        seen = api.as_user(monitor, "pw")
        assert {vhost, other} <= {v["name"] for v in seen.ok("GET", "/api/vhosts")}
        assert {"own-conn", "guest-conn"} <= {
            c["client_properties"].get("connection_name")
            for c in seen.ok("GET", "/api/connections")}
        assert seen.get("/api/nodes").status == 200
        assert seen.put("/api/users/x", {"password": "x", "tags": ""}).status == 401
        own.close()
        guests.close()
    finally:
        api.delete(f"/api/vhosts/{other}")


def test_resource_permissions_apply_as_over_amqp(server: EmbeddedBroker, api: Api,
                                                 vhost: str, user: Any) -> None:
    name = user("management")
    api.ok("PUT", f"/api/permissions/{q(vhost)}/{name}",
           {"configure": "^mine", "write": "^mine", "read": "^mine"})
    me, v = api.as_user(name, "pw"), q(vhost)
    assert me.put(f"/api/queues/{v}/mine-q").status == 201
    assert me.put(f"/api/exchanges/{v}/mine-x", {"type": "fanout"}).status == 201
    for answer in (me.put(f"/api/queues/{v}/other-q"),
                   me.put(f"/api/exchanges/{v}/other-x", {"type": "direct"}),
                   me.post(f"/api/bindings/{v}/e/amq.direct/q/mine-q", {"routing_key": "k"})):
        assert (answer.status, answer.json) == (401, {"error": "not_authorised",
                                                      "reason": "Access refused."})
    api.ok("PUT", f"/api/queues/{v}/other-q")
    assert me.delete(f"/api/queues/{v}/other-q").status == 401
    assert me.delete(f"/api/queues/{v}/other-q/contents").status == 401
    answer = me.post(f"/api/queues/{v}/other-q/get",
                     {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert (answer.status, answer.json["reason"]) == (
        401, f"ACCESS_REFUSED - access to queue 'other-q' in vhost '{vhost}' refused for user "
             f"'{name}'")
    answer = me.post(f"/api/exchanges/{v}/amq.default/publish", {
        "properties": {}, "routing_key": "x", "payload": "x", "payload_encoding": "string"})
    assert (answer.status, answer.json["reason"]) == (
        400, f"403 ACCESS_REFUSED - access to exchange 'amq.default' in vhost '{vhost}' "
             f"refused for user '{name}'")
    assert me.post(f"/api/bindings/{v}/e/mine-x/q/mine-q", {"routing_key": "k"}).status == 201
    assert me.get(f"/api/aliveness-test/{v}").status == 401


# -- vhosts, users, permissions -------------------------------------------------------------------
def test_vhost_put_and_delete(server: EmbeddedBroker, api: Api) -> None:
    name = f"v-{uuid.uuid4().hex[:6]}"
    assert api.put(f"/api/vhosts/{name}", {"description": "d", "tags": "a"}).status == 201
    assert api.put(f"/api/vhosts/{name}").status == 204
    assert api.ok("GET", f"/api/permissions/{name}/guest")["configure"] == ".*"
    connection = amqp(server, name)  # guest may use the new vhost at once
    assert api.delete(f"/api/vhosts/{name}").status == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        connection.channel().queue_declare("x")
    assert closed.value.reply_code == 320
    assert api.delete(f"/api/vhosts/{name}").status == 404


def test_user_put_forms_and_delete(api: Api) -> None:
    name = f"u-{uuid.uuid4().hex[:6]}"
    assert api.put(f"/api/users/{name}", {"password": "pw", "tags": "management, monitoring"}
                   ).status == 201
    assert api.ok("GET", f"/api/users/{name}")["tags"] == ["management", "monitoring"]
    assert api.as_user(name, "pw").ok("GET", "/api/whoami")["name"] == name
    assert api.put(f"/api/users/{name}", {"password": "pw2", "tags": ["administrator"]}
                   ).status == 204
    assert api.as_user(name, "pw").get("/api/whoami").status == 401
    assert api.as_user(name, "pw2").ok("GET", "/api/whoami")["tags"] == ["administrator"]
    # RabbitMQ's own export: salted SHA-256 of "guest"
    rabbit_hash = RABBIT_HASH_OF_X
    hashed = {"password_hash": rabbit_hash, "hashing_algorithm":
              "rabbit_password_hashing_sha256", "tags": "management"}
    assert api.put(f"/api/users/{name}", hashed).status == 204
    assert api.ok("GET", f"/api/users/{name}")["password_hash"] == rabbit_hash
    assert api.as_user(name, "x").ok("GET", "/api/whoami")["name"] == name
    assert api.put(f"/api/users/{name}", {"password": "x"}).json["reason"] == "tags_not_present"
    assert api.put(f"/api/users/{name}", {"password": "x", "password_hash": rabbit_hash,
                                          "tags": ""}).status == 400
    assert api.delete(f"/api/users/{name}").status == 204
    assert api.delete(f"/api/users/{name}").status == 404


def test_permissions_put_and_delete(server: EmbeddedBroker, api: Api, vhost: str,
                                    user: Any) -> None:
    name, v = user("management"), q(vhost)
    assert api.put(f"/api/permissions/{v}/{name}",
                   {"configure": "", "write": "", "read": ".*"}).status == 201
    assert api.put(f"/api/permissions/{v}/{name}",
                   {"configure": "", "write": "", "read": "^q"}).status == 204
    assert api.put(f"/api/permissions/{v}/{name}", {"configure": ".*"}).json["reason"] == (
        "[{key_missing,write},{key_missing,read}]")
    assert api.put(f"/api/permissions/{v}/nobody", {"configure": ".*", "write": ".*",
                                                    "read": ".*"}).status == 400
    connection = amqp(server, vhost, user=name, password="pw")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        connection.channel().queue_declare("q1")
    assert refused.value.reply_code == 403
    connection.close()
    assert api.delete(f"/api/permissions/{v}/{name}").status == 204
    assert api.delete(f"/api/permissions/{v}/{name}").status == 404
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        amqp(server, vhost, user=name, password="pw")


# -- exchanges, queues, bindings -----------------------------------------------------------------
def test_exchange_put_and_delete(api: Api, vhost: str) -> None:
    v = q(vhost)
    assert api.put(f"/api/exchanges/{v}/x", {"type": "topic", "durable": True}).status == 201
    assert api.put(f"/api/exchanges/{v}/x", {"type": "topic", "durable": "true"}).status == 204
    assert api.put(f"/api/exchanges/{v}/x", {"type": "direct", "durable": True}).json == {
        "error": "bad_request", "reason": "inequivalent arg 'type' for exchange 'x' in vhost "
        f"'{vhost}': received 'direct' but current is 'topic'"}
    assert api.put(f"/api/exchanges/{v}/y", {"type": "fanout", "auto_delete": True,
                                             "internal": True, "arguments": {"a": 1}}
                   ).status == 201
    shown = api.ok("GET", f"/api/exchanges/{v}/y")
    assert (shown["durable"], shown["auto_delete"], shown["internal"], shown["arguments"]) == (
        False, True, True, {"a": 1})
    assert api.put(f"/api/exchanges/{v}/z", {"type": "nope"}).json["reason"] == (
        "unknown exchange type 'nope'")
    api.ok("PUT", f"/api/queues/{v}/bound")
    api.ok("POST", f"/api/bindings/{v}/e/x/q/bound", {"routing_key": "k"})
    assert api.delete(f"/api/exchanges/{v}/x?if-unused=true").json["reason"] == (
        f"exchange 'x' in vhost '{vhost}' in use")
    assert api.delete(f"/api/exchanges/{v}/x").status == 204
    assert api.delete(f"/api/exchanges/{v}/x").status == 404
    assert api.delete(f"/api/exchanges/{v}/amq.direct").status == 401


def test_queue_put_delete_and_purge(server: EmbeddedBroker, api: Api, vhost: str) -> None:
    v = q(vhost)
    assert api.put(f"/api/queues/{v}/work", {"durable": True, "arguments": {
        "x-max-length": 10}}).status == 201
    assert api.put(f"/api/queues/{v}/work", {"durable": True, "arguments": {
        "x-max-length": 10}}).status == 204
    assert api.put(f"/api/queues/{v}/work", {"durable": False}).json["reason"] == (
        f"inequivalent arg 'durable' for queue 'work' in vhost '{vhost}': received 'false' "
        "but current is 'true'")
    assert api.put(f"/api/queues/{v}/qq", {"durable": True, "arguments": {
        "x-queue-type": "quorum"}}).status == 201
    assert api.ok("GET", f"/api/queues/{v}/qq")["type"] == "quorum"
    assert api.put(f"/api/queues/{v}/bad", {"arguments": {"x-queue-type": "quorum"}}
                   ).json["reason"] == f"invalid property 'non-durable' for queue 'bad' in " \
                                       f"vhost '{vhost}'"
    publish_n(server, vhost, "work", [b"a", b"b"], durable=True,
              arguments={"x-max-length": 10})
    assert api.delete(f"/api/queues/{v}/work?if-empty=true").json["reason"] == (
        f"queue 'work' in vhost '{vhost}' not empty")
    connection = amqp(server, vhost)
    channel = connection.channel()
    channel.basic_consume("qq", lambda *args: None)
    connection.process_data_events(0.1)
    assert api.delete(f"/api/queues/{v}/qq?if-unused=true").json["reason"] == (
        f"queue 'qq' in vhost '{vhost}' in use")
    assert api.delete(f"/api/queues/{v}/work/contents").status == 204
    assert api.ok("GET", f"/api/queues/{v}/work")["messages"] == 0
    assert api.delete(f"/api/queues/{v}/work?if-empty=true").status == 204
    assert api.delete(f"/api/queues/{v}/work").status == 404
    assert api.delete(f"/api/queues/{v}/work/contents").status == 404
    assert api.delete(f"/api/queues/{v}/qq").status == 204
    connection.process_data_events(0.1)  # the consumer was cancelled by the broker
    connection.close()


def test_bindings_post_and_delete(server: EmbeddedBroker, api: Api, vhost: str) -> None:
    v = q(vhost)
    api.ok("PUT", f"/api/exchanges/{v}/src", {"type": "direct"})
    api.ok("PUT", f"/api/exchanges/{v}/dst", {"type": "fanout"})
    api.ok("PUT", f"/api/queues/{v}/q1")
    api.ok("PUT", f"/api/queues/{v}/q2")
    made = api.post(f"/api/bindings/{v}/e/src/q/q1", {"routing_key": "a/b"})
    assert (made.status, made.header("Location")) == (201, "q1/a%252Fb")
    made = api.post(f"/api/bindings/{v}/e/src/q/q1", {"routing_key": "k", "arguments": {"x": 1}})
    props = made.header("Location").split("/", 1)[1]
    assert props.startswith("k~")
    assert api.post(f"/api/bindings/{v}/e/src/e/dst", {"routing_key": "k"}).status == 201
    api.ok("POST", f"/api/bindings/{v}/e/dst/q/q2")
    assert api.post(f"/api/bindings/{v}/e/src/q/nope", {}).json == {
        "error": "not_found", "reason": f"no queue 'nope' in vhost '{vhost}'"}
    routed = api.ok("POST", f"/api/exchanges/{v}/src/publish", {
        "properties": {}, "routing_key": "k", "payload": "hi", "payload_encoding": "string"})
    assert routed == {"routed": True}
    assert [m["payload"] for m in get(api, vhost, "q1", 5)] == ["hi"]
    assert [m["payload"] for m in get(api, vhost, "q2", 5)] == ["hi"]
    listed = api.ok("GET", f"/api/bindings/{v}/e/src/q/q1")
    assert sorted(b["properties_key"] for b in listed) == sorted(["a%2Fb", props])
    assert api.delete(f"/api/bindings/{v}/e/src/q/q1/{props}").status == 204
    assert api.delete(f"/api/bindings/{v}/e/src/q/q1/{props}").status == 404
    assert api.delete(f"/api/bindings/{v}/e/src/q/q1/a%252Fb").status == 204
    assert api.delete(f"/api/bindings/{v}/e/src/e/dst/k").status == 204
    assert api.ok("GET", f"/api/bindings/{v}/e/src/q/q1") == []


# -- connections --------------------------------------------------------------------------------
def _connection_named(api: Api, label: str) -> str:
    return next(c["name"] for c in api.ok("GET", "/api/connections")
                if c["client_properties"].get("connection_name") == label)


def test_delete_connection_closes_it_with_320(server: EmbeddedBroker, api: Api, vhost: str,
                                              user: Any) -> None:
    connection = amqp(server, vhost, "to-close")
    name = _connection_named(api, "to-close")
    assert api.delete(f"/api/connections/{q(name)}").status == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        connection.process_data_events(2)
    assert (closed.value.reply_code, closed.value.reply_text) == (
        320, "CONNECTION_FORCED - Closed via management plugin")
    assert api.delete(f"/api/connections/{q(name)}").status == 404

    connection = amqp(server, vhost, "with-reason")
    name = _connection_named(api, "with-reason")
    someone = user("management")
    api.ok("PUT", f"/api/permissions/{q(vhost)}/{someone}",
           {"configure": ".*", "write": ".*", "read": ".*"})
    assert api.as_user(someone, "pw").delete(f"/api/connections/{q(name)}").json == {
        "error": "not_authorised", "reason": "User not authorised to access object"}
    own = amqp(server, vhost, "own", user=someone, password="pw")
    own_name = _connection_named(api, "own")
    assert api.as_user(someone, "pw").delete(f"/api/connections/{q(own_name)}").status == 204
    monitor = user("monitoring")
    assert api.as_user(monitor, "pw").delete(f"/api/connections/{q(name)}", headers={
        "X-Reason": "maintenance"}).status == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        connection.process_data_events(2)
    assert closed.value.reply_text == "CONNECTION_FORCED - maintenance"
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        own.process_data_events(2)


# -- publish ------------------------------------------------------------------------------------
def test_publish_properties_round_trip_to_an_amqp_consumer(server: EmbeddedBroker, api: Api,
                                                           vhost: str) -> None:
    v = q(vhost)
    api.ok("PUT", f"/api/queues/{v}/in")
    properties = {"content_type": "text/plain", "content_encoding": "gzip",
                  "headers": {"s": "v", "i": 7, "f": 1.5, "b": True, "l": [1, "a"],
                              "t": {"n": 2}, "big": 2**40},
                  "delivery_mode": 2, "priority": 3, "correlation_id": "cid", "reply_to": "rt",
                  "expiration": "60000", "message_id": "mid", "timestamp": 1700000000,
                  "type": "tp", "user_id": "guest", "app_id": "app"}
    assert api.ok("POST", f"/api/exchanges/{v}/amq.default/publish", {
        "properties": properties, "routing_key": "in",
        "payload": base64.b64encode(b"\xff\x00raw").decode(), "payload_encoding": "base64"}
    ) == {"routed": True}
    peeked = get(api, vhost, "in", 1)[0]
    assert peeked["properties"] == properties  # decoded back as sent
    assert (peeked["payload"], peeked["payload_encoding"]) == ("/wByYXc=", "base64")
    connection = amqp(server, vhost)
    _method, props, body = connection.channel().basic_get("in", auto_ack=True)
    connection.close()
    assert body == b"\xff\x00raw"
    assert (props.content_type, props.content_encoding, props.delivery_mode, props.priority,
            props.correlation_id, props.reply_to, props.expiration, props.message_id,
            props.timestamp, props.type, props.user_id, props.app_id) == (
        "text/plain", "gzip", 2, 3, "cid", "rt", "60000", "mid", 1700000000, "tp", "guest",
        "app")
    assert props.headers == {"s": "v", "i": 7, "f": 1,  # pika reads a double as an integer
                             "b": True, "l": [1, "a"], "t": {"n": 2}, "big": 2**40}
    assert api.ok("POST", f"/api/exchanges/{v}/amq.default/publish", {
        "properties": {}, "routing_key": "nowhere", "payload": "", "payload_encoding": "string"}
    ) == {"routed": False}


def test_publish_goes_the_one_publish_path(server: EmbeddedBroker, api: Api,
                                           vhost: str) -> None:
    """CC headers, the alternate exchange and the delayed-message exchange all apply."""
    v = q(vhost)
    for name in ("cc1", "cc2", "lost", "later"):
        api.ok("PUT", f"/api/queues/{v}/{name}")
    api.ok("PUT", f"/api/exchanges/{v}/ae", {"type": "fanout"})
    api.ok("POST", f"/api/bindings/{v}/e/ae/q/lost")
    api.ok("PUT", f"/api/exchanges/{v}/main", {"type": "direct", "arguments": {
        "alternate-exchange": "ae"}})
    api.ok("PUT", f"/api/exchanges/{v}/delay", {"type": "x-delayed-message", "arguments": {
        "x-delayed-type": "direct"}})
    api.ok("POST", f"/api/bindings/{v}/e/delay/q/later", {"routing_key": "later"})

    def send(exchange: str, key: str, properties: dict[str, Any]) -> Any:
        return api.ok("POST", f"/api/exchanges/{v}/{exchange}/publish", {
            "properties": properties, "routing_key": key, "payload": "p",
            "payload_encoding": "string"})

    assert send("amq.default", "cc1", {"headers": {"CC": ["cc2"]}}) == {"routed": True}
    assert send("main", "no-binding", {}) == {"routed": True}  # via the alternate exchange
    assert send("delay", "later", {"headers": {"x-delay": 200}}) == {"routed": True}
    counts = {name: api.ok("GET", f"/api/queues/{v}/{name}")["messages"]
              for name in ("cc1", "cc2", "lost", "later")}
    assert counts == {"cc1": 1, "cc2": 1, "lost": 1, "later": 0}
    deadline = time.monotonic() + 5
    while api.ok("GET", f"/api/queues/{v}/later")["messages"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert api.ok("GET", f"/api/exchanges/{v}/main")["message_stats"]["publish_in"] == 1


def test_publish_refusals(api: Api, vhost: str) -> None:
    v = q(vhost)
    api.ok("PUT", f"/api/exchanges/{v}/inner", {"type": "direct", "internal": True})
    base = {"properties": {}, "routing_key": "k", "payload": "x", "payload_encoding": "string"}
    cases = [
        ("nope", base, f"404 NOT_FOUND - no exchange 'nope' in vhost '{vhost}'"),
        ("inner", base, f"403 ACCESS_REFUSED - cannot publish to internal exchange 'inner' in "
                        f"vhost '{vhost}'"),
        ("amq.direct", {**base, "properties": {"expiration": "soon"}},
         "406 PRECONDITION_FAILED - invalid expiration 'soon': no_integer"),
        ("amq.direct", {**base, "properties": {"user_id": "mallory"}},
         "406 PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user "
         "was 'guest'"),
        ("amq.direct", {**base, "payload_encoding": "rot13"}, ["unsupported_encoding", "rot13"]),
        ("amq.direct", {**base, "properties": {"priority": "high"}}, ["not_int", "priority"]),
        ("amq.direct", {"routing_key": "k", "payload": "x", "payload_encoding": "string"},
         "[{key_missing,properties}]"),
    ]
    for exchange, body, reason in cases:
        answer = api.post(f"/api/exchanges/{v}/{exchange}/publish", body)
        assert (answer.status, answer.json) == (400, {"error": "bad_request",
                                                      "reason": reason}), exchange


# -- get: the peek and the destructive modes ------------------------------------------------------
def test_peek_leaves_messages_in_place_unflagged(server: EmbeddedBroker, api: Api,
                                                 vhost: str) -> None:
    bodies = [b"m%d" % n for n in range(5)]
    publish_n(server, vhost, "jobs", bodies)
    for ackmode in ("ack_requeue_true", "reject_requeue_true"):
        seen = get(api, vhost, "jobs", 3, ackmode)
        assert [m["payload"] for m in seen] == ["m0", "m1", "m2"]
        assert [m["redelivered"] for m in seen] == [False] * 3
        assert [m["message_count"] for m in seen] == [4, 3, 2]
    queue = api.ok("GET", f"/api/queues/{q(vhost)}/jobs")
    assert (queue["messages_ready"], queue["messages_unacknowledged"]) == (5, 0)
    assert consume_all(server, vhost, "jobs") == [(body, False) for body in bodies]


def test_peek_sees_what_a_consumer_returned(server: EmbeddedBroker, api: Api,
                                            vhost: str) -> None:
    publish_n(server, vhost, "back", [b"a", b"b"])
    connection = amqp(server, vhost)
    channel = connection.channel()
    method, _props, _body = channel.basic_get("back")
    assert get(api, vhost, "back", 5)[0]["payload"] == "b"  # "a" is unacknowledged
    channel.basic_nack(method.delivery_tag, requeue=True)
    connection.process_data_events(0.1)
    assert [(m["payload"], m["redelivered"]) for m in get(api, vhost, "back", 5)] == [
        ("a", True), ("b", False)]
    connection.close()


def test_get_encodings_and_truncation(server: EmbeddedBroker, api: Api, vhost: str) -> None:
    publish_n(server, vhost, "enc", ["héllo".encode(), b"\xff\xfe"])
    text, binary = get(api, vhost, "enc", 2)
    assert (text["payload"], text["payload_encoding"], text["payload_bytes"]) == (
        "héllo", "string", 6)
    assert (binary["payload"], binary["payload_encoding"]) == ("//4=", "base64")
    assert get(api, vhost, "enc", 1, encoding="base64")[0]["payload"] == base64.b64encode(
        "héllo".encode()).decode()
    cut = api.ok("POST", f"/api/queues/{q(vhost)}/enc/get", {
        "count": 1, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 2})
    assert (cut[0]["payload"], cut[0]["payload_encoding"], cut[0]["payload_bytes"]) == (
        "aMM=", "base64", 6)  # "h" and half of "é": not UTF-8 any more
    assert cut[0]["properties"] == []  # RabbitMQ 3.10.8 answers [] for no properties


def test_destructive_gets_settle_as_ack_and_reject(server: EmbeddedBroker, api: Api,
                                                   vhost: str) -> None:
    v = q(vhost)
    api.ok("PUT", f"/api/exchanges/{v}/dlx", {"type": "fanout"})
    api.ok("PUT", f"/api/queues/{v}/dead")
    api.ok("POST", f"/api/bindings/{v}/e/dlx/q/dead")
    args = {"x-dead-letter-exchange": "dlx"}
    publish_n(server, vhost, "src", [b"1", b"2", b"3"], arguments=args)
    taken = get(api, vhost, "src", 1, "ack_requeue_false")
    assert [(m["payload"], m["message_count"]) for m in taken] == [("1", 2)]
    taken = get(api, vhost, "src", 5, "reject_requeue_false")
    assert [(m["payload"], m["message_count"]) for m in taken] == [("2", 1), ("3", 0)]
    assert get(api, vhost, "src", 5, "ack_requeue_false") == []
    assert [m["payload"] for m in get(api, vhost, "dead", 5)] == ["2", "3"]  # rejected
    stats = api.ok("GET", f"/api/queues/{v}/src")["message_stats"]
    assert (stats["get"], stats["ack"], stats["get_empty"]) == (3, 1, 1)


def test_get_refusals(api: Api, vhost: str) -> None:
    v = q(vhost)
    api.ok("PUT", f"/api/queues/{v}/g")
    path = f"/api/queues/{v}/g/get"
    body = {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}
    assert api.post(path, {**body, "encoding": "utf8"}).json["reason"] == (
        "Unsupported encoding. Please use auto or base64.")
    assert api.post(path, {**body, "ackmode": "maybe"}).status == 400
    assert api.post(path, {"count": 1}).json["reason"] == (
        "[{key_missing,ackmode},{key_missing,encoding}]")
    assert api.post(f"/api/queues/{v}/nope/get", body).json == {
        "error": "not_found", "reason": f"NOT_FOUND - no queue 'nope' in vhost '{vhost}'"}


def test_peek_reads_spilled_messages_without_loading_them(tmp_path: Path) -> None:
    with EmbeddedBroker(management_port=0, data_dir=tmp_path) as embedded:
        api = api_of(embedded)
        bodies = [b"s%d" % n for n in range(30)]
        publish_n(embedded, "/", "spill", bodies, persistent=True, durable=True)

        def spill() -> tuple[int, int]:
            queue = embedded.broker.vhosts["/"].queues["spill"]
            embedded.broker.store.flush()
            return queue.ready.spill(5, 1 << 20), queue.ready.in_memory

        deadline = time.monotonic() + 5
        while (moved := embedded.call(spill))[0] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert moved == (25, 5)
        seen = get(api, "/", "spill", 30)
        assert [m["payload"].encode() for m in seen] == bodies
        assert embedded.call(lambda: embedded.broker.vhosts["/"].queues["spill"].ready
                             .in_memory) == 5  # nothing was brought back into memory
        assert consume_all(embedded, "/", "spill") == [(body, False) for body in bodies]


def test_peek_after_a_restart_and_destructive_get_is_durable(tmp_path: Path) -> None:
    with EmbeddedBroker(management_port=0, data_dir=tmp_path) as embedded:
        publish_n(embedded, "/", "kept", [b"k0", b"k1", b"k2", b"k3"], persistent=True,
                  durable=True)
        embedded.restart()
        api = api_of(embedded)
        seen = get(api, "/", "kept", 10)
        assert [(m["payload"], m["redelivered"]) for m in seen] == [
            ("k0", False), ("k1", False), ("k2", False), ("k3", False)]
        assert [m["payload"] for m in get(api, "/", "kept", 2, "ack_requeue_false")] == [
            "k0", "k1"]
        embedded.restart()
        api = api_of(embedded)
        assert [m["payload"] for m in get(api, "/", "kept", 10)] == ["k2", "k3"]
        assert consume_all(embedded, "/", "kept") == [(b"k2", False), (b"k3", False)]


def test_changes_made_over_http_survive_a_restart(tmp_path: Path) -> None:
    with EmbeddedBroker(management_port=0, data_dir=tmp_path) as embedded:
        api = api_of(embedded)
        api.ok("PUT", "/api/vhosts/kept")
        api.ok("PUT", "/api/users/keeper", {"password": "pw", "tags": "management"})
        api.ok("PUT", "/api/permissions/kept/keeper", {"configure": "^k", "write": ".*",
                                                       "read": ".*"})
        api.ok("PUT", "/api/exchanges/kept/kx", {"type": "topic", "durable": True})
        api.ok("PUT", "/api/queues/kept/kq", {"durable": True})
        api.ok("POST", "/api/bindings/kept/e/kx/q/kq", {"routing_key": "k.#"})
        api.ok("POST", "/api/exchanges/kept/kx/publish", {
            "properties": {"delivery_mode": 2}, "routing_key": "k.1", "payload": "durable",
            "payload_encoding": "string"})
        embedded.restart()
        api = api_of(embedded)
        assert api.ok("GET", "/api/permissions/kept/keeper")["configure"] == "^k"
        assert api.as_user("keeper", "pw").ok("GET", "/api/whoami")["name"] == "keeper"
        assert [b["routing_key"] for b in api.ok("GET", "/api/bindings/kept/e/kx/q/kq")] == [
            "k.#"]
        assert [m["payload"] for m in get(api, "kept", "kq", 5)] == ["durable"]


# -- definitions and aliveness -------------------------------------------------------------------
def test_definitions_import(api: Api) -> None:
    tag = uuid.uuid4().hex[:6]
    definitions = {
        "vhosts": [{"name": f"imp-{tag}"}],
        "users": [{"name": f"imp-{tag}", "password_hash": RABBIT_HASH_OF_X,
                   "tags": ["management"]}],
        "permissions": [{"user": f"imp-{tag}", "vhost": f"imp-{tag}", "configure": ".*",
                         "write": ".*", "read": ".*"}],
        "exchanges": [{"name": "ix", "vhost": f"imp-{tag}", "type": "fanout", "durable": True}],
        "queues": [{"name": "iq", "vhost": f"imp-{tag}", "durable": True, "arguments": {}}],
        "bindings": [{"source": "ix", "vhost": f"imp-{tag}", "destination": "iq",
                      "destination_type": "queue", "routing_key": "", "arguments": {}}],
        "policies": [{"name": "p", "vhost": f"imp-{tag}", "pattern": ".*",
                      "definition": {"ha-mode": "all"}}],
    }
    try:
        assert api.post("/api/definitions", definitions).status == 204  # policies: skipped
        assert api.as_user(f"imp-{tag}", "x").ok("GET", "/api/whoami")["name"] == (
            f"imp-{tag}")
        assert [b["destination"] for b in api.ok("GET", f"/api/bindings/imp-{tag}/e/ix/q/iq")
                ] == ["iq"]
        answer = api.post("/api/definitions", {"queues": [
            {"name": "lost", "vhost": "no-such-vhost", "durable": True}]})
        assert answer.status == 400 and "no-such-vhost" in answer.json["reason"]
        assert api.post("/api/definitions", raw=b"[1]").json["reason"] == (
            "failed_to_parse_json")
        assert api.post(f"/api/definitions/imp-{tag}", {"queues": [
            {"name": "iq2", "durable": True, "arguments": {}}]}).status == 204
        assert api.ok("GET", f"/api/queues/imp-{tag}/iq2")["vhost"] == f"imp-{tag}"
        assert api.post("/api/definitions/no-such-vhost", {}).status == 404
    finally:
        api.delete(f"/api/vhosts/imp-{tag}")
        api.delete(f"/api/users/imp-{tag}")


def test_aliveness_test(api: Api, vhost: str) -> None:
    assert api.ok("GET", f"/api/aliveness-test/{q(vhost)}") == {"status": "ok"}
    queue = api.ok("GET", f"/api/queues/{q(vhost)}/aliveness-test")
    assert (queue["durable"], queue["messages"]) == (False, 0)
    assert api.get("/api/aliveness-test/no-such-vhost").status == 404


# -- errors ---------------------------------------------------------------------------------------
def test_aiohttp_errors_are_json(api: Api) -> None:
    answer = api.call("PATCH", "/api/queues/%2F/x")
    assert answer.status == 405 and answer.json["error"] == "method_not_allowed"
    answer = api.put("/api/users/u", raw=b"{not json")
    assert answer.json == {"error": "bad_request", "reason": "not_json"}


def test_an_unexpected_exception_is_a_logged_500(server: EmbeddedBroker, api: Api,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from leveret.broker.management import views

    def broken(broker: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(views, "overview_json", broken)
    with caplog.at_level(logging.ERROR):
        answer = api.get("/api/overview")
    assert (answer.status, answer.json) == (500, {"error": "internal_error",
                                                  "reason": "RuntimeError: boom"})
    failures = [r for r in caplog.records if "boom" in str(r.exc_info) or "boom" in r.message]
    assert len(failures) == 1
    monkeypatch.undo()
    assert api.get("/api/overview").status == 200  # the listener and the broker go on


# -- listing many queues --------------------------------------------------------------------------
def test_paging_sorting_and_filtering_thousands_of_queues(server: EmbeddedBroker,
                                                          api: Api, vhost: str) -> None:
    count = 3000

    def fill() -> None:
        found = server.broker.vhosts[vhost]
        header = content_header(1, commands.Basic.Properties())
        for n in range(count):
            queue = found.declare_queue(f"q{n:04d}", None, passive=False, durable=False,
                                        exclusive=False, auto_delete=False, arguments={})
            for _ in range(n % 7):
                publish(found, found.exchanges[""],
                        Message(fastpath.route_raw("", queue.name), header, b"x"))

    server.call(fill)
    v = q(vhost)
    page = api.ok("GET", f"/api/queues/{v}?page=2&page_size=100&sort=messages&sort_reverse=true")
    assert {k: page[k] for k in ("filtered_count", "item_count", "page", "page_count",
                                 "page_size", "total_count")} == {
        "filtered_count": count, "item_count": 100, "page": 2, "page_count": 30,
        "page_size": 100, "total_count": count}
    everything = api.ok("GET", f"/api/queues/{v}")
    assert len(everything) == count
    wanted = ["vhost", "name", "messages", "messages_ready", "messages_unacknowledged",
              "consumers", "durable", "auto_delete", "type", "memory"]
    read_off = api.ok("GET", f"/api/queues/{v}?columns={','.join(wanted)}")  # not rendered
    assert read_off == [{column: item[column] for column in wanted} for item in everything]
    by_messages = sorted(everything, key=lambda x: x["messages"], reverse=True)
    assert [x["messages"] for x in page["items"]] == [
        x["messages"] for x in by_messages[100:200]]
    assert all(x["messages"] == 6 for x in page["items"])
    # a sort key that is not an attribute: every queue rendered first (in chunks)
    by_stat = api.ok("GET", f"/api/queues/{v}?page=1&page_size=3&sort=message_stats.publish"
                            "&sort_reverse=true&columns=name,message_stats.publish")
    assert [x["message_stats"]["publish"] for x in by_stat["items"]] == [6, 6, 6]
    idle = api.ok("GET", f"/api/queues/{v}?page=1&page_size=2&sort=message_stats.publish"
                         "&columns=name,message_stats")
    assert idle["items"] == [{"name": "q0000"}, {"name": "q0007"}]  # no stats: first
    named = api.ok("GET", f"/api/queues/{v}?page=1&page_size=500&name=^q00[0-4]&use_regex=true"
                          "&sort=name")
    assert [x["name"] for x in named["items"]] == [f"q{n:04d}" for n in range(50)]
    assert (named["filtered_count"], named["total_count"]) == (50, count)
    columns = api.ok("GET", f"/api/queues/{v}?columns=name,messages&page=1&page_size=3"
                            "&sort=name")
    assert columns["items"] == [{"name": "q0000", "messages": 0},
                                {"name": "q0001", "messages": 1},
                                {"name": "q0002", "messages": 2}]
    assert api.get(f"/api/queues/{v}?page=31&page_size=100").status == 400
    assert api.get(f"/api/queues/{v}?name=(&use_regex=true").status == 400


def test_properties_keys_are_escaped_as_rabbitmq_does() -> None:
    from leveret.broker.management.views import properties_key

    seen_at_rabbitmq = [("", "~"), ("a b", "a+b"), ("a*b~c", "a%2Ab%7Ec"), ("a+b", "a%2Bb"),
                        ("a.#", "a.%23"), ("a/b", "a%2Fb"), ("~", "%7E"), ("é", "%C3%A9")]
    assert [(key, properties_key(key, {})) for key, _ in seen_at_rabbitmq] == seen_at_rabbitmq
    assert properties_key("a b", {"x": 1}).startswith("a+b~")


def test_quorum_export_and_listeners_and_connection_rates() -> None:
    """Leveret's ?quorum=true export; the Prometheus listener in the overview; byte rates."""
    with EmbeddedBroker(port=0, management_port=0, metrics_port=0) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.queue_declare("plain", durable=True)
        channel.queue_declare("ranked", durable=True, arguments={"x-max-priority": 5})
        api = api_of(broker)
        exported = api.get("/api/definitions?quorum=true").json
        types = {q["name"]: q["arguments"].get("x-queue-type") for q in exported["queues"]}
        assert types == {"plain": "quorum", "ranked": None}
        listeners = api.get("/api/overview").json["listeners"]
        assert {"protocol": "http/prometheus", "port": broker.broker.metrics_port}.items() <= \
            next(item for item in listeners if item["protocol"] == "http/prometheus").items()
        listed = api.get("/api/connections").json[0]
        assert "rate" in listed["recv_oct_details"] and "rate" in listed["send_oct_details"]
        connection.close()
