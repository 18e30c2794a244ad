"""protocol.validate: content headers are accepted as RabbitMQ accepts them and decoded as pamqp
decodes them, without recursion."""

from __future__ import annotations

import datetime as dt
import math
import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp import decode as pdecode
from pamqp.header import ContentHeader

from leveret.protocol.errors import SyntaxError_
from leveret.protocol.tables import Double, Timestamp, content_header, encode_table
from leveret.protocol.validate import check_content_header, decode_properties, decode_table

SLOTS = commands.Basic.Properties.__slots__
MAX_MS = 253_402_214_400_000  # 9999-12-31 in ms: the last timestamp datetime holds
# (flag, kind) of the basic properties in wire order.
PROPERTY_KINDS = (
    (0x8000, "shortstr"), (0x4000, "shortstr"), (0x2000, "table"), (0x1000, "octet"),
    (0x0800, "octet"), (0x0400, "shortstr"), (0x0200, "shortstr"), (0x0100, "shortstr"),
    (0x0080, "shortstr"), (0x0040, "timestamp"), (0x0020, "shortstr"), (0x0010, "shortstr"),
    (0x0008, "shortstr"), (0x0004, "shortstr"),
)


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def header(flags: int, properties: bytes = b"", body_size: int = 0) -> bytes:
    return struct.pack(">HHQH", 60, 0, body_size, flags) + properties


def pamqp_properties(payload: bytes) -> commands.Basic.Properties:
    content = ContentHeader()
    content.unmarshal(payload)
    return content.properties


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types, dict keys in the same order (NaN equals NaN). A
    ``Double`` (ours, for a 'd') matches pamqp's float."""
    if type(a) is not type(b) and not (type(a) is Double and type(b) is float):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, dt.datetime):
        return a == b and a.tzinfo == b.tzinfo
    return a == b


def same_properties(ours: commands.Basic.Properties, theirs: commands.Basic.Properties) -> None:
    assert type(ours) is commands.Basic.Properties
    for name in SLOTS:
        assert same(getattr(ours, name), getattr(theirs, name)), name


def values_in(properties: commands.Basic.Properties) -> list[Any]:
    """Every property value, table key and nested value, found without recursion."""
    found: list[Any] = []
    todo = [getattr(properties, name) for name in SLOTS]
    while todo:
        value = todo.pop()
        found.append(value)
        if isinstance(value, dict):
            found += value.keys()
            todo += value.values()
        elif isinstance(value, list):
            todo += value
    return found


# ------------------------------------------------------------- what pamqp marshals
texts = st.text(max_size=12)
shortstrs = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
pamqp_leaves = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.builds(lambda m, s: Decimal(m).scaleb(-s), st.integers(-(2**31), 2**31 - 1),
              st.integers(0, 255)),
    st.floats(width=32, allow_nan=False, allow_infinity=False),  # RabbitMQ refuses the others
    texts,
    st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2105, 1, 1), timezones=st.just(dt.UTC)),
    st.none(),
    st.binary(max_size=12).map(bytearray),
)
pamqp_values = st.recursive(
    pamqp_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)


@st.composite
def pamqp_headers(draw: st.DrawFn) -> bytes:
    properties = commands.Basic.Properties(
        content_type=draw(st.none() | shortstrs),
        content_encoding=draw(st.none() | shortstrs),
        headers=draw(st.none() | st.dictionaries(texts, pamqp_values, max_size=6)),
        delivery_mode=draw(st.sampled_from([None, 1, 2])),
        priority=draw(st.none() | st.integers(0, 255)),
        correlation_id=draw(st.none() | shortstrs),
        reply_to=draw(st.none() | shortstrs),
        expiration=draw(st.none() | st.integers(0, 10**9).map(str)),
        message_id=draw(st.none() | shortstrs),
        timestamp=draw(st.none() | st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2105, 1, 1))),
        message_type=draw(st.none() | shortstrs),
        user_id=draw(st.none() | shortstrs),
        app_id=draw(st.none() | shortstrs),
    )
    properties.cluster_id = draw(st.just("") | shortstrs)  # deprecated; pamqp's init refuses it
    return ContentHeader(0, draw(st.integers(0, 2**63 - 1)), properties).marshal()


@settings(max_examples=100, deadline=None)
@given(pamqp_headers())
def test_what_pamqp_marshals_is_accepted_and_decoded_as_pamqp_does(payload: bytes) -> None:
    check_content_header(payload)
    same_properties(decode_properties(payload), pamqp_properties(payload))


