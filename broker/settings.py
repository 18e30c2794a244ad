"""Settings from the command line, the environment and a TOML file, validated before start.

Every setting has one name: the config file's key, ``--the-name`` on the command line (for
those that have a flag) and ``LEVERET_THE_NAME`` in the environment (for the few that
containers set). The command line beats the environment, which beats the file, which beats
the default. A relative path in the file is relative to the file's folder; on the command
line or in the environment, to the working directory. Durations are in milliseconds and
sizes in bytes, as in RabbitMQ's configuration.

Anything wrong raises ``SettingsError`` with a message that names the setting (as it was
given: ``--port``, ``LEVERET_PORT`` or the file's key) and what it accepts.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leveret.broker.config import BrokerConfig, physical_memory
from leveret.broker.setting_types import (
    MASK,
    MECHANISMS,
    FilePath,
    Flag,
    Integer,
    Invalid,
    Kind,
    Names,
    Number,
    Permissions,
    Shovels,
    Text,
    Users,
    VhostLimits,
    describe,
)

ENV_PREFIX = "LEVERET_"
CONFIG_ENV = "LEVERET_CONFIG"
MAX_MESSAGE_SIZE = 512 * 1024 * 1024  # RabbitMQ's ceiling for max_message_size


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it and what it accepts."""


# -- the settings --------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One setting: its file key (the flag is ``--`` plus the key with dashes)."""

    name: str
    kind: Kind
    default: Any
    help: str
    flag: bool = True  # has a command-line flag
    env: bool = False  # may be set by LEVERET_<NAME>
    metavar: str | None = None
    path: bool = False  # a path: relative to the config file's folder in the file
    secret: bool = False  # masked by --print-config

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.name.upper()


