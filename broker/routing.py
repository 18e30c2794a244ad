"""Routing tables for the four exchange types.

Each table maps bindings (destination, key, arguments) to the destinations a message
reaches. Direct and exact topic keys are hash lookups; topic patterns with wildcards live in
a trie; headers bindings are checked one by one (their cost is per binding by nature).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

Destination = Hashable  # a Queue or an Exchange
HeadersFn = Callable[[], dict[str, Any]]  # decodes message headers only when asked


def split_words(key: str) -> list[str]:
    """Split a routing key or topic pattern as RabbitMQ does: '' has no words."""
    return key.split(".") if key else []


class RoutingTable:
    """Base: bindings keyed by (destination, routing key, frozen arguments)."""

    def __init__(self) -> None:
        self.bindings: dict[tuple[Destination, str, Hashable], dict[str, Any]] = {}

    def add(self, dest: Destination, key: str, args: dict[str, Any]) -> bool:
        ident = (dest, key, freeze(args))
        if ident in self.bindings:
            return False
        self.bindings[ident] = args
        self._add(dest, key, args)
        return True

    def remove(self, dest: Destination, key: str, args: dict[str, Any]) -> bool:
        ident = (dest, key, freeze(args))
        if self.bindings.pop(ident, None) is None:
            return False
        self._remove(dest, key, args)
        return True

    def remove_destination(self, dest: Destination) -> int:
        """Drop every binding to ``dest``; returns how many went."""
        gone = [ident for ident in self.bindings if ident[0] is dest]
        for ident in gone:
            self.remove(ident[0], ident[1], self.bindings[ident])
        return len(gone)

    def has_binding(self, dest: Destination, key: str, args: dict[str, Any]) -> bool:
        return (dest, key, freeze(args)) in self.bindings

    def __len__(self) -> int:
        return len(self.bindings)

    def _add(self, dest: Destination, key: str, args: dict[str, Any]) -> None:
        raise NotImplementedError

    def _remove(self, dest: Destination, key: str, args: dict[str, Any]) -> None:
        raise NotImplementedError

    def route(self, routing_key: str, headers: HeadersFn) -> Iterable[Destination]:
        raise NotImplementedError


def _count_add(index: dict[Any, dict[Destination, int]], key: Any, dest: Destination) -> None:
    dests = index.setdefault(key, {})
    dests[dest] = dests.get(dest, 0) + 1


def _count_remove(index: dict[Any, dict[Destination, int]], key: Any, dest: Destination) -> None:
    dests = index[key]
    if dests[dest] == 1:
        del dests[dest]
        if not dests:
            del index[key]
    else:
        dests[dest] -= 1


class DirectTable(RoutingTable):
    """Exact match of the routing key."""

    def __init__(self) -> None:
        super().__init__()
        self._by_key: dict[str, dict[Destination, int]] = {}

    def _add(self, dest: Destination, key: str, args: dict[str, Any]) -> None:
        _count_add(self._by_key, key, dest)

    def _remove(self, dest: Destination, key: str, args: dict[str, Any]) -> None:
        _count_remove(self._by_key, key, dest)

    def route(self, routing_key: str, headers: HeadersFn) -> Iterable[Destination]:
        return self._by_key.get(routing_key, ())


class FanoutTable(RoutingTable):
    """Every bound destination."""

    def __init__(self) -> None:
        super().__init__()
        self._dests: dict[Destination, int] = {}

    def _add(self, dest: Destination, key: str, args: dict[str, Any]) -> None:
        self._dests[dest] = self._dests.get(dest, 0) + 1

    def _remove(self, dest: Destination, key: str, args: dict[str, Any]) -> None:
        if self._dests[dest] == 1:
            del self._dests[dest]
        else:
            self._dests[dest] -= 1

    def route(self, routing_key: str, headers: HeadersFn) -> Iterable[Destination]:
        return self._dests


class _TrieNode:
    __slots__ = ("children", "dests")

    def __init__(self) -> None:
        self.children: dict[str, _TrieNode] = {}
        self.dests: dict[Destination, int] = {}


class TopicTable(RoutingTable):
    """``*`` matches one word, ``#`` zero or more. Exact patterns are a hash lookup."""

    def __init__(self) -> None:
        super().__init__()
        self._exact: dict[str, dict[Destination, int]] = {}
        self._root = _TrieNode()
        self._wild_count = 0

    @staticmethod
    def _is_wild(pattern: str) -> bool:
        return any(word in ("*", "#") for word in split_words(pattern))

    def _add(self, dest: Destination, key: str, args: dict[str, Any]) -> None:
        if not self._is_wild(key):
            _count_add(self._exact, key, dest)
            return
        node = self._root
        for word in split_words(key):
            node = node.children.setdefault(word, _TrieNode())
        node.dests[dest] = node.dests.get(dest, 0) + 1
        self._wild_count += 1

    def _remove(self, dest: Destination, key: str, args: dict[str, Any]) -> None:
        if not self._is_wild(key):
            _count_remove(self._exact, key, dest)
            return
        path = [self._root]
        for word in split_words(key):
            path.append(path[-1].children[word])
        node = path[-1]
        if node.dests[dest] == 1:
            del node.dests[dest]
        else:
            node.dests[dest] -= 1
        self._wild_count -= 1
        words = split_words(key)
        for depth in range(len(words), 0, -1):  # prune empty branches
            child = path[depth]
            if child.dests or child.children:
                break
            del path[depth - 1].children[words[depth - 1]]

    def route(self, routing_key: str, headers: HeadersFn) -> Iterable[Destination]:
        exact = self._exact.get(routing_key)
        if not self._wild_count:
            return exact or ()
        found: dict[Destination, None] = dict.fromkeys(exact) if exact else {}
        words = split_words(routing_key)
        seen: set[tuple[int, int]] = set()
        self._match(self._root, words, 0, found, seen)
        return found

    def _match(
        self,
        node: _TrieNode,
        words: list[str],
        i: int,
        found: dict[Destination, None],
        seen: set[tuple[int, int]],
    ) -> None:
        state = (id(node), i)
        if state in seen:
            return
        seen.add(state)
        children = node.children
        if i == len(words):
            found.update(dict.fromkeys(node.dests))
        else:
            child = children.get(words[i])
            if child is not None:
                self._match(child, words, i + 1, found, seen)
            child = children.get("*")
            if child is not None:
                self._match(child, words, i + 1, found, seen)
        hash_node = children.get("#")
        if hash_node is not None:
            for j in range(i, len(words) + 1):
                self._match(hash_node, words, j, found, seen)


