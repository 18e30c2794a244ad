"""``leveret ctl``: rabbitmqctl's commands, spoken over the management HTTP API.

The API is RabbitMQ's (Leveret serves the same paths and JSON), so ``leveret ctl`` works
against RabbitMQ too. Exit status: 0 when done, 1 when the broker is unreachable, refuses
the login, has no such object or refuses the change (one line on stderr saying which), 2
for a usage error. ``ping`` exits 1 also when an alarm is in effect.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leveret.broker import ctl_format
from leveret.broker.ctl_api import CtlError, ManagementAPI, quote, split_credentials
from leveret.broker.ctl_format import Item

DESCRIPTION = (
    "rabbitmqctl's commands over the management HTTP API (RabbitMQ's, which Leveret serves "
    "too). Exit status 0 when done; 1 when the broker is unreachable, refuses the login, has "
    "no such object, refuses the change, or (ping) has an alarm in effect; 2 for a usage "
    "error. 'leveret ctl COMMAND --help' shows a command's arguments and columns.")
DEFAULT_URL = "http://127.0.0.1:15672"
ENV_URL, ENV_USER, ENV_PASSWORD = "LEVERET_CTL_URL", "LEVERET_CTL_USER", "LEVERET_CTL_PASSWORD"


def _same(*names: str) -> dict[str, Item]:
    return {name: name for name in names}


def _tags(obj: Mapping[str, Any]) -> list[str]:
    """A user's tags: a list in RabbitMQ 3.9+, a comma-separated string before."""
    tags = obj.get("tags") or []
    return [t for t in tags.split(",") if t] if isinstance(tags, str) else list(tags)


@dataclass(frozen=True)
class Listing:
    """A ``list_*`` command: where the API keeps the objects, and rabbitmqctl's info items
    (column names) with where each is in an object."""

    path: str  # "{vhost}" is replaced by the quoted vhost
    items: dict[str, Item]
    default: tuple[str, ...]
    help: str

    @property
    def scoped(self) -> bool:
        return "{vhost}" in self.path


LISTINGS: dict[str, Listing] = {
    "list_queues": Listing(
        "/queues/{vhost}",
        {**_same("name", "vhost", "durable", "auto_delete", "exclusive", "arguments", "policy",
                 "messages", "messages_ready", "messages_unacknowledged", "messages_ram",
                 "messages_ready_ram", "messages_unacknowledged_ram", "messages_persistent",
                 "message_bytes", "message_bytes_ready", "message_bytes_unacknowledged",
                 "message_bytes_ram", "message_bytes_persistent", "head_message_timestamp",
                 "consumers", "consumer_utilisation", "consumer_capacity",
                 "exclusive_consumer_tag", "memory", "state", "type", "leader", "members",
                 "online"),
         "owner_pid": "owner_pid_details.name"},
        ("name", "messages"), "queues of the vhost"),
    "list_exchanges": Listing(
        "/exchanges/{vhost}",
        _same("name", "vhost", "type", "durable", "auto_delete", "internal", "arguments",
              "policy"),
        ("name", "type"), "exchanges of the vhost"),
    "list_bindings": Listing(
        "/bindings/{vhost}",
        {"source_name": "source", "source_kind": lambda _: "exchange",
         "destination_name": "destination", "destination_kind": "destination_type",
         **_same("routing_key", "arguments", "vhost")},
        ("source_name", "source_kind", "destination_name", "destination_kind", "routing_key",
         "arguments"), "bindings of the vhost"),
    "list_connections": Listing(
        "/connections",
        _same("name", "user", "vhost", "host", "port", "peer_host", "peer_port", "state",
              "channels", "protocol", "auth_mechanism", "ssl", "ssl_protocol", "ssl_key_exchange",
              "ssl_cipher", "ssl_hash", "peer_cert_subject", "peer_cert_issuer",
              "peer_cert_validity", "timeout", "frame_max", "channel_max", "client_properties",
              "recv_oct", "recv_cnt", "send_oct", "send_cnt", "send_pend", "connected_at"),
        ("user", "peer_host", "peer_port", "state"), "client connections (all vhosts)"),
    "list_consumers": Listing(
        "/consumers/{vhost}",
        {"queue_name": "queue.name", "channel_pid": "channel_details.name",
         **_same("consumer_tag", "ack_required", "prefetch_count", "active", "activity_status",
                 "exclusive", "arguments")},
        ("queue_name", "channel_pid", "consumer_tag", "ack_required", "prefetch_count",
         "active", "arguments"), "consumers in the vhost"),
    "list_users": Listing(
        "/users", {"user": "name", "tags": _tags}, ("user", "tags"), "users"),
    "list_vhosts": Listing(
        "/vhosts",
        _same("name", "description", "tags", "tracing", "cluster_state", "default_queue_type"),
        ("name",), "virtual hosts"),
    "list_permissions": Listing(
        "/vhosts/{vhost}/permissions", _same("user", "configure", "write", "read"),
        ("user", "configure", "write", "read"), "users' permissions in the vhost"),
}


