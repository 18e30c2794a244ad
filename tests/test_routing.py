"""Routing by exchange type: direct, fanout, topic and headers, checked over the wire.

The match tables below were agreed with RabbitMQ 3.10.8: every (pattern, key) and
(binding, headers) case was published through a real RabbitMQ and its verdict recorded.
"""

from __future__ import annotations

from typing import Any

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker
from pika_helpers import Broker, drain_until_marker, pika_channel

pytestmark = pytest.mark.timeout(30)


# --- direct & fanout ---------------------------------------------------------------------------


def test_direct_routes_on_exact_key(broker: Broker, unique: str) -> None:
    """Direct: exact, case-sensitive key equality; '' is an ordinary key."""
    ex = f"{unique}-direct"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(ex, "direct", auto_delete=True)
        q_a = ch.queue_declare("", exclusive=True).method.queue
        q_b = ch.queue_declare("", exclusive=True).method.queue
        q_empty = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q_a, ex, "a")
        ch.queue_bind(q_a, ex, "shared")
        ch.queue_bind(q_b, ex, "b")
        ch.queue_bind(q_b, ex, "shared")
        ch.queue_bind(q_empty, ex, "")
        for key in ("a", "A", "b", "shared", "", "a.b", "*", "#"):
            ch.basic_publish(ex, key, key.encode() or b"<empty>")
        assert drain_until_marker(ch, q_a) == [b"a", b"shared"]
        assert drain_until_marker(ch, q_b) == [b"b", b"shared"]
        assert drain_until_marker(ch, q_empty) == [b"<empty>"]
        ch.exchange_delete(ex)


def test_direct_same_binding_twice_is_one_binding(broker: Broker, unique: str) -> None:
    """Binding the same queue/key twice is idempotent: one unbind removes it."""
    ex = f"{unique}-direct"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(ex, "direct")
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, ex, "k")
        ch.queue_bind(q, ex, "k")
        ch.basic_publish(ex, "k", b"1")
        assert drain_until_marker(ch, q) == [b"1"]
        ch.queue_unbind(q, ex, "k")
        ch.basic_publish(ex, "k", b"2")
        assert drain_until_marker(ch, q) == []
        ch.exchange_delete(ex)


def test_fanout_ignores_routing_and_binding_keys(broker: Broker, unique: str) -> None:
    """Fanout: every bound queue gets one copy whatever the keys."""
    ex = f"{unique}-fanout"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(ex, "fanout", auto_delete=True)
        q1 = ch.queue_declare("", exclusive=True).method.queue
        q2 = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q1, ex, "whatever")
        ch.queue_bind(q1, ex, "another")  # second binding, still one copy
        ch.queue_bind(q2, ex, "")
        for key in ("", "x", "whatever.else"):
            ch.basic_publish(ex, key, key.encode() or b"<empty>")
        expected = [b"<empty>", b"x", b"whatever.else"]
        assert drain_until_marker(ch, q1) == expected
        assert drain_until_marker(ch, q2) == expected
        ch.exchange_delete(ex)


# --- topic -------------------------------------------------------------------------------------

