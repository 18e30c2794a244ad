"""Publisher confirms (confirm.select) and AMQP transactions (tx.select/commit/rollback).

Every reply code, reply text and event ordering here was agreed with RabbitMQ 3.10.8
(observed first, then encoded).
"""

from __future__ import annotations

from collections.abc import Iterator

import amqp
import pika
import pika.exceptions
import pytest
from pika.exceptions import ChannelClosedByBroker
from pika_helpers import (
    Broker,
    amqp_connect,
    amqp_drain,
    amqp_drain_until,
    bodies,
    drain_queue,
    message_count,
    pika_channel,
    pump,
    pump_until,
    wait_for_count,
)

pytestmark = pytest.mark.timeout(30)

Event = tuple[str, int | str, bool | int]


class ConfirmChannel:
    """A py-amqp channel in confirm mode that logs acks, nacks and returns in arrival order."""

    def __init__(self, conn: amqp.Connection) -> None:
        self.conn = conn
        self.ch = conn.channel()
        self.events: list[Event] = []
        self.ch.events["basic_ack"].add(
            lambda tag, multiple: self.events.append(("ack", tag, multiple))
        )
        self.ch.events["basic_nack"].add(
            lambda tag, multiple: self.events.append(("nack", tag, multiple))
        )
        self.ch.events["basic_return"].add(
            lambda exc, _exchange, routing_key, _msg: self.events.append(
                ("return", routing_key, exc.reply_code)
            )
        )
        self.ch.confirm_select()

    def publish(self, body: bytes, exchange: str, key: str, mandatory: bool = False) -> None:
        self.ch.basic_publish(
            amqp.Message(body), exchange=exchange, routing_key=key, mandatory=mandatory
        )

    def confirmed(self) -> dict[int, str]:
        """Expand (multiple) acks/nacks into {delivery tag: 'ack'|'nack'}; no tag twice."""
        out: dict[int, str] = {}
        for kind, tag, multiple in self.events:
            if kind == "return":
                continue
            assert isinstance(tag, int)
            covered = [t for t in range(1, tag + 1) if t not in out] if multiple else [tag]
            assert covered, f"{kind} {tag} (multiple={multiple}) confirms nothing new"
            for t in covered:
                assert t not in out, f"tag {t} confirmed twice"
                out[t] = kind
        return out

    def wait_confirmed(self, count: int, timeout: float = 5.0) -> dict[int, str]:
        amqp_drain_until(self.conn, lambda: len(self.confirmed()) >= count, timeout)
        amqp_drain(self.conn, 0.1)
        return self.confirmed()


@pytest.fixture
def confirm_channel(broker: Broker) -> Iterator[ConfirmChannel]:
    conn = amqp_connect(broker.url)
    try:
        yield ConfirmChannel(conn)
    finally:
        if conn.connected:
            conn.close()
        else:
            conn.collect()


# --- confirms ----------------------------------------------------------------------------------


def test_confirm_tags_count_from_one_for_routed_and_unroutable(
    confirm_channel: ConfirmChannel, unique: str
) -> None:
    """Every publish gets the next tag from 1; routed and unroutable are both acked."""
    cc = confirm_channel
    q, _, _ = cc.ch.queue_declare("", exclusive=True)
    cc.publish(b"a", "", q)
    cc.publish(b"b", "", f"{unique}-nowhere")
    cc.publish(b"c", "amq.direct", f"{unique}-nowhere")
    cc.publish(b"d", "", q)
    assert cc.wait_confirmed(4) == {1: "ack", 2: "ack", 3: "ack", 4: "ack"}
    assert not [e for e in cc.events if e[0] == "return"]


