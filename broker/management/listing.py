"""Filtering, sorting, paging and ``columns=`` for the list endpoints, as RabbitMQ's UI uses them.

A list of 50,000 queues stays fast because the objects are filtered, sorted and paged
*before* they are rendered as JSON whenever the sort key can be read off the object itself
(``Listing.keys``); only the page is rendered. Sorting by anything else (a rate, say)
renders every item first, as it must.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500


class BadQuery(ValueError):
    """A query parameter RabbitMQ would answer 400 for."""


@dataclass
class Listing:
    """How to list one kind of object: render one, and sort keys readable without rendering."""

    render: Callable[[Any], dict[str, Any]]
    name: Callable[[Any], str]
    keys: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    default_sort: tuple[str, ...] = ()
    # keys whose value is the rendered field itself: columns= of these renders nothing
    shown_as_keys: frozenset[str] = frozenset()


def dotted(item: Mapping[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _sortable(value: Any) -> tuple[int, Any]:
    """Mixed values sort as RabbitMQ's UI shows them: missing first, numbers, then text."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool | int | float):
        return (1, value)
    return (2, str(value))


def _sort(items: list[Any], key: Callable[[Any], Any], reverse: bool) -> None:
    """Sort by ``key``; values that do not compare with each other (None among numbers)
    are ordered as ``_sortable`` says, which costs a tuple per item, so only then."""
    try:
        items.sort(key=key, reverse=reverse)
    except TypeError:
        items.sort(key=lambda one: _sortable(key(one)), reverse=reverse)


def select_columns(item: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    """Keep only ``columns`` (dotted paths keep the nesting: message_stats.publish)."""
    out: dict[str, Any] = {}
    for column in columns:
        parts = column.split(".")
        value = dotted(item, column)
        if value is None and not _has(item, parts):
            continue
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def _has(item: Mapping[str, Any], parts: list[str]) -> bool:
    value: Any = item
    for part in parts:
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    return True


def _int_param(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as error:
        raise BadQuery(f"{name} must be an integer, got {raw!r}") from error
    if value < 1:
        raise BadQuery(f"{name} must be at least 1")
    return value


@dataclass
class Selection:
    """What a list endpoint shows, before rendering: ``items`` are objects (or, when
    ``rendered``, their JSON already); ``page`` holds the paged answer's counts."""

    items: list[Any]
    rendered: bool
    columns: list[str]
    page: dict[str, int] | None


def sorts_by_rendering(how: Listing, query: Mapping[str, str]) -> bool:
    """Whether sorting needs every item rendered (a key not readable off the object)."""
    sort = query.get("sort") or ""
    return bool(sort) and sort not in how.keys


def select(objects: Iterable[Any], how: Listing, query: Mapping[str, str]) -> Selection:
    """Filter (``name``, ``use_regex``), sort (``sort``, ``sort_reverse``) and page
    (``page``, ``page_size``) as RabbitMQ does."""
    items = list(objects)
    total = len(items)
    wanted = query.get("name")
    if wanted:
        if query.get("use_regex") == "true":
            try:
                pattern = re.compile(wanted, re.IGNORECASE)
            except re.error as error:
                raise BadQuery(f"invalid regular expression {wanted!r}: {error}") from error
            items = [one for one in items if pattern.search(how.name(one))]
        else:
            lowered = wanted.lower()
            items = [one for one in items if lowered in how.name(one).lower()]
    sort = query.get("sort") or ""
    reverse = query.get("sort_reverse") == "true"
    paged = "page" in query
    page = _int_param(query, "page", 1)
    size = min(_int_param(query, "page_size", DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)
    rendered = False
    if not sort:
        # by the last key, then (stable) by each one before it: no tuple per item
        for name in reversed(how.default_sort):
            if name in how.keys:
                _sort(items, how.keys[name], reverse)
    elif sort in how.keys:
        _sort(items, how.keys[sort], reverse)
    else:
        items = [how.render(one) for one in items]
        items.sort(key=lambda item: _sortable(dotted(item, sort)), reverse=reverse)
        rendered = True
    columns = [c for c in (query.get("columns") or "").split(",") if c]
    if not paged:
        return Selection(items, rendered, columns, None)
    filtered = len(items)
    page_count = max(1, -(-filtered // size))
    if page > page_count:
        raise BadQuery(f"page {page} is past the last page ({page_count})")
    start = (page - 1) * size
    items = items[start:start + size]
    return Selection(items, rendered, columns, {
        "filtered_count": filtered, "item_count": len(items), "page": page,
        "page_count": page_count, "page_size": size, "total_count": total})


def answer(selection: Selection, shown: list[dict[str, Any]], columns_done: bool = False
           ) -> Any:
    """The JSON answer for a selection whose items are rendered as ``shown`` (with only
    the ``columns=`` asked for already when ``columns_done``)."""
    if selection.columns and not columns_done:
        shown = [select_columns(item, selection.columns) for item in shown]
    if selection.page is None:
        return shown
    return {**selection.page, "items": shown}


def column_reader(selection: Selection, how: Listing
                  ) -> Callable[[list[Any]], list[dict[str, Any]]] | None:
    """When ``columns=`` asks only for fields readable off the objects (a monitoring
    script's ``columns=name,messages``): what turns objects into those items, else None."""
    columns = selection.columns
    if selection.rendered or not columns or not set(columns) <= how.shown_as_keys:
        return None
    keys = [(column, how.keys[column]) for column in columns]
    return lambda items: [{column: key(one) for column, key in keys} for one in items]


def listing(objects: Iterable[Any], how: Listing, query: Mapping[str, str]) -> Any:
    """A list endpoint's answer: a list, or with ``page`` RabbitMQ's paged object."""
    selection = select(objects, how, query)
    read = column_reader(selection, how)
    if read is not None:
        return answer(selection, read(selection.items), columns_done=True)
    shown = (selection.items if selection.rendered
             else [how.render(one) for one in selection.items])
    return answer(selection, shown)
