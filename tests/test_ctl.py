"""``leveret ctl`` end to end: the real command (``python -m leveret ctl``) over real HTTP,
against RabbitMQ's management API and against Leveret's.

RabbitMQ's is at ``LEVERET_TEST_HTTP_URL`` (default ``http://guest:guest@127.0.0.1:15673``,
what ``../shared/tools/rabbitmq-local.sh`` serves), its AMQP port at ``LEVERET_TEST_URL``
(default ``amqp://guest:guest@127.0.0.1:5673/%2F``); those tests are skipped when it does
not answer. Leveret's is an embedded broker's (``management_port=0``). Queues, messages,
consumers and connections are made over AMQP with pika; what the commands change is checked
over AMQP too. RabbitMQ's API counts messages and consumers from statistics that are up to
5 s old, hence the polling.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPConnectionError, ChannelClosedByBroker, ConnectionClosedByBroker

from leveret.broker.config import BrokerConfig

REPO = Path(__file__).resolve().parent.parent
RABBIT_HTTP = os.environ.get("LEVERET_TEST_HTTP_URL", "http://guest:guest@127.0.0.1:15673")
RABBIT_AMQP = os.environ.get("LEVERET_TEST_URL", "amqp://guest:guest@127.0.0.1:5673/%2F")
HAS_MANAGEMENT = "management_port" in {f.name for f in dataclasses.fields(BrokerConfig)}
# The command's environment: this checkout first, no LEVERET_CTL_* of the caller's.
ENV = {k: v for k, v in os.environ.items() if not k.startswith("LEVERET_CTL_")}
ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


@dataclasses.dataclass(frozen=True)
class Target:
    """A broker with a management API: where to reach both."""

    name: str
    http_url: str  # with guest's credentials in it
    amqp_host: str
    amqp_port: int

    def connect(self, user: str = "guest", password: str = "guest",
                vhost: str = "/", **options: Any) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.ConnectionParameters(
            self.amqp_host, self.amqp_port, vhost, pika.PlainCredentials(user, password),
            connection_attempts=1, **options))

    def can_login(self, user: str, password: str, vhost: str) -> bool:
        try:
            self.connect(user, password, vhost).close()
        except AMQPConnectionError:
            return False
        return True


def _rabbitmq() -> Iterator[Target]:
    parsed = urllib.parse.urlsplit(RABBIT_HTTP)
    probe = urllib.request.Request(
        f"{parsed.scheme}://{parsed.hostname}:{parsed.port}/api/overview",
        headers={"Authorization": "Basic " + base64.b64encode(
            f"{parsed.username}:{parsed.password}".encode()).decode()})
    try:
        urllib.request.urlopen(probe, timeout=5).close()
    except (OSError, urllib.error.URLError) as error:
        pytest.skip(f"no RabbitMQ management API at {RABBIT_HTTP} ({error}); start one with "
                    "../shared/tools/rabbitmq-local.sh start")
    amqp = urllib.parse.urlsplit(RABBIT_AMQP)
    yield Target("rabbitmq", RABBIT_HTTP, amqp.hostname or "127.0.0.1", amqp.port or 5672)


def _leveret(**settings: Any) -> Iterator[Target]:
    if not HAS_MANAGEMENT:
        pytest.skip("Leveret's management API is not on this branch yet")
    from leveret.broker.embedded import EmbeddedBroker

    with EmbeddedBroker(port=0, management_port=0, **settings) as embedded:
        yield Target("leveret", f"http://guest:guest@127.0.0.1:{_management_port(embedded)}",
                     "127.0.0.1", embedded.port)


def _management_port(embedded: Any) -> int:
    port = getattr(embedded, "management_port", None)
    return port if port is not None else embedded.broker.management_port


@pytest.fixture(scope="module", params=["rabbitmq", "leveret"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    yield from _rabbitmq() if request.param == "rabbitmq" else _leveret()


@pytest.fixture
def name() -> str:
    return f"ctl-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def channel(target: Target) -> Iterator[BlockingChannel]:
    connection = target.connect()
    try:
        yield connection.channel()
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def ctl(target: Target | None, *args: str, env: dict[str, str] | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m leveret ctl [--url TARGET] ARGS``."""
    url = ["--url", target.http_url] if target is not None else []
    return subprocess.run([sys.executable, "-m", "leveret", "ctl", *url, *args],
                          capture_output=True, text=True, timeout=60, env=env or ENV,
                          input=stdin, cwd=REPO)


