"""SASL mechanisms PLAIN and AMQPLAIN (the credentials are checked by ``broker.access``),
and the delay that repeated failed logins earn."""

from __future__ import annotations

from pamqp import decode

MECHANISMS = ("PLAIN", "AMQPLAIN", "EXTERNAL")  # EXTERNAL: TLS client certificates


def parse_response(mechanism: str, response: bytes | str) -> tuple[str, str] | None:
    """(username, password) from a start-ok response, or None when it is malformed."""
    raw = response.encode("utf-8", "surrogateescape") if isinstance(response, str) else response
    try:
        if mechanism == "PLAIN":
            _authzid, user, password = raw.split(b"\x00", 2)
            return user.decode("utf-8"), password.decode("utf-8")
        if mechanism == "AMQPLAIN":
            # A field table without its length prefix.
            _, table = decode.field_table(len(raw).to_bytes(4, "big") + raw)
            user, password = table.get("LOGIN"), table.get("PASSWORD")
            if isinstance(user, bytes):
                user = user.decode("utf-8")
            if isinstance(password, bytes):
                password = password.decode("utf-8")
            if isinstance(user, str) and isinstance(password, str):
                return user, password
    except (ValueError, UnicodeDecodeError):
        return None
    return None


class FailedLogins:
    """Repeated failed logins from one address cost that address time, not the broker:
    the first failure is answered at once, each further one within ``WINDOW`` seconds
    waits twice as long as the one before (from 0.1 s up to ``MAX_DELAY``)."""

    WINDOW = 60.0
    MAX_DELAY = 3.0
    MAX_HOSTS = 4096

    def __init__(self) -> None:
        self._by_host: dict[str, list[float]] = {}  # host -> [window start, failures]

    def record(self, host: str, now: float) -> float:
        """Count a failure from ``host``; returns how long to wait before answering."""
        entry = self._by_host.get(host)
        if entry is None or now - entry[0] >= self.WINDOW:
            if len(self._by_host) >= self.MAX_HOSTS:
                self._by_host = {h: e for h, e in self._by_host.items()
                                 if now - e[0] < self.WINDOW}
                if len(self._by_host) >= self.MAX_HOSTS:
                    self._by_host.clear()
            entry = self._by_host[host] = [now, 0]
        entry[1] += 1
        failures = int(entry[1])
        return 0.0 if failures < 2 else min(0.1 * 2 ** (failures - 2), self.MAX_DELAY)