# ------------------------------------------------------------- raw wire bytes, every type tag
# A raw value is (bytes, marks): marks are the (offset, kind) of its type tags ("tag") and
# lengths ("len1", "len4"), the bytes the mutation tests corrupt.
Raw = tuple[bytes, tuple[tuple[int, str], ...]]
FIXED = {"t": 1, "b": 1, "B": 1, "s": 2, "u": 2, "I": 4, "i": 4, "l": 8, "L": 8, "D": 5, "V": 0}


def shifted(marks: tuple[tuple[int, str], ...], by: int) -> tuple[tuple[int, str], ...]:
    return tuple((at + by, kind) for at, kind in marks)


def concat(parts: list[Raw]) -> Raw:
    data, marks = b"", ()
    for part, part_marks in parts:
        marks += shifted(part_marks, len(data))
        data += part
    return data, marks


def sized(tag: bytes, body: Raw) -> Raw:
    """``tag`` (maybe empty), a 4-byte length and ``body``."""
    data, marks = body
    head = ((0, "tag"),) if tag else ()
    return tag + u32(len(data)) + data, (*head, (len(tag), "len4"), *shifted(marks, len(tag) + 4))


def fields(pairs: list[tuple[bytes, Raw]]) -> Raw:
    """Table fields: each a shortstr name and a value."""
    return concat([concat([(bytes((len(name),)) + name, ((0, "len1"),)), value])
                   for name, value in pairs])


utf8_names = st.text(max_size=10).map(str.encode).filter(lambda b: len(b) <= 255)
any_bytes_names = st.binary(max_size=10)
timestamps = st.integers(0, 2**32 - 1) | st.integers(2**32, MAX_MS)


def raw_leaves(strings: st.SearchStrategy[bytes]) -> st.SearchStrategy[Raw]:
    fixed = [st.binary(min_size=n, max_size=n).map(lambda b, t=tag: (t.encode() + b, ((0, "tag"),)))
             for tag, n in FIXED.items()]
    return st.one_of(
        *fixed,
        st.floats(width=32, allow_nan=False, allow_infinity=False).map(
            lambda v: (b"f" + struct.pack(">f", v), ((0, "tag"),))),
        st.floats(allow_nan=False, allow_infinity=False).map(
            lambda v: (b"d" + struct.pack(">d", v), ((0, "tag"),))),
        timestamps.map(lambda v: (b"T" + v.to_bytes(8, "big"), ((0, "tag"),))),
        strings.map(lambda b: sized(b"S", (b, ()))),
        st.binary(max_size=8).map(lambda b: sized(b"x", (b, ()))),
    )


def raw_values(names: st.SearchStrategy[bytes], strings: st.SearchStrategy[bytes]):
    return st.recursive(
        raw_leaves(strings),
        lambda children: (
            st.lists(children, max_size=4).map(lambda vs: sized(b"A", concat(vs)))
            | st.lists(st.tuples(names, children), max_size=4).map(
                lambda fs: sized(b"F", fields(fs)))
        ),
        max_leaves=20,
    )


def raw_tables(names=utf8_names) -> st.SearchStrategy[Raw]:
    """A field table with its length."""
    return st.lists(st.tuples(names, raw_values(names, st.binary(max_size=12))), max_size=6).map(
        lambda fs: sized(b"", fields(fs)))


@st.composite
def raw_headers(draw: st.DrawFn, names=utf8_names, text=utf8_names) -> Raw:
    """A basic content header of raw property bytes, with its marks (the flags word too)."""
    flags = draw(st.integers(0, 0x3FFF)) << 2
    parts: list[Raw] = []
    for flag, kind in PROPERTY_KINDS:
        if not flags & flag:
            continue
        if kind == "shortstr":
            value = draw(text)
            parts.append((bytes((len(value),)) + value, ((0, "len1"),)))
        elif kind == "table":
            parts.append(draw(raw_tables(names)))
        elif kind == "octet":
            parts.append((draw(st.binary(min_size=1, max_size=1)), ()))
        else:
            parts.append((draw(timestamps).to_bytes(8, "big"), ()))
    data, marks = concat(parts)
    return header(flags, data, draw(st.integers(0, 2**64 - 1))), ((12, "len1"), (13, "len1"),
                                                                   *shifted(marks, 14))


@settings(max_examples=100, deadline=None)
@given(raw_headers())
def test_every_type_tag_is_accepted_and_decoded_as_pamqp_does(raw: Raw) -> None:
    payload, _ = raw
    check_content_header(payload)
    same_properties(decode_properties(payload), pamqp_properties(payload))


