"""Definitions in RabbitMQ's format, both ways, against a real RabbitMQ 3.10.8 (skipped when
none answers on 127.0.0.1:5673 / 15673): Leveret -> RabbitMQ -> Leveret is identical for
everything both support; the quorum export is accepted by RabbitMQ; what Leveret cannot
honour in a RabbitMQ export is listed."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from admin_helpers import RabbitAdmin
from test_shovel import needs_rabbitmq

from leveret.broker.embedded import EmbeddedBroker

pytestmark = needs_rabbitmq

KINDS = ("queues", "exchanges", "bindings")


@pytest.fixture
def rabbit() -> RabbitAdmin:
    return RabbitAdmin()


@pytest.fixture
def names(rabbit: RabbitAdmin) -> Iterator[dict[str, str]]:
    """A vhost and two users of this test's own (removed from RabbitMQ afterwards)."""
    tag = uuid.uuid4().hex[:10]
    made = {"vhost": f"migration-{tag}", "alice": f"alice-{tag}", "bob": f"bob-{tag}"}
    yield made
    rabbit.delete_vhost(made["vhost"])
    rabbit.delete_user(made["alice"])
    rabbit.delete_user(made["bob"])


def _only(definitions: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """The part of a definitions file that is this test's: its vhost and users."""
    vhost, users = names["vhost"], {names["alice"], names["bob"]}
    kept: dict[str, Any] = {
        "users": [u for u in definitions.get("users", []) if u["name"] in users],
        "vhosts": [{"name": v["name"]} for v in definitions.get("vhosts", [])
                   if v["name"] == vhost],
        "permissions": [p for p in definitions.get("permissions", [])
                        if p["vhost"] == vhost and p["user"] in users],
    }
    for kind in (*KINDS, "policies", "parameters"):
        kept[kind] = [item for item in definitions.get(kind, []) if item.get("vhost") == vhost]
    return kept


def _normal(definitions: dict[str, Any]) -> dict[str, Any]:
    """Comparable: lists sorted, tags as sorted lists, RabbitMQ's extra user keys dropped."""
    out = copy.deepcopy(definitions)
    for user in out["users"]:
        tags = user.get("tags") or []
        user["tags"] = sorted(tags.split(",") if isinstance(tags, str) else tags)
        user.pop("limits", None)
    for items in out.values():
        if isinstance(items, list):
            items.sort(key=lambda item: json.dumps(item, sort_keys=True))
    return out


def _build(broker: EmbeddedBroker, names: dict[str, str]) -> None:
    """Users, permissions, exchanges, queues and bindings of many kinds in the test vhost."""
    vhost, alice, bob = names["vhost"], names["alice"], names["bob"]

    def admin() -> None:
        a = broker.broker.admin
        a.add_vhost(vhost)
        a.put_user(alice, password="alice-secret", tags=["management"])
        a.put_user(bob, password="bob-secret", tags=["monitoring", "policymaker"])
        a.set_permissions(alice, vhost, ".*", ".*", ".*")
        a.set_permissions(bob, vhost, "^bob-.*", ".*", "^$")
        a.set_permissions("guest", vhost, ".*", ".*", ".*")

    broker.call(admin)
    connection = pika.BlockingConnection(pika.URLParameters(broker.url_for(vhost=vhost)))
    ch = connection.channel()
    ch.exchange_declare("events", "topic", durable=True)
    ch.exchange_declare("unrouted", "fanout", durable=True)
    ch.exchange_declare("by-headers", "headers", durable=True,
                        arguments={"alternate-exchange": "unrouted"})
    ch.exchange_declare("internal", "direct", durable=True, internal=True)
    ch.queue_declare("tasks", durable=True, arguments={
        "x-message-ttl": 60000, "x-max-length": 1000, "x-overflow": "reject-publish",
        "x-dead-letter-exchange": "events", "x-dead-letter-routing-key": "dead"})
    ch.queue_declare("prio", durable=True, arguments={"x-max-priority": 10})
    ch.queue_declare("single", durable=True, arguments={"x-single-active-consumer": True})
    ch.queue_declare("quorum", durable=True, arguments={"x-queue-type": "quorum",
                                                        "x-delivery-limit": 5})
    ch.queue_declare("lost", durable=True)
    ch.queue_bind("tasks", "events", "task.#")
    ch.queue_bind("lost", "unrouted")
    ch.queue_bind("prio", "by-headers", arguments={"x-match": "any", "kind": "urgent"})
    ch.exchange_bind("internal", "events", "internal.*")
    connection.close()


def test_leveret_to_rabbitmq_and_back_is_identical(rabbit: RabbitAdmin,
                                                   names: dict[str, str]) -> None:
    with EmbeddedBroker(port=0) as first:
        _build(first, names)
        exported = _only(first.call(first.broker.admin.export_definitions), names)
    assert len(exported["queues"]) == 5 and len(exported["exchanges"]) == 4
    assert len(exported["bindings"]) == 4 and len(exported["users"]) == 2
    rabbit._call("POST", "/definitions", exported)  # RabbitMQ accepts Leveret's export
    from_rabbit = _only(rabbit.definitions(), names)
    with EmbeddedBroker(port=0) as second:
        problems = second.call(lambda: second.broker.admin.import_definitions(from_rabbit))
        assert problems == []
        back = _only(second.call(second.broker.admin.export_definitions), names)
        # the passwords came through as RabbitMQ's hashes: both users log in to Leveret
        for user, password in ((names["alice"], "alice-secret"), (names["bob"], "bob-secret")):
            pika.BlockingConnection(pika.URLParameters(second.url_for(
                vhost=names["vhost"], user=user, password=password))).close()
    assert _normal(from_rabbit) == _normal(exported)
    assert _normal(back) == _normal(exported)


def test_the_quorum_export_is_what_a_cluster_takes(rabbit: RabbitAdmin,
                                                   names: dict[str, str]) -> None:
    with EmbeddedBroker(port=0) as leveret:
        _build(leveret, names)
        exported = _only(leveret.call(lambda: leveret.broker.admin.export_definitions(
            quorum=True)), names)
    types = {q["name"]: q["arguments"].get("x-queue-type", "classic")
             for q in exported["queues"]}
    # a priority queue cannot be a quorum queue in RabbitMQ 3.10.8: it stays classic
    assert types == {"tasks": "quorum", "prio": "classic", "single": "quorum",
                     "quorum": "quorum", "lost": "quorum"}
    rabbit._call("POST", "/definitions", exported)
    queues = {q["name"]: q["type"] for q in rabbit._call(
        "GET", f"/queues/{RabbitAdmin._q(names['vhost'])}")}
    assert queues == {"tasks": "quorum", "prio": "classic", "single": "quorum",
                      "quorum": "quorum", "lost": "quorum"}


def test_what_leveret_cannot_honour_is_listed(rabbit: RabbitAdmin,
                                              names: dict[str, str]) -> None:
    vhost = names["vhost"]
    rabbit.add_vhost(vhost)
    rabbit.set_permissions("guest", vhost)
    rabbit._call("PUT", f"/policies/{RabbitAdmin._q(vhost)}/ttl", {
        "pattern": "^tasks$", "definition": {"message-ttl": 1000}, "apply-to": "queues"})
    rabbit._call("PUT", f"/queues/{RabbitAdmin._q(vhost)}/tasks", {"durable": True})
    from_rabbit = _only(rabbit.definitions(), names)
    with EmbeddedBroker(port=0) as leveret:
        problems = leveret.call(lambda: leveret.broker.admin.import_definitions(from_rabbit))
        assert problems == ["1 policies not imported: Leveret has no equivalent"]
        assert leveret.call(lambda: "tasks" in leveret.broker.vhosts[vhost].queues)
