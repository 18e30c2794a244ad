"""Users, their passwords and tags, and their permissions per virtual host (RabbitMQ's model).

Passwords are kept as RabbitMQ keeps them (``rabbit_password_hashing_sha256``: base64 of a
4-byte salt followed by SHA-256 of salt + password), so users exported from RabbitMQ in a
``definitions.json`` import with their passwords intact, and the other way round.

A permission is three regular expressions (configure, write, read) that a resource name must
match (unanchored, as Erlang's ``re:run``; an empty pattern matches nothing). The default
exchange is checked under the name ``amq.default``, as RabbitMQ does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from leveret.protocol import errors

SHA256 = "rabbit_password_hashing_sha256"
SHA512 = "rabbit_password_hashing_sha512"
MD5 = "rabbit_password_hashing_md5"
_HASHES = {SHA256: hashlib.sha256, SHA512: hashlib.sha512, MD5: hashlib.md5}
TAGS = ("administrator", "monitoring", "management", "policymaker", "impersonator")
CONFIGURE, WRITE, READ = "configure", "write", "read"
DEFAULT_EXCHANGE_ALIAS = "amq.default"


def hash_password(password: str, algorithm: str = SHA256, salt: bytes | None = None) -> str:
    """RabbitMQ's stored form of a password: base64(salt + hash(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    digest = _HASHES[algorithm](salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def password_matches(password_hash: str, algorithm: str, password: str) -> bool:
    """Whether ``password`` is the one ``password_hash`` was made from (constant time)."""
    if not password_hash or algorithm not in _HASHES:
        return False  # RabbitMQ: a user without a password cannot log in with one
    try:
        stored = base64.b64decode(password_hash, validate=True)
    except ValueError:
        return False
    salt = stored[:4]
    return hmac.compare_digest(hash_password(password, algorithm, salt).encode(),
                               password_hash.encode())