def headers_match(binding_args: dict[str, Any], headers: dict[str, Any]) -> bool:
    """RabbitMQ's headers-exchange match of one binding against message headers."""
    mode = binding_args.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode("utf-8", "replace")
    with_x = mode in ("all-with-x", "any-with-x")
    want_all = mode in ("all", "all-with-x")
    for key, expected in binding_args.items():
        if key == "x-match" or (not with_x and key.startswith("x-")):
            continue
        present = key in headers
        # A binding value of type void matches the mere presence of the header.
        ok = present and (expected is None or _same_value(headers[key], expected))
        if want_all and not ok:
            return False
        if not want_all and ok:
            return True
    return want_all


def _same_value(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bytes) and isinstance(expected, str):
        return actual == expected.encode("utf-8")
    if isinstance(expected, bytes) and isinstance(actual, str):
        return expected == actual.encode("utf-8")
    if isinstance(actual, bool) != isinstance(expected, bool):
        return False
    return actual == expected


class HeadersTable(RoutingTable):
    """Match on message headers per binding (x-match all/any/all-with-x/any-with-x)."""

    def _add(self, dest: Destination, key: str, args: dict[str, Any]) -> None:
        pass

    def _remove(self, dest: Destination, key: str, args: dict[str, Any]) -> None:
        pass

    def route(self, routing_key: str, headers: HeadersFn) -> Iterable[Destination]:
        if not self.bindings:
            return ()
        message_headers = headers()
        return {
            ident[0]: None
            for ident, args in self.bindings.items()
            if headers_match(args, message_headers)
        }


TABLES: dict[str, type[RoutingTable]] = {
    "direct": DirectTable,
    "fanout": FanoutTable,
    "topic": TopicTable,
    "headers": HeadersTable,
}


def freeze(value: Any) -> Hashable:
    """A hashable, order-insensitive form of an AMQP field value (binding arguments).

    A flat tuple of tokens (tables with their keys sorted), built without recursion so that
    a table nested thousands deep (RabbitMQ accepts them) compares and hashes flatly.
    """
    tokens: list[Any] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            keys = sorted(item, key=repr)
            tokens += ("{", len(keys))
            for key in reversed(keys):
                stack.append(item[key])
                stack.append(_Key(key))
        elif isinstance(item, list):
            tokens += ("[", len(item))
            stack.extend(reversed(item))
        elif isinstance(item, _Key):
            tokens.append(item.name)
        elif isinstance(item, bytearray):
            tokens.append(bytes(item))
        else:
            try:
                hash(item)
            except TypeError:
                item = repr(item)
            tokens += (type(item).__name__, item)
    return tuple(tokens)


class _Key:
    """A table key on the freeze stack (told apart from the values around it)."""

    __slots__ = ("name",)

    def __init__(self, name: Any) -> None:
        self.name = name
