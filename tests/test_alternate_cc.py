"""Alternate exchanges and sender-selected distribution (CC and BCC headers).

Every expectation here was agreed with RabbitMQ 3.10.8 (observed first, then encoded):

- alternate-exchange: a message the exchange routes nowhere goes to its alternate exchange
  (which may itself have one: a chain; an internal exchange works as an AE); mandatory with
  an AE that routes it: no basic.return, and a publisher confirm acks it; when the AE routes it
  nowhere either, or the AE does not exist, or two exchanges are each other's AE, the
  mandatory message comes back as basic.return 312 NO_ROUTE with the original exchange and
  routing key; a non-string alternate-exchange is 406 "invalid type 'signedint' for arg
  'alternate-exchange' in exchange ..." ;
- CC and BCC (arrays of strings): the message is also routed with each of those routing keys,
  still delivered once per queue, with its original routing key; BCC is removed from the
  delivered headers, CC is kept; the header names are case-sensitive ('cc' is not CC); a CC or
  BCC that is a string rather than an array closes the channel with 406 'invalid message:
  {unacceptable_type_in_header,"CC",longstr}'; routing by CC counts for mandatory.
"""

from __future__ import annotations

import time
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker
from pika_helpers import Broker, bodies, pika_channel, pump

pytestmark = pytest.mark.timeout(30)

Returned = list[tuple[int, str, str, str, bytes]]


def _track_returns(ch: BlockingChannel) -> Returned:
    returned: Returned = []

    def on_return(_c: Any, method: Any, _props: Any, body: bytes) -> None:
        returned.append(
            (method.reply_code, method.reply_text, method.exchange, method.routing_key, body)
        )

    ch.add_on_return_callback(on_return)
    return returned


def _queue(ch: BlockingChannel, exchange: str, key: str = "") -> str:
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, exchange, key)
    return q


# --- alternate exchange --------------------------------------------------------------------------


def test_unroutable_goes_to_alternate_exchange_chain(broker: Broker, unique: str) -> None:
    """main (direct) -> ae (direct) -> ae2 (fanout): each takes what the previous could not
    route; mandatory publishes routed this way are not returned."""
    with pika_channel(broker.url) as (conn, ch):
        main, ae, ae2 = f"{unique}-main", f"{unique}-ae", f"{unique}-ae2"
        ch.exchange_declare(ae2, "fanout", auto_delete=True)
        ch.exchange_declare(ae, "direct", auto_delete=True, arguments={"alternate-exchange": ae2})
        ch.exchange_declare(main, "direct", auto_delete=True, arguments={"alternate-exchange": ae})
        qm, qa, qa2 = _queue(ch, main, "k"), _queue(ch, ae, "other"), _queue(ch, ae2)
        returned = _track_returns(ch)
        ch.basic_publish(main, "k", b"routed", mandatory=True)
        ch.basic_publish(main, "other", b"to-ae", mandatory=True)
        ch.basic_publish(main, "nowhere", b"to-ae2", mandatory=True)
        ch.basic_publish(main, "nowhere", b"plain")
        pump(conn, 0.2)
        assert bodies(ch, qm) == [b"routed"]
        assert bodies(ch, qa) == [b"to-ae"]
        assert bodies(ch, qa2) == [b"to-ae2", b"plain"]
        assert returned == []


def test_alternate_exchange_delivery_keeps_original_exchange_and_key(
    broker: Broker, unique: str
) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        main, ae = f"{unique}-main", f"{unique}-ae"
        ch.exchange_declare(ae, "fanout", auto_delete=True)
        ch.exchange_declare(main, "direct", auto_delete=True, arguments={"alternate-exchange": ae})
        q = _queue(ch, ae)
        ch.basic_publish(main, "rk", b"m")
        time.sleep(0.05)
        method, _props, body = ch.basic_get(q, auto_ack=True)
        assert method is not None and body == b"m"
        assert (method.exchange, method.routing_key) == (main, "rk")