#: (binding pattern, routing key, matches?) — agreed with RabbitMQ 3.10.8.
#: '' is zero words; '.' is two empty words; '*' is exactly one (possibly empty) word.
TOPIC_CASES: list[tuple[str, str, bool]] = [
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.b.c", "a.b.c.d", False),
    ("a.b.c", "A.b.c", False),
    ("*", "a", True),
    ("*", "", False),
    ("*", "a.b", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("*.*", ".", True),
    ("*.*", "a.", True),
    ("*.*", ".b", True),
    ("a.*", "a.", True),
    ("a.*", "a", False),
    ("*.b", ".b", True),
    ("#", "", True),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("#", ".", True),
    ("#", "..", True),
    ("#.#", "", True),
    ("#.#", "a", True),
    ("#.#", "a.b", True),
    ("#.#", "a.b.c", True),
    ("#.#.#", "", True),
    ("a.#", "a", True),
    ("a.#", "a.b", True),
    ("a.#", "a.b.c", True),
    ("a.#", "b.a", False),
    ("a.#", "ab", False),
    ("a.#", "a.", True),
    ("#.a", "a", True),
    ("#.a", "b.a", True),
    ("#.a", "a.b", False),
    ("#.a", ".a", True),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.b.c", False),
    ("a.#.b", "b.a.b", False),
    ("a.#.b", "a..b", True),
    ("a.#.b", "a.x.b.b", True),
    ("a.#.#.b", "a.b", True),
    ("a.#.#.b", "a.x.y.z.b", True),
    ("a.*.b", "a..b", True),
    ("a.*.b", "a.b", False),
    ("a.*.b", "a.x.b", True),
    ("a.*.b", "a.x.y.b", False),
    ("a..b", "a..b", True),
    ("a..b", "a.b", False),
    ("a..b", "a.x.b", False),
    ("", "", True),
    ("", "a", False),
    ("", ".", False),
    (".", ".", True),
    (".", "", False),
    (".", "a.", False),
    ("*.#", "", False),
    ("*.#", "a", True),
    ("*.#", "a.b", True),
    ("#.*", "", False),
    ("#.*", "a", True),
    ("#.*", "a.b.c", True),
    ("*.*.#", "a", False),
    ("*.*.#", "a.b", True),
    ("#.*.#", "a", True),
    ("#.*.#", "", False),
    ("#.b.#", "b", True),
    ("#.b.#", "a.b.c", True),
    ("#.b.#", "abc", False),
    ("#.b.#", "a.bb.c", False),
    ("a.*.#", "a.b", True),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b.c.d", True),
    ("*.*.*", "..", True),
    ("*.*.*", "a..", True),
    # wildcards are only wildcards as whole words
    ("a*b", "a*b", True),
    ("a*b", "axb", False),
    ("a#", "a#", True),
    ("a#", "a.b", False),
    ("a#", "a", False),
    ("ünï.*", "ünï.x", True),
    ("*.ünï", "x.ünï", True),
    ("*.ünï", "x.uni", False),
]


def test_topic_match_table(broker: Broker, unique: str) -> None:
    """Every TOPIC_CASES verdict holds, all checked through one topic exchange."""
    ex = f"{unique}-topic"
    patterns = sorted({p for p, _, _ in TOPIC_CASES})
    keys = sorted({k for _, k, _ in TOPIC_CASES})
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(ex, "topic", auto_delete=True)
        queues: dict[str, str] = {}
        for pattern in patterns:
            queues[pattern] = ch.queue_declare("", exclusive=True).method.queue
            ch.queue_bind(queues[pattern], ex, pattern)
        for key in keys:
            ch.basic_publish(ex, key, key.encode("utf-8"))
        got = {p: {b.decode("utf-8") for b in drain_until_marker(ch, q)} for p, q in queues.items()}
        ch.exchange_delete(ex)
    wrong = [(p, k, want) for p, k, want in TOPIC_CASES if (k in got[p]) != want]
    assert not wrong, f"(pattern, key, expected) mismatches: {wrong}"


def test_topic_each_queue_gets_one_copy_with_overlapping_patterns(
    broker: Broker, unique: str
) -> None:
    """A queue bound with several matching patterns receives the message once."""
    ex = f"{unique}-topic"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(ex, "topic", auto_delete=True)
        q = ch.queue_declare("", exclusive=True).method.queue
        for pattern in ("#", "a.*", "a.b", "*.b", "#.b"):
            ch.queue_bind(q, ex, pattern)
        ch.basic_publish(ex, "a.b", b"once")
        assert drain_until_marker(ch, q) == [b"once"]
        ch.exchange_delete(ex)


def test_topic_unbind_one_pattern_keeps_others(broker: Broker, unique: str) -> None:
    """Unbinding one pattern leaves the queue's other topic bindings working."""
    ex = f"{unique}-topic"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(ex, "topic")
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, ex, "a.#")
        ch.queue_bind(q, ex, "*.b")
        ch.queue_unbind(q, ex, "a.#")
        for key in ("a.c", "x.b", "a.b"):
            ch.basic_publish(ex, key, key.encode())
        assert drain_until_marker(ch, q) == [b"x.b", b"a.b"]
        ch.exchange_delete(ex)


