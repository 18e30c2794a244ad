"""Plain HTTP + JSON calls to a management API (Leveret's or RabbitMQ's), as tools make them.

``Api("http://127.0.0.1:15672")`` talks as guest/guest; ``api.as_user(name, password)`` as
someone else. Calls return an ``Answer`` whatever the status (no exceptions for 4xx/5xx), so
tests assert status codes and bodies alike.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RABBITMQ_HTTP = "http://127.0.0.1:15673"  # ../shared/tools/rabbitmq-local.sh
RABBITMQ_AMQP = "amqp://guest:guest@127.0.0.1:5673"


def q(name: str) -> str:
    """A path segment: ``/`` is ``%2F``, as RabbitMQ's URLs need."""
    return urllib.parse.quote(name, safe="")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text) if self.text else None

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Api:
    base: str
    user: str | None = "guest"
    password: str = "guest"
    timeout: float = 30.0
    extra: dict[str, str] = field(default_factory=dict)

    def as_user(self, user: str | None, password: str = "") -> Api:
        return Api(self.base, user, password, self.timeout)

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> Answer:
        sent = {"Content-Type": "application/json", **self.extra, **(headers or {})}
        if self.user is not None:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            sent["Authorization"] = f"Basic {token}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.base + path, method=method, headers=sent,
                                         data=data)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return Answer(response.status, dict(response.headers),
                              response.read().decode())
        except urllib.error.HTTPError as error:
            return Answer(error.code, dict(error.headers), error.read().decode())

    def get(self, path: str, **kw: Any) -> Answer:
        return self.call("GET", path, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return self.call("PUT", path, {} if body is None else body, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return self.call("POST", path, {} if body is None else body, **kw)

    def delete(self, path: str, **kw: Any) -> Answer:
        return self.call("DELETE", path, **kw)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON of a call that must succeed."""
        answer = self.call(method, path, body)
        assert answer.status < 300, f"{method} {path}: {answer.status} {answer.text}"
        return answer.json


def reachable(base: str) -> bool:
    try:
        return Api(base, timeout=2).get("/api/overview").status == 200
    except OSError:
        return False


def eventually(check: Callable[[], Any], timeout: float = 15.0, every: float = 0.2) -> Any:
    """``check()``'s first truthy result (RabbitMQ's statistics lag by up to 5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, f"still not true after {timeout:.0f}s: {check}"
            return result
        time.sleep(every)