@settings(max_examples=50, deadline=None)
@given(raw_tables(), st.binary(max_size=8), st.binary(max_size=8))
def test_decode_table_at_an_offset(raw: Raw, before: bytes, after: bytes) -> None:
    table, _ = raw
    decoded, end = decode_table(before + table + after, len(before))
    assert end == len(before) + len(table)
    consumed, theirs = pdecode.field_table(table)
    assert consumed == len(table)
    assert same(decoded, theirs)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(utf8_names, st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(
        lambda v: b"f" + struct.pack(">f", v)),
    st.floats(allow_nan=False, allow_infinity=False).map(
        lambda v: b"d" + struct.pack(">d", v)),
)), max_size=6, unique_by=lambda field: field[0]))
def test_floats_and_doubles_are_written_back_as_they_came(
    fields: list[tuple[bytes, bytes]],
) -> None:
    """A 'd' is decoded to a ``Double`` and a 'f' to a float: re-encoding the table gives the
    same octets (RabbitMQ keeps each type), whatever the value."""
    raw = b"".join(bytes((len(name),)) + name + value for name, value in fields)
    raw = struct.pack(">I", len(raw)) + raw
    decoded, _ = decode_table(raw)
    assert encode_table(decoded) == raw


# ------------------------------------------------------------- malformed headers
def outcome(payload: bytes) -> commands.Basic.Properties | None:
    """The decoded properties, or None when both the check and the decoder refuse the header
    with the same SyntaxError_ (any other exception fails the test)."""
    try:
        check_content_header(payload)
    except SyntaxError_ as error:
        refused: SyntaxError_ | None = error
    else:
        refused = None
    try:
        properties = decode_properties(payload)
    except SyntaxError_ as error:
        assert refused is not None, f"decoder refused what the check accepts: {error}"
        assert error.detail == refused.detail
        assert error.reply_code == 502
        return None
    assert refused is None, f"decoder accepted what the check refuses: {refused}"
    return properties


def check_like_pamqp(payload: bytes, ours: commands.Basic.Properties) -> None:
    """An accepted header decodes as pamqp decodes it, read as RabbitMQ reads the flags."""
    flags_word = payload[12:14]
    # RabbitMQ ignores flag bit 0 ("another flags word follows"); pamqp would read one.
    payload = payload[:13] + bytes((payload[13] & 0xFE,)) + payload[14:]
    try:
        theirs = pamqp_properties(payload)
    except (ValueError, OverflowError, OSError) as error:
        # pamqp refuses a shortstr or field name that is not UTF-8 and a timestamp datetime
        # cannot hold (both fine on the wire, decoded to bytes and Timestamp), nothing else.
        assert isinstance(error, UnicodeDecodeError | OverflowError | OSError) or (
            "out of range" in str(error)), (error, flags_word)
        return
    same_properties(ours, theirs)


@settings(max_examples=50, deadline=None)
@given(raw_headers(), st.data())
def test_truncated_headers_are_refused(raw: Raw, data: st.DataObject) -> None:
    payload, _ = raw
    cut = data.draw(st.integers(0, len(payload) - 1))
    assert outcome(payload[:cut]) is None


@settings(max_examples=150, deadline=None)
@given(raw_headers(), st.data())
def test_corrupted_headers_are_refused_or_decoded_like_pamqp(raw: Raw, data: st.DataObject):
    payload, marks = raw
    mutated = bytearray(payload)
    how = data.draw(st.sampled_from(["mark", "mark", "mark", "byte", "insert", "delete"]))
    if how == "mark":
        at, kind = data.draw(st.sampled_from(marks))
        if kind == "len4":
            old = int.from_bytes(mutated[at:at + 4], "big")
            new = data.draw(st.integers(-6, 6).map(lambda d: (old + d) % 2**32)
                            | st.integers(0, 2**32 - 1))
            mutated[at:at + 4] = u32(new)
        elif kind == "len1":
            mutated[at] = data.draw(st.integers(-3, 3).map(lambda d: (mutated[at] + d) % 256)
                                    | st.integers(0, 255))
        else:
            tags = st.sampled_from(b"tbBsuIilLfdDTSxFAVUZ\x00") | st.integers(0, 255)
            mutated[at] = data.draw(tags)
    elif how == "byte":
        at = data.draw(st.integers(0, len(payload) - 1))
        mutated[at] = data.draw(st.integers(0, 255))
    elif how == "insert":
        mutated.insert(data.draw(st.integers(12, len(payload))), data.draw(st.integers(0, 255)))
    else:
        del mutated[data.draw(st.integers(12, len(payload) - 1))]
    ours = outcome(bytes(mutated))
    if ours is not None:
        check_like_pamqp(bytes(mutated), ours)