def test_topic_long_keys(broker: Broker, unique: str) -> None:
    """255-byte keys and many-word keys route like any other."""
    ex = f"{unique}-topic"
    many_words = ".".join(["w"] * 127)  # 253 bytes, 127 words
    long_word = "x" * 255
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(ex, "topic", auto_delete=True)
        q_hash = ch.queue_declare("", exclusive=True).method.queue
        q_exact = ch.queue_declare("", exclusive=True).method.queue
        q_tail = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q_hash, ex, "w.#.w")
        ch.queue_bind(q_exact, ex, long_word)
        ch.queue_bind(q_tail, ex, "#.w.w")
        ch.basic_publish(ex, many_words, b"many")
        ch.basic_publish(ex, long_word, b"long")
        assert drain_until_marker(ch, q_hash) == [b"many"]
        assert drain_until_marker(ch, q_exact) == [b"long"]
        assert drain_until_marker(ch, q_tail) == [b"many"]
        ch.exchange_delete(ex)


# --- headers -----------------------------------------------------------------------------------

#: name -> binding arguments
HEADER_BINDINGS: dict[str, dict[str, Any]] = {
    "all_ab": {"x-match": "all", "a": 1, "b": "x"},
    "any_ab": {"x-match": "any", "a": 1, "b": "x"},
    "default_ab": {"a": 1, "b": "x"},  # no x-match: defaults to all
    "all_empty": {"x-match": "all"},
    "any_empty": {"x-match": "any"},
    "no_args": {},
    "all_x": {"x-match": "all", "x-foo": "bar"},  # x- keys ignored: like all_empty
    "any_x": {"x-match": "any", "x-foo": "bar"},  # x- keys ignored: like any_empty
    "allx_x": {"x-match": "all-with-x", "x-foo": "bar"},
    "anyx_x_a2": {"x-match": "any-with-x", "x-foo": "bar", "a": 2},
    "all_x_a": {"x-match": "all", "x-foo": "bar", "a": 1},
    "void_a": {"x-match": "all", "a": None},  # void value: presence only
    "str1": {"x-match": "all", "a": "1"},  # string '1' is not integer 1
    "bool": {"x-match": "all", "t": True},  # bool true is not integer 1
}

#: message name -> message headers
HEADER_MESSAGES: dict[str, dict[str, Any] | None] = {
    "m_a1_bx": {"a": 1, "b": "x"},
    "m_a1": {"a": 1},
    "m_bx": {"b": "x"},
    "m_a1_bx_c": {"a": 1, "b": "x", "c": 3},
    "m_a2_bx": {"a": 2, "b": "x"},
    "m_none": None,
    "m_empty": {},
    "m_xfoo": {"x-foo": "bar"},
    "m_xfoo_a1": {"x-foo": "bar", "a": 1},
    "m_a_str1": {"a": "1"},
    "m_a_str": {"a": "zzz"},
    "m_t_true": {"t": True},
    "m_t_1": {"t": 1},
    "m_a_long": {"a": 1 << 40},
}

_EVERYTHING = set(HEADER_MESSAGES)

#: binding name -> the messages it receives (agreed with RabbitMQ 3.10.8)
HEADER_EXPECTED: dict[str, set[str]] = {
    "all_ab": {"m_a1_bx", "m_a1_bx_c"},
    "any_ab": {"m_a1", "m_a1_bx", "m_a1_bx_c", "m_a2_bx", "m_bx", "m_xfoo_a1"},
    "default_ab": {"m_a1_bx", "m_a1_bx_c"},
    "all_empty": _EVERYTHING,
    "any_empty": set(),
    "no_args": _EVERYTHING,
    "all_x": _EVERYTHING,
    "any_x": set(),
    "allx_x": {"m_xfoo", "m_xfoo_a1"},
    "anyx_x_a2": {"m_a2_bx", "m_xfoo", "m_xfoo_a1"},
    "all_x_a": {"m_a1", "m_a1_bx", "m_a1_bx_c", "m_xfoo_a1"},
    "void_a": {
        "m_a1",
        "m_a1_bx",
        "m_a1_bx_c",
        "m_a2_bx",
        "m_a_long",
        "m_a_str",
        "m_a_str1",
        "m_xfoo_a1",
    },
    "str1": {"m_a_str1"},
    "bool": {"m_t_true"},
}