MIB = 1024 * 1024
SETTINGS: tuple[Setting, ...] = (
    # listeners
    Setting("host", Text(), "127.0.0.1", "address or host name to listen on "
            "(0.0.0.0 or :: for every interface)", env=True, metavar="HOST"),
    Setting("port", Integer(0, 65535, " (0: any free port)"), 5672, "AMQP port", env=True,
            metavar="PORT"),
    Setting("management_port", Integer(0, 65535, " (0: off)"), 15672, "HTTP port of the "
            "management API and dashboard, on host (RabbitMQ's 15672)", env=True,
            metavar="PORT"),
    Setting("metrics_port", Integer(0, 65535, " (0: off)"), 15692, "HTTP port of the "
            "Prometheus metrics, on host (RabbitMQ's 15692)", env=True, metavar="PORT"),
    Setting("tls_port", Integer(0, 65535), None, "amqps port (conventionally 5671); "
            "needs tls_cert and tls_key (unset: no TLS listener)", metavar="PORT"),
    Setting("tls_cert", FilePath(), None, "PEM certificate chain of the broker", path=True),
    Setting("tls_key", FilePath(), None, "PEM private key of the broker", path=True),
    Setting("tls_ca", FilePath(), None, "PEM CA bundle client certificates are checked "
            "against", path=True),
    Setting("tls_verify_peer", Flag(), True, "with tls_ca: check a client certificate when "
            "one is sent (RabbitMQ's verify_peer)"),
    Setting("tls_fail_if_no_peer_cert", Flag(), False, "refuse TLS clients that send no "
            "certificate (needs tls_ca)"),
    Setting("auth_mechanisms", Names(MECHANISMS, non_empty=True), ("PLAIN", "AMQPLAIN"),
            "SASL mechanisms offered, comma-separated (EXTERNAL: TLS client certificates)",
            metavar="LIST"),
    # storage
    Setting("data_dir", FilePath(), Path("data"), "where durable state lives (created at "
            "start if missing)", env=True, path=True),
    Setting("fsync", Flag(), True, "fsync before confirming persistent messages "
            "(--no-fsync: confirm once written, like RabbitMQ; a machine crash can lose "
            "confirmed ones)"),
    Setting("sync_interval", Number(0, 10_000, " ms"), 0, "group-commit window: one fsync "
            "per this many ms (0: one per event-loop iteration)", metavar="MS"),
    Setting("disk_free_limit", Integer(0), 50_000_000, "block publishers while free disk "
            "space is below this (RabbitMQ's default)", metavar="BYTES"),
    Setting("memory_high_watermark", Number(0, 1, " (0: off)"), 0.4, "block publishers "
            "while resident memory is above this fraction of RAM (0: never)",
            metavar="FRACTION"),
    Setting("load_definitions", FilePath(), None, "RabbitMQ definitions.json (users, "
            "vhosts, permissions, exchanges, queues, bindings) applied at every start; no "
            "default user is created", path=True, metavar="PATH"),
    # protocol and limits
    Setting("heartbeat", Integer(0, 65535, " s (0: off)"), 60, "heartbeat interval offered "
            "to clients, seconds", metavar="S"),
    Setting("max_message_size", Integer(1, MAX_MESSAGE_SIZE), 128 * MIB, "largest accepted "
            "message body (RabbitMQ's ceiling is 512 MiB)", metavar="BYTES"),
    Setting("frame_max", Integer(4096, 2**32 - 1), 131072, "largest frame offered in "
            "connection.tune", metavar="BYTES"),
    Setting("channel_max", Integer(1, 65535), 2047, "channels per connection"),
    Setting("connection_max", Integer(0, None, none_word="infinity"), None,
            "client connections to the whole broker"),
    Setting("handshake_timeout", Integer(1, 3_600_000, " ms"), 10_000, "time a client has "
            "to open its connection", metavar="MS"),
    Setting("consumer_timeout", Integer(0, None, " ms (0: off)"), 0, "cancel a consumer "
            "that holds a delivery unacked this long, requeueing its messages",
            metavar="MS"),
    # logging
    Setting("log_level", Text(("debug", "info", "warning", "error")), "info", "log level",
            env=True),
    Setting("log_file", FilePath(), None, "log to this file instead of standard error; "
            "reopened on SIGHUP", env=True, path=True, metavar="PATH"),
    Setting("log_max_bytes", Integer(0), 0, "with log_file: rotate it at this size (0: "
            "never; leave it to logrotate)", metavar="BYTES"),
    Setting("log_backups", Integer(0, 1000), 5, "with log_max_bytes: rotated files kept",
            metavar="N"),
    # access control (the file and the environment only: no passwords on a command line)
    Setting("default_user", Text(), "guest", "user created in a new data directory when "
            "neither users nor load_definitions are given", flag=False, env=True),
    Setting("default_pass", Text(empty=True), "guest", "its password", flag=False, env=True,
            secret=True),
    Setting("default_user_tags", Names(), ("administrator",), "its tags", flag=False),
    Setting("default_vhost", Text(), "/", "vhost created in a new data directory",
            flag=False, env=True),
    Setting("loopback_users", Names(), ("guest",), "users that may only log in from this "
            "host, comma-separated ('none': lift it)", metavar="LIST"),
    Setting("vhosts", Names(), (), "vhosts created at every start", flag=False),
    Setting("users", Users(), None, "users set at every start", flag=False, secret=True),
    Setting("permissions", Permissions(), None, "permissions of the configured users "
            "(default: all on every vhost)", flag=False),
    Setting("vhost_limits", VhostLimits(), {}, "per-vhost limits", flag=False),
    Setting("shovels", Shovels(), {}, "dynamic shovels run inside the broker",
            flag=False, secret=True),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}


def _checked(setting: Setting, value: Any, label: str, *, text: bool) -> Any:
    try:
        return setting.kind.from_text(value) if text else setting.kind.check(value)
    except Invalid as error:
        if error.args:  # a table whose part is wrong says which
            raise SettingsError(f"{label}: {error}") from None
        got = repr(value) if text else describe(value)
        raise SettingsError(f"{label}: expected {setting.kind.expect}, got {got}") from None


