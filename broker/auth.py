"""SASL mechanisms PLAIN and AMQPLAIN, checked against the configured users."""

from __future__ import annotations

from pamqp import decode

MECHANISMS = ("PLAIN", "AMQPLAIN")


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


def check(users: dict[str, str], username: str, password: str) -> bool:
    expected = users.get(username)
    return expected is not None and expected == password
