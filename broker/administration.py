"""Virtual hosts, users and permissions at run time, and definitions in RabbitMQ's format.

The broker's ``admin`` makes every change that is not an AMQP method: create or delete a
vhost, add, change or delete a user, set or clear permissions or runtime parameters (dynamic
shovels), import or export definitions. Each change is recorded in the store's definitions
(when the broker has a data directory), so it survives a restart, as in RabbitMQ.

At start-up (``bootstrap``) the broker takes its users, vhosts and permissions from the
store; a data directory that has none yet gets RabbitMQ's defaults (user ``guest`` /
``guest`` tagged ``administrator`` with all permissions on vhost ``/``) unless the
configuration lists users or definitions to load: those are applied at every start, as
RabbitMQ's ``load_definitions``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from leveret.broker import __version__
from leveret.broker.access import (
    SHA256,
    AccessControl,
    Permission,
    User,
    check_pattern,
    hash_password,
)
from leveret.broker.exchange import Exchange
from leveret.broker.shovels import COMPONENT as SHOVEL
from leveret.broker.shovels import ShovelDefinitionError, ShovelSpec
from leveret.broker.vhost import VirtualHost
from leveret.protocol import constants as c

if TYPE_CHECKING:
    from leveret.broker.server import Broker
    from leveret.broker.store.definitions import DefinitionsState

log = logging.getLogger(__name__)

FULL_ACCESS = (".*", ".*", ".*")
VHOST_DELETED = "CONNECTION_FORCED - vhost '{}' is deleted"
NO_EQUIVALENT = "Leveret has no equivalent"  # ends the problems that are only skipped parts
# Classic queue arguments RabbitMQ 3.10.8's quorum queues refuse (406 invalid arg; checked
# against it), for the export with ``quorum``.
QUORUM_INCOMPATIBLE = {
    "x-max-priority": "quorum queues have no priorities",
    "x-queue-mode": "x-queue-mode is for classic queues",
    "x-queue-master-locator": "x-queue-master-locator is for classic queues",
    "x-queue-version": "x-queue-version is for classic queues",
}


class DefinitionError(ValueError):
    """A change that cannot be made (unknown user or vhost, bad pattern, bad name)."""


class Administration:
    """Run-time changes to vhosts, users and permissions, kept durable through the store."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.access = AccessControl(broker.config.loopback_users)

    # -- start-up ---------------------------------------------------------------------------
    def bootstrap(self, saved: DefinitionsState | None) -> None:
        """Users, vhosts and permissions at start-up: from the store, else the defaults;
        then what the configuration asks for."""
        config = self.broker.config
        if saved is not None and saved.access:
            for name in saved.vhosts:
                self._create_vhost(name)
            for data in saved.users.values():
                self.access.users[data["name"]] = User.from_json(data)
            for p in saved.permissions.values():
                self.access.permissions[(p["user"], p["vhost"])] = Permission(
                    p["configure"], p["write"], p["read"])
        else:
            # A new data directory (or none, or one written before users were stored).
            self._record({"op": "access.init"})
            for name in [*(saved.vhosts if saved else ()), config.default_vhost]:
                self.add_vhost(name)
            if config.users is None and config.definitions is None:
                self.put_user(config.default_user, password=config.default_pass,
                              tags=config.default_user_tags)
                self.set_permissions(config.default_user, config.default_vhost, *FULL_ACCESS)
        if saved is not None:
            for p in saved.parameters.values():
                try:
                    self._apply_parameter(p["component"], p["vhost"], p["name"], p["value"])
                except DefinitionError as error:
                    log.error("stored %s parameter '%s' in vhost '%s' not restored: %s",
                              p["component"], p["name"], p["vhost"], error)
        for name in config.vhosts:
            self.add_vhost(name)
        for name, limits in config.vhost_limits.items():
            self.add_vhost(name)
            self.set_vhost_limits(name, limits)
        if config.users is not None:
            self._apply_configured_users(config.users, config.permissions)
        for name, value in config.shovels.items():
            value = dict(value)
            vhost = value.pop("vhost", config.default_vhost)
            self.set_parameter(SHOVEL, vhost, name, value)

    def load_configured_definitions(self) -> None:
        """The configuration's ``load_definitions``, applied after the store's own
        definitions were restored (as RabbitMQ applies them at every start)."""
        definitions = self.broker.config.definitions
        if definitions is not None:
            for problem in self.import_definitions(definitions):
                log.warning("load_definitions: %s", problem)

    def _apply_configured_users(self, users: dict[str, Any],
                                permissions: list[dict[str, str]] | None) -> None:
        for name, spec in users.items():
            if isinstance(spec, str):
                self.put_user(name, password=spec)
            else:
                self.put_user(name, password=spec.get("password"),
                              password_hash=spec.get("password_hash"),
                              hashing_algorithm=spec.get("hashing_algorithm", SHA256),
                              tags=spec.get("tags", ()))
        if permissions is None:  # every configured user may do anything on every vhost
            for name in users:
                for vhost in self.broker.vhosts:
                    self.set_permissions(name, vhost, *FULL_ACCESS)
            return
        for p in permissions:
            self.set_permissions(p["user"], p.get("vhost", "/"), p.get("configure", ".*"),
                                 p.get("write", ".*"), p.get("read", ".*"))

    # -- vhosts -----------------------------------------------------------------------------
    def _create_vhost(self, name: str) -> VirtualHost:
        broker = self.broker
        vhost = broker.vhosts.get(name)
        if vhost is None:
            vhost = broker.vhosts[name] = VirtualHost(name, broker.dispatcher,
                                                      broker.config.consumer_timeout)
            vhost.store = broker.store
        return vhost

    def add_vhost(self, name: str) -> bool:
        """Create vhost ``name``; False when it exists already."""
        if not name or len(name.encode("utf-8")) > 255:
            raise DefinitionError(f"invalid vhost name {name!r}")
        if name in self.broker.vhosts:
            return False
        self._create_vhost(name)
        self._record({"op": "vhost.put", "vhost": name})
        log.info("added vhost '%s'", name)
        return True

    def set_vhost_limits(self, name: str, limits: dict[str, int]) -> None:
        """RabbitMQ's vhost limits (``max-connections``, ``max-queues``; a negative value
        means no limit). They apply to new connections and queues."""
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise DefinitionError(f"no vhost '{name}'")
        unknown = set(limits) - {"max-connections", "max-queues"}
        if unknown:
            raise DefinitionError(f"unknown vhost limit(s) {sorted(unknown)}: "
                                  "max-connections and max-queues are known")
        for key, value in limits.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise DefinitionError(f"vhost limit {key} must be an integer, got {value!r}")
        vhost.limits = {k: v for k, v in limits.items() if v >= 0}
        self._record({"op": "vhost.limits", "vhost": name, "limits": vhost.limits})

    def delete_vhost(self, name: str) -> bool:
        """Delete vhost ``name`` with everything in it: its connections are closed (320),
        its queues and their stored messages removed. False when it does not exist."""
        broker = self.broker
        vhost = broker.vhosts.get(name)
        if vhost is None:
            return False
        for connection in [conn for conn in broker.connections if conn.vhost is vhost]:
            connection.close(c.CONNECTION_FORCED, VHOST_DELETED.format(name), 0, 0)
        for queue in list(vhost.queues.values()):
            vhost.delete_queue(queue)
        vhost.delayed.drop_all()
        del broker.vhosts[name]
        self.access.forget_vhost(name)
        broker.shovels.forget_vhost(name)
        self._record({"op": "vhost.delete", "vhost": name})
        log.info("deleted vhost '%s'", name)
        return True

    # -- users ------------------------------------------------------------------------------
    def put_user(self, name: str, *, password: str | None = None,
                 password_hash: str | None = None, hashing_algorithm: str = SHA256,
                 tags: Iterable[str] = ()) -> User:
        """Add or replace user ``name``. Give a password, or RabbitMQ's hash of one; with
        neither the user cannot log in with a password (as in RabbitMQ)."""
        if not name:
            raise DefinitionError("a user needs a name")
        if password is not None:
            password_hash, hashing_algorithm = hash_password(password), SHA256
        tags = tuple(tags.split(",") if isinstance(tags, str) else tags)
        user = User(name, password_hash or "", hashing_algorithm, tuple(t for t in tags if t))
        self.access.put_user(user)
        self._record({"op": "user.put", **user.to_json()})
        return user

    def delete_user(self, name: str) -> bool:
        found = self.access.delete_user(name)
        if found:
            self._record({"op": "user.delete", "name": name})
        return found

    # -- permissions ------------------------------------------------------------------------
    def set_permissions(self, user: str, vhost: str, configure: str, write: str,
                        read: str) -> None:
        if user not in self.access.users:
            raise DefinitionError(f"no user '{user}'")
        if vhost not in self.broker.vhosts:
            raise DefinitionError(f"no vhost '{vhost}'")
        for pattern in (configure, write, read):
            problem = check_pattern(pattern)
            if problem:
                raise DefinitionError(problem)
        self.access.set_permission(user, vhost, Permission(configure, write, read))
        self._record({"op": "permission.put", "user": user, "vhost": vhost,
                      "configure": configure, "write": write, "read": read})

    def clear_permissions(self, user: str, vhost: str) -> bool:
        found = self.access.clear_permission(user, vhost)
        if found:
            self._record({"op": "permission.delete", "user": user, "vhost": vhost})
        return found

    # -- runtime parameters (RabbitMQ's; the ``shovel`` component) ----------------------------
    def _apply_parameter(self, component: str, vhost: str, name: str, value: Any) -> None:
        if component != SHOVEL:
            raise DefinitionError(f"unknown parameter component '{component}' (Leveret "
                                  "knows 'shovel')")
        if vhost not in self.broker.vhosts:
            raise DefinitionError(f"no vhost '{vhost}'")
        if not name:
            raise DefinitionError("a parameter needs a name")
        try:
            spec = ShovelSpec.from_value(vhost, name, value)
        except ShovelDefinitionError as error:
            raise DefinitionError(f"shovel '{name}': {error}") from None
        self.broker.shovels.put(spec)

    def set_parameter(self, component: str, vhost: str, name: str, value: Any) -> None:
        """Set a runtime parameter (a dynamic shovel); it is kept across restarts."""
        self._apply_parameter(component, vhost, name, value)
        self._record({"op": "parameter.put", "component": component, "vhost": vhost,
                      "name": name, "value": value})
        log.info("set %s parameter '%s' in vhost '%s'", component, name, vhost)

    def clear_parameter(self, component: str, vhost: str, name: str) -> bool:
        if component != SHOVEL or not self.broker.shovels.delete(vhost, name):
            return False
        self._record({"op": "parameter.delete", "component": component, "vhost": vhost,
                      "name": name})
        log.info("cleared %s parameter '%s' in vhost '%s'", component, name, vhost)
        return True

    def parameters(self) -> list[dict[str, Any]]:
        """Runtime parameters as RabbitMQ lists them (``GET /api/parameters``)."""
        return [{"value": shovel.spec.value, "vhost": vhost, "component": SHOVEL,
                 "name": name}
                for (vhost, name), shovel in sorted(self.broker.shovels.running.items())]

    # -- definitions in RabbitMQ's format --------------------------------------------------
    def import_definitions(self, data: dict[str, Any]) -> list[str]:
        """Apply a RabbitMQ ``definitions.json``; returns what could not be honoured."""
        problems: list[str] = []
        for v in data.get("vhosts") or ():
            self.add_vhost(v["name"])
        for u in data.get("users") or ():
            self.put_user(u["name"], password=u.get("password"),
                          password_hash=u.get("password_hash"),
                          hashing_algorithm=u.get("hashing_algorithm") or SHA256,
                          tags=u.get("tags") or ())
        for p in data.get("permissions") or ():
            try:
                self.set_permissions(p["user"], p["vhost"], p["configure"], p["write"],
                                     p["read"])
            except DefinitionError as error:
                problems.append(f"permission of user '{p.get('user')}': {error}")
        for x in data.get("exchanges") or ():
            problems += self._import_one("exchange", x, lambda vh, x=x: vh.declare_exchange(
                x["name"], x.get("type", "direct"), passive=False,
                durable=x.get("durable", True), auto_delete=x.get("auto_delete", False),
                internal=x.get("internal", False), arguments=x.get("arguments") or {}))
        for q in data.get("queues") or ():
            problems += self._import_one("queue", q, lambda vh, q=q: vh.declare_queue(
                q["name"], None, passive=False, durable=q.get("durable", True),  # type: ignore[arg-type]
                exclusive=False, auto_delete=q.get("auto_delete", False),
                arguments=q.get("arguments") or {}))
        for b in data.get("bindings") or ():
            problems += self._import_one("binding", b, lambda vh, b=b: self._bind(vh, b))
        for p in data.get("parameters") or ():
            try:
                self.set_parameter(p.get("component", ""), p.get("vhost", "/"),
                                   p.get("name", ""), p.get("value"))
            except DefinitionError as error:
                problems.append(f"{p.get('component')} parameter '{p.get('name')}' not "
                                f"imported: {error}")
        for key in ("policies", "global_parameters", "topic_permissions"):
            if data.get(key):
                problems.append(f"{len(data[key])} {key.replace('_', ' ')} not imported: "
                                + NO_EQUIVALENT)
        return problems

    def _import_one(self, kind: str, item: dict[str, Any], make: Any) -> list[str]:
        vhost = self.broker.vhosts.get(item.get("vhost", "/"))
        what = f"{kind} '{item.get('name', item.get('destination', ''))}'"
        if vhost is None:
            return [f"{what}: no vhost '{item.get('vhost')}'"]
        try:
            make(vhost)
        except Exception as error:  # an AMQP error names what RabbitMQ would refuse
            return [f"{what} in vhost '{vhost.name}': {error}"]
        return []

    @staticmethod
    def _bind(vhost: VirtualHost, b: dict[str, Any]) -> None:
        source = vhost.get_exchange(b["source"])
        dest = (vhost.get_exchange(b["destination"]) if b.get("destination_type") == "exchange"
                else vhost.get_queue(b["destination"], None))
        vhost.bind(source, dest, b.get("routing_key", ""), b.get("arguments") or {})

    def export_definitions(self, quorum: bool = False) -> dict[str, Any]:
        """Users, vhosts, permissions and durable exchanges, queues and bindings in the
        format of RabbitMQ 3.10's ``GET /api/definitions``.

        ``quorum`` rewrites classic durable queues as quorum queues, for a RabbitMQ cluster;
        queues a quorum queue cannot be (see ``QUORUM_INCOMPATIBLE``) stay classic, each
        logged with the reason.
        """
        access = self.access
        out: dict[str, Any] = {
            "rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8",
            "product_name": "Leveret", "product_version": __version__,
            "users": [{**u.to_json(), "limits": {}} for u in access.users.values()],
            "vhosts": [{"name": name} for name in self.broker.vhosts],
            "permissions": [{"user": user, "vhost": vhost, **p.to_json()}
                            for (user, vhost), p in access.permissions.items()],
            "topic_permissions": [], "parameters": self.parameters(), "global_parameters": [],
            "policies": [], "queues": [], "exchanges": [], "bindings": [],
        }
        for vhost in self.broker.vhosts.values():
            for queue in vhost.queues.values():
                if queue.durable and queue.exclusive_owner is None:
                    arguments = json_safe(queue.arguments)
                    if quorum and not queue.is_quorum:
                        arguments = self._as_quorum(vhost.name, queue.name, queue.auto_delete,
                                                    arguments)
                    out["queues"].append({
                        "name": queue.name, "vhost": vhost.name, "durable": True,
                        "auto_delete": queue.auto_delete, "arguments": arguments})
            for ex in vhost.exchanges.values():
                if not ex.durable or not ex.name:
                    continue
                if not ex.name.startswith("amq."):
                    out["exchanges"].append({
                        "name": ex.name, "vhost": vhost.name, "type": ex.type, "durable": True,
                        "auto_delete": ex.auto_delete, "internal": ex.internal,
                        "arguments": json_safe(ex.arguments)})
                for (dest, key, _frozen), args in ex.table.bindings.items():
                    if dest.durable and getattr(dest, "exclusive_owner", None) is None:
                        out["bindings"].append({
                            "source": ex.name, "vhost": vhost.name, "destination": dest.name,
                            "destination_type": ("exchange" if isinstance(dest, Exchange)
                                                 else "queue"),
                            "routing_key": key, "arguments": json_safe(args)})
        return out

    @staticmethod
    def _as_quorum(vhost: str, name: str, auto_delete: bool,
                   arguments: dict[str, Any]) -> dict[str, Any]:
        """A classic queue's arguments for a quorum queue, or unchanged when it cannot be."""
        reason = "it is auto-delete" if auto_delete else next(
            (why for key, why in QUORUM_INCOMPATIBLE.items() if key in arguments), None)
        if reason:
            log.warning("export: queue '%s' in vhost '%s' stays classic: %s", name, vhost,
                        reason)
            return arguments
        return {**arguments, "x-queue-type": "quorum"}

    # -- durability -------------------------------------------------------------------------
    def _record(self, change: dict[str, Any]) -> None:
        store = self.broker.store
        if store is not None:
            store.define(change)


def json_safe(value: Any) -> Any:
    """Declare arguments as JSON values (bytes become text, as RabbitMQ exports them)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