# -- the command line ----------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting that has one; a flag not given stays out of the namespace."""
    parser.add_argument("--config", type=Path, metavar="PATH", default=argparse.SUPPRESS,
                        help=f"TOML config file (or ${CONFIG_ENV})")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective settings (secrets masked) and exit")
    for setting in SETTINGS:
        if not setting.flag:
            continue
        default = setting.kind.show(setting.default)
        if isinstance(default, list):
            default = ",".join(default) or "none"
        elif isinstance(default, bool):
            default = _toml(default)
        elif default is None:
            default = "unset"
        env = f"; ${setting.env_name}" if setting.env else ""
        help_text = f"{setting.help} (default: {default}{env})"
        if isinstance(setting.kind, Flag):
            parser.add_argument(setting.option, dest=setting.name, default=argparse.SUPPRESS,
                                action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(setting.option, dest=setting.name, default=argparse.SUPPRESS,
                                type=_argument_type(setting), help=help_text,
                                metavar=setting.metavar or _metavar(setting.kind))


def _metavar(kind: Kind) -> str:
    if isinstance(kind, Text) and kind.choices:
        return "{" + ",".join(kind.choices) + "}"
    return {Integer: "N", FilePath: "PATH", Names: "LIST"}.get(type(kind), "VALUE")


def _argument_type(setting: Setting) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return setting.kind.from_text(text)
        except Invalid:
            raise argparse.ArgumentTypeError(
                f"expected {setting.kind.expect}, got {text!r}") from None

    parse.__name__ = setting.name  # argparse names the type in some messages
    return parse


# -- resolution ----------------------------------------------------------------------------

@dataclass
class Settings:
    """The effective settings, where each came from, and what load_definitions held."""

    values: dict[str, Any]
    origins: dict[str, str] = field(default_factory=dict)
    config_file: Path | None = None
    definitions: dict[str, Any] | None = None

    def broker_config(self) -> BrokerConfig:
        """The broker's configuration (its units: seconds, bytes); tables are copies."""
        v = copy.deepcopy(self.values)
        return BrokerConfig(
            host=v["host"], port=v["port"], data_dir=v["data_dir"],
            management_port=v["management_port"] or None, metrics_port=v["metrics_port"] or None,
            default_user=v["default_user"], default_pass=v["default_pass"],
            default_user_tags=tuple(v["default_user_tags"]), default_vhost=v["default_vhost"],
            loopback_users=tuple(v["loopback_users"]), users=v["users"],
            vhosts=tuple(v["vhosts"]), permissions=v["permissions"],
            definitions=copy.deepcopy(self.definitions),
            tls_port=v["tls_port"], tls_cert=v["tls_cert"], tls_key=v["tls_key"],
            tls_ca=v["tls_ca"], tls_verify_peer=v["tls_verify_peer"],
            tls_fail_if_no_peer_cert=v["tls_fail_if_no_peer_cert"],
            auth_mechanisms=tuple(v["auth_mechanisms"]),
            connection_max=v["connection_max"], vhost_limits=v["vhost_limits"],
            shovels=v["shovels"],
            log_file=v["log_file"], heartbeat=v["heartbeat"], frame_max=v["frame_max"],
            channel_max=v["channel_max"], max_message_size=v["max_message_size"],
            handshake_timeout=v["handshake_timeout"] / 1000,
            consumer_timeout=v["consumer_timeout"] / 1000 or None,
            fsync=v["fsync"], sync_interval=v["sync_interval"] / 1000,
            disk_free_limit=v["disk_free_limit"],
            memory_high_watermark=int(v["memory_high_watermark"] * physical_memory()),
        )

    def to_toml(self) -> str:
        """The settings as a config file that loads back to them, secrets masked."""
        lines = ["# Leveret's effective settings (leveret serve --print-config)"]
        if self.config_file is not None:
            lines.append(f"# config file: {self.config_file}")
        for setting in SETTINGS:
            value = self.values[setting.name]
            origin = self.origins.get(setting.name)
            note = f"  # {origin}" if origin else ""
            shown = (setting.kind.show(value)
                     if value is not None or isinstance(setting.kind, Integer) else None)
            if shown is None:
                lines.append(f"# {setting.name} is not set{note}")
                continue
            if setting.secret and isinstance(shown, str):
                shown = MASK
            lines.append(f"{_key(setting.name)} = {_toml(shown)}{note}")
        return "\n".join(lines) + "\n"


def resolve(cli: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """Defaults, then the config file, the environment and the command line; checked."""
    values = {s.name: s.default for s in SETTINGS}
    origins: dict[str, str] = {}
    config_file = cli.get("config")
    if config_file is None and environ.get(CONFIG_ENV):
        config_file = Path(environ[CONFIG_ENV])
    if config_file is not None:
        for name, value in read_file(config_file).items():
            values[name] = value
            origins[name] = "config file"
    for setting in SETTINGS:
        text = environ.get(setting.env_name) if setting.env else None
        if text:  # an empty variable counts as unset
            values[setting.name] = _checked(setting, text, setting.env_name, text=True)
            origins[setting.name] = setting.env_name
        if setting.name in cli:
            values[setting.name] = cli[setting.name]
            origins[setting.name] = setting.option
    _check_together(values, origins)
    found = Settings(values, origins, config_file)
    if values["load_definitions"] is not None:
        found.definitions = read_definitions(values["load_definitions"])
    return found


def read_file(path: Path) -> dict[str, Any]:
    """A config file's settings, checked; relative paths made relative to its folder."""
    where = f"config file {path}"
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise SettingsError(f"{where}: cannot read it: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SettingsError(f"{where}: not valid TOML: {error}") from None
    values = {}
    for key, value in data.items():
        setting = BY_NAME.get(key)
        if setting is None:
            near = difflib.get_close_matches(key, BY_NAME, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise SettingsError(f"{where}: unknown key {key!r}{hint}")
        value = _checked(setting, value, f"{where}: {key}", text=False)
        if setting.path and not value.is_absolute():
            value = Path(path).absolute().parent / value
        values[key] = value
    return values


def read_definitions(path: Path) -> dict[str, Any]:
    """A RabbitMQ-format definitions.json (load_definitions)."""
    try:
        with open(path, "rb") as file:
            data = json.load(file)
    except OSError as error:
        raise SettingsError(f"load_definitions: cannot read {path}: {error.strerror}") from None
    except ValueError as error:
        raise SettingsError(f"load_definitions: {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"load_definitions: {path} must hold a JSON object")
    return data


def _check_together(values: dict[str, Any], origins: Mapping[str, str]) -> None:
    """Rules that involve more than one setting."""

    def label(name: str) -> str:
        origin = origins.get(name)
        return f"{name} ({origin})" if origin else name

    if values["tls_port"] is not None:
        missing = [name for name in ("tls_cert", "tls_key") if values[name] is None]
        if missing:
            raise SettingsError(f"{label('tls_port')}: a TLS listener needs "
                                f"{' and '.join(missing)}")
        if values["tls_port"] and values["tls_port"] == values["port"]:
            raise SettingsError(f"{label('tls_port')}: must differ from port")
    if values["tls_fail_if_no_peer_cert"] and values["tls_ca"] is None:
        raise SettingsError(f"{label('tls_fail_if_no_peer_cert')}: needs tls_ca")
    for name in ("tls_cert", "tls_key", "tls_ca"):
        if values[name] is not None and values["tls_port"] is not None:
            try:
                with open(values[name], "rb"):
                    pass
            except OSError as error:
                raise SettingsError(f"{label(name)}: cannot read {values[name]}: "
                                    f"{error.strerror}") from None
    permissions, users = values["permissions"], values["users"]
    if permissions is not None:
        if users is None:
            raise SettingsError("permissions: apply to the users table, which is not set")
        for entry in permissions:
            if entry["user"] not in users:
                raise SettingsError(f"permissions: no user {entry['user']!r} in users")


# -- writing TOML (tomllib only reads it) ----------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _string_literal(name)


def _string_literal(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return _string_literal(str(value))
    if isinstance(value, list | tuple):
        if any(isinstance(item, dict) for item in value):
            return "[\n" + "".join(f"  {_toml(item)},\n" for item in value) + "]"
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
