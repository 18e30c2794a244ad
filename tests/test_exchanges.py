"""Exchange declare/delete/bind semantics and exchange-to-exchange routing.

Every reply code, reply text and "channel or connection closed" expectation here was
agreed with RabbitMQ 3.10.8 (observed first, then encoded).
"""

from __future__ import annotations

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker
from pika_helpers import (
    Broker,
    bodies,
    exchange_exists,
    pika_channel,
    wait_for_count,
    wait_gone,
)

pytestmark = pytest.mark.timeout(30)

DEFAULT_EXCHANGE_REFUSED = "ACCESS_REFUSED - operation not permitted on the default exchange"


def _assert_channel_closed(
    exc: pytest.ExceptionInfo[ChannelClosedByBroker],
    conn: pika.BlockingConnection,
    code: int,
    text: str,
) -> None:
    """The broker closed only the channel, with exactly this code and text."""
    assert exc.value.reply_code == code, exc.value
    assert exc.value.reply_text == text, exc.value
    assert conn.is_open, "a channel-level error must leave the connection open"


# --- the default exchange -------------------------------------------------------------


def test_default_exchange_cannot_be_declared(broker: Broker) -> None:
    """exchange.declare of '' (active or passive) is refused with 403 on the channel."""
    for passive in (False, True):
        with pika_channel(broker.url) as (conn, ch):
            with pytest.raises(ChannelClosedByBroker) as exc:
                ch.exchange_declare("", "direct", passive=passive)
            _assert_channel_closed(exc, conn, 403, DEFAULT_EXCHANGE_REFUSED)


def test_default_exchange_cannot_be_deleted(broker: Broker) -> None:
    """exchange.delete of '' is refused with 403."""
    with pika_channel(broker.url) as (conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.exchange_delete("")
        _assert_channel_closed(exc, conn, 403, DEFAULT_EXCHANGE_REFUSED)


def test_default_exchange_cannot_be_bound_or_unbound(broker: Broker, unique: str) -> None:
    """queue.bind/unbind and exchange.bind (either end) involving '' get 403."""
    queue = f"{unique}-q"
    exchange = f"{unique}-x"
    with pika_channel(broker.url) as (_conn, ch):
        ch.queue_declare(queue, auto_delete=True)
        ch.exchange_declare(exchange, "direct", auto_delete=True)
    attempts = {
        "queue.bind": lambda ch: ch.queue_bind(queue, "", "other-key"),
        "queue.unbind": lambda ch: ch.queue_unbind(queue, "", queue),
        "exchange.bind dest": lambda ch: ch.exchange_bind("", exchange, "k"),
        "exchange.bind source": lambda ch: ch.exchange_bind(exchange, "", "k"),
    }
    try:
        for name, attempt in attempts.items():
            with pika_channel(broker.url) as (conn, ch):
                with pytest.raises(ChannelClosedByBroker) as exc:
                    attempt(ch)
                assert exc.value.reply_code == 403, name
                _assert_channel_closed(exc, conn, 403, DEFAULT_EXCHANGE_REFUSED)
    finally:
        with pika_channel(broker.url) as (_conn, ch):
            ch.queue_delete(queue)
            ch.exchange_delete(exchange)


def test_default_exchange_routes_by_queue_name(broker: Broker, unique: str) -> None:
    """Every queue is implicitly bound to '' with its own name as the key."""
    with pika_channel(broker.url) as (_conn, ch):
        q = ch.queue_declare(f"{unique}-q", exclusive=True).method.queue
        ch.basic_publish("", q, b"direct-to-queue")
        ch.basic_publish("", f"{unique}-other", b"nowhere")
        assert wait_for_count(ch, q, 1) == 1
        assert bodies(ch, q) == [b"direct-to-queue"]


# --- amq.* -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
        ("amq.match", "headers"),
    ],
)
def test_standard_exchanges_exist(broker: Broker, name: str, kind: str) -> None:
    """The pre-declared amq.* exchanges exist, and an equivalent active declare is fine."""
    with pika_channel(broker.url) as (_conn, ch):
        assert isinstance(
            ch.exchange_declare(name, passive=True).method, pika.spec.Exchange.DeclareOk
        )
        ok = ch.exchange_declare(name, kind, durable=True)
        assert isinstance(ok.method, pika.spec.Exchange.DeclareOk)


