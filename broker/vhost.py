"""A virtual host: its exchanges, queues and bindings, and the rules for changing them.

Errors carry RabbitMQ's reply codes and texts, so handlers only translate methods into
calls here and replies back.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from leveret.broker.arguments import check_equivalent_arguments, type_name, validate_queue_arguments
from leveret.broker.delayed import DelayedMessages
from leveret.broker.direct_reply import REPLY_PREFIX
from leveret.broker.exchange import BUILTIN_TYPES, DELAYED_TYPE, Exchange
from leveret.broker.queue import Queue
from leveret.broker.routing import freeze
from leveret.broker.store.definitions import decode_table, encode_table
from leveret.protocol import errors

if TYPE_CHECKING:
    from leveret.broker.access import Authorizer
    from leveret.broker.connection import Connection
    from leveret.broker.dispatcher import Dispatcher
    from leveret.broker.message import Message
    from leveret.broker.store import MessageStore

PREDECLARED = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _flag(value: bool) -> str:
    return "true" if value else "false"


class VirtualHost:
    """Exchanges, queues and bindings of one vhost."""

    def __init__(self, name: str, dispatcher: Dispatcher,
                 consumer_timeout: float | None = None) -> None:
        self.name = name
        self.dispatcher = dispatcher
        self.consumer_timeout = consumer_timeout  # seconds; None = off (the default)
        self.delayed = DelayedMessages(self)
        self.store: MessageStore | None = None  # set by the broker when it has a data dir
        self.exchanges: dict[str, Exchange] = {"": Exchange("", "direct")}
        for ex_name, ex_type in PREDECLARED:
            self.exchanges[ex_name] = Exchange(ex_name, ex_type)
        self.queues: dict[str, Queue] = {}
        self.reply_queues: dict[str, Queue] = {}  # direct reply-to, see broker.direct_reply
        self.limits: dict[str, int] = {}  # RabbitMQ's vhost limits: max-connections, max-queues
        self._restoring = False

    # -- naming helpers --------------------------------------------------------------------
    def _in(self) -> str:
        return f"in vhost '{self.name}'"

    def no_exchange(self, name: str) -> errors.AMQPError:
        return errors.NotFound(f"no exchange '{name}' {self._in()}")

    def no_queue(self, name: str) -> errors.AMQPError:
        return errors.NotFound(f"no queue '{name}' {self._in()}")

    # -- exchanges -------------------------------------------------------------------------
    def get_exchange(self, name: str) -> Exchange:
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise self.no_exchange(name)
        return exchange

    def declare_exchange(
        self,
        name: str,
        type_: str,
        *,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: dict[str, Any],
        authz: Authorizer | None = None,
    ) -> Exchange:
        if name == "":
            raise errors.AccessRefused("operation not permitted on the default exchange")
        if passive:
            return self.get_exchange(name)
        alternate = arguments.get("alternate-exchange")
        if alternate is not None and not isinstance(alternate, str | bytes):
            raise errors.PreconditionFailed(
                f"invalid type '{type_name(alternate)}' for arg 'alternate-exchange' in "
                f"exchange '{name}' {self._in()}"
            )
        if type_ == DELAYED_TYPE:
            delayed_type = arguments.get("x-delayed-type")
            if isinstance(delayed_type, bytes):
                delayed_type = delayed_type.decode("utf-8", "replace")
            if delayed_type not in BUILTIN_TYPES:
                raise errors.PreconditionFailed(
                    "Invalid argument, 'x-delayed-type' must be an existing exchange type"
                )
        elif type_ not in BUILTIN_TYPES:
            raise errors.CommandInvalid(f"unknown exchange type '{type_}'")
        if authz is not None:
            authz.configure("exchange", name)
        existing = self.exchanges.get(name)
        if existing is not None:
            self._check_equivalent_exchange(existing, type_, durable, auto_delete, internal)
            check_equivalent_arguments(
                f"exchange '{name}'", self.name, existing.arguments, arguments,
                ("alternate-exchange",),
            )
            return existing
        if name.startswith("amq."):
            raise errors.AccessRefused(f"exchange name '{name}' contains reserved prefix 'amq.*'")
        if authz is not None and alternate is not None:
            authz.read("exchange", name)
            authz.write("exchange", _text(alternate))
        exchange = Exchange(
            name,
            type_,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
        )
        self.exchanges[name] = exchange
        if durable:
            self._define("exchange.declare", name=name, type=type_, auto_delete=auto_delete,
                         internal=internal, arguments=encode_table(arguments))
        return exchange

    def _check_equivalent_exchange(
        self, ex: Exchange, type_: str, durable: bool, auto_delete: bool, internal: bool
    ) -> None:
        where = f"for exchange '{ex.name}' {self._in()}"
        if ex.type != type_:
            raise errors.PreconditionFailed(
                f"inequivalent arg 'type' {where}: received '{type_}' but current is '{ex.type}'"
            )
        for arg, received, current in (
            ("durable", durable, ex.durable),
            ("auto_delete", auto_delete, ex.auto_delete),
            ("internal", internal, ex.internal),
        ):
            if received != current:
                raise errors.PreconditionFailed(
                    f"inequivalent arg '{arg}' {where}: received '{_flag(received)}' "
                    f"but current is '{_flag(current)}'"
                )

    def delete_exchange(self, name: str, if_unused: bool,
                        authz: Authorizer | None = None) -> None:
        """RabbitMQ's checks in its order: the default exchange, system exchanges (whether
        they exist or not), configure permission; a missing exchange is not an error."""
        if name == "":
            raise errors.AccessRefused("operation not permitted on the default exchange")
        if name.startswith("amq."):
            raise errors.AccessRefused(
                f"deletion of system exchange '{name}' {self._in()} not allowed"
            )
        if authz is not None:
            authz.configure("exchange", name)
        exchange = self.exchanges.get(name)
        if exchange is None:
            return  # RabbitMQ 3.x answers delete-ok for a missing exchange
        if if_unused and len(exchange.table):
            raise errors.PreconditionFailed(f"exchange '{name}' {self._in()} in use")
        self._remove_exchange(exchange)

    def _remove_exchange(self, exchange: Exchange) -> None:
        self.exchanges.pop(exchange.name, None)
        for ident, args in list(exchange.table.bindings.items()):
            self._unlink(exchange, ident[0], ident[1], args)
        for source, key, frozen_args in list(exchange.bound_as_destination):
            args = source.table.bindings.get((exchange, key, frozen_args), {})
            self.unbind(source, exchange, key, args)
        if exchange.durable:
            self._define("exchange.delete", name=exchange.name)

    # -- queues ----------------------------------------------------------------------------
    def get_queue(self, name: str, connection: Connection | None) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            raise self.no_queue(name)
        self.check_exclusive(queue, connection)
        return queue

    def check_exclusive(self, queue: Queue, connection: Connection | None) -> None:
        if queue.exclusive_owner is not None and queue.exclusive_owner is not connection:
            raise self._locked(queue)

    def _locked(self, queue: Queue) -> errors.AMQPError:
        return errors.ResourceLocked(
            f"cannot obtain exclusive access to locked queue '{queue.name}' {self._in()}. "
            "It could be originally declared on another connection or the exclusive "
            "property value does not match that of the original declaration."
        )

    def declare_queue(
        self,
        name: str,
        connection: Connection,
        *,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
        authz: Authorizer | None = None,
    ) -> Queue:
        if passive:
            if not name:
                raise errors.NotFound(f"no queue '' {self._in()}")
            queue = self.get_queue(name, connection)
            queue.touch()
            return queue
        is_quorum = arguments.get("x-queue-type") in ("quorum", b"quorum")
        if not name:
            if is_quorum:
                raise errors.PreconditionFailed(
                    "Cannot declare a server-named queue for type rabbit_quorum_queue"
                )
            name = "amq.gen-" + secrets.token_urlsafe(16)
        elif name.startswith("amq."):
            raise errors.AccessRefused(f"queue name '{name}' contains reserved prefix 'amq.*'")
        if authz is not None:
            authz.configure("queue", name)
        validate_queue_arguments(name, self.name, arguments)
        existing = self.queues.get(name)
        if existing is not None:
            self.check_exclusive(existing, connection)
            if exclusive != (existing.exclusive_owner is not None):
                raise self._locked(existing)
            self._check_equivalent_queue(existing, durable, exclusive, auto_delete, arguments)
            check_equivalent_arguments(f"queue '{name}'", self.name, existing.arguments,
                                       arguments)
            existing.touch()
            return existing
        dlx = arguments.get("x-dead-letter-exchange")
        if authz is not None and dlx is not None:
            authz.read("queue", name)
            authz.write("exchange", _text(dlx))
        max_queues = self.limits.get("max-queues")
        if max_queues is not None and max_queues >= 0 and len(self.queues) >= max_queues:
            raise errors.PreconditionFailed(f"cannot declare queue '{name}': queue limit in "
                                            f"vhost '{self.name}' ({max_queues}) is reached")
        if is_quorum:
            self._check_quorum(name, durable, exclusive, auto_delete, arguments)
        elif "x-delivery-limit" in arguments:
            raise errors.PreconditionFailed(
                f"invalid arg 'x-delivery-limit' for queue '{name}' {self._in()} "
                "of queue type rabbit_classic_queue"
            )
        queue = Queue(
            name,
            self,
            durable=durable,
            exclusive_owner=connection if exclusive else None,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        self.queues[name] = queue
        if queue.persists:
            self._define("queue.declare", name=name, auto_delete=auto_delete,
                         arguments=encode_table(arguments))
        return queue

    def _check_quorum(self, name: str, durable: bool, exclusive: bool, auto_delete: bool,
                      arguments: dict[str, Any]) -> None:
        """Quorum queues are durable, shared and kept; some arguments do not apply."""
        for refused, prop in ((not durable, "non-durable"), (exclusive, "exclusive-owner"),
                              (auto_delete, "auto-delete")):
            if refused:
                raise errors.PreconditionFailed(
                    f"invalid property '{prop}' for queue '{name}' {self._in()}"
                )
        for arg in ("x-max-priority", "x-queue-mode"):
            if arg in arguments:
                raise errors.PreconditionFailed(
                    f"invalid arg '{arg}' for queue '{name}' {self._in()} "
                    "of queue type rabbit_quorum_queue"
                )

    def _check_equivalent_queue(
        self, q: Queue, durable: bool, exclusive: bool, auto_delete: bool, arguments: dict[str, Any]
    ) -> None:
        where = f"for queue '{q.name}' {self._in()}"
        for arg, received, current in (
            ("durable", durable, q.durable),
            ("exclusive", exclusive, q.exclusive_owner is not None),
            ("auto_delete", auto_delete, q.auto_delete),
        ):
            if received != current:
                raise errors.PreconditionFailed(
                    f"inequivalent arg '{arg}' {where}: received '{_flag(received)}' "
                    f"but current is '{_flag(current)}'"
                )

    def delete_queue(self, queue: Queue) -> int:
        """Remove ``queue``, its bindings and consumers; returns its ready message count."""
        if queue.deleted:
            return 0
        queue.deleted = True
        queue.stop_timers()
        count = queue.message_count
        self.queues.pop(queue.name, None)
        self.reply_queues.pop(queue.name, None)
        for source, key, frozen_args in list(queue.bindings):
            args = source.table.bindings.get((queue, key, frozen_args), {})
            self.unbind(source, queue, key, args)
        for consumer in list(queue.consumers):
            consumer.channel.cancel_by_server(consumer)
        queue.consumers.clear()
        queue.drop_all()
        if queue.persists:
            self._define("queue.delete", name=queue.name)
        return count

    # -- durable definitions ---------------------------------------------------------------
    def _define(self, op: str, **fields: Any) -> None:
        """Record a durable definition change in the store (not while restoring them)."""
        if self.store is not None and not self._restoring:
            self.store.define({"op": op, "vhost": self.name, **fields})

    def _define_binding(self, op: str, source: Exchange, dest: Queue | Exchange, key: str,
                        arguments: dict[str, Any]) -> None:
        self._define(op, source=source.name, destination=dest.name,
                     destination_type="exchange" if isinstance(dest, Exchange) else "queue",
                     routing_key=key, arguments=encode_table(arguments))

    def restore_definitions(self, saved: dict[str, Any]) -> None:
        """Recreate durable exchanges, queues and bindings read from the store."""
        self._restoring = True
        self.limits = dict(saved.get("limits", {}))
        try:
            for name, ex in saved.get("exchanges", {}).items():
                self.exchanges[name] = Exchange(
                    name, ex["type"], durable=True, auto_delete=ex["auto_delete"],
                    internal=ex["internal"], arguments=decode_table(ex["arguments"]))
            for name, q in saved.get("queues", {}).items():
                self.queues[name] = Queue(name, self, durable=True, auto_delete=q["auto_delete"],
                                          arguments=decode_table(q["arguments"]))
            for b in saved.get("bindings", {}).values():
                source = self.exchanges.get(b["source"])
                dest: Queue | Exchange | None = (
                    self.exchanges.get(b["destination"]) if b["destination_type"] == "exchange"
                    else self.queues.get(b["destination"]))
                if source is not None and dest is not None:
                    self.bind(source, dest, b["routing_key"], decode_table(b["arguments"]))
        finally:
            self._restoring = False

    def restore_orphan(self, name: str) -> Queue:
        """A queue the message log names but the definitions lost: recreated as a plain
        durable queue so its stored messages are kept."""
        self.queues[name] = queue = Queue(name, self, durable=True)
        self._define("queue.declare", name=name, auto_delete=False, arguments=encode_table({}))
        return queue

    def connection_closed(self, connection: Connection) -> None:
        """Exclusive queues go with the connection that owns them."""
        for queue in [q for q in self.queues.values() if q.exclusive_owner is connection]:
            self.delete_queue(queue)

    # -- bindings --------------------------------------------------------------------------
    def bind(
        self, source: Exchange, dest: Queue | Exchange, key: str, arguments: dict[str, Any]
    ) -> None:
        self._check_not_default(source, dest)
        if source.type == "headers":
            _check_x_match(arguments)
        if not source.table.add(dest, key, arguments):
            return
        link = (source, key, freeze(arguments))
        if _durable_binding(source, dest):
            self._define_binding("bind", source, dest, key, arguments)
        if isinstance(dest, Exchange):
            source.exchange_destinations += 1
            dest.bound_as_destination.add(link)
        else:
            dest.bindings.add(link)

    def unbind(
        self, source: Exchange, dest: Queue | Exchange, key: str, arguments: dict[str, Any]
    ) -> bool:
        self._check_not_default(source, dest)
        removed = self._unlink(source, dest, key, arguments)
        if removed and source.auto_delete and not len(source.table):
            self._remove_exchange(source)
        return removed

    @staticmethod
    def _check_not_default(source: Exchange, dest: Queue | Exchange) -> None:
        if source.name == "" or (isinstance(dest, Exchange) and dest.name == ""):
            raise errors.AccessRefused("operation not permitted on the default exchange")

    def _unlink(self, source: Exchange, dest: Any, key: str, arguments: dict[str, Any]) -> bool:
        if not source.table.remove(dest, key, arguments):
            return False
        if _durable_binding(source, dest):
            self._define_binding("unbind", source, dest, key, arguments)
        link = (source, key, freeze(arguments))
        if isinstance(dest, Exchange):
            source.exchange_destinations -= 1
            dest.bound_as_destination.discard(link)
        else:
            dest.bindings.discard(link)
        return True

    # -- routing ---------------------------------------------------------------------------
    def route(self, exchange: Exchange, message: Message, extra_keys: list[str] | None = None,
              routing_key: str | None = None) -> list[Queue]:
        """Every queue ``message`` reaches from ``exchange``, each once, cycles included.

        ``extra_keys`` are the CC/BCC routing keys of the message. An exchange that routes
        nowhere hands the message to its alternate exchange, if it has one.
        """
        key = message.routing_key if routing_key is None else routing_key
        if exchange.name == "" and not extra_keys:
            queue = self.queues.get(key)
            if queue is None and key.startswith(REPLY_PREFIX):
                queue = self.reply_queues.get(key)
            return [queue] if queue is not None else []
        keys = [key, *extra_keys] if extra_keys else [key]
        if (not exchange.exchange_destinations and exchange.alternate is None
                and len(keys) == 1):
            return list(exchange.table.route(key, _headers_of(message)))
        return list(self._route_graph(exchange, message, keys))

    def _route_graph(self, exchange: Exchange, message: Message,
                     keys: list[str]) -> dict[Queue, None]:
        headers = _headers_of(message)
        queues: dict[Queue, None] = {}
        visited: set[Exchange] = set()
        pending = [exchange]
        while pending:
            source = pending.pop()
            if source in visited:
                continue
            visited.add(source)
            found_before = len(queues)
            routed_to_exchange = False
            for key in keys:
                if source.name == "":
                    queue = self.queues.get(key) or self.reply_queues.get(key)
                    dests: Any = (queue,) if queue is not None else ()
                else:
                    dests = source.table.route(key, headers)
                for dest in dests:
                    if isinstance(dest, Exchange):
                        routed_to_exchange = True
                        pending.append(dest)
                    else:
                        queues[dest] = None
            if len(queues) == found_before and not routed_to_exchange and source.alternate:
                alternate = self.exchanges.get(source.alternate)
                if alternate is not None:
                    pending.append(alternate)
        return queues


def _headers_of(message: Message) -> Callable[[], dict[str, Any]]:
    return lambda: message.headers


X_MATCH_MODES = ("all", "any", "all-with-x", "any-with-x")


def _check_x_match(arguments: dict[str, Any]) -> None:
    """A headers binding's x-match must be one of RabbitMQ's four modes."""
    if "x-match" not in arguments:
        return
    mode = arguments["x-match"]
    if isinstance(mode, bytes):
        mode = mode.decode("utf-8", "replace")
    if not isinstance(mode, str):
        kind = "signedint" if isinstance(mode, int) and not isinstance(mode, bool) else (
            type(mode).__name__)
        raise errors.PreconditionFailed(
            f"Invalid x-match field type {kind} (value {mode}); expected longstr"
        )
    if mode not in X_MATCH_MODES:
        raise errors.PreconditionFailed(
            f'Invalid x-match field value <<"{mode}">>; '
            "expected all, any, all-with-x, or any-with-x"
        )


def _durable_binding(source: Exchange, dest: Queue | Exchange) -> bool:
    """A binding survives a restart when both of its ends do."""
    if not source.durable or not source.name:
        return False
    return dest.durable if isinstance(dest, Exchange) else dest.persists