def test_mandatory_unroutable_return_precedes_its_ack(
    confirm_channel: ConfirmChannel, unique: str
) -> None:
    """basic.return (312) for a mandatory unroutable message arrives before its ack."""
    cc = confirm_channel
    q, _, _ = cc.ch.queue_declare("", exclusive=True)
    cc.publish(b"routed", "", q, mandatory=True)
    cc.publish(b"lost", "", f"{unique}-nowhere", mandatory=True)
    cc.publish(b"routed", "", q, mandatory=True)
    assert cc.wait_confirmed(3) == {1: "ack", 2: "ack", 3: "ack"}
    returns = [i for i, e in enumerate(cc.events) if e[0] == "return"]
    assert [cc.events[i] for i in returns] == [("return", f"{unique}-nowhere", 312)]
    ack_of_2 = next(
        i
        for i, (kind, tag, multiple) in enumerate(cc.events)
        if kind == "ack" and isinstance(tag, int) and (tag == 2 or (multiple and tag > 2))
    )
    assert returns[0] < ack_of_2


def test_many_publishes_acked_exactly_once_possibly_multiple(
    confirm_channel: ConfirmChannel,
) -> None:
    """A burst of publishes: every tag confirmed once; multiple=True acks are allowed."""
    cc = confirm_channel
    q, _, _ = cc.ch.queue_declare("", exclusive=True)
    for i in range(300):
        cc.publish(str(i).encode(), "", q)
    assert cc.wait_confirmed(300) == dict.fromkeys(range(1, 301), "ack")
    acked_tags = [tag for kind, tag, _ in cc.events if kind == "ack"]
    assert acked_tags == sorted(acked_tags), "confirms arrive in tag order"


def test_nack_when_queue_rejects_publish(confirm_channel: ConfirmChannel) -> None:
    """A full x-overflow=reject-publish queue makes the broker nack the publish."""
    cc = confirm_channel
    q, _, _ = cc.ch.queue_declare(
        "", exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    for body in (b"fits", b"rejected-1", b"rejected-2"):
        cc.publish(body, "", q)
    assert cc.wait_confirmed(3) == {1: "ack", 2: "nack", 3: "nack"}
    assert cc.ch.basic_get(q, no_ack=True).body == b"fits"


def test_confirm_select_twice_is_fine(confirm_channel: ConfirmChannel) -> None:
    """A second confirm.select on a confirm channel is answered select-ok again."""
    cc = confirm_channel
    cc.ch.confirm_select()
    q, _, _ = cc.ch.queue_declare("", exclusive=True)
    cc.publish(b"x", "", q)
    assert cc.wait_confirmed(1) == {1: "ack"}


def test_pika_blocking_confirms(broker: Broker, unique: str) -> None:
    """pika's confirm_delivery: routed publishes return, mandatory unroutable raises."""
    with pika_channel(broker.url) as (_conn, ch):
        ch.confirm_delivery()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"ok", mandatory=True)
        with pytest.raises(pika.exceptions.UnroutableError) as exc:
            ch.basic_publish("", f"{unique}-nowhere", b"lost", mandatory=True)
        (returned,) = exc.value.messages
        assert returned.method.reply_code == 312
        assert returned.method.reply_text == "NO_ROUTE"
        assert returned.body == b"lost"
        ch.basic_publish("", f"{unique}-nowhere", b"dropped")  # not mandatory: just acked
        assert message_count(ch, q) == 1


def test_tx_select_on_confirm_channel_is_406(broker: Broker) -> None:
    """A confirm channel cannot become transactional."""
    with pika_channel(broker.url) as (conn, ch):
        ch.confirm_delivery()
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.tx_select()
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
        )
        assert conn.is_open


def test_confirm_select_on_tx_channel_is_406(broker: Broker) -> None:
    """A transactional channel cannot enter confirm mode."""
    with pika_channel(broker.url) as (conn, ch):
        ch.tx_select()
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.confirm_delivery()
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
        )
        assert conn.is_open


# --- transactions -----------------------------------------------------------------------------


def test_tx_publishes_wait_for_commit(broker: Broker) -> None:
    """Publishes in a transaction are invisible until commit and discarded on rollback."""
    with pika_channel(broker.url) as (conn, tx):
        observer = conn.channel()
        q = observer.queue_declare("", exclusive=True).method.queue
        assert tx.tx_select().method.NAME == "Tx.SelectOk"
        tx.basic_publish("", q, b"1")
        tx.basic_publish("", q, b"2")
        pump(conn, 0.1)
        assert message_count(observer, q) == 0
        tx.tx_commit()
        assert wait_for_count(observer, q, 2) == 2
        tx.basic_publish("", q, b"3")
        tx.tx_rollback()
        tx.basic_publish("", q, b"4")
        tx.tx_commit()
        assert wait_for_count(observer, q, 3) == 3
        assert bodies(observer, q) == [b"1", b"2", b"4"]