def test_declaring_reserved_amq_prefix_is_refused(broker: Broker, unique: str) -> None:
    """A new exchange named 'amq.…' is 403 ACCESS_REFUSED (the channel closes)."""
    name = f"amq.{unique}"
    with pika_channel(broker.url) as (conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.exchange_declare(name, "direct")
        _assert_channel_closed(
            exc,
            conn,
            403,
            f"ACCESS_REFUSED - exchange name '{name}' contains reserved prefix 'amq.*'",
        )


def test_passive_declare_of_missing_amq_name_is_404(broker: Broker, unique: str) -> None:
    """A passive declare is a lookup: a missing 'amq.' name is plain 404, not 403."""
    name = f"amq.{unique}"
    with pika_channel(broker.url) as (conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.exchange_declare(name, passive=True)
        _assert_channel_closed(exc, conn, 404, f"NOT_FOUND - no exchange '{name}' in vhost '/'")


def test_amq_prefix_is_case_sensitive(broker: Broker, unique: str) -> None:
    """Only the lower-case 'amq.' prefix is reserved."""
    name = f"AMQ.{unique}"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(name, "direct")
        ch.exchange_delete(name)


def test_deleting_a_standard_exchange_is_refused(broker: Broker) -> None:
    """exchange.delete of amq.direct is 403, and the exchange survives."""
    with pika_channel(broker.url) as (conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.exchange_delete("amq.direct")
        _assert_channel_closed(
            exc,
            conn,
            403,
            "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
        )
    assert exchange_exists(broker.url, "amq.direct")


# --- declare errors ------------------------------------------------------------------------


def test_unknown_exchange_type_closes_the_connection(broker: Broker, unique: str) -> None:
    """An unknown type is a hard error: 503 COMMAND_INVALID closes the connection."""
    with pika_channel(broker.url) as (conn, ch):
        with pytest.raises(ConnectionClosedByBroker) as exc:
            ch.exchange_declare(f"{unique}-x", "bogus")
        assert exc.value.reply_code == 503
        assert exc.value.reply_text == "COMMAND_INVALID - unknown exchange type 'bogus'"
        assert not conn.is_open
    assert not exchange_exists(broker.url, f"{unique}-x")


def test_passive_declare_with_unknown_type_of_missing_exchange_is_404(
    broker: Broker, unique: str
) -> None:
    """A passive declare ignores the type: a missing exchange is a channel-level 404."""
    name = f"{unique}-x"
    with pika_channel(broker.url) as (conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.exchange_declare(name, "bogus", passive=True)
        _assert_channel_closed(exc, conn, 404, f"NOT_FOUND - no exchange '{name}' in vhost '/'")


def test_passive_declare_of_missing_exchange_is_404(broker: Broker, unique: str) -> None:
    """Passive declare of a missing exchange: 404 NOT_FOUND, channel closed."""
    name = f"{unique}-missing"
    with pika_channel(broker.url) as (conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.exchange_declare(name, passive=True)
        _assert_channel_closed(exc, conn, 404, f"NOT_FOUND - no exchange '{name}' in vhost '/'")
        # the connection is still usable
        assert conn.channel().is_open


def test_passive_declare_ignores_type_and_flags_of_existing(broker: Broker, unique: str) -> None:
    """Passive declare of an existing exchange succeeds whatever type/flags are sent."""
    name = f"{unique}-x"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(name, "direct", auto_delete=True)
        try:
            ch.exchange_declare(name, "fanout", passive=True, durable=True)
        finally:
            ch.exchange_delete(name)


@pytest.mark.parametrize(
    ("kwargs", "arg", "received", "current"),
    [
        ({"exchange_type": "fanout"}, "type", "fanout", "direct"),
        ({"durable": True}, "durable", "true", "false"),
        ({"auto_delete": False}, "auto_delete", "false", "true"),
        ({"internal": True}, "internal", "true", "false"),
    ],
)
def test_redeclare_with_different_properties_is_406(
    broker: Broker, unique: str, kwargs: dict, arg: str, received: str, current: str
) -> None:
    """An inequivalent redeclare is 406 with RabbitMQ's exact 'inequivalent arg' text."""
    name = f"{unique}-x"
    base = {"exchange_type": "direct", "durable": False, "auto_delete": True, "internal": False}
    with pika_channel(broker.url) as (conn, ch):
        ch.exchange_declare(name, **base)
        try:
            with pytest.raises(ChannelClosedByBroker) as exc:
                ch.exchange_declare(name, **{**base, **kwargs})
            _assert_channel_closed(
                exc,
                conn,
                406,
                f"PRECONDITION_FAILED - inequivalent arg '{arg}' for exchange '{name}' "
                f"in vhost '/': received '{received}' but current is '{current}'",
            )
        finally:
            conn.channel().exchange_delete(name)


def test_redeclare_with_other_alternate_exchange_is_406(broker: Broker, unique: str) -> None:
    """alternate-exchange takes part in equivalence; other unknown arguments do not."""
    name = f"{unique}-x"
    with pika_channel(broker.url) as (conn, ch):
        ch.exchange_declare(name, "direct", auto_delete=True)
        try:
            ch.exchange_declare(name, "direct", auto_delete=True, arguments={"x-whatever": 1})
            with pytest.raises(ChannelClosedByBroker) as exc:
                ch.exchange_declare(
                    name, "direct", auto_delete=True, arguments={"alternate-exchange": "foo"}
                )
            _assert_channel_closed(
                exc,
                conn,
                406,
                "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange "
                f"'{name}' in vhost '/': received the value 'foo' of type 'longstr' "
                "but current is none",
            )
        finally:
            conn.channel().exchange_delete(name)


# --- internal exchanges --------------------------------------------------------------------


def test_publish_to_internal_exchange_is_403(broker: Broker, unique: str) -> None:
    """Publishing to an internal exchange closes the channel with 403."""
    name = f"{unique}-internal"
    with pika_channel(broker.url) as (conn, ch):
        ch.exchange_declare(name, "fanout", internal=True)
        try:
            ch.basic_publish(name, "k", b"x")
            with pytest.raises(ChannelClosedByBroker) as exc:
                ch.exchange_declare(name, passive=True)  # a round trip to observe the close
            _assert_channel_closed(
                exc,
                conn,
                403,
                f"ACCESS_REFUSED - cannot publish to internal exchange '{name}' in vhost '/'",
            )
        finally:
            conn.channel().exchange_delete(name)


def test_internal_exchange_receives_via_exchange_binding(broker: Broker, unique: str) -> None:
    """An internal exchange still routes what another exchange forwards to it."""
    front, inner = f"{unique}-front", f"{unique}-inner"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(front, "fanout", auto_delete=True)
        ch.exchange_declare(inner, "direct", internal=True, auto_delete=True)
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, inner, "k")
        ch.exchange_bind(inner, front, "")
        ch.basic_publish(front, "k", b"via-front")
        ch.basic_publish(front, "other", b"dropped")
        assert wait_for_count(ch, q, 1) == 1
        assert bodies(ch, q) == [b"via-front"]
        ch.exchange_delete(front)
        ch.exchange_delete(inner)


# --- delete ------------------------------------------------------------------------------------


def test_delete_if_unused_with_queue_binding_is_406(broker: Broker, unique: str) -> None:
    """exchange.delete(if_unused) of an exchange with a queue bound is 406 'in use'."""
    name = f"{unique}-x"
    with pika_channel(broker.url) as (conn, ch):
        ch.exchange_declare(name, "direct")
        try:
            q = ch.queue_declare("", exclusive=True).method.queue
            ch.queue_bind(q, name, "k")
            with pytest.raises(ChannelClosedByBroker) as exc:
                ch.exchange_delete(name, if_unused=True)
            _assert_channel_closed(
                exc, conn, 406, f"PRECONDITION_FAILED - exchange '{name}' in vhost '/' in use"
            )
        finally:
            conn.channel().exchange_delete(name)


def test_delete_if_unused_counts_outgoing_bindings_only(broker: Broker, unique: str) -> None:
    """A source of an exchange binding is 'in use'; a destination with only incoming is not."""
    src, dst = f"{unique}-src", f"{unique}-dst"
    with pika_channel(broker.url) as (conn, ch):
        ch.exchange_declare(src, "direct")
        ch.exchange_declare(dst, "direct")
        try:
            ch.exchange_bind(dst, src, "k")
            with pytest.raises(ChannelClosedByBroker) as exc:
                ch.exchange_delete(src, if_unused=True)
            _assert_channel_closed(
                exc, conn, 406, f"PRECONDITION_FAILED - exchange '{src}' in vhost '/' in use"
            )
            ch = conn.channel()
            ch.exchange_delete(dst, if_unused=True)  # only an incoming binding: allowed
            assert not exchange_exists(broker.url, dst)
            ch.exchange_delete(src, if_unused=True)  # its binding went with dst
        finally:
            ch = conn.channel()
            ch.exchange_delete(src)
            ch.exchange_delete(dst)


def test_delete_if_unused_without_bindings_succeeds(broker: Broker, unique: str) -> None:
    """if_unused on an exchange without bindings deletes it."""
    name = f"{unique}-x"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(name, "topic")
        ok = ch.exchange_delete(name, if_unused=True)
        assert isinstance(ok.method, pika.spec.Exchange.DeleteOk)
    assert not exchange_exists(broker.url, name)


def test_delete_of_missing_exchange_is_ok(broker: Broker, unique: str) -> None:
    """RabbitMQ 3.x answers delete-ok for a missing exchange (with or without if_unused)."""
    with pika_channel(broker.url) as (_conn, ch):
        assert isinstance(ch.exchange_delete(f"{unique}-nope").method, pika.spec.Exchange.DeleteOk)
        ok = ch.exchange_delete(f"{unique}-nope", if_unused=True)
        assert isinstance(ok.method, pika.spec.Exchange.DeleteOk)
        assert ch.is_open


def test_delete_removes_bindings_and_stops_routing(broker: Broker, unique: str) -> None:
    """After delete the name is gone; redeclaring it starts with no bindings."""
    name = f"{unique}-x"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(name, "fanout")
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, name)
        ch.exchange_delete(name)
        ch.exchange_declare(name, "fanout")
        ch.basic_publish(name, "", b"after-redeclare")
        ch.basic_publish("", q, b"marker")
        assert wait_for_count(ch, q, 1) == 1
        assert bodies(ch, q) == [b"marker"]
        ch.exchange_delete(name)


# --- auto-delete ---------------------------------------------------------------------------


def test_auto_delete_exchange_goes_with_its_last_queue_binding(broker: Broker, unique: str) -> None:
    """auto_delete: deleted when the last binding is removed, not before."""
    name = f"{unique}-ad"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(name, "direct", auto_delete=True)
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, name, "k1")
        ch.queue_bind(q, name, "k2")
        ch.queue_unbind(q, name, "k1")
        assert exchange_exists(broker.url, name)
        ch.queue_unbind(q, name, "k2")
    assert wait_gone(lambda: exchange_exists(broker.url, name))


def test_auto_delete_exchange_goes_when_bound_queue_is_deleted(broker: Broker, unique: str) -> None:
    """Deleting the only bound queue removes the binding and so the auto_delete exchange."""
    name = f"{unique}-ad"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(name, "direct", auto_delete=True)
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, name, "k")
        ch.queue_delete(q)
    assert wait_gone(lambda: exchange_exists(broker.url, name))


def test_auto_delete_exchange_never_bound_stays(broker: Broker, unique: str) -> None:
    """An auto_delete exchange that never had a binding is not deleted."""
    name = f"{unique}-ad"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(name, "direct", auto_delete=True)
    assert exchange_exists(broker.url, name)
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_delete(name)


def test_auto_delete_source_goes_when_exchange_binding_removed(broker: Broker, unique: str) -> None:
    """Only the source's outgoing bindings count: the destination survives the unbind."""
    src, dst = f"{unique}-src", f"{unique}-dst"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(src, "direct", auto_delete=True)
        ch.exchange_declare(dst, "fanout", auto_delete=True)
        ch.exchange_bind(dst, src, "k")
        ch.exchange_unbind(dst, src, "k")
    assert wait_gone(lambda: exchange_exists(broker.url, src))
    assert exchange_exists(broker.url, dst)
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_delete(dst)


# --- exchange-to-exchange bindings ---------------------------------------------------------------


def test_exchange_bind_routes_and_unbind_stops(broker: Broker, unique: str) -> None:
    """Messages flow source → destination by the source's type, until exchange.unbind."""
    src, dst = f"{unique}-src", f"{unique}-dst"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(src, "topic")  # not auto_delete: it loses its only binding below
        ch.exchange_declare(dst, "direct", auto_delete=True)
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, dst, "a.b")
        ch.exchange_bind(dst, src, "a.*")
        ch.basic_publish(src, "a.b", b"1")  # matches a.* at src, a.b at dst
        ch.basic_publish(src, "a.c", b"2")  # matches a.* at src, nothing at dst
        ch.basic_publish(src, "x.b", b"3")  # stops at src
        assert wait_for_count(ch, q, 1) == 1
        ch.exchange_unbind(dst, src, "a.*")
        ch.basic_publish(src, "a.b", b"4")
        ch.basic_publish(dst, "a.b", b"5")
        assert wait_for_count(ch, q, 2) == 2
        assert bodies(ch, q) == [b"1", b"5"]
        ch.exchange_delete(src)
        ch.exchange_delete(dst)