def ok(target: Target | None, *args: str, **kwargs: Any) -> str:
    """Run the command, expect exit status 0, return its standard output."""
    done = ctl(target, *args, **kwargs)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def failed(target: Target | None, *args: str, status: int = 1, **kwargs: Any) -> str:
    """Run the command, expect it to fail with ``status``, return its one line of error."""
    done = ctl(target, *args, **kwargs)
    assert done.returncode == status, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    if status == 1:
        assert done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def as_json(target: Target, *args: str) -> Any:
    return json.loads(ok(target, "--json", *args))


def rows(output: str) -> list[list[str]]:
    """A table's lines split into cells (the tests' values hold no spaces)."""
    return [line.split() for line in output.splitlines()]


def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """``check()`` once it stops raising AssertionError (RabbitMQ's statistics lag)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def by_key(items: list[dict[str, Any]], key: str, value: Any) -> dict[str, Any]:
    found = [item for item in items if item.get(key) == value]
    assert len(found) == 1, (value, items)
    return found[0]


def queue_length(channel: BlockingChannel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


# -- queues, messages, exchanges, bindings ------------------------------------------------

def test_list_queues_shows_messages_and_consumers(target: Target, channel: BlockingChannel,
                                                  name: str) -> None:
    full, watched = f"{name}-full", f"{name}-watched"
    for queue in (full, watched):
        channel.queue_declare(queue, auto_delete=True)
    for n in range(3):
        channel.basic_publish("", full, f"m{n}".encode())
    channel.basic_consume(watched, lambda *_: None)

    def counted() -> None:
        found = as_json(target, "list_queues", "name", "messages", "consumers")
        assert by_key(found, "name", full) == {"name": full, "messages": 3, "consumers": 0}
        assert by_key(found, "name", watched) == {"name": watched, "messages": 0,
                                                  "consumers": 1}

    eventually(counted)
    table = rows(ok(target, "list_queues", "name", "messages", "consumers"))
    assert table[0] == ["name", "messages", "consumers"]
    assert [full, "3", "0"] in table
    assert [watched, "0", "1"] in table
    default = rows(ok(target, "list_queues"))
    assert default[0] == ["name", "messages"]
    assert [full, "3"] in default
    silent = rows(ok(target, "-s", "list_queues", "name", "durable", "auto_delete"))
    assert ["name", "durable", "auto_delete"] not in silent
    assert [full, "false", "true"] in silent


def test_purge_queue(target: Target, channel: BlockingChannel, name: str) -> None:
    channel.queue_declare(name, auto_delete=False)
    try:
        for n in range(5):
            channel.basic_publish("", name, f"m{n}".encode())
        # (RabbitMQ's declare-ok may count before its queue has every publish: wait)
        deadline = time.monotonic() + 10
        while queue_length(channel, name) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queue_length(channel, name) == 5
        assert ok(target, "purge_queue", name) == f"purged queue '{name}' in vhost '/'\n"
        assert queue_length(channel, name) == 0
    finally:
        channel.queue_delete(name)


def test_peek_shows_messages_and_leaves_them(target: Target, channel: BlockingChannel,
                                             name: str) -> None:
    channel.queue_declare(name, auto_delete=True)
    properties = pika.BasicProperties(content_type="text/plain", delivery_mode=2,
                                      headers={"attempt": 3}, message_id="first-id")
    channel.basic_publish("", name, b"first body", properties)
    channel.basic_publish("", name, "second\nbody \u00e9".encode())
    channel.basic_publish("", name, b"\xff\x00 third")
    shown = ok(target, "peek", name, "2")
    assert "first body" in shown
    assert "message_id: first-id" in shown
    assert "content_type: text/plain" in shown
    assert '"attempt":3' in shown
    assert "second\n" in shown and "body \u00e9" in shown
    assert "third" not in shown
    assert queue_length(channel, name) == 3
    messages = as_json(target, "peek", name, "3")
    assert [m["payload_bytes"] for m in messages] == [10, 14, 8]
    assert messages[0]["payload"] == "first body"
    assert messages[0]["properties"]["headers"] == {"attempt": 3}
    # RabbitMQ takes the messages and requeues them; Leveret's peek leaves them untouched.
    assert messages[0]["redelivered"] is (target.name == "rabbitmq")
    assert "b'\\xff\\x00 third'" in ok(target, "peek", name, "3")
    assert queue_length(channel, name) == 3
    first = channel.basic_get(name, auto_ack=True)
    assert first[2] == b"first body"  # the order is kept
    channel.queue_purge(name)
    assert ok(target, "peek", name) == f"queue '{name}' is empty\n"


def test_delete_queue(target: Target, channel: BlockingChannel, name: str) -> None:
    channel.queue_declare(name)
    channel.basic_publish("", name, b"x")
    failed(target, "delete_queue", "--if-empty", name)
    assert queue_length(channel, name) == 1
    assert ok(target, "delete_queue", name) == f"deleted queue '{name}' in vhost '/'\n"
    with pytest.raises(ChannelClosedByBroker) as closed:
        queue_length(channel, name)
    assert closed.value.reply_code == 404


def test_exchanges_and_bindings(target: Target, channel: BlockingChannel, name: str) -> None:
    exchange = f"{name}-x"
    channel.exchange_declare(exchange, "topic", auto_delete=True)
    channel.queue_declare(name, auto_delete=True)
    channel.queue_bind(name, exchange, "orders.#")
    assert [exchange, "topic"] in rows(ok(target, "list_exchanges"))
    assert [exchange, "topic", "false", "true"] in rows(
        ok(target, "list_exchanges", "name", "type", "durable", "auto_delete"))
    assert [exchange, "exchange", name, "queue", "orders.#", "{}"] in rows(
        ok(target, "list_bindings"))
    found = as_json(target, "list_bindings", "source_name", "destination_name", "routing_key")
    assert {"source_name": exchange, "destination_name": name,
            "routing_key": "orders.#"} in found


# -- connections and consumers ------------------------------------------------------------

def test_list_and_close_connection(target: Target, name: str) -> None:
    connection = target.connect(client_properties={"connection_name": name})

    def listed() -> str:
        found = as_json(target, "list_connections", "name", "user", "client_properties")
        mine = [c for c in found if (c["client_properties"] or {}).get("connection_name") == name]
        assert len(mine) == 1, found
        assert mine[0]["user"] == "guest"
        return mine[0]["name"]

    connection_name = eventually(listed)
    assert rows(
        ok(target, "list_connections"))[0] == ["user", "peer_host", "peer_port", "state"]
    assert ok(target, "close_connection", connection_name, f"bye {name}") == (
        f"closed connection '{connection_name}'\n")
    with pytest.raises(ConnectionClosedByBroker) as closed:
        connection.process_data_events(time_limit=5)
        connection.sleep(5)
    assert closed.value.reply_code == 320
    assert f"bye {name}" in closed.value.reply_text
    failed(target, "close_connection", connection_name)


def test_list_consumers(target: Target, channel: BlockingChannel, name: str) -> None:
    channel.queue_declare(name, auto_delete=True)
    channel.basic_qos(prefetch_count=7)
    channel.basic_consume(name, lambda *_: None, consumer_tag=f"{name}-tag")

    def listed() -> None:
        found = as_json(target, "list_consumers")
        mine = by_key(found, "consumer_tag", f"{name}-tag")
        assert mine["queue_name"] == name
        assert mine["ack_required"] is True
        assert mine["prefetch_count"] == 7

    eventually(listed)
    table = rows(ok(target, "list_consumers", "queue_name", "consumer_tag", "ack_required"))
    assert [name, f"{name}-tag", "true"] in table


# -- users, vhosts, permissions -----------------------------------------------------------

@pytest.fixture
def cleanup(target: Target) -> Iterator[list[tuple[str, str]]]:
    """(command, name) pairs to run at the end, whatever happened: delete_user, delete_vhost."""
    undo: list[tuple[str, str]] = []
    yield undo
    for command, arg in reversed(undo):
        ctl(target, command, arg)


def test_users_vhosts_and_permissions(target: Target, name: str,
                                      cleanup: list[tuple[str, str]]) -> None:
    user, vhost = f"{name}-user", f"{name}/vhost"  # a / in the name: quoted as %2F
    cleanup += [("delete_vhost", vhost), ("delete_user", user)]
    assert ok(target, "add_vhost", vhost) == f"added vhost '{vhost}'\n"
    assert ok(target, "add_user", user, "pw-1") == f"added user '{user}'\n"
    assert "already exists" in failed(target, "add_user", user, "other")
    assert [vhost] in rows(ok(target, "list_vhosts"))
    assert [user, "[]"] in rows(ok(target, "list_users"))
    assert not target.can_login(user, "pw-1", vhost)  # no permissions yet

    ok(target, "set_permissions", "-p", vhost, user, "^x-", ".*", ".*")
    assert target.can_login(user, "pw-1", vhost)
    assert [user, "^x-", ".*", ".*"] in rows(ok(target, "list_permissions", "-p", vhost))
    with target.connect(user, "pw-1", vhost) as connection:  # configure is limited to ^x-
        connection.channel().queue_declare("x-allowed")
        with pytest.raises(ChannelClosedByBroker) as refused:
            connection.channel().queue_declare("not-allowed")
        assert refused.value.reply_code == 403

    ok(target, "change_password", user, "pw-2")
    assert not target.can_login(user, "pw-1", vhost)
    assert target.can_login(user, "pw-2", vhost)

    ok(target, "set_user_tags", user, "management", "monitoring")
    users = as_json(target, "list_users")
    assert sorted(by_key(users, "user", user)["tags"]) == ["management", "monitoring"]
    assert target.can_login(user, "pw-2", vhost)  # new tags, same password
    as_user = ["--user", user, "--password", "pw-2"]
    assert [vhost] in rows(ok(target, *as_user, "list_vhosts"))  # management: may use the API

    ok(target, "clear_permissions", "-p", vhost, user)
    assert not target.can_login(user, "pw-2", vhost)
    assert user not in ok(target, "list_permissions", "-p", vhost)
    assert ok(target, "delete_user", user) == f"deleted user '{user}'\n"
    assert user not in ok(target, "list_users")
    assert ok(target, "delete_vhost", vhost) == f"deleted vhost '{vhost}'\n"
    assert [vhost] not in rows(ok(target, "list_vhosts"))
    assert failed(target, "delete_vhost", vhost).endswith(f"no such vhost '{vhost}'\n")
    assert failed(target, "delete_user", user).endswith(f"no such user '{user}'\n")


def test_vhost_scoped_listings(target: Target, name: str,
                               cleanup: list[tuple[str, str]]) -> None:
    cleanup.append(("delete_vhost", name))
    ok(target, "add_vhost", name)
    with target.connect(vhost=name) as connection:
        channel = connection.channel()
        channel.queue_declare("only-here")
        channel.basic_publish("", "only-here", b"x")

    def listed() -> None:
        assert rows(ok(target, "-p", name, "list_queues")) == [
            ["name", "messages"], ["only-here", "1"]]

    eventually(listed)
    assert ["only-here", "1"] not in rows(ok(target, "list_queues"))
    assert "only-here" in ok(target, "list_queues", "--vhost", name)
    assert ["guest", ".*", ".*", ".*"] in rows(ok(target, "list_permissions", "-p", name))


# -- definitions --------------------------------------------------------------------------

def test_export_import_round_trip(target: Target, name: str, tmp_path: Path,
                                  cleanup: list[tuple[str, str]]) -> None:
    user, vhost = f"{name}-user", f"{name}-vhost"
    cleanup += [("delete_vhost", vhost), ("delete_user", user)]
    ok(target, "add_vhost", vhost)
    ok(target, "add_user", user, "secret")
    ok(target, "set_user_tags", user, "monitoring")
    ok(target, "set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    with target.connect(vhost=vhost) as connection:
        channel = connection.channel()
        channel.exchange_declare("ex", "fanout", durable=True)
        channel.queue_declare("kept", durable=True, arguments={"x-max-length": 10})
        channel.queue_bind("kept", "ex")

    exported = tmp_path / "definitions.json"
    assert ok(target, "export_definitions", str(exported)) == (
        f"exported definitions to {exported}\n")
    everything = json.loads(exported.read_text())
    assert json.loads(ok(target, "export_definitions", "-"))["vhosts"]  # - is stdout
    # Import what the test made only: the broker may be shared.
    mine = {
        "users": [u for u in everything["users"] if u["name"] == user],
        "vhosts": [v for v in everything["vhosts"] if v["name"] == vhost],
        "permissions": [p for p in everything["permissions"] if p["vhost"] == vhost],
        **{kind: [o for o in everything[kind] if o["vhost"] == vhost]
           for kind in ("queues", "exchanges", "bindings")},
    }
    assert len(mine["users"]) == len(mine["vhosts"]) == len(mine["queues"]) == 1
    assert mine["queues"][0]["arguments"] == {"x-max-length": 10}
    assert len(mine["bindings"]) == 1
    ok(target, "delete_vhost", vhost)
    ok(target, "delete_user", user)
    assert not target.can_login(user, "secret", vhost)

    subset = tmp_path / "mine.json"
    subset.write_text(json.dumps(mine))
    assert ok(target, "import_definitions", str(subset)) == f"imported definitions from {subset}\n"
    assert target.can_login(user, "secret", vhost)  # the password hash came back
    assert [user, "[monitoring]"] in rows(ok(target, "list_users"))
    # (RabbitMQ lists a new queue's message count only once its statistics come in)
    assert ["kept", "true"] in rows(ok(target, "-p", vhost, "list_queues", "name", "durable"))
    assert ["ex", "exchange", "kept", "queue"] in [
        r[:4] for r in rows(ok(target, "-p", vhost, "list_bindings"))]
    ok(target, "delete_vhost", vhost)
    assert ok(target, "--json", "import_definitions", "-", stdin=json.dumps(mine)) == ""
    assert ["kept", "true"] in rows(ok(target, "-p", vhost, "list_queues", "name", "durable"))

    exported = json.loads(ok(target, "export_definitions", "--quorum", "-"))
    [kept] = [q for q in exported["queues"] if q["vhost"] == vhost]
    if target.name == "leveret":  # Leveret's option; RabbitMQ ignores it
        assert kept["arguments"] == {"x-max-length": 10, "x-queue-type": "quorum"}

    not_json = tmp_path / "bad.json"
    not_json.write_text("{not json")
    assert "is not JSON" in failed(target, "import_definitions", str(not_json))


# -- status, ping, options, errors --------------------------------------------------------

def test_status_and_ping(target: Target) -> None:
    text = ok(target, "status")
    assert "version" in text and "queues" in text and "alarms       none" in text
    status = as_json(target, "status")
    assert status["version"] and isinstance(status["queues"], int)
    assert status["alarms"] == []
    assert ok(target, "ping").endswith(": ok\n")
    assert as_json(target, "ping")["ok"] is True


@pytest.fixture
def alarmed() -> Iterator[Target]:
    """A Leveret over its memory high watermark (1 byte): the memory alarm is on."""
    yield from _leveret(memory_high_watermark=1)


def test_ping_fails_under_an_alarm(alarmed: Target) -> None:
    done = ctl(alarmed, "ping")
    assert done.returncode == 1
    assert "alarm: There are alarms in effect in the cluster (" in done.stdout
    assert "memory on leveret@localhost)" in done.stdout
    assert json.loads(ctl(alarmed, "--json", "ping").stdout)["ok"] is False
    [alarm] = as_json(alarmed, "status")["alarms"]
    assert "memory on leveret@localhost" in alarm
    assert "alarms       There are alarms in effect in the cluster (" in ok(alarmed, "status")


def test_environment_and_url_credentials(target: Target) -> None:
    parsed = urllib.parse.urlsplit(target.http_url)
    bare = f"http://{parsed.hostname}:{parsed.port}"
    env = {**ENV, "LEVERET_CTL_URL": bare, "LEVERET_CTL_USER": "guest",
           "LEVERET_CTL_PASSWORD": "guest"}
    assert ["guest", "[administrator]"] in rows(ok(None, "list_users", env=env))
    env["LEVERET_CTL_PASSWORD"] = "wrong"
    assert "login refused for user 'guest'" in failed(None, "list_users", env=env)
    assert ok(None, "--password", "guest", "ping", env=env)  # the flag beats the variable
    assert "401" in failed(target, "--password", "wrong", "list_queues")
    assert "401" in failed(None, "--url", f"http://guest:wrong@{parsed.hostname}:{parsed.port}",
                           "ping")


def test_missing_objects(target: Target, name: str) -> None:
    assert failed(target, "purge_queue", name).endswith(
        f"purge_queue: no such queue '{name}' in vhost '/'\n")
    assert failed(target, "peek", name).endswith(f"no such queue '{name}' in vhost '/'\n")
    assert failed(target, "delete_queue", "-p", name, "q").endswith(
        f"no such vhost '{name}'\n")
    assert failed(target, "-p", name, "list_queues").endswith(f"no such vhost '{name}'\n")
    assert failed(target, "set_permissions", name, ".*", ".*", ".*").endswith(
        f"no such user '{name}'\n")
    assert failed(target, "set_user_tags", name, "management").endswith(
        f"no such user '{name}'\n")
    assert failed(target, "close_connection", name).endswith(f"no such connection '{name}'\n")


def test_usage_errors() -> None:
    assert "unknown column 'nope'" in failed(None, "list_queues", "name", "nope", status=2)
    assert "invalid choice" in failed(None, "no_such_command", status=2)
    assert "required" in failed(None, status=2)
    assert "positive integer" in failed(None, "peek", "q", "0", status=2)
    assert "expected http://" in failed(None, "--url", "ftp://x", "ping", status=2)


def test_unreachable_and_silent_brokers() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    for command in (["list_queues"], ["ping"], ["status"]):
        error = failed(None, "--url", url, *command)
        assert error.startswith(f"leveret ctl {command[0]}: cannot reach {url}: ")
        assert "refused" in error
    with socket.socket() as silent:  # accepts (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        assert "no answer in 0.5 s" in failed(None, "--url", url, "--timeout", "0.5", "ping")
        assert time.monotonic() - started < 10
