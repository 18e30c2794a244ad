"""The struct-based per-message codecs are byte-identical to pamqp's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands

from leveret.protocol import fastpath
from leveret.protocol.methods import decode_method, encode_method, make

# pamqp's validation accepts only this alphabet; our codecs accept any UTF-8.
pamqp_names = st.text(alphabet="abcXYZ019-_.:@#,/+ ", max_size=60)
any_names = st.text(max_size=60).filter(lambda s: len(s.encode()) <= 255)
tags = st.integers(0, 2**63 - 1)  # pamqp treats longlong as signed


@given(pamqp_names, pamqp_names, st.booleans(), st.booleans())
def test_publish_decodes_like_pamqp(exchange: str, key: str, mandatory: bool, immediate: bool):
    method = commands.Basic.Publish(exchange=exchange, routing_key=key, mandatory=mandatory,
                                    immediate=immediate)
    payload = method.index.to_bytes(4, "big") + method.marshal()
    publish = fastpath.decode_publish(payload)
    assert (publish.exchange, publish.routing_key, publish.mandatory, publish.immediate) == (
        exchange, key, mandatory, immediate)
    assert publish.route_raw == fastpath.route_raw(exchange, key)


@given(any_names, any_names)
def test_publish_with_any_utf8_names(exchange: str, key: str) -> None:
    payload = encode_method(make(commands.Basic.Publish, exchange=exchange, routing_key=key))
    publish = fastpath.decode_publish(payload)
    assert (publish.exchange, publish.routing_key) == (exchange, key)


@given(pamqp_names, tags, st.booleans(), pamqp_names, pamqp_names)
def test_deliver_encodes_like_pamqp(ctag, tag, redelivered, exchange, key) -> None:
    method = commands.Basic.Deliver(consumer_tag=ctag, delivery_tag=tag, redelivered=redelivered,
                                    exchange=exchange, routing_key=key)
    ours = fastpath.deliver_method(fastpath.shortstr(ctag), tag, redelivered,
                                   fastpath.route_raw(exchange, key))
    assert ours == method.index.to_bytes(4, "big") + method.marshal()


@given(any_names, tags, st.booleans(), any_names, any_names)
def test_deliver_round_trips_any_utf8(ctag, tag, redelivered, exchange, key) -> None:
    ours = fastpath.deliver_method(fastpath.shortstr(ctag), tag, redelivered,
                                   fastpath.route_raw(exchange, key))
    decoded = decode_method(ours)
    assert (decoded.consumer_tag, decoded.delivery_tag, decoded.redelivered, decoded.exchange,
            decoded.routing_key) == (ctag, tag, redelivered, exchange, key)


@given(tags, st.booleans(), pamqp_names, pamqp_names, st.integers(0, 2**32 - 1))
def test_get_ok_encodes_like_pamqp(tag, redelivered, exchange, key, count) -> None:
    method = commands.Basic.GetOk(delivery_tag=tag, redelivered=redelivered, exchange=exchange,
                                  routing_key=key, message_count=count)
    ours = fastpath.get_ok_method(tag, redelivered, fastpath.route_raw(exchange, key), count)
    assert ours == method.index.to_bytes(4, "big") + method.marshal()


@given(st.integers(300, 599), pamqp_names, pamqp_names, pamqp_names)
def test_return_encodes_like_pamqp(code, text, exchange, key) -> None:
    method = commands.Basic.Return(reply_code=code, reply_text=text, exchange=exchange,
                                   routing_key=key)
    ours = fastpath.return_method(code, text, fastpath.route_raw(exchange, key))
    assert ours == method.index.to_bytes(4, "big") + method.marshal()


@given(tags, st.booleans(), st.booleans())
def test_ack_nack_reject_decode_like_pamqp(tag, multiple, requeue) -> None:
    ack = commands.Basic.Ack(delivery_tag=tag, multiple=multiple)
    assert fastpath.decode_ack(encode_method(ack)) == (tag, multiple)
    assert fastpath.ack_method(tag, multiple) == encode_method(ack)
    nack = commands.Basic.Nack(delivery_tag=tag, multiple=multiple, requeue=requeue)
    assert fastpath.decode_nack(encode_method(nack)) == (tag, multiple, requeue)
    assert fastpath.nack_method(tag, multiple) == encode_method(
        commands.Basic.Nack(delivery_tag=tag, multiple=multiple, requeue=False))
    reject = commands.Basic.Reject(delivery_tag=tag, requeue=requeue)
    assert fastpath.decode_reject(encode_method(reject)) == (tag, requeue)


def test_reply_names_pamqp_refuses_encode() -> None:
    for name in ("a*b", "ünï", "x" * 255):
        payload = encode_method(make(commands.Queue.DeclareOk, queue=name, message_count=1,
                                     consumer_count=2))
        assert decode_method(payload).queue == name


@given(st.one_of(st.none(), st.sampled_from([1, 2])), st.one_of(st.none(), st.text(max_size=20)),
       st.one_of(st.none(), st.text(max_size=20)),
       st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.integers(0, 9), max_size=3)),
       st.one_of(st.none(), st.integers(0, 9)))
def test_delivery_mode_read_from_raw_header(mode, content_type, encoding, headers, priority):
    from pamqp.header import ContentHeader

    properties = commands.Basic.Properties(
        content_type=content_type, content_encoding=encoding, headers=headers,
        delivery_mode=mode, priority=priority,
    )
    raw = ContentHeader(body_size=3, properties=properties).marshal()
    assert fastpath.delivery_mode(raw) == (mode or 0)


@given(any_names, tags, st.booleans(), any_names, any_names, st.binary(max_size=40),
       st.binary(max_size=9000), st.integers(4096, 8192), st.integers(0, 65535))
def test_write_deliver_matches_the_general_writer(ctag, tag, redelivered, exchange, key,
                                                  header, body, frame_max, channel) -> None:
    """The one-body-frame packing gives the same bytes as method + write_delivery."""
    ctag_raw, route = fastpath.shortstr(ctag), fastpath.route_raw(exchange, key)
    ours: list = []
    fastpath.write_deliver(ours, channel, ctag_raw, tag, redelivered, route, header, body,
                           frame_max)
    general: list = []
    fastpath.write_delivery(general, channel,
                            fastpath.deliver_method(ctag_raw, tag, redelivered, route),
                            header, body, frame_max)
    assert b"".join(ours) == b"".join(general)