# -- the command line -----------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``leveret ctl`` options and commands. The options are accepted before and after
    the command (``leveret ctl -p v list_queues`` and ``leveret ctl list_queues -p v``)."""
    _add_options(parser, top=True)
    commands = parser.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)

    def add(name: str, run: Callable[[Context], int], text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, prog=f"leveret ctl {name}",
                                  description=text[0].upper() + text[1:] + ".")
        _add_options(sub, top=False)
        sub.set_defaults(run=run, ctl_parser=sub)
        return sub

    for name, listing in LISTINGS.items():
        sub = add(name, list_command, f"list the {listing.help}")
        sub.add_argument("columns", nargs="*", metavar="column",
                         help=f"info items to show (default: {' '.join(listing.default)}); "
                              f"one of: {', '.join(listing.items)}")
        sub.set_defaults(listing=name)
    sub = add("purge_queue", purge_queue, "remove every ready message of a queue")
    sub.add_argument("queue")
    sub = add("delete_queue", delete_queue, "delete a queue")
    sub.add_argument("queue")
    sub.add_argument("-e", "--if-empty", action="store_true", help="only if it has no messages")
    sub.add_argument("-u", "--if-unused", action="store_true", help="only if it has no consumers")
    sub = add("peek", peek, "show a queue's first messages, leaving them in the queue "
                            "(RabbitMQ requeues them, marked redelivered)")
    sub.add_argument("queue")
    sub.add_argument("count", nargs="?", type=_positive, default=1, help="(default: 1)")
    sub = add("close_connection", close_connection, "close a client connection")
    sub.add_argument("connection", help="its name, as list_connections name shows it")
    sub.add_argument("reason", nargs="?", help="the text the client is closed with")
    sub = add("add_user", add_user, "add a user (with no permissions)")
    sub.add_argument("username", metavar="user")
    sub.add_argument("new_password", metavar="password")
    sub = add("delete_user", delete_user, "delete a user")
    sub.add_argument("username", metavar="user")
    sub = add("change_password", change_password, "set a user's password")
    sub.add_argument("username", metavar="user")
    sub.add_argument("new_password", metavar="password")
    sub = add("set_user_tags", set_user_tags,
              "replace a user's tags (administrator, monitoring, management, policymaker)")
    sub.add_argument("username", metavar="user")
    sub.add_argument("tags", nargs="*", metavar="tag", help="none: remove every tag")
    sub = add("add_vhost", add_vhost, "add a virtual host (done if it exists)")
    sub.add_argument("name")
    sub = add("delete_vhost", delete_vhost, "delete a virtual host and everything in it")
    sub.add_argument("name")
    sub = add("set_permissions", set_permissions,
              "set a user's permissions in the vhost (regular expressions)")
    sub.add_argument("username", metavar="user")
    for name in ("configure", "write", "read"):
        sub.add_argument(name)
    sub = add("clear_permissions", clear_permissions,
              "remove a user's permissions in the vhost")
    sub.add_argument("username", metavar="user")
    sub = add("export_definitions", export_definitions,
              "write users, vhosts, permissions, queues, exchanges and bindings as JSON")
    sub.add_argument("file", help="- for standard output")
    sub.add_argument("--quorum", action="store_true",
                     help="classic durable queues as quorum queues, for a RabbitMQ cluster "
                          "(Leveret's ?quorum=true; RabbitMQ ignores it)")
    sub = add("import_definitions", import_definitions,
              "create what a definitions file (RabbitMQ's JSON) lists")
    sub.add_argument("file", help="- for standard input")
    add("status", status, "show the node: version, uptime, totals, memory, alarms")
    add("ping", ping, "exit 0 if the broker answers and has no alarm in effect, 1 if not")


def _add_options(parser: argparse.ArgumentParser, top: bool) -> None:
    # After the command the defaults are not set, so that they do not hide the values given
    # before it.
    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument("--url", default=default(None),
                        help=f"management API (default: ${ENV_URL}, else {DEFAULT_URL})")
    parser.add_argument("--user", default=default(None),
                        help=f"(default: the URL's, ${ENV_USER}, else guest)")
    parser.add_argument("--password", default=default(None),
                        help=f"(default: the URL's, ${ENV_PASSWORD}, else guest)")
    parser.add_argument("-p", "--vhost", default=default("/"),
                        help="vhost of the vhost-scoped commands (default: /)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print JSON instead of a table (changes print nothing)")
    parser.add_argument("-s", "--silent", action="store_true", default=default(False),
                        help="tables without their header row")
    parser.add_argument("--timeout", type=float, default=default(10.0),
                        help="seconds to wait for an answer (default: 10)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


@dataclass
class Context:
    """What a command works with: the API, the options, where to print."""

    api: ManagementAPI
    args: argparse.Namespace

    @property
    def vhost(self) -> str:
        return self.args.vhost

    def say(self, text: str) -> None:
        """A change's confirmation (not with --json)."""
        if not self.args.json:
            print(text)

    def show(self, text: str, data: Any) -> None:
        print(json.dumps(data, indent=2, ensure_ascii=False) if self.args.json else text)


