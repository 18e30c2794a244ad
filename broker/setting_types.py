"""The kinds of values settings take: how each is checked, read from text (a command-line
argument, an environment variable) and shown (``--print-config``).

A refused value raises ``Invalid``; ``broker/settings.py`` names the setting.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MASK = "********"
HASHING_ALGORITHMS = ("rabbit_password_hashing_sha256", "rabbit_password_hashing_sha512",
                      "rabbit_password_hashing_md5")
MECHANISMS = ("PLAIN", "AMQPLAIN", "EXTERNAL")
VHOST_LIMITS = ("max-connections", "max-queues")


class Invalid(ValueError):
    """A value a kind refuses; the caller names the setting (the text says why, if given)."""


# -- kinds of values -----------------------------------------------------------------------

class Kind:
    """How the values of one setting are checked, and read from text."""

    expect = "a value"

    def check(self, value: Any) -> Any:
        """The value to use, from a TOML value; raises Invalid."""
        return value

    def from_text(self, text: str) -> Any:
        """The value to use, from a command-line argument or an environment variable."""
        return self.check(text)

    def show(self, value: Any) -> Any:
        """The value as the config file writes it (for --print-config)."""
        return value


@dataclass(frozen=True)
class Integer(Kind):
    lo: int
    hi: int | None = None
    note: str = ""
    none_word: str | None = None  # a word that means "no limit" (None)

    @property
    def expect(self) -> str:  # type: ignore[override]
        span = f"in {self.lo}..{self.hi}" if self.hi is not None else f">= {self.lo}"
        word = f" or '{self.none_word}'" if self.none_word else ""
        return f"an integer {span}{word}{self.note}"

    def check(self, value: Any) -> Any:
        if self.none_word is not None and value == self.none_word:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid
        if value < self.lo or (self.hi is not None and value > self.hi):
            raise Invalid
        return value

    def from_text(self, text: str) -> Any:
        text = text.strip()
        if self.none_word is not None and text.lower() == self.none_word:
            return None
        try:
            return self.check(int(text, 10))
        except ValueError:
            raise Invalid from None

    def show(self, value: Any) -> Any:
        return self.none_word if value is None else value


@dataclass(frozen=True)
class Number(Kind):
    lo: float
    hi: float
    note: str = ""

    @property
    def expect(self) -> str:  # type: ignore[override]
        return f"a number in {self.lo:g}..{self.hi:g}{self.note}"

    def check(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid
        if not math.isfinite(value) or not self.lo <= value <= self.hi:
            raise Invalid
        return value

    def from_text(self, text: str) -> Any:
        try:
            return self.check(float(text))
        except ValueError:
            raise Invalid from None


@dataclass(frozen=True)
class Text(Kind):
    choices: tuple[str, ...] = ()
    empty: bool = False  # an empty string is a valid value

    @property
    def expect(self) -> str:  # type: ignore[override]
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return "a string" if self.empty else "a non-empty string"

    def check(self, value: Any) -> Any:
        if not isinstance(value, str) or (not value and not self.empty) or "\x00" in value:
            raise Invalid
        if self.choices:
            value = value.lower()
            if value not in self.choices:
                raise Invalid
        return value


class Flag(Kind):
    expect = "true or false"
    WORDS = {"true": True, "yes": True, "on": True, "1": True,
             "false": False, "no": False, "off": False, "0": False}

    def check(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise Invalid
        return value

    def from_text(self, text: str) -> Any:
        try:
            return self.WORDS[text.strip().lower()]
        except KeyError:
            raise Invalid from None


class FilePath(Kind):
    expect = "a path"

    def check(self, value: Any) -> Any:
        if not isinstance(value, str) or not value or "\x00" in value:
            raise Invalid
        return Path(value)

    def show(self, value: Any) -> Any:
        return None if value is None else str(value)


@dataclass(frozen=True)
class Names(Kind):
    """A list of strings; on the command line, separated by commas ('none': empty)."""

    choices: tuple[str, ...] = ()
    non_empty: bool = False

    @property
    def expect(self) -> str:  # type: ignore[override]
        what = ("a list of " + ", ".join(self.choices)) if self.choices else "a list of names"
        return what + (" (at least one)" if self.non_empty else "")

    def check(self, value: Any) -> Any:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise Invalid
        if self.choices:
            value = [v.upper() for v in value]
            if not set(value) <= set(self.choices):
                raise Invalid
        if self.non_empty and not value:
            raise Invalid
        return tuple(dict.fromkeys(value))

    def from_text(self, text: str) -> Any:
        text = text.strip()
        items = [] if text.lower() in ("", "none") else [v.strip() for v in text.split(",")]
        return self.check(items)

    def show(self, value: Any) -> Any:
        return list(value)


# -- the tables only a config file has -----------------------------------------------------

def _table(value: Any, what: str, allowed: Iterable[str] | None = None) -> dict[str, Any]:
    """``value`` if it is a table (with only the ``allowed`` keys, when given)."""
    if not isinstance(value, dict):
        raise Invalid(f"expected {what}, got {describe(value)}")
    if allowed is not None:
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise Invalid(f"unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"{what}: expected a non-empty string, got {describe(value)}")
    return value


class Users(Kind):
    """``name = "password"``, or a table with ``password`` or ``password_hash`` (RabbitMQ's
    salted hash, base64), ``hashing_algorithm`` and ``tags``."""

    expect = "a table of users"
    KEYS = ("password", "password_hash", "hashing_algorithm", "tags")

    def check(self, value: Any) -> Any:
        users = {}
        for name, spec in _table(value, self.expect).items():
            try:
                users[name] = self._user(spec)
            except Invalid as error:
                raise Invalid(f"user {name!r}: {error}") from None
        return users

    def _user(self, spec: Any) -> Any:
        if isinstance(spec, str):
            return spec
        spec = dict(_table(spec, "a password or a table", self.KEYS))
        if "password" in spec and "password_hash" in spec:
            raise Invalid("give password or password_hash, not both")
        for key in ("password", "password_hash"):
            if key in spec and not isinstance(spec[key], str):
                raise Invalid(f"{key}: expected a string, got {describe(spec[key])}")
        algorithm = spec.get("hashing_algorithm", HASHING_ALGORITHMS[0])
        if algorithm not in HASHING_ALGORITHMS:
            raise Invalid(f"hashing_algorithm: expected one of {', '.join(HASHING_ALGORITHMS)}")
        tags = spec.get("tags", [])
        if isinstance(tags, str):
            tags = [t for t in tags.split(",") if t]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise Invalid("tags: expected a list of strings")
        spec["tags"] = tags
        return spec

    def show(self, value: Any) -> Any:
        return {name: MASK if isinstance(spec, str) else
                {k: MASK if k in ("password", "password_hash") else v for k, v in spec.items()}
                for name, spec in value.items()}


class Permissions(Kind):
    """``[[permissions]]`` tables: ``user``, ``vhost`` (default "/"), and the ``configure``,
    ``write`` and ``read`` regular expressions (default ".*")."""

    expect = "a list of tables (user, vhost, configure, write, read)"
    KEYS = ("user", "vhost", "configure", "write", "read")

    def check(self, value: Any) -> Any:
        if not isinstance(value, list):
            raise Invalid(f"expected {self.expect}, got {describe(value)}")
        found = []
        for n, item in enumerate(value, 1):
            try:
                item = _table(item, "a table", self.KEYS)
                entry = {"user": _string(item.get("user"), "user"),
                         "vhost": _string(item.get("vhost", "/"), "vhost")}
                for key in ("configure", "write", "read"):
                    pattern = item.get(key, ".*")
                    if not isinstance(pattern, str):
                        raise Invalid(f"{key}: expected a regular expression (a string)")
                    try:
                        re.compile(pattern)
                    except re.error as error:
                        raise Invalid(f"{key}: not a regular expression: {error}") from None
                    entry[key] = pattern
            except Invalid as error:
                raise Invalid(f"entry {n}: {error}") from None
            found.append(entry)
        return found


class Shovels(Kind):
    """``[shovels.NAME]`` tables with RabbitMQ's shovel parameter keys (``src-uri``,
    ``src-queue``, ``dest-uri``, ``dest-queue`` or ``dest-exchange`` ...) and an optional
    ``vhost``; see broker/shovels.py."""

    expect = "a table of shovels"

    def check(self, value: Any) -> Any:
        from leveret.broker.shovels import ShovelDefinitionError, ShovelSpec

        shovels = {}
        for name, spec in _table(value, self.expect).items():
            spec = dict(_table(spec, f"shovel {name!r}: a table"))
            vhost = spec.pop("vhost", "/")
            try:
                ShovelSpec.from_value(vhost, name, spec)
            except ShovelDefinitionError as error:
                raise Invalid(f"shovel {name!r}: {error}") from None
            shovels[name] = {**spec, "vhost": vhost}
        return shovels

    def show(self, value: Any) -> Any:
        from leveret.broker.shovel import redact

        return {name: {k: redact(v) if k.endswith("-uri") and isinstance(v, str) else v
                       for k, v in spec.items()} for name, spec in value.items()}


class VhostLimits(Kind):
    """``[vhost_limits."/"]`` with ``max-connections`` and ``max-queues`` (RabbitMQ's
    ``set_vhost_limits`` names; leave one out for no limit)."""

    expect = "a table of vhosts, each with max-connections and/or max-queues"

    def check(self, value: Any) -> Any:
        limits = {}
        for vhost, spec in _table(value, self.expect).items():
            try:
                spec = _table(spec, "a table", VHOST_LIMITS)
                for key, n in spec.items():
                    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                        raise Invalid(f"{key}: expected an integer >= 0, got {describe(n)}")
            except Invalid as error:
                raise Invalid(f"vhost {vhost!r}: {error}") from None
            limits[vhost] = dict(spec)
        return limits


def describe(value: Any) -> str:
    """A value and its TOML type, for messages."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    shown = repr(value) if not isinstance(value, list | dict) else ""
    return f"{shown} ({kinds.get(type(value), type(value).__name__)})".lstrip()
