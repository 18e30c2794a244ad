"""The management HTTP API (RabbitMQ's paths and JSON) as ``leveret ctl`` calls it, with the
standard library only; every failure becomes a :class:`CtlError` of one line."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class CtlError(Exception):
    """A request that failed, said in one line."""


def quote(name: str) -> str:
    """A name as one path segment (``/`` is ``%2F``, as the management API wants)."""
    return urllib.parse.quote(name, safe="")


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``http://user:pass@host:port/prefix`` -> (URL without them, user, password)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.username is None:
        return url, None, None
    host = parsed.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parsed.port}" if parsed.port else host
    bare = urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
    password = parsed.password
    return (bare, urllib.parse.unquote(parsed.username),
            None if password is None else urllib.parse.unquote(password))


class ManagementAPI:
    """Requests to ``URL/api/...`` with HTTP basic authentication."""

    def __init__(self, url: str, user: str, password: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self.timeout = timeout
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """Send one request; the status and the decoded JSON answer (None when empty).
        Raises CtlError only when the broker did not answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/api{path}", data=data, method=method,
            headers={**self.headers, **({"Content-Type": "application/json"} if data else {}),
                     **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _decode(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, _decode(error.read())
        except urllib.error.URLError as error:
            reason = error.reason
            text = getattr(reason, "strerror", None) or str(reason)
            raise CtlError(f"cannot reach {self.url}: {text}") from None
        except TimeoutError:
            raise CtlError(f"cannot reach {self.url}: no answer in {self.timeout:g} s") from None
        except (OSError, ValueError) as error:  # reset connection, bad URL, bad HTTP
            raise CtlError(f"cannot reach {self.url}: {error}") from None

    def request(self, method: str, path: str, body: Any = None, *,
                missing: str | None = None, vhost: str | None = None,
                headers: dict[str, str] | None = None) -> Any:
        """Send one request and return its JSON answer; an error status raises CtlError.

        On 404 the error is ``missing`` (e.g. "no such queue 'q' in vhost '/'"), or
        "no such vhost" when ``vhost`` is given and is the thing that does not exist."""
        status, answer = self.call(method, path, body, headers)
        if status < 400:
            if isinstance(answer, str):  # JSON does not come as a bare string here
                raise CtlError(f"{self.url}: {method} {path} answered something that is not "
                               "JSON (is this the management API?)")
            return answer
        if status == 404 and vhost is not None and not self.exists(f"/vhosts/{quote(vhost)}"):
            raise CtlError(f"no such vhost '{vhost}'")
        raise CtlError(self.describe(status, answer, method, path, missing))

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def exists(self, path: str) -> bool:
        status, answer = self.call("GET", path)
        if status == 404:
            return False
        if status >= 400:
            raise CtlError(self.describe(status, answer, "GET", path, None))
        return True

    def describe(self, status: int, answer: Any, method: str, path: str,
                 missing: str | None) -> str:
        """One line for an error status."""
        reason = _reason(answer)
        if status == 401:
            return (f"{self.url}: login refused for user '{self.user}' "
                    f"(401: {reason or 'bad credentials'}; a wrong password, or a user "
                    "without a management tag)")
        if status == 403:
            return f"user '{self.user}' may not {method} {path} (403: {reason or 'forbidden'})"
        if status == 404:
            return missing or f"{self.url}/api{path}: not found (is this the management API?)"
        if reason.startswith(f"{status}: "):  # aiohttp's "405: Method Not Allowed"
            reason = reason[len(f"{status}: "):]
        return f"{method} {path}: HTTP {status}" + (f": {reason}" if reason else "")


def _decode(data: bytes) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace").strip()


def _reason(answer: Any) -> str:
    """The ``reason`` of an error answer (``{"error": ..., "reason": ...}``)."""
    if isinstance(answer, dict):
        answer = answer.get("reason") or answer.get("error")
    return str(answer or "")[:200]