def test_tx_acks_wait_for_commit_and_rollback_keeps_them_unacked(broker: Broker) -> None:
    """Acks are applied at commit; rolled-back acks leave the delivery unacked, not requeued."""
    with pika_channel(broker.url) as (conn, tx):
        observer = conn.channel()
        q = observer.queue_declare("", exclusive=True).method.queue
        for body in (b"a", b"b"):
            observer.basic_publish("", q, body)
        assert wait_for_count(observer, q, 2) == 2
        tx.tx_select()
        first = tx.basic_get(q)[0]
        tx.basic_ack(first.delivery_tag)
        tx.tx_rollback()
        assert message_count(observer, q) == 1  # neither acked nor requeued
        tx.basic_ack(first.delivery_tag)  # still outstanding, so may be acked again
        tx.tx_commit()
        second = tx.basic_get(q)[0]
        tx.basic_reject(second.delivery_tag, requeue=True)
        assert message_count(observer, q) == 0  # reject is held too
        tx.tx_commit()
        assert wait_for_count(observer, q, 1) == 1
        tx.close()  # nothing unacked remains: the queue holds exactly 'b', redelivered
        assert drain_queue(observer, q) == [(b"b", True)]


def test_tx_mandatory_return_is_sent_at_commit(broker: Broker, unique: str) -> None:
    """An unroutable mandatory publish is returned at commit; rollback discards it silently."""
    with pika_channel(broker.url) as (conn, tx):
        returned: list[int] = []
        tx.add_on_return_callback(lambda _c, m, _p, _b: returned.append(m.reply_code))
        tx.tx_select()
        tx.basic_publish("", f"{unique}-nowhere", b"x", mandatory=True)
        pump(conn, 0.2)
        assert returned == []
        tx.tx_commit()
        assert pump_until(conn, lambda: returned == [312])
        tx.basic_publish("", f"{unique}-nowhere", b"y", mandatory=True)
        tx.tx_rollback()
        pump(conn, 0.2)
        assert returned == [312]


def test_tx_uncommitted_publishes_vanish_with_channel(broker: Broker) -> None:
    """Closing a transactional channel discards what it had not committed."""
    with pika_channel(broker.url) as (conn, tx):
        observer = conn.channel()
        q = observer.queue_declare("", exclusive=True).method.queue
        tx.tx_select()
        tx.basic_publish("", q, b"never")
        tx.close()
        pump(conn, 0.1)
        assert message_count(observer, q) == 0


def test_tx_select_twice_is_fine(broker: Broker) -> None:
    """tx.select on a channel already in tx mode is answered select-ok."""
    with pika_channel(broker.url) as (_conn, ch):
        ch.tx_select()
        ch.tx_select()
        ch.tx_commit()


@pytest.mark.parametrize("method", ["commit", "rollback"])
def test_commit_or_rollback_without_select_is_406(broker: Broker, method: str) -> None:
    """tx.commit / tx.rollback on a non-transactional channel: 406."""
    with pika_channel(broker.url) as (conn, ch):
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.tx_commit() if method == "commit" else ch.tx_rollback()
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            "PRECONDITION_FAILED - channel is not transactional",
        )
        assert conn.is_open


def test_tx_unknown_delivery_tag_fails_immediately(broker: Broker) -> None:
    """An ack of an unknown tag inside a transaction fails at once, not at commit."""
    with pika_channel(broker.url) as (conn, ch):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.tx_select()
        ch.basic_ack(99)
        with pytest.raises(ChannelClosedByBroker) as exc:
            ch.queue_declare(q, passive=True)
        assert (exc.value.reply_code, exc.value.reply_text) == (
            406,
            "PRECONDITION_FAILED - unknown delivery tag 99",
        )
        assert conn.is_open
