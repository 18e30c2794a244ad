"""protocol.tables: field tables and content headers are encoded without recursion, at any
depth, byte for byte as the recursive encoder it replaced encoded them."""

from __future__ import annotations

import collections
import datetime as dt
import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands, encode

from leveret.protocol.tables import Long, Timestamp, content_header, encode_table, encode_value
from leveret.protocol.validate import decode_properties, decode_table

# ------------------------------------------------------- the recursive encoder, as reference
_I = struct.Struct(">i")
_Q = struct.Struct(">q")
_L = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_CONTENT_HEADER = struct.Struct(">HHQ")


def old_encode_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"t" + (b"\x01" if value else b"\x00")
    if isinstance(value, Long):
        return b"l" + _Q.pack(value)
    if isinstance(value, Timestamp):
        return b"T" + _U64.pack(value)
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + _I.pack(value)
        return b"l" + _Q.pack(value)
    if isinstance(value, dict):
        return b"F" + old_encode_table(value)
    if isinstance(value, list):
        body = b"".join(old_encode_value(item) for item in value)
        return b"A" + _L.pack(len(body)) + body
    if isinstance(value, bytes):
        return b"S" + _L.pack(len(value)) + value
    return encode.encode_table_value(value)


def old_encode_table(table: dict[str, Any] | None) -> bytes:
    if not table:
        return b"\x00\x00\x00\x00"
    parts = []
    for key, value in table.items():
        raw = (key if isinstance(key, bytes) else key.encode("utf-8"))[:255]
        parts += (bytes((len(raw),)), raw, old_encode_value(value))
    body = b"".join(parts)
    return _L.pack(len(body)) + body


class _OldProperties(commands.Basic.Properties):
    def encode_property(self, name: str, value: Any) -> bytes:
        kind = self.amqp_type(name)
        if kind == "table":
            return old_encode_table(value)
        if isinstance(value, bytes) and kind == "shortstr":
            return bytes((len(value),)) + value
        if isinstance(value, Timestamp):
            return _U64.pack(value)
        return super().encode_property(name, value)


def old_content_header(body_size: int, properties: commands.Basic.Properties) -> bytes:
    rewritten = _OldProperties()
    for name in commands.Basic.Properties.__slots__:
        setattr(rewritten, name, getattr(properties, name))
    return _CONTENT_HEADER.pack(60, 0, body_size) + rewritten.marshal()


# ---------------------------------------------------------------------------- helpers
def outcome(fn: Any, *args: Any) -> tuple[Any, ...]:
    """What ``fn(*args)`` returns, or the type and message of what it raises."""
    try:
        return ("returned", fn(*args))
    except Exception as exc:
        return ("raised", type(exc), str(exc))


class MyInt(int):
    pass


class MyStr(str):
    pass


class MyBytes(bytes):
    pass


class MyDict(dict):
    pass


class MyList(list):
    pass


def same_tree(a: Any, b: Any) -> bool:
    """Equal values of the same types, dict keys in the same order, compared without
    recursion (``==`` on deep containers recurses in C)."""
    todo = [(a, b)]
    while todo:
        x, y = todo.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if list(x) != list(y):
                return False
            todo += ((x[key], y[key]) for key in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            todo += zip(x, y, strict=True)
        elif x != y:
            return False
    return True


# --------------------------------------------------- byte for byte as the recursive encoder
keys = st.one_of(
    st.text(max_size=10),
    st.binary(max_size=10),  # a field name that was not UTF-8
    st.text(min_size=120, max_size=140),  # over 255 bytes in UTF-8 sometimes: truncated
    st.text(max_size=5).map(MyStr),
)
leaves = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**31) - 2, -(2**31) + 2) | st.integers(2**31 - 2, 2**31 + 2),
    st.integers(-(2**63), 2**63 - 1).map(Long),
    st.integers(0, 2**64 - 1).map(Timestamp),
    st.integers(-(2**40), 2**40).map(MyInt),
    st.text(max_size=12),
    st.text(max_size=12).map(MyStr),
    st.binary(max_size=12),
    st.binary(max_size=12).map(MyBytes),
    st.binary(max_size=12).map(bytearray),
    st.floats(width=32),
    st.decimals(min_value=-2_000_000, max_value=2_000_000, places=3),
    st.integers(-1000, 1000).map(lambda n: Decimal(n).scaleb(2)),
    st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2200, 1, 1)),
    st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2200, 1, 1),
                 timezones=st.just(dt.UTC) | st.just(dt.timezone(dt.timedelta(hours=-5)))),
    st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2100, 1, 1)).map(lambda d: d.timetuple()),
    st.none(),
)
# values neither encoder can write: each raises, and the same error
bad_leaves = st.one_of(
    st.integers(2**63, 2**64) | st.integers(-(2**64), -(2**63) - 1),
    st.integers(2**63, 2**64).map(Long),
    st.floats(min_value=1e39),  # too large for a 32-bit float
    st.decimals(allow_nan=True, allow_infinity=True).filter(lambda d: not d.is_finite()),
    st.integers(2**31, 2**40).map(lambda n: Decimal(n).scaleb(-1)),
    st.tuples(st.integers()),
)