def test_exchange_bind_to_missing_exchange_is_404(broker: Broker, unique: str) -> None:
    """exchange.bind naming a missing exchange is 404; with both missing, the source is named."""
    cases = [
        (f"{unique}-nodst", "amq.direct", f"{unique}-nodst"),
        ("amq.direct", f"{unique}-nosrc", f"{unique}-nosrc"),
        (f"{unique}-nodst", f"{unique}-nosrc", f"{unique}-nosrc"),
    ]
    for destination, source, reported in cases:
        with pika_channel(broker.url) as (conn, ch):
            with pytest.raises(ChannelClosedByBroker) as exc:
                ch.exchange_bind(destination, source, "k")
            _assert_channel_closed(
                exc, conn, 404, f"NOT_FOUND - no exchange '{reported}' in vhost '/'"
            )


def test_exchange_unbind_of_missing_binding_or_exchange_is_ok(broker: Broker, unique: str) -> None:
    """exchange.unbind is idempotent: missing binding or exchange still gets unbind-ok."""
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_unbind("amq.fanout", "amq.direct", f"{unique}-k")
        ch.exchange_unbind(f"{unique}-nope", "amq.direct", "k")
        assert ch.is_open


def test_message_reaches_a_queue_once_over_several_paths(broker: Broker, unique: str) -> None:
    """A queue reachable directly and via two exchange paths gets one copy."""
    top, left, right = f"{unique}-top", f"{unique}-left", f"{unique}-right"
    with pika_channel(broker.url) as (_conn, ch):
        for name in (top, left, right):
            ch.exchange_declare(name, "fanout", auto_delete=True)
        ch.exchange_bind(left, top)
        ch.exchange_bind(right, top)
        q1 = ch.queue_declare("", exclusive=True).method.queue
        q2 = ch.queue_declare("", exclusive=True).method.queue
        for name in (top, left, right):
            ch.queue_bind(q1, name)
        ch.queue_bind(q2, right)
        # a second binding of the same queue to the same exchange under another key
        ch.exchange_declare(f"{unique}-dir", "direct", auto_delete=True)
        ch.exchange_bind(f"{unique}-dir", top)
        ch.queue_bind(q1, f"{unique}-dir", "k1")
        ch.queue_bind(q1, f"{unique}-dir", "k2")
        ch.basic_publish(top, "k1", b"once")
        assert wait_for_count(ch, q1, 1) == 1
        assert wait_for_count(ch, q2, 1) == 1
        ch.basic_publish("", q1, b"marker")
        assert wait_for_count(ch, q1, 2) == 2
        assert bodies(ch, q1) == [b"once", b"marker"]
        assert bodies(ch, q2) == [b"once"]
        for name in (top, left, right, f"{unique}-dir"):
            ch.exchange_delete(name)