def is_loopback(host: str) -> bool:
    """Whether a peer address is this machine (Unix sockets count as local)."""
    if not host or host.startswith("/"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@dataclass
class User:
    """A user as RabbitMQ defines one."""

    name: str
    password_hash: str
    hashing_algorithm: str = SHA256
    tags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "password_hash": self.password_hash,
                "hashing_algorithm": self.hashing_algorithm, "tags": list(self.tags)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> User:
        tags = data.get("tags") or []
        if isinstance(tags, str):  # RabbitMQ before 3.9 wrote "administrator,management"
            tags = [t for t in tags.split(",") if t]
        return cls(str(data["name"]), str(data.get("password_hash") or ""),
                   str(data.get("hashing_algorithm") or SHA256), tuple(map(str, tags)))


@dataclass
class Permission:
    """One user's configure/write/read patterns on one vhost."""

    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"
    _compiled: dict[str, re.Pattern[str]] = field(default_factory=dict, repr=False,
                                                  compare=False)

    def __post_init__(self) -> None:
        for kind in (CONFIGURE, WRITE, READ):
            pattern = getattr(self, kind)
            # Erlang's re and Python's re agree on the patterns people write; an empty
            # pattern means "nothing" in RabbitMQ (it becomes ^$, and no name is empty).
            self._compiled[kind] = re.compile(pattern or "^$")

    def allows(self, kind: str, name: str) -> bool:
        return self._compiled[kind].search(name) is not None

    def to_json(self) -> dict[str, str]:
        return {CONFIGURE: self.configure, WRITE: self.write, READ: self.read}


def check_pattern(pattern: str) -> str | None:
    """Why a permission pattern is unusable, or None."""
    try:
        re.compile(pattern)
    except re.error as error:
        return f"invalid regular expression {pattern!r}: {error}"
    return None


class AccessControl:
    """The broker's users and permissions; ``generation`` grows with every change so that
    channels can cache their answers."""

    def __init__(self, loopback_users: Iterable[str] = ("guest",)) -> None:
        self.users: dict[str, User] = {}
        self.permissions: dict[tuple[str, str], Permission] = {}  # (user, vhost)
        self.loopback_users = frozenset(loopback_users)
        self.generation = 0

    def authenticate(self, username: str, password: str, peer_host: str) -> tuple[User | None, str]:
        """The user these credentials log in as, or None and the reason (for the log)."""
        user = self.users.get(username)
        if user is None:
            return None, f"user '{username}' does not exist"
        if not password_matches(user.password_hash, user.hashing_algorithm, password):
            return None, f"invalid credentials for user '{username}'"
        if username in self.loopback_users and not is_loopback(peer_host):
            return None, f"user '{username}' can only connect via localhost"
        return user, ""

    def external(self, username: str) -> tuple[User | None, str]:
        """The user an EXTERNAL login (a verified client certificate) names."""
        user = self.users.get(username)
        if user is None:
            return None, f"user '{username}' (from the client certificate) does not exist"
        return user, ""

    def may_open(self, username: str, vhost: str) -> bool:
        return (username, vhost) in self.permissions

    def allows(self, username: str, vhost: str, kind: str, resource: str, name: str) -> bool:
        permission = self.permissions.get((username, vhost))
        if permission is None:
            return False
        if resource == "exchange" and name == "":
            name = DEFAULT_EXCHANGE_ALIAS
        return permission.allows(kind, name)

    # -- changes (the broker records them durably) ------------------------------------------
    def put_user(self, user: User) -> None:
        self.users[user.name] = user
        self.generation += 1

    def delete_user(self, name: str) -> bool:
        found = self.users.pop(name, None) is not None
        for key in [k for k in self.permissions if k[0] == name]:
            del self.permissions[key]
        self.generation += 1
        return found

    def set_permission(self, username: str, vhost: str, permission: Permission) -> None:
        self.permissions[(username, vhost)] = permission
        self.generation += 1

    def clear_permission(self, username: str, vhost: str) -> bool:
        found = self.permissions.pop((username, vhost), None) is not None
        self.generation += 1
        return found

    def forget_vhost(self, vhost: str) -> None:
        for key in [k for k in self.permissions if k[1] == vhost]:
            del self.permissions[key]
        self.generation += 1


class Authorizer:
    """One connection's user on its vhost: RabbitMQ's permission checks with its texts,
    answers cached until the access control changes."""

    __slots__ = ("_cache", "_generation", "access", "username", "vhost")

    def __init__(self, access: AccessControl, username: str, vhost: str) -> None:
        self.access = access
        self.username = username
        self.vhost = vhost
        self._cache: dict[tuple[str, str, str], bool] = {}
        self._generation = access.generation

    def check(self, kind: str, resource: str, name: str) -> None:
        """Raise 403 ACCESS_REFUSED (a channel error) unless ``kind`` access is granted."""
        key = (kind, resource, name)
        if self._generation != self.access.generation:
            self._cache.clear()
            self._generation = self.access.generation
        allowed = self._cache.get(key)
        if allowed is None:
            allowed = self.access.allows(self.username, self.vhost, kind, resource, name)
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = allowed
        if not allowed:
            shown = DEFAULT_EXCHANGE_ALIAS if resource == "exchange" and not name else name
            raise errors.AccessRefused(  # RabbitMQ 3.10.8's text does not name the kind
                f"access to {resource} '{shown}' in vhost '{self.vhost}' "
                f"refused for user '{self.username}'")

    def check_binding(self, source: str, resource: str, destination: str) -> None:
        """RabbitMQ's checks for (un)binding, in its order: write on the destination (a
        queue or an exchange), neither end the default exchange, read on the source."""
        self.check(WRITE, resource, destination)
        if not source or not destination:
            raise errors.AccessRefused("operation not permitted on the default exchange")
        self.check(READ, "exchange", source)

    def configure(self, resource: str, name: str) -> None:
        self.check(CONFIGURE, resource, name)

    def write(self, resource: str, name: str) -> None:
        self.check(WRITE, resource, name)

    def read(self, resource: str, name: str) -> None:
        self.check(READ, resource, name)