def test_alternate_exchange_that_fails_returns_312(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (conn, ch):
        x, aex = f"{unique}-x", f"{unique}-aex"
        ch.exchange_declare(aex, "direct", auto_delete=True)
        ch.exchange_declare(x, "direct", auto_delete=True, arguments={"alternate-exchange": aex})
        q = _queue(ch, aex, "only")
        returned = _track_returns(ch)
        ch.basic_publish(x, "nope", b"lost", mandatory=True)
        ch.basic_publish(x, "only", b"saved", mandatory=True)
        pump(conn, 0.2)
        assert returned == [(312, "NO_ROUTE", x, "nope", b"lost")]
        assert bodies(ch, q) == [b"saved"]


def test_missing_alternate_exchange_returns_312(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (conn, ch):
        y = f"{unique}-y"
        ch.exchange_declare(
            y, "direct", auto_delete=True, arguments={"alternate-exchange": f"{unique}-missing"}
        )
        returned = _track_returns(ch)
        ch.basic_publish(y, "nope", b"lost", mandatory=True)
        pump(conn, 0.2)
        assert returned == [(312, "NO_ROUTE", y, "nope", b"lost")]


def test_alternate_exchange_loop_terminates(broker: Broker, unique: str) -> None:
    """l1 and l2 are each other's AE: routable through l2 arrives once, the rest returns."""
    with pika_channel(broker.url) as (conn, ch):
        l1, l2 = f"{unique}-l1", f"{unique}-l2"
        ch.exchange_declare(l1, "direct", auto_delete=True, arguments={"alternate-exchange": l2})
        ch.exchange_declare(l2, "direct", auto_delete=True, arguments={"alternate-exchange": l1})
        q = _queue(ch, l2, "r")
        returned = _track_returns(ch)
        ch.basic_publish(l1, "zz", b"loop", mandatory=True)
        ch.basic_publish(l1, "r", b"loop-r", mandatory=True)
        pump(conn, 0.2)
        assert returned == [(312, "NO_ROUTE", l1, "zz", b"loop")]
        assert bodies(ch, q) == [b"loop-r"]


def test_internal_exchange_as_alternate(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        main, ae = f"{unique}-main", f"{unique}-ae"
        ch.exchange_declare(ae, "fanout", auto_delete=True, internal=True)
        ch.exchange_declare(main, "direct", auto_delete=True, arguments={"alternate-exchange": ae})
        q = _queue(ch, ae)
        ch.basic_publish(main, "x", b"int")
        time.sleep(0.05)
        assert bodies(ch, q) == [b"int"]


def test_alternate_exchange_routed_publish_is_confirmed(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        main, ae = f"{unique}-main", f"{unique}-ae"
        ch.exchange_declare(ae, "fanout", auto_delete=True)
        ch.exchange_declare(main, "direct", auto_delete=True, arguments={"alternate-exchange": ae})
        q = _queue(ch, ae)
        ch.confirm_delivery()
        ch.basic_publish(main, "nowhere", b"c", mandatory=True)  # raises on nack or return
        assert bodies(ch, q) == [b"c"]


def test_alternate_exchange_wrong_type_is_406(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        name = f"{unique}-bad"
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.exchange_declare(
                name, "direct", auto_delete=True, arguments={"alternate-exchange": 5}
            )
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in "
            f"exchange '{name}' in vhost '/'",
        )


# --- CC and BCC ----------------------------------------------------------------------------------


def _deliveries(ch: BlockingChannel, q: str) -> list[tuple[bytes, str, Any]]:
    out = []
    while True:
        method, props, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            return out
        out.append((body, method.routing_key, props.headers))


def test_cc_and_bcc_route_and_bcc_is_removed(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        t = f"{unique}-t"
        ch.exchange_declare(t, "direct", auto_delete=True)
        qs = {k: _queue(ch, t, k) for k in "abcd"}
        ch.basic_publish(
            t, "a", b"m", pika.BasicProperties(headers={"CC": ["b"], "BCC": ["c", "a"], "x": 1})
        )
        time.sleep(0.1)
        expected = [(b"m", "a", {"CC": ["b"], "x": 1})]
        assert {k: _deliveries(ch, q) for k, q in qs.items()} == {
            "a": expected,
            "b": expected,
            "c": expected,
            "d": [],
        }


def test_bcc_only_leaves_empty_headers(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (_conn, ch):
        t = f"{unique}-t"
        ch.exchange_declare(t, "direct", auto_delete=True)
        q = _queue(ch, t, "d")
        ch.basic_publish(t, "zz", b"m2", pika.BasicProperties(headers={"BCC": ["d"]}))
        ch.basic_publish(t, "zz", b"m4", pika.BasicProperties(headers={"cc": ["d"]}))
        time.sleep(0.1)
        assert _deliveries(ch, q) == [(b"m2", "zz", {})]


def test_cc_on_default_exchange_and_topic(broker: Broker, unique: str) -> None:
    """CC names queues on the default exchange; on a topic exchange several CC keys matching
    one binding still deliver once."""
    with pika_channel(broker.url) as (_conn, ch):
        qd = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", f"{unique}-none", b"dflt", pika.BasicProperties(headers={"CC": [qd]}))
        tp = f"{unique}-tp"
        ch.exchange_declare(tp, "topic", auto_delete=True)
        qt = _queue(ch, tp, "x.*")
        ch.basic_publish(tp, "y", b"tcc", pika.BasicProperties(headers={"CC": ["x.1", "x.2"]}))
        time.sleep(0.1)
        assert bodies(ch, qd) == [b"dflt"]
        assert bodies(ch, qt) == [b"tcc"]


def test_cc_route_counts_for_mandatory(broker: Broker, unique: str) -> None:
    with pika_channel(broker.url) as (conn, ch):
        t = f"{unique}-t"
        ch.exchange_declare(t, "direct", auto_delete=True)
        q = _queue(ch, t, "b")
        returned = _track_returns(ch)
        ch.basic_publish(
            t, "zz", b"mand", pika.BasicProperties(headers={"CC": ["b"]}), mandatory=True
        )
        ch.basic_publish(
            t, "zz", b"back", pika.BasicProperties(headers={"CC": ["nope"]}), mandatory=True
        )
        pump(conn, 0.2)
        assert bodies(ch, q) == [b"mand"]
        assert returned == [(312, "NO_ROUTE", t, "zz", b"back")]


@pytest.mark.parametrize("header", ["CC", "BCC"])
def test_cc_string_is_406(broker: Broker, unique: str, header: str) -> None:
    with pika_channel(broker.url) as (conn, ch):
        t = f"{unique}-t"
        ch.exchange_declare(t, "direct", auto_delete=True)
        q = _queue(ch, t, "d")
        ch.basic_publish(t, "zz", b"m", pika.BasicProperties(headers={header: "d"}))
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(q, passive=True)
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            f'PRECONDITION_FAILED - invalid message: {{unacceptable_type_in_header,"{header}",'
            "longstr}",
        )
        assert conn.is_open
        assert bodies(conn.channel(), q) == []
