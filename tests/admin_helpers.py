"""Create users, vhosts and permissions on the broker under test, whichever it is.

Against RabbitMQ (``LEVERET_TEST_URL`` set) through its management HTTP API, at
``LEVERET_TEST_HTTP_URL`` (default ``http://guest:guest@127.0.0.1:15673``, where
``../shared/tools/rabbitmq-local.sh`` serves it); against the embedded Leveret through
``broker.admin``, the object the management API and ``leveret ctl`` use.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

HTTP_URL = os.environ.get("LEVERET_TEST_HTTP_URL", "http://guest:guest@127.0.0.1:15673")


class RabbitAdmin:
    """RabbitMQ's management API."""

    def __init__(self, url: str = HTTP_URL) -> None:
        parsed = urllib.parse.urlparse(url)
        self.base = f"{parsed.scheme}://{parsed.hostname}:{parsed.port}/api"
        token = base64.b64encode(f"{parsed.username}:{parsed.password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.base + path, method=method, headers=self.headers,
            data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                data = response.read()
        except urllib.error.HTTPError as error:
            if method == "DELETE" and error.code == 404:
                return None
            raise
        return json.loads(data) if data else None

    @staticmethod
    def _q(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    def add_vhost(self, name: str) -> None:
        self._call("PUT", f"/vhosts/{self._q(name)}", {})

    def delete_vhost(self, name: str) -> None:
        self._call("DELETE", f"/vhosts/{self._q(name)}")

    def add_user(self, name: str, password: str, tags: tuple[str, ...] = ()) -> None:
        self._call("PUT", f"/users/{self._q(name)}", {"password": password,
                                                      "tags": ",".join(tags)})

    def delete_user(self, name: str) -> None:
        self._call("DELETE", f"/users/{self._q(name)}")

    def set_permissions(self, user: str, vhost: str, configure: str = ".*", write: str = ".*",
                        read: str = ".*") -> None:
        self._call("PUT", f"/permissions/{self._q(vhost)}/{self._q(user)}",
                   {"configure": configure, "write": write, "read": read})

    def clear_permissions(self, user: str, vhost: str) -> None:
        self._call("DELETE", f"/permissions/{self._q(vhost)}/{self._q(user)}")

    def definitions(self) -> dict[str, Any]:
        return self._call("GET", "/definitions")

    def set_vhost_limit(self, vhost: str, name: str, value: int) -> None:
        self._call("PUT", f"/vhost-limits/{self._q(vhost)}/{name}", {"value": value})


class LeveretAdmin:
    """The embedded Leveret's ``broker.admin``, called on the broker's own loop."""

    def __init__(self, embedded: Any) -> None:
        self.embedded = embedded
        self.admin = embedded.broker.admin

    def _call(self, func: Any) -> Any:
        return self.embedded.call(func)

    def add_vhost(self, name: str) -> None:
        self._call(lambda: self.admin.add_vhost(name))

    def delete_vhost(self, name: str) -> None:
        self._call(lambda: self.admin.delete_vhost(name))

    def add_user(self, name: str, password: str, tags: tuple[str, ...] = ()) -> None:
        self._call(lambda: self.admin.put_user(name, password=password, tags=tags))

    def delete_user(self, name: str) -> None:
        self._call(lambda: self.admin.delete_user(name))

    def set_permissions(self, user: str, vhost: str, configure: str = ".*", write: str = ".*",
                        read: str = ".*") -> None:
        self._call(lambda: self.admin.set_permissions(user, vhost, configure, write, read))

    def clear_permissions(self, user: str, vhost: str) -> None:
        self._call(lambda: self.admin.clear_permissions(user, vhost))

    def definitions(self) -> dict[str, Any]:
        return self._call(self.admin.export_definitions)

    def set_vhost_limit(self, vhost: str, name: str, value: int) -> None:
        def change() -> None:
            limits = dict(self.embedded.broker.vhosts[vhost].limits)
            limits[name] = value
            self.admin.set_vhost_limits(vhost, limits)

        self._call(change)
