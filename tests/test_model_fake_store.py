"""The model (vhosts, exchanges, queues, the publish path) against a fake store: no disk, no
sockets. What reaches the store, and the tickets a confirm would wait for, are checked
directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fake_store import FakeStore
from pamqp import commands

from leveret.broker.dispatcher import Dispatcher
from leveret.broker.message import Message
from leveret.broker.publish import publish
from leveret.broker.vhost import VirtualHost
from leveret.protocol import fastpath
from leveret.protocol.tables import content_header


def _message(body: bytes, key: str, exchange: str = "", **properties: object) -> Message:
    props = commands.Basic.Properties(**properties)
    return Message(fastpath.route_raw(exchange, key), content_header(len(body), props), body)


@pytest.fixture
def world() -> Iterator[tuple[VirtualHost, FakeStore, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    vhost = VirtualHost("/", Dispatcher(loop))
    store = FakeStore()
    vhost.store = store  # type: ignore[assignment]
    yield vhost, store, loop
    loop.close()


def _declare(vhost: VirtualHost, name: str, durable: bool = True, **arguments: object):  # type: ignore[no-untyped-def]
    return vhost.declare_queue(name, None, passive=False, durable=durable,  # type: ignore[arg-type]
                               exclusive=False, auto_delete=False, arguments=dict(arguments))


def test_a_persistent_message_is_stored_once_for_its_durable_queues(world) -> None:  # type: ignore[no-untyped-def]
    vhost, store, _loop = world
    fan = vhost.declare_exchange("fan", "fanout", passive=False, durable=True,
                                 auto_delete=False, internal=False, arguments={})
    queues = [_declare(vhost, "d1"), _declare(vhost, "d2"), _declare(vhost, "t", durable=False)]
    for queue in queues:
        vhost.bind(fan, queue, "", {})
    before = store.issued
    routed, refused, ticket, _queues = publish(vhost, fan, _message(b"m", "", "fan",
                                                                   delivery_mode=2))
    publishes = [entry for entry in store.log if entry[0] == "publish"]
    assert publishes == [("publish", 1, (("/", "d1"), ("/", "d2")), ())]
    assert routed and not refused and ticket == store.issued > before
    transient = publish(vhost, fan, _message(b"t", "", "fan", delivery_mode=1))
    assert transient[2] == 0, "a transient publish waits for no ticket"
    ids = [entry.msg_id for entry in (q.take() for q in queues)]
    assert ids == [1, 1, None]


def test_dead_lettering_replaces_the_stored_source_in_one_record(world) -> None:  # type: ignore[no-untyped-def]
    vhost, store, _loop = world
    _declare(vhost, "dead")
    source = _declare(vhost, "src", **{"x-dead-letter-exchange": "",
                                       "x-dead-letter-routing-key": "dead"})
    publish(vhost, vhost.exchanges[""], _message(b"m", "src", delivery_mode=2))
    entry = source.take()
    source.reject([entry])
    assert store.log[-1] == ("publish", 2, (("/", "dead"),), ((("/", "src"), 1),))
    assert store.live(("/", "src")) == [] and store.live(("/", "dead")) == [2]
    assert not [e for e in store.log if e[0] == "remove"], "no separate removal"


def test_a_message_dead_lettered_during_its_own_publish_is_covered_by_its_ticket(world) -> None:  # type: ignore[no-untyped-def]
    vhost, store, _loop = world
    _declare(vhost, "dead")
    _declare(vhost, "now", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"})
    message = _message(b"m", "now", delivery_mode=2, expiration="0")
    message.ttl = 0  # what the channel read from the expiration property
    ticket = publish(vhost, vhost.exchanges[""], message)[2]
    assert store.log[-1][0] == "publish" and store.log[-1][2] == (("/", "dead"),)
    assert ticket == store.issued, "the confirm must wait for the dead-lettered copy"


def test_dead_letters_to_nowhere_release_the_source(world) -> None:  # type: ignore[no-untyped-def]
    vhost, store, _loop = world
    source = _declare(vhost, "src", **{"x-dead-letter-exchange": "missing"})
    publish(vhost, vhost.exchanges[""], _message(b"m", "src", delivery_mode=2))
    source.reject([source.take()])
    assert store.log[-1] == ("remove", ("/", "src"), 1)


def test_a_held_delayed_message_moves_to_its_queue_in_one_record(world) -> None:  # type: ignore[no-untyped-def]
    vhost, store, loop = world
    later = vhost.declare_exchange("later", "x-delayed-message", passive=False, durable=True,
                                   auto_delete=False, internal=False,
                                   arguments={"x-delayed-type": "direct"})
    queue = _declare(vhost, "due")
    vhost.bind(later, queue, "k", {})
    ticket = publish(vhost, later, _message(b"m", "k", "later", delivery_mode=2,
                                             headers={"x-delay": 10}))[2]
    held_key = ("/", "amq.delayed:later")
    assert store.log[-1] == ("publish", 1, (held_key,), ()) and ticket
    loop.run_until_complete(asyncio.sleep(0.05))
    assert store.log[-1] == ("publish", 2, (("/", "due"),), ((held_key, 1),))
    assert queue.take().msg_id == 2


def test_purge_and_delete_release_what_the_queue_held(world) -> None:  # type: ignore[no-untyped-def]
    vhost, store, _loop = world
    queue = _declare(vhost, "q")
    for index in range(3):
        publish(vhost, vhost.exchanges[""], _message(str(index).encode(), "q", delivery_mode=2))
    held = queue.take()
    assert queue.purge() == 2
    assert store.live(("/", "q")) == [held.msg_id]
    queue.requeue([held])
    vhost.delete_queue(queue)
    assert store.live(("/", "q")) == []
    assert store.definitions[-1] == {"op": "queue.delete", "vhost": "/", "name": "q"}


def test_definition_changes_reach_the_store_in_order(world) -> None:  # type: ignore[no-untyped-def]
    vhost, store, _loop = world
    exchange = vhost.declare_exchange("x", "direct", passive=False, durable=True,
                                      auto_delete=False, internal=False, arguments={})
    queue = _declare(vhost, "q")
    _declare(vhost, "transient", durable=False)
    vhost.bind(exchange, queue, "k", {})
    vhost.delete_exchange("x", if_unused=False)
    assert [change["op"] for change in store.definitions] == [
        "exchange.declare", "queue.declare", "bind", "unbind", "exchange.delete"]