def nest(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaf,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.lists(children, max_size=3).map(MyList),
            st.dictionaries(keys, children, max_size=4),
            st.dictionaries(keys, children, max_size=3).map(MyDict),
            st.dictionaries(keys, children, max_size=3).map(collections.OrderedDict),
        ),
        max_leaves=25,
    )


values = nest(leaves)
tables = st.none() | st.dictionaries(keys, values, max_size=8)


@settings(max_examples=300, deadline=None)
@given(tables)
def test_encode_table_is_byte_for_byte_the_recursive_encoders(table: Any) -> None:
    assert encode_table(table) == old_encode_table(table)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, nest(leaves | bad_leaves), max_size=8))
def test_encode_table_raises_as_the_recursive_encoder_did(table: Any) -> None:
    assert outcome(encode_table, table) == outcome(old_encode_table, table)


@settings(max_examples=300, deadline=None)
@given(values)
def test_encode_value_is_byte_for_byte_the_recursive_encoders(value: Any) -> None:
    assert encode_value(value) == old_encode_value(value)


shortstrs = st.text(max_size=20) | st.binary(max_size=20)


@st.composite
def properties(draw: st.DrawFn) -> commands.Basic.Properties:
    p = commands.Basic.Properties()
    p.content_type = draw(st.none() | shortstrs)
    p.headers = draw(tables)
    p.delivery_mode = draw(st.sampled_from([None, 1, 2]))
    p.priority = draw(st.none() | st.integers(0, 255))
    p.correlation_id = draw(st.none() | shortstrs)
    p.expiration = draw(st.none() | st.integers(0, 10**9).map(str))
    p.timestamp = draw(st.none()
                       | st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2100, 1, 1))
                       | st.integers(2**34, 2**64 - 1).map(Timestamp))
    p.user_id = draw(st.none() | shortstrs)
    return p


@settings(max_examples=200, deadline=None)
@given(properties(), st.integers(0, 2**63))
def test_content_header_is_byte_for_byte_the_recursive_encoders(
    props: commands.Basic.Properties, body_size: int
) -> None:
    assert content_header(body_size, props) == old_content_header(body_size, props)


def test_the_common_headers_are_written_as_before() -> None:
    celery = {
        "lang": "py", "task": "proj.tasks.add", "id": "6ba7b810", "shadow": None, "eta": None,
        "retries": 0, "timelimit": [None, None], "ignore_result": False, "stamps": {},
        "big": 2**40, "x-delivery-count": Long(2), "x-death": [{
            "count": Long(1), "reason": "expired", "queue": "q", "exchange": "",
            "time": dt.datetime(2024, 5, 1, tzinfo=dt.UTC), "routing-keys": ["q"],
            "original-expiration": "100"}],
        b"\xff name": b"\xfe value", "ratio": 0.5, "price": Decimal("1.25"),
        "when": Timestamp(2**40), "blob": bytearray(b"\x00\x01"),
    }
    assert encode_table(celery) == old_encode_table(celery)
    assert encode_value(celery) == old_encode_value(celery)
    assert encode_table(None) == encode_table({}) == b"\x00\x00\x00\x00"
    assert encode_value([]) == b"A\x00\x00\x00\x00"
    assert encode_value({}) == b"F\x00\x00\x00\x00"
    assert encode_value("é") == b"S\x00\x00\x00\x02\xc3\xa9"


def test_a_table_that_contains_itself_is_refused() -> None:
    table: dict[str, Any] = {"a": 1}
    table["self"] = table
    with pytest.raises(ValueError, match="contains itself"):
        encode_table(table)
    array: list[Any] = [1]
    array.append(array)
    with pytest.raises(ValueError, match="contains itself"):
        encode_value(array)
    deep: dict[str, Any] = {}  # a cycle of three, starting 100 deep
    node = deep
    for _ in range(100):
        node["n"] = node = {}
    node["a"] = [{"b": node}]
    with pytest.raises(ValueError, match="contains itself"):
        encode_table(deep)