def test_headers_match_table(broker: Broker, unique: str) -> None:
    """x-match all/any/all-with-x/any-with-x, defaults, void values and type-sensitivity."""
    ex = f"{unique}-headers"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(ex, "headers", auto_delete=True)
        queues: dict[str, str] = {}
        for name, args in HEADER_BINDINGS.items():
            queues[name] = ch.queue_declare("", exclusive=True).method.queue
            ch.queue_bind(queues[name], ex, "ignored-key", arguments=args)
        for name, headers in HEADER_MESSAGES.items():
            ch.basic_publish(ex, "any-key", name.encode(), pika.BasicProperties(headers=headers))
        got = {n: {b.decode() for b in drain_until_marker(ch, q)} for n, q in queues.items()}
        ch.exchange_delete(ex)
    wrong = {n: (got[n], want) for n, want in HEADER_EXPECTED.items() if got[n] != want}
    assert not wrong, f"binding -> (got, expected): {wrong}"


def test_headers_routing_key_is_ignored(broker: Broker, unique: str) -> None:
    """The headers exchange never looks at the routing key."""
    ex = f"{unique}-headers"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(ex, "headers", auto_delete=True)
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, ex, "bind-key", arguments={"x-match": "all", "k": "v"})
        ch.basic_publish(ex, "other-key", b"1", pika.BasicProperties(headers={"k": "v"}))
        ch.basic_publish(ex, "bind-key", b"2", pika.BasicProperties(headers={"k": "w"}))
        assert drain_until_marker(ch, q) == [b"1"]
        ch.exchange_delete(ex)


def test_headers_unbind_uses_arguments(broker: Broker, unique: str) -> None:
    """Two bindings differing only in arguments are distinct; unbind removes the named one."""
    ex = f"{unique}-headers"
    with pika_channel(broker.url) as (_conn, ch):
        ch.exchange_declare(ex, "headers")
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, ex, "", arguments={"k": "1"})
        ch.queue_bind(q, ex, "", arguments={"k": "2"})
        ch.queue_unbind(q, ex, "", arguments={"k": "1"})
        ch.basic_publish(ex, "", b"one", pika.BasicProperties(headers={"k": "1"}))
        ch.basic_publish(ex, "", b"two", pika.BasicProperties(headers={"k": "2"}))
        assert drain_until_marker(ch, q) == [b"two"]
        ch.exchange_delete(ex)


@pytest.mark.parametrize(
    ("x_match", "text"),
    [
        (
            "bogus",
            'PRECONDITION_FAILED - Invalid x-match field value <<"bogus">>; '
            "expected all, any, all-with-x, or any-with-x",
        ),
        (
            1,
            "PRECONDITION_FAILED - Invalid x-match field type signedint (value 1); "
            "expected longstr",
        ),
    ],
)
def test_headers_invalid_x_match_is_406(
    broker: Broker, unique: str, x_match: object, text: str
) -> None:
    """An x-match that is not all/any/all-with-x/any-with-x is refused at bind time."""
    ex = f"{unique}-headers"
    with pika_channel(broker.url) as (conn, ch):
        ch.exchange_declare(ex, "headers")
        q = ch.queue_declare("", exclusive=True).method.queue
        try:
            with pytest.raises(ChannelClosedByBroker) as exc:
                ch.queue_bind(q, ex, "", arguments={"x-match": x_match})
            assert (exc.value.reply_code, exc.value.reply_text) == (406, text)
            assert conn.is_open
        finally:
            conn.channel().exchange_delete(ex)