@settings(max_examples=60, deadline=None)
@given(raw_headers())
def test_each_length_and_tag_corrupted_in_turn(raw: Raw) -> None:
    payload, marks = raw
    for at, kind in marks:
        if kind == "tag":
            variants = [payload[:at] + tag + payload[at + 1:] for tag in
                        (b"U", b"\x00", b"V", b"t", b"I", b"l", b"f", b"d", b"S", b"F", b"A")]
        else:
            width = 4 if kind == "len4" else 1
            old = int.from_bytes(payload[at:at + width], "big")
            variants = [payload[:at] + ((old + delta) % 256**width).to_bytes(width, "big")
                        + payload[at + width:] for delta in (-2, -1, 1, 2)]
        for mutated in variants:
            ours = outcome(mutated)
            if ours is not None:
                check_like_pamqp(mutated, ours)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.integers(0, 0xFFFF))
def test_garbage_raises_only_syntax_errors(properties: bytes, flags: int) -> None:
    ours = outcome(header(flags, properties))
    if ours is not None:
        check_like_pamqp(header(flags, properties), ours)


def test_short_payloads() -> None:
    for size in range(14):
        assert outcome(header(0)[:size]) is None
    assert outcome(header(0)) is not None


def test_error_texts_name_the_property_and_the_byte() -> None:
    table = u32(7) + b"\x02abZ" + b"xyz"
    payload = header(0x2000, table)
    with pytest.raises(SyntaxError_) as caught:
        check_content_header(payload)
    assert caught.value.reply_text == (
        "SYNTAX_ERROR - malformed field table in property 'headers': unknown field type 'Z' "
        "at byte 21"
    )
    assert caught.value.reply_code == 502 and caught.value.closes_connection
    with pytest.raises(SyntaxError_, match="property 'app_id' at byte 16 runs past the end"):
        check_content_header(header(0x8008, b"\x01a\x05ab"))
    with pytest.raises(SyntaxError_, match="1 unexpected byte after property 'content_type'"):
        check_content_header(header(0x8000, b"\x01a!"))
    with pytest.raises(SyntaxError_, match="value of type 'S' at byte 25 runs past the end of the "
                                           "array"):
        check_content_header(header(0x2000, u32(13) + b"\x01aA" + u32(6) + b"S" + u32(2) + b"x"))
    with pytest.raises(SyntaxError_, match="field name at byte 18 runs past the end"):
        check_content_header(header(0x2000, u32(3) + b"\x05ab"))


# ------------------------------------------------------------- what RabbitMQ accepts
@pytest.mark.parametrize("tag", [b"U", b"\x00", b"Z", b"c", b"v"])
def test_type_tags_rabbitmq_does_not_parse_are_refused(tag: bytes) -> None:
    # pamqp reads 0x00 as void; rabbit_binary_parser:parse_table/1 has no clause for it or
    # for the spec's 'U', so RabbitMQ refuses both.
    payload = header(0x2000, u32(4) + b"\x01a" + tag + b"\x00")
    with pytest.raises(SyntaxError_, match="unknown field type"):
        check_content_header(payload)
    with pytest.raises(SyntaxError_, match="unknown field type"):
        decode_properties(payload)


@pytest.mark.parametrize("value", [
    b"f\x7f\xc0\x00\x00", b"f\x7f\x80\x00\x00", b"f\xff\x80\x00\x00", b"f\x7f\x80\x00\x01",
    b"d" + struct.pack(">d", math.nan), b"d" + struct.pack(">d", -math.inf),
    b"d\x7f\xf0\x00\x00\x00\x00\x00\x01",
])
def test_floats_that_are_not_finite_are_refused(value: bytes) -> None:
    # parse_table/1 matches Value:32/float and Value:64/float, which fail on NaN and
    # infinities: RabbitMQ closes the connection (541) on such a header.
    for table in (b"\x01a" + value, b"\x01aA" + u32(len(value)) + value):
        payload = header(0x2000, u32(len(table)) + table)
        message = f"value of type '{value[:1].decode()}' at byte {len(payload) - len(value)} is " \
                  "not finite"
        for fn in (check_content_header, decode_properties):
            with pytest.raises(SyntaxError_, match=message):
                fn(payload)
    for finite in (b"f\x7f\x7f\xff\xff", b"f\x00\x00\x00\x01", b"d\x7f\xef" + b"\xff" * 6):
        check_content_header(header(0x2000, u32(2 + len(finite)) + b"\x01a" + finite))