def test_exchange_binding_cycle_delivers_once(broker: Broker, unique: str) -> None:
    """A cycle a→b→c→a (and a self-binding) terminates and delivers one copy per queue."""
    a, b, c, solo = (f"{unique}-{s}" for s in ("a", "b", "c", "self"))
    with pika_channel(broker.url) as (_conn, ch):
        for name in (a, b, c, solo):
            ch.exchange_declare(name, "fanout", auto_delete=True)
        ch.exchange_bind(b, a)
        ch.exchange_bind(c, b)
        ch.exchange_bind(a, c)
        ch.exchange_bind(solo, solo)
        q1 = ch.queue_declare("", exclusive=True).method.queue
        q2 = ch.queue_declare("", exclusive=True).method.queue
        q3 = ch.queue_declare("", exclusive=True).method.queue
        for name in (a, b, c):
            ch.queue_bind(q1, name)
        ch.queue_bind(q2, c)
        ch.queue_bind(q3, solo)
        ch.basic_publish(a, "", b"from-a")
        ch.basic_publish(b, "", b"from-b")
        ch.basic_publish(solo, "", b"from-self")
        assert wait_for_count(ch, q1, 2) == 2
        assert wait_for_count(ch, q2, 2) == 2
        assert wait_for_count(ch, q3, 1) == 1
        ch.basic_publish("", q1, b"marker")
        ch.basic_publish("", q3, b"marker")
        assert wait_for_count(ch, q1, 3) == 3
        assert bodies(ch, q1) == [b"from-a", b"from-b", b"marker"]
        assert bodies(ch, q2) == [b"from-a", b"from-b"]
        assert bodies(ch, q3) == [b"from-self", b"marker"]
        for name in (a, b, c, solo):
            ch.exchange_delete(name)
