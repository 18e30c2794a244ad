"""Topic and headers matching against small reference models."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from leveret.broker.routing import HeadersTable, TopicTable, headers_match

words = st.sampled_from(["a", "b", "c", ""])
keys = st.lists(words, max_size=5).map(".".join)
patterns = st.lists(st.sampled_from(["a", "b", "*", "#", ""]), max_size=5).map(".".join)


def reference_topic_match(pattern: str, key: str) -> bool:
    """RabbitMQ's semantics, written as a plain recursive matcher."""
    pwords = pattern.split(".") if pattern else []
    kwords = key.split(".") if key else []

    def match(i: int, j: int) -> bool:
        if i == len(pwords):
            return j == len(kwords)
        if pwords[i] == "#":
            return any(match(i + 1, k) for k in range(j, len(kwords) + 1))
        if j == len(kwords):
            return False
        return (pwords[i] == "*" or pwords[i] == kwords[j]) and match(i + 1, j + 1)

    return match(0, 0)


@settings(max_examples=400)
@given(st.lists(patterns, max_size=6), keys)
def test_topic_table_matches_reference(bound: list[str], key: str) -> None:
    table = TopicTable()
    for index, pattern in enumerate(bound):
        table.add(("q", index), pattern, {})
    expected = {("q", i) for i, p in enumerate(bound) if reference_topic_match(p, key)}
    assert set(table.route(key, dict)) == expected


@given(st.lists(patterns, min_size=1, max_size=6), keys)
def test_topic_unbind_restores_state(bound: list[str], key: str) -> None:
    table = TopicTable()
    for index, pattern in enumerate(bound):
        table.add(("q", index), pattern, {})
    for index, pattern in enumerate(bound):
        table.remove(("q", index), pattern, {})
    assert not set(table.route(key, dict))
    assert not table._root.children


def test_topic_examples() -> None:
    cases = [("#", "", True), ("", "", True), ("*", "", False), ("a.*", "a.", True),
             ("a.#.b", "a.b", True), ("a.#.b", "a.x.y.b", True), ("#.#", "a", True),
             ("*.*", ".", True), ("a", "a.b", False)]
    for pattern, key, expected in cases:
        assert reference_topic_match(pattern, key) is expected, (pattern, key)
        table = TopicTable()
        table.add("q", pattern, {})
        assert (list(table.route(key, dict)) == ["q"]) is expected, (pattern, key)


header_values = st.sampled_from([1, 2, "x", "y"])
header_tables = st.dictionaries(st.sampled_from(["k1", "k2", "x-k"]), header_values, max_size=3)


def reference_headers(args: dict, headers: dict) -> bool:
    mode = args.get("x-match", "all")
    with_x = mode.endswith("-with-x")
    pairs = [(k, v) for k, v in args.items()
             if k != "x-match" and (with_x or not k.startswith("x-"))]
    hits = [k in headers and headers[k] == v for k, v in pairs]
    return all(hits) if mode.startswith("all") else any(hits)


@given(header_tables, st.sampled_from(["all", "any", "all-with-x", "any-with-x", None]),
       header_tables)
def test_headers_match_reference(binding: dict, mode: str | None, headers: dict) -> None:
    args = dict(binding)
    if mode is not None:
        args["x-match"] = mode
    assert headers_match(args, headers) is reference_headers(args, headers)
    table = HeadersTable()
    table.add("q", "", args)
    assert (list(table.route("", lambda: headers)) == ["q"]) is reference_headers(args, headers)