def test_trailing_bytes_are_refused() -> None:
    # decode_properties/2 ends with <<>> = R14; pamqp ignores what follows.
    for payload in (header(0, b"\x00"), header(0x1000, b"\x02\x00"), header(0x2000, u32(0) + b"x")):
        with pytest.raises(SyntaxError_, match="unexpected byte"):
            check_content_header(payload)


def test_the_two_low_flag_bits_are_ignored_as_rabbitmq_does() -> None:
    # RabbitMQ matches <<P0:1, ..., P13:1, _:2, R0/binary>>: no continuation word is read.
    for low in (1, 2, 3):
        properties = decode_properties(header(0x1000 | low, b"\x02"))
        assert properties.delivery_mode == 2
    with pytest.raises(SyntaxError_):  # a continuation flags word is 2 unexpected bytes
        check_content_header(header(0x1001, b"\x00\x00\x02"))


def test_not_utf8_is_accepted_and_decoded_to_bytes() -> None:
    table = u32(0)
    body = b"\x02\xff\xfeS" + u32(2) + b"\xc3\x28" + b"\x01aA" + u32(5) + b"S" + u32(0)
    body += b"\x01bS" + u32(1) + b"\x80"
    table = u32(len(body)) + body
    payload = header(0xA010, b"\x01\xff" + table + b"\x02\xe2\x82")
    check_content_header(payload)
    properties = decode_properties(payload)
    assert properties.content_type == b"\xff"
    assert properties.user_id == b"\xe2\x82"
    assert list(properties.headers.items()) == [(b"\xff\xfe", b"\xc3\x28"), ("a", [""]),
                                                ("b", b"\x80")]
    with pytest.raises(UnicodeDecodeError):
        pamqp_properties(payload)
    # rewritten (dead-lettering, BCC removal) as it came in
    again = content_header(0, properties)
    assert again == payload
    same_properties(decode_properties(again), properties)


def test_timestamps_datetime_cannot_hold() -> None:
    stamp = (2**64 - 1).to_bytes(8, "big")
    table = b"\x01tT" + stamp
    payload = header(0x2040, u32(len(table)) + table + stamp)
    properties = decode_properties(payload)
    assert type(properties.timestamp) is Timestamp and properties.timestamp == 2**64 - 1
    assert properties.headers == {"t": 2**64 - 1}
    with pytest.raises((OverflowError, ValueError, OSError)):
        pamqp_properties(payload)
    assert content_header(0, properties) == payload


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_invalid_utf8_everywhere(data: st.DataObject) -> None:
    payload, _ = data.draw(raw_headers(names=any_bytes_names, text=st.binary(max_size=12)))
    check_content_header(payload)
    ours = decode_properties(payload)
    check_like_pamqp(payload, ours)
    for value in values_in(ours):
        if type(value) is bytes:
            with pytest.raises(UnicodeDecodeError):
                value.decode("utf-8")


# ------------------------------------------------------------- depth
def nested(depth: int, tags: bytes) -> bytes:
    """A headers table nesting ``depth`` tables and arrays (``tags`` in turn), innermost last."""
    inner = b""
    for level in reversed(range(depth)):
        tag = tags[level % len(tags) : level % len(tags) + 1]
        parent_is_table = level == 0 or tags[(level - 1) % len(tags)] == ord("F")
        inner = (b"\x01k" if parent_is_table else b"") + tag + u32(len(inner)) + inner
    return u32(len(inner)) + inner


@pytest.mark.parametrize("tags", [b"F", b"A", b"FA", b"AAF"])
def test_5000_deep_nesting_validates_and_decodes(tags: bytes) -> None:
    payload = header(0x2000, nested(5000, tags))
    check_content_header(payload)
    value: Any = decode_properties(payload).headers
    depth = 0
    while value:
        value = value["k"] if isinstance(value, dict) else value[0]
        depth += 1
    assert depth == 5000
    assert value in ({}, [])


def test_an_error_5000_deep_is_found() -> None:
    table = nested(5000, b"F")
    assert table.endswith(b"\x01kF" + u32(0))
    bad = table[:-4] + u32(3) + b"\x01kU"
    # fix up the enclosing lengths: every one grows by 3
    fixed = bytearray(bad)
    at = 0
    for _ in range(5000):
        fixed[at:at + 4] = u32(int.from_bytes(fixed[at:at + 4], "big") + 3)
        at += 7
    payload = header(0x2000, bytes(fixed))
    position = len(payload) - 1
    for fn in (check_content_header, decode_properties):
        with pytest.raises(SyntaxError_, match=f"unknown field type 'U' at byte {position}"):
            fn(payload)