def test_the_same_table_in_several_places_is_not_a_cycle() -> None:
    shared = {"x": [1, {"y": None}]}
    table = {"a": shared, "b": [shared, shared]}
    assert encode_table(table) == old_encode_table(table)
    root: dict[str, Any] = {}
    node = root
    for _ in range(100):  # deep enough that the enclosing tables are checked
        node["n"] = node = {}
    node.update(a=shared, b=[shared, [shared]], c=shared)
    data = encode_table(root)
    assert encode_table(decode_table(data)[0]) == data


# ------------------------------------------------------------------------- any depth
DEPTH = 5000


def nested_tables(depth: int) -> tuple[dict[str, Any], bytes]:
    """A table ``depth`` tables deep, with fields before and after each nested one, and its
    encoding, built separately from the inside out."""
    root: dict[str, Any] = {}
    node = root
    for level in range(depth):
        child: dict[str, Any] = {}
        node.update({"n": level, "inner": child, "after": "x" * (level % 3)})
        node = child
    node["leaf"] = None
    data = b"\x00\x00\x00\x06\x04leafV"
    for level in reversed(range(depth)):
        after = "x" * (level % 3)
        body = (b"\x01nI" + _I.pack(level) + b"\x05innerF" + data
                + b"\x05afterS" + _L.pack(len(after)) + after.encode())
        data = _L.pack(len(body)) + body
    return root, data


def nested_arrays(depth: int) -> tuple[dict[str, Any], bytes]:
    """A table holding an array ``depth`` arrays deep, with items before and after each
    nested one, and its encoding, built separately from the inside out."""
    outer: list[Any] = []
    node = outer
    for level in range(depth):
        child: list[Any] = []
        node += [level, child, level % 2 == 0]
        node = child
    node.append("end")
    data = _L.pack(8) + b"S" + _L.pack(3) + b"end"  # the innermost array
    for level in reversed(range(depth)):
        body = b"I" + _I.pack(level) + b"A" + data + (b"t\x01" if level % 2 == 0 else b"t\x00")
        data = _L.pack(len(body)) + body
    body = b"\x01aA" + data
    return {"a": outer}, _L.pack(len(body)) + body


def alternating(depth: int) -> dict[str, Any]:
    """Tables and arrays in turn, ``depth`` deep, with every leaf type the decoder returns as
    it was encoded."""
    root: dict[str, Any] = {}
    node: Any = root
    for level in range(depth):
        child: Any = [] if level % 2 == 0 else {}
        if isinstance(node, dict):
            node.update({"s": "é", "i": -level, "l": 2**40 + level, "next": child, "v": None})
        else:
            node += [True, child, b"\xff".decode("latin-1"), level]
        node = child
    return root


def test_old_encoder_could_not_write_these() -> None:
    table, _ = nested_tables(DEPTH)
    with pytest.raises(RecursionError):
        old_encode_table(table)


def test_round_trip_of_deeply_nested_tables() -> None:
    table, expected = nested_tables(DEPTH)
    data = encode_table(table)
    assert data == expected
    decoded, end = decode_table(data)
    assert end == len(data)
    assert same_tree(decoded, table)


def test_round_trip_of_deeply_nested_arrays() -> None:
    table, expected = nested_arrays(DEPTH)
    data = encode_table(table)
    assert data == expected
    decoded, end = decode_table(data)
    assert end == len(data)
    assert same_tree(decoded, table)
    assert encode_value(table["a"]) == b"A" + expected[4 + 3:]


def test_round_trip_of_deeply_nested_tables_and_arrays_in_turn() -> None:
    table = alternating(DEPTH)
    data = encode_table(table)
    decoded, end = decode_table(data)
    assert end == len(data)
    assert same_tree(decoded, table)
    assert encode_table(decoded) == data


def test_content_header_with_deeply_nested_headers() -> None:
    headers, _ = nested_tables(3000)
    headers["x-death"] = [{"count": Long(2), "queue": "q", "reason": "rejected"}]
    props = commands.Basic.Properties(
        content_type="application/json", headers=headers, delivery_mode=2, priority=3,
        correlation_id="c-1", message_id=b"\xff\xfe",  # as decoded when it was not UTF-8
        timestamp=dt.datetime(2024, 5, 1, tzinfo=dt.UTC), app_id="app",
    )
    payload = content_header(123, props)
    assert payload[:12] == _CONTENT_HEADER.pack(60, 0, 123)
    decoded = decode_properties(payload)
    assert decoded.content_type == "application/json"
    assert decoded.delivery_mode == 2
    assert decoded.priority == 3
    assert decoded.correlation_id == "c-1"
    assert decoded.message_id == b"\xff\xfe"
    assert decoded.timestamp == dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    assert decoded.app_id == "app"
    # x-death's count comes back as a plain int; the rest as it was
    headers["x-death"][0]["count"] = 2
    assert same_tree(decoded.headers, headers)
