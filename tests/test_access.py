"""Users, vhosts and permissions: who may log in, open a vhost, and use which resource.

The same tests run against Leveret and against RabbitMQ (``LEVERET_TEST_URL`` plus its
management API, see ``admin_helpers``); the reply codes and texts are RabbitMQ 3.10.8's.
RabbitMQ checks permissions in this order, and so does Leveret: queue.declare: the name,
then configure on the queue, then (for a new queue with a dead-letter exchange) read on the
queue and write on the exchange; exchange.declare: the type, the default exchange, configure,
then (new, with an alternate exchange) read on it and write on the alternate; bindings: write
on the destination, then read on the source; basic.publish: write on the exchange (the
default exchange is ``amq.default``); consume, get and purge: read on the queue; deletes:
configure. Passive declares are not checked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from admin_helpers import LeveretAdmin, RabbitAdmin
from conftest import EXTERNAL_URL, BrokerAddress
from pamqp import commands
from rawamqp import RawClient, connect

pytestmark = pytest.mark.timeout(60)

PASSWORD = "s3cret-pw"


@pytest.fixture
def admin(request: pytest.FixtureRequest) -> Any:
    if EXTERNAL_URL:
        return RabbitAdmin()
    return LeveretAdmin(request.getfixturevalue("embedded"))


@pytest.fixture
def account(admin: Any, unique: str) -> Iterator[tuple[str, str]]:
    """A fresh user and a fresh vhost (the user has no permissions on it yet)."""
    user, vhost = f"{unique}-user", f"{unique}-vhost"
    admin.add_user(user, PASSWORD)
    admin.add_vhost(vhost)
    yield user, vhost
    admin.delete_vhost(vhost)
    admin.delete_user(user)


def login(broker: BrokerAddress, user: str, vhost: str, password: str = PASSWORD) -> RawClient:
    client = RawClient(broker.host, broker.port)
    client.handshake(user, password, vhost=vhost)
    client.open_channel(1)
    return client


def refused(client: RawClient, method: Any, channel: int = 1) -> str:
    """Send ``method`` on ``channel``; expect 403 on the channel; return its text."""
    client.send_method(channel, method)
    close = client.expect_channel_close(channel, 403)
    return close.reply_text


def ok(client: RawClient, method: Any, reply: Any, channel: int = 1) -> Any:
    client.send_method(channel, method)
    return client.expect_method(reply, channel=channel)


# -- logging in --------------------------------------------------------------------------------


def test_new_user_logs_in_and_wrong_password_is_refused(
        broker: BrokerAddress, admin: Any, account: tuple[str, str]) -> None:
    user, vhost = account
    admin.set_permissions(user, vhost)
    client = login(broker, user, vhost)
    client.close_connection()

    client = RawClient(broker.host, broker.port)
    client.start(user, "wrong")
    close = client.expect_connection_close(403)
    assert close.reply_text == ("ACCESS_REFUSED - Login was refused using authentication "
                                "mechanism PLAIN. For details see the broker logfile.")
    client.close_socket()

    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.ConnectionParameters(
            broker.host, broker.port, vhost, pika.PlainCredentials(user, "wrong"),
            connection_attempts=1))


def test_no_permission_on_the_vhost_refuses_connection_open(
        broker: BrokerAddress, admin: Any, account: tuple[str, str]) -> None:
    user, vhost = account
    client = RawClient(broker.host, broker.port)
    client.handshake(user, PASSWORD, open_vhost=False)
    client.send_method(0, commands.Connection.Open(virtual_host=vhost))
    close = client.expect_connection_close(530)
    assert close.reply_text == f"NOT_ALLOWED - access to vhost '{vhost}' refused for user '{user}'"
    client.close_socket()


def test_a_deleted_user_cannot_log_in(broker: BrokerAddress, admin: Any,
                                      account: tuple[str, str]) -> None:
    user, vhost = account
    admin.set_permissions(user, vhost)
    admin.delete_user(user)
    client = RawClient(broker.host, broker.port)
    client.start(user, PASSWORD)
    client.expect_connection_close(403)
    client.close_socket()


# -- permissions per method --------------------------------------------------------------------


def text(kind: str, resource: str, name: str, vhost: str, user: str) -> str:
    # RabbitMQ 3.10.8 does not say which of configure/write/read was missing (``kind``)
    return (f"ACCESS_REFUSED - access to {resource} '{name}' in vhost '{vhost}' "
            f"refused for user '{user}'")


def test_configure_permission(broker: BrokerAddress, admin: Any,
                              account: tuple[str, str]) -> None:
    user, vhost = account
    admin.set_permissions(user, vhost, configure="^mine-", write=".*", read=".*")
    client = login(broker, user, vhost)
    try:
        ok(client, commands.Queue.Declare(queue="mine-q"), commands.Queue.DeclareOk)
        ok(client, commands.Exchange.Declare(exchange="mine-x", exchange_type="fanout"),
           commands.Exchange.DeclareOk)
        assert refused(client, commands.Queue.Declare(queue="other-q")) == text(
            "configure", "queue", "other-q", vhost, user)
        client.open_channel(2)
        assert refused(client, commands.Exchange.Declare(exchange="other-x"), 2) == text(
            "configure", "exchange", "other-x", vhost, user)
        client.open_channel(3)
        # a server-named queue needs configure on the name it gets (amq.gen-...)
        reply = refused(client, commands.Queue.Declare(queue=""), 3)
        assert reply.startswith("ACCESS_REFUSED - access to queue 'amq.gen-")
        client.open_channel(4)
        # passive declares are not checked
        ok(client, commands.Exchange.Declare(exchange="amq.direct", passive=True),
           commands.Exchange.DeclareOk, 4)
        client.open_channel(5)
        assert refused(client, commands.Queue.Delete(queue="other-q"), 5) == text(
            "configure", "queue", "other-q", vhost, user)
        client.open_channel(6)
        assert refused(client, commands.Exchange.Delete(exchange="other-x"), 6) == text(
            "configure", "exchange", "other-x", vhost, user)
        client.open_channel(7)
        ok(client, commands.Queue.Delete(queue="mine-q"), commands.Queue.DeleteOk, 7)
        ok(client, commands.Exchange.Delete(exchange="mine-x"), commands.Exchange.DeleteOk, 7)
    finally:
        client.close_socket()


def test_write_permission_publish_and_bind(broker: BrokerAddress, admin: Any,
                                           account: tuple[str, str]) -> None:
    user, vhost = account
    admin.set_permissions(user, vhost, configure=".*", write="^(w-|amq\\.fanout)", read=".*")
    client = login(broker, user, vhost)
    try:
        ok(client, commands.Queue.Declare(queue="w-q"), commands.Queue.DeclareOk)
        ok(client, commands.Queue.Declare(queue="other-q"), commands.Queue.DeclareOk)
        # binding needs write on the queue (and read on the exchange)
        ok(client, commands.Queue.Bind(queue="w-q", exchange="amq.direct", routing_key="k"),
           commands.Queue.BindOk)
        assert refused(client, commands.Queue.Bind(queue="other-q", exchange="amq.direct")) == (
            text("write", "queue", "other-q", vhost, user))
        client.open_channel(2)
        # the default exchange is checked as amq.default
        client.send_method(2, commands.Basic.Publish(exchange="", routing_key="w-q"))
        client.send_content(2, b"hello")
        assert client.expect_channel_close(2, 403).reply_text == text(
            "write", "exchange", "amq.default", vhost, user)
        client.open_channel(3)
        client.send_method(3, commands.Basic.Publish(exchange="amq.fanout", routing_key=""))
        client.send_content(3, b"hello")
        ok(client, commands.Basic.Get(queue="w-q"), commands.Basic.GetEmpty, 3)
        # write on a missing exchange: 403 before 404
        client.send_method(3, commands.Basic.Publish(exchange="nope", routing_key=""))
        client.send_content(3, b"hello")
        assert client.expect_channel_close(3, 403).reply_text == text(
            "write", "exchange", "nope", vhost, user)
        client.open_channel(4)
        # exchange-to-exchange: write on the destination
        ok(client, commands.Exchange.Declare(exchange="w-x", exchange_type="fanout"),
           commands.Exchange.DeclareOk, 4)
        ok(client, commands.Exchange.Bind(destination="w-x", source="amq.topic"),
           commands.Exchange.BindOk, 4)
        assert refused(client, commands.Exchange.Bind(destination="amq.topic", source="w-x"),
                       4) == text("write", "exchange", "amq.topic", vhost, user)
    finally:
        client.close_socket()


def test_read_permission_consume_get_purge_bind(broker: BrokerAddress, admin: Any,
                                                account: tuple[str, str]) -> None:
    user, vhost = account
    admin.set_permissions(user, vhost, configure=".*", write=".*", read="^r-")
    client = login(broker, user, vhost)
    try:
        ok(client, commands.Queue.Declare(queue="r-q"), commands.Queue.DeclareOk)
        ok(client, commands.Queue.Declare(queue="other-q"), commands.Queue.DeclareOk)
        ok(client, commands.Basic.Get(queue="r-q"), commands.Basic.GetEmpty)
        ok(client, commands.Basic.Consume(queue="r-q", consumer_tag="c"),
           commands.Basic.ConsumeOk)
        ok(client, commands.Queue.Purge(queue="r-q"), commands.Queue.PurgeOk)
        for number, method, resource, name in (
            (1, commands.Basic.Get(queue="other-q"), "queue", "other-q"),
            (2, commands.Basic.Consume(queue="other-q"), "queue", "other-q"),
            (3, commands.Queue.Purge(queue="other-q"), "queue", "other-q"),
            # binding: read on the source exchange
            (4, commands.Queue.Bind(queue="r-q", exchange="amq.direct"), "exchange",
             "amq.direct"),
            (5, commands.Queue.Unbind(queue="r-q", exchange="amq.direct"), "exchange",
             "amq.direct"),
        ):
            if number > 1:
                client.open_channel(number)
            assert refused(client, method, number) == text("read", resource, name, vhost, user)
    finally:
        client.close_socket()


def test_dead_letter_and_alternate_exchanges_need_write_on_them(
        broker: BrokerAddress, admin: Any, account: tuple[str, str]) -> None:
    user, vhost = account
    admin.set_permissions(user, vhost, configure=".*", write="^ok-", read=".*")
    client = login(broker, user, vhost)
    try:
        ok(client, commands.Queue.Declare(queue="q1", arguments={
            "x-dead-letter-exchange": "ok-dlx"}), commands.Queue.DeclareOk)
        assert refused(client, commands.Queue.Declare(queue="q2", arguments={
            "x-dead-letter-exchange": "dlx"})) == text("write", "exchange", "dlx", vhost, user)
        client.open_channel(2)
        ok(client, commands.Exchange.Declare(exchange="x1", arguments={
            "alternate-exchange": "ok-ae"}), commands.Exchange.DeclareOk, 2)
        assert refused(client, commands.Exchange.Declare(exchange="x2", arguments={
            "alternate-exchange": "ae"}), 2) == text("write", "exchange", "ae", vhost, user)
    finally:
        client.close_socket()


def test_empty_pattern_allows_nothing(broker: BrokerAddress, admin: Any,
                                      account: tuple[str, str]) -> None:
    user, vhost = account
    admin.set_permissions(user, vhost, configure="", write="", read="")
    client = login(broker, user, vhost)  # any permission entry lets the user open the vhost
    try:
        assert refused(client, commands.Queue.Declare(queue="q")) == text(
            "configure", "queue", "q", vhost, user)
    finally:
        client.close_socket()


def test_changed_permissions_apply_to_new_channels(broker: BrokerAddress, admin: Any,
                                                   account: tuple[str, str]) -> None:
    user, vhost = account
    admin.set_permissions(user, vhost)
    client = login(broker, user, vhost)
    try:
        ok(client, commands.Queue.Declare(queue="q"), commands.Queue.DeclareOk)
        admin.set_permissions(user, vhost, configure="^$", write=".*", read=".*")
        client.open_channel(2)
        assert refused(client, commands.Queue.Declare(queue="q2"), 2) == text(
            "configure", "queue", "q2", vhost, user)
    finally:
        client.close_socket()


# -- vhosts ------------------------------------------------------------------------------------


def test_deleting_a_vhost_closes_its_connections_and_removes_its_queues(
        broker: BrokerAddress, admin: Any, account: tuple[str, str]) -> None:
    user, vhost = account
    admin.set_permissions(user, vhost)
    client = login(broker, user, vhost)
    ok(client, commands.Queue.Declare(queue="kept", durable=True), commands.Queue.DeclareOk)
    other = connect(broker.host, broker.port)  # on vhost '/': untouched
    other.open_channel(1)
    try:
        admin.delete_vhost(vhost)
        close = client.expect_connection_close(320, timeout=10)
        # RabbitMQ 3.10.8 says "is deleted", or "is down" when its vhost supervisor stops
        # first (a race inside RabbitMQ); Leveret always says "is deleted"
        assert close.reply_text in (f"CONNECTION_FORCED - vhost '{vhost}' is deleted",
                                    f"CONNECTION_FORCED - vhost '{vhost}' is down")
        ok(other, commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk)
        admin.add_vhost(vhost)
        admin.set_permissions(user, vhost)
        again = login(broker, user, vhost)
        again.send_method(1, commands.Queue.Declare(queue="kept", passive=True))
        again.expect_channel_close(1, 404)
        again.close_socket()
    finally:
        client.close_socket()
        other.close_socket()


def test_unknown_vhost_is_refused(broker: BrokerAddress) -> None:
    client = RawClient(broker.host, broker.port)
    client.handshake(open_vhost=False)
    client.send_method(0, commands.Connection.Open(virtual_host="no-such-vhost"))
    close = client.expect_connection_close(530)
    assert close.reply_text in (
        "NOT_ALLOWED - vhost no-such-vhost not found",  # RabbitMQ 3.10.8
    )
    client.close_socket()


# -- Leveret only: repeated failures, loopback users, durability --------------------------------


@pytest.mark.leveret_only
def test_repeated_failed_logins_wait_longer_but_others_are_served(
        broker: BrokerAddress, admin: Any, account: tuple[str, str]) -> None:
    user, vhost = account
    admin.set_permissions(user, vhost)
    answers = []
    for _ in range(5):
        client = RawClient(broker.host, broker.port)
        started = time.monotonic()
        client.start(user, "wrong")
        client.expect_connection_close(403, timeout=10)
        answers.append(time.monotonic() - started)
        client.close_socket()
        # a good login meanwhile is answered at once
        good_started = time.monotonic()
        login(broker, user, vhost).close_connection()
        assert time.monotonic() - good_started < 1.0
    assert answers[-1] >= 0.75  # the fifth failure in a row waited 0.8 s
    assert answers[-1] > answers[0]


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (None if it has none)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.leveret_only
def test_guest_only_from_loopback_unless_lifted() -> None:
    from leveret.broker.embedded import EmbeddedBroker

    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    with EmbeddedBroker(host="0.0.0.0", port=0) as embedded:
        far = BrokerAddress(address, embedded.port)
        client = RawClient(far.host, far.port)
        client.start("guest", "guest")
        client.expect_connection_close(403)
        client.close_socket()
        login(BrokerAddress("127.0.0.1", embedded.port), "guest", "/", "guest").close_connection()
        embedded.call(lambda: embedded.broker.admin.put_user("remote", password="pw"))
        embedded.call(lambda: embedded.broker.admin.set_permissions(
            "remote", "/", ".*", ".*", ".*"))
        login(far, "remote", "/", password="pw").close_connection()
    with EmbeddedBroker(host="0.0.0.0", port=0, loopback_users=()) as embedded:
        login(BrokerAddress(address, embedded.port), "guest", "/", "guest").close_connection()


@pytest.mark.leveret_only
def test_users_vhosts_and_permissions_survive_a_restart(tmp_path: Any) -> None:
    from leveret.broker.embedded import EmbeddedBroker

    with EmbeddedBroker(data_dir=tmp_path) as embedded:
        admin = LeveretAdmin(embedded)
        admin.add_user("alice", "pw-a", ("management",))
        admin.add_vhost("team")
        admin.set_permissions("alice", "team", "^a-", ".*", ".*")
        admin.delete_user("guest")
        client = login(BrokerAddress("127.0.0.1", embedded.port), "alice", "team", "pw-a")
        ok(client, commands.Queue.Declare(queue="a-q", durable=True), commands.Queue.DeclareOk)
        client.close_connection()
    with EmbeddedBroker(data_dir=tmp_path) as embedded:
        address = BrokerAddress("127.0.0.1", embedded.port)
        client = login(address, "alice", "team", "pw-a")
        ok(client, commands.Queue.Declare(queue="a-q", passive=True), commands.Queue.DeclareOk)
        assert refused(client, commands.Queue.Declare(queue="b-q")) == text(
            "configure", "queue", "b-q", "team", "alice")
        client.close_socket()
        guest = RawClient(address.host, address.port)
        guest.start("guest", "guest")  # deleted, and not created again
        guest.expect_connection_close(403)
        guest.close_socket()
        tags = embedded.call(lambda: embedded.broker.admin.access.users["alice"].tags)
        assert tags == ("management",)
        admin = LeveretAdmin(embedded)
        admin.delete_vhost("team")
    with EmbeddedBroker(data_dir=tmp_path) as embedded:
        assert embedded.call(lambda: sorted(embedded.broker.vhosts)) == ["/"]
        assert embedded.call(lambda: embedded.broker.admin.access.permissions) == {}


# A user as RabbitMQ 3.10.8 exported it (GET /api/definitions) after
# `PUT /api/users/imported {"password": "from-rabbit", "tags": "monitoring"}`.
RABBIT_DEFINITIONS: dict[str, Any] = {
    "rabbit_version": "3.10.8",
    "rabbitmq_version": "3.10.8",
    "product_name": "RabbitMQ",
    "product_version": "3.10.8",
    "users": [{"name": "imported",
               "password_hash": "gK8+rXfSIm2CGFsKF1kZ5JS/g1HIQkaXCj88vWApzgz3hJd9",
               "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["monitoring"],
               "limits": {}}],
    "vhosts": [{"name": "imported-vhost"}],
    "permissions": [{"user": "imported", "vhost": "imported-vhost", "configure": ".*",
                     "write": ".*", "read": ".*"}],
    "topic_permissions": [],
    "parameters": [],
    "global_parameters": [{"name": "internal_cluster_id", "value": "rabbitmq-cluster-id-x"}],
    "policies": [{"vhost": "imported-vhost", "name": "ha", "pattern": ".*",
                  "apply-to": "queues", "definition": {"max-length": 10}, "priority": 0}],
    "queues": [{"name": "jobs", "vhost": "imported-vhost", "durable": True,
                "auto_delete": False, "arguments": {"x-queue-type": "classic",
                                                    "x-max-priority": 5}}],
    "exchanges": [{"name": "work", "vhost": "imported-vhost", "type": "topic", "durable": True,
                   "auto_delete": False, "internal": False, "arguments": {}}],
    "bindings": [{"source": "work", "vhost": "imported-vhost", "destination": "jobs",
                  "destination_type": "queue", "routing_key": "job.#", "arguments": {}}],
}


@pytest.mark.leveret_only
def test_definitions_exported_by_rabbitmq_load_at_boot(caplog: Any) -> None:
    from leveret.broker.embedded import EmbeddedBroker

    with EmbeddedBroker(definitions=RABBIT_DEFINITIONS) as embedded:
        address = BrokerAddress("127.0.0.1", embedded.port)
        client = login(address, "imported", "imported-vhost", "from-rabbit")
        client.send_method(1, commands.Basic.Publish(exchange="work", routing_key="job.a"))
        client.send_content(1, b"task")
        get = ok(client, commands.Basic.Get(queue="jobs", no_ack=True), commands.Basic.GetOk)
        assert get.routing_key == "job.a"
        client.read_non_heartbeat()  # its content header
        assert client.read_non_heartbeat().value.value == b"task"
        client.close_connection()
        # as in RabbitMQ, no default guest when definitions are loaded at boot
        guest = RawClient(address.host, address.port)
        guest.start("guest", "guest")
        guest.expect_connection_close(403)
        guest.close_socket()
        exported = embedded.call(embedded.broker.admin.export_definitions)
    assert {u["name"] for u in exported["users"]} == {"imported"}
    assert exported["users"][0]["password_hash"] == RABBIT_DEFINITIONS["users"][0][
        "password_hash"]
    assert any("policies not imported" in r.getMessage() for r in caplog.records)


# -- limits --------------------------------------------------------------------------------------


def test_vhost_connection_limit(broker: BrokerAddress, admin: Any,
                                account: tuple[str, str]) -> None:
    user, vhost = account
    admin.set_permissions(user, vhost)
    admin.set_vhost_limit(vhost, "max-connections", 1)
    first = login(broker, user, vhost)
    try:
        second = RawClient(broker.host, broker.port)
        second.handshake(user, PASSWORD, open_vhost=False)
        second.send_method(0, commands.Connection.Open(virtual_host=vhost))
        close = second.expect_connection_close(530)
        assert close.reply_text == (f"NOT_ALLOWED - access to vhost '{vhost}' refused for user "
                                    f"'{user}': connection limit (1) is reached")
        second.close_socket()
    finally:
        first.close_connection()
    login(broker, user, vhost).close_connection()  # room again


def test_vhost_queue_limit(broker: BrokerAddress, admin: Any, account: tuple[str, str]) -> None:
    user, vhost = account
    admin.set_permissions(user, vhost)
    admin.set_vhost_limit(vhost, "max-queues", 2)
    client = login(broker, user, vhost)
    try:
        ok(client, commands.Queue.Declare(queue="q1"), commands.Queue.DeclareOk)
        ok(client, commands.Queue.Declare(queue="q2"), commands.Queue.DeclareOk)
        ok(client, commands.Queue.Declare(queue="q1"), commands.Queue.DeclareOk)  # exists
        client.send_method(1, commands.Queue.Declare(queue="q3"))
        close = client.expect_channel_close(1, 406)
        assert close.reply_text == (f"PRECONDITION_FAILED - cannot declare queue 'q3': queue "
                                    f"limit in vhost '{vhost}' (2) is reached")
    finally:
        client.close_socket()


@pytest.mark.leveret_only
def test_node_connection_limit_refuses_at_accept() -> None:
    from leveret.broker.embedded import EmbeddedBroker

    with EmbeddedBroker(connection_max=2) as embedded:
        address = BrokerAddress("127.0.0.1", embedded.port)
        held = [login(address, "guest", "/", "guest") for _ in range(2)]
        extra = RawClient(address.host, address.port)
        extra.send_protocol_header()
        extra.expect_socket_closed(timeout=5)
        extra.close_socket()
        held.pop().close_connection()
        deadline = time.monotonic() + 5
        while True:  # the freed slot is usable once the broker saw the close
            try:
                login(address, "guest", "/", "guest").close_connection()
                break
            except (AssertionError, OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        held.pop().close_connection()