def command(args: argparse.Namespace) -> int:
    """Run ``leveret ctl``; the exit status."""
    url, url_user, url_password = split_credentials(
        args.url or os.environ.get(ENV_URL) or DEFAULT_URL)
    user = args.user or url_user or os.environ.get(ENV_USER) or "guest"
    password = args.password
    if password is None:
        password = url_password if url_password is not None else os.environ.get(
            ENV_PASSWORD, "guest")
    if not url.startswith(("http://", "https://")):
        args.ctl_parser.error(f"--url: expected http://HOST:PORT or https://..., got {url!r}")
    context = Context(ManagementAPI(url, user, password, args.timeout), args)
    try:
        return args.run(context)
    except CtlError as error:
        print(f"leveret ctl {args.ctl_command}: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `leveret ctl list_queues | head`: the rest goes nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# -- the commands ---------------------------------------------------------------------------

def list_command(ctx: Context) -> int:
    listing = LISTINGS[ctx.args.listing]
    columns = ctx.args.columns or list(listing.default)
    unknown = [c for c in columns if c not in listing.items]
    if unknown:
        ctx.args.ctl_parser.error(f"unknown column {', '.join(map(repr, unknown))}; "
                                  f"known: {', '.join(listing.items)}")
    path = listing.path.replace("{vhost}", quote(ctx.vhost))
    found = ctx.api.get(path, vhost=ctx.vhost if listing.scoped else None)
    rows = [[ctl_format.lookup(obj, listing.items[c]) for c in columns] for obj in found or []]
    if ctx.args.json:
        print(json.dumps([dict(zip(columns, row, strict=True)) for row in rows], indent=2,
                         ensure_ascii=False))
    elif ctx.args.silent:
        if rows:
            print(ctl_format.table(columns, rows).split("\n", 1)[1])
    else:
        print(ctl_format.table(columns, rows))
    return 0


def _queue_path(ctx: Context, queue: str) -> str:
    return f"/queues/{quote(ctx.vhost)}/{quote(queue)}"


def _no_queue(ctx: Context, queue: str) -> str:
    return f"no such queue '{queue}' in vhost '{ctx.vhost}'"


def purge_queue(ctx: Context) -> int:
    queue = ctx.args.queue
    ctx.api.request("DELETE", _queue_path(ctx, queue) + "/contents",
                    missing=_no_queue(ctx, queue), vhost=ctx.vhost)
    ctx.say(f"purged queue '{queue}' in vhost '{ctx.vhost}'")
    return 0


def delete_queue(ctx: Context) -> int:
    queue = ctx.args.queue
    conditions = [f"{name}=true" for name, wanted in (
        ("if-empty", ctx.args.if_empty), ("if-unused", ctx.args.if_unused)) if wanted]
    query = "?" + "&".join(conditions) if conditions else ""
    ctx.api.request("DELETE", _queue_path(ctx, queue) + query,
                    missing=_no_queue(ctx, queue), vhost=ctx.vhost)
    ctx.say(f"deleted queue '{queue}' in vhost '{ctx.vhost}'")
    return 0


def peek(ctx: Context) -> int:
    queue = ctx.args.queue
    messages = ctx.api.request(
        "POST", _queue_path(ctx, queue) + "/get",
        {"count": ctx.args.count, "ackmode": "ack_requeue_true", "encoding": "auto"},
        missing=_no_queue(ctx, queue), vhost=ctx.vhost) or []
    blocks = [_message(i, message) for i, message in enumerate(messages, 1)]
    ctx.show("\n\n".join(blocks) if blocks else f"queue '{queue}' is empty", messages)
    return 0


def _message(number: int, message: Mapping[str, Any]) -> str:
    """One message of ``peek``: where it came from, its properties, its body."""
    properties = message.get("properties") or {}  # RabbitMQ sends [] for none
    flags = ", redelivered" if message.get("redelivered") else ""
    lines = [
        f"message {number}: exchange '{message.get('exchange', '')}', routing key "
        f"'{message.get('routing_key', '')}', {message.get('payload_bytes', '?')} bytes"
        f"{flags}, {message.get('message_count', '?')} more in the queue",
        *(f"  {key}: {ctl_format.cell(value)}" for key, value in properties.items()),
    ]
    text = ctl_format.body(str(message.get("payload", "")),
                           str(message.get("payload_encoding", "string")))
    lines.append("  body: " + text.replace("\n", "\n        "))
    return "\n".join(lines)


def close_connection(ctx: Context) -> int:
    name, reason = ctx.args.connection, ctx.args.reason
    ctx.api.request("DELETE", f"/connections/{quote(name)}",
                    headers={"X-Reason": reason} if reason else None,
                    missing=f"no such connection '{name}'")
    ctx.say(f"closed connection '{name}'")
    return 0


def _user(ctx: Context, user: str) -> dict[str, Any]:
    return ctx.api.get(f"/users/{quote(user)}", missing=f"no such user '{user}'")


def add_user(ctx: Context) -> int:
    user = ctx.args.username
    if ctx.api.exists(f"/users/{quote(user)}"):  # a PUT would replace it
        raise CtlError(f"user '{user}' already exists")
    ctx.api.request("PUT", f"/users/{quote(user)}", {"password": ctx.args.new_password, "tags": ""})
    ctx.say(f"added user '{user}'")
    return 0


def delete_user(ctx: Context) -> int:
    user = ctx.args.username
    ctx.api.request("DELETE", f"/users/{quote(user)}", missing=f"no such user '{user}'")
    ctx.say(f"deleted user '{user}'")
    return 0


def change_password(ctx: Context) -> int:
    user = ctx.args.username
    tags = _tags(_user(ctx, user))  # a PUT without them would remove them
    ctx.api.request("PUT", f"/users/{quote(user)}",
                    {"password": ctx.args.new_password, "tags": ",".join(tags)})
    ctx.say(f"changed the password of user '{user}'")
    return 0


def set_user_tags(ctx: Context) -> int:
    user = ctx.args.username
    found = _user(ctx, user)
    # A PUT without a password or its hash leaves the user without a password.
    ctx.api.request("PUT", f"/users/{quote(user)}", {
        "password_hash": found.get("password_hash", ""),
        "hashing_algorithm": found.get("hashing_algorithm", "rabbit_password_hashing_sha256"),
        "tags": ",".join(ctx.args.tags)})
    ctx.say(f"set the tags of user '{user}' to [{', '.join(ctx.args.tags)}]")
    return 0


def add_vhost(ctx: Context) -> int:
    ctx.api.request("PUT", f"/vhosts/{quote(ctx.args.name)}", {})
    ctx.say(f"added vhost '{ctx.args.name}'")
    return 0


def delete_vhost(ctx: Context) -> int:
    name = ctx.args.name
    ctx.api.request("DELETE", f"/vhosts/{quote(name)}", missing=f"no such vhost '{name}'")
    ctx.say(f"deleted vhost '{name}'")
    return 0


def set_permissions(ctx: Context) -> int:
    user, args = ctx.args.username, ctx.args
    _user(ctx, user)  # RabbitMQ answers 400 "vhost_or_user_not_found": say which
    if not ctx.api.exists(f"/vhosts/{quote(ctx.vhost)}"):
        raise CtlError(f"no such vhost '{ctx.vhost}'")
    ctx.api.request("PUT", f"/permissions/{quote(ctx.vhost)}/{quote(user)}",
                    {"configure": args.configure, "write": args.write, "read": args.read})
    ctx.say(f"set the permissions of user '{user}' in vhost '{ctx.vhost}'")
    return 0


def clear_permissions(ctx: Context) -> int:
    user = ctx.args.username
    ctx.api.request("DELETE", f"/permissions/{quote(ctx.vhost)}/{quote(user)}",
                    missing=f"user '{user}' has no permissions in vhost '{ctx.vhost}'",
                    vhost=ctx.vhost)
    ctx.say(f"cleared the permissions of user '{user}' in vhost '{ctx.vhost}'")
    return 0


def export_definitions(ctx: Context) -> int:
    definitions = ctx.api.get("/definitions" + ("?quorum=true" if ctx.args.quorum else ""))
    text = json.dumps(definitions, indent=2, ensure_ascii=False) + "\n"
    if ctx.args.file == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(ctx.args.file).write_text(text, encoding="utf-8")
    except OSError as error:
        raise CtlError(f"cannot write {ctx.args.file}: {error.strerror}") from None
    ctx.say(f"exported definitions to {ctx.args.file}")
    return 0


def import_definitions(ctx: Context) -> int:
    name = ctx.args.file
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        definitions = json.loads(text)
    except OSError as error:
        raise CtlError(f"cannot read {name}: {error.strerror}") from None
    except ValueError as error:
        raise CtlError(f"{name} is not JSON: {error}") from None
    if not isinstance(definitions, dict):
        raise CtlError(f"{name} is not a definitions file (a JSON object)")
    ctx.api.request("POST", "/definitions", definitions)
    ctx.say(f"imported definitions from {name}")
    return 0


def _alarms(ctx: Context) -> tuple[bool, str]:
    """(no alarm in effect, what the health check said)."""
    status, answer = ctx.api.call("GET", "/health/checks/alarms")
    if status == 200:
        return True, "no alarms"
    if status == 503:
        if not isinstance(answer, dict):
            return False, str(answer or "alarm in effect")
        alarms = [f"{a.get('resource')} on {a.get('node')}" for a in answer.get("alarms") or []
                  if isinstance(a, dict)]
        reason = str(answer.get("reason") or "alarm in effect")
        return False, reason + (f" ({', '.join(alarms)})" if alarms else "")
    raise CtlError(ctx.api.describe(status, answer, "GET", "/health/checks/alarms", None))


def ping(ctx: Context) -> int:
    healthy, text = _alarms(ctx)
    ctx.show(f"{ctx.api.url}: {'ok' if healthy else 'alarm: ' + text}",
             {"ok": healthy, "url": ctx.api.url, "alarms": text})
    return 0 if healthy else 1


def status(ctx: Context) -> int:
    overview = ctx.api.get("/overview")
    node_name = overview.get("node")
    node: dict[str, Any] = {}
    if node_name and ctx.api.exists(f"/nodes/{quote(node_name)}"):
        node = ctx.api.get(f"/nodes/{quote(node_name)}")
    healthy, alarms = _alarms(ctx)
    totals, messages = overview.get("object_totals", {}), overview.get("queue_totals", {})
    data = {
        "product": overview.get("product_name", "RabbitMQ"),
        "version": overview.get("product_version") or overview.get("rabbitmq_version"),
        "node": node_name,
        "uptime_ms": node.get("uptime"),
        **{name: totals.get(name) for name in (
            "connections", "channels", "queues", "consumers", "exchanges")},
        **{name: messages.get(name) for name in (
            "messages", "messages_ready", "messages_unacknowledged")},
        "mem_used": node.get("mem_used"),
        "mem_limit": node.get("mem_limit"),
        "alarms": [] if healthy else [alarms],
    }
    ctx.show(_status_text(data), data)
    return 0


def _status_text(data: Mapping[str, Any]) -> str:
    def amount(value: Any, show: Callable[[Any], str] = str) -> str | None:
        return None if value is None else show(value)

    memory = amount(data["mem_used"], ctl_format.size)
    if memory is not None and data["mem_limit"]:
        memory += f" (alarm above {ctl_format.size(data['mem_limit'])})"
    messages = amount(data["messages"])
    if messages is not None:
        messages += (f" ({data['messages_ready']} ready, "
                     f"{data['messages_unacknowledged']} unacknowledged)")
    return ctl_format.pairs([
        ("node", data["node"]),
        ("version", f"{data['product']} {data['version']}"),
        ("uptime", amount(data["uptime_ms"], lambda ms: ctl_format.duration(ms / 1000))),
        *((name, data[name]) for name in (
            "connections", "channels", "queues", "consumers", "exchanges")),
        ("messages", messages),
        ("memory", memory),
        ("alarms", "; ".join(data["alarms"]) or "none"),
    ])
