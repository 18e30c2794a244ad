"""``leveret check``: is a broker answering AMQP? (container health checks, scripts)

It opens a TCP connection, sends the AMQP 0-9-1 protocol header and waits for the
broker's ``connection.start``: that proves the listener and the event loop are alive
without logging in (no credentials needed). Then it hangs up.
"""

from __future__ import annotations

import socket
import struct
import time

from pamqp import commands, frame
from pamqp.exceptions import PAMQPException

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
MAX_START_FRAME = 64 * 1024


def check(host: str, port: int, timeout: float = 5.0) -> str:
    """What the broker at ``host:port`` answered; raises OSError when it did not answer
    with an AMQP 0-9-1 connection.start within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(PROTOCOL_HEADER)
        data = b""
        while len(data) < 7 or len(data) < 8 + struct.unpack_from(">I", data, 3)[0]:
            if len(data) > MAX_START_FRAME:
                raise OSError("the answer is not an AMQP frame")
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("the connection was closed without an AMQP connection.start")
            data += chunk
    try:
        _, _, start = frame.unmarshal(data)
    except PAMQPException as error:
        raise OSError(f"the answer is not AMQP 0-9-1: {error}") from None
    if not isinstance(start, commands.Connection.Start):
        raise OSError(f"expected connection.start, got {type(start).__name__}")
    properties = start.server_properties or {}
    product = properties.get("product", "?")
    version = properties.get("version", "?")
    if isinstance(product, bytes):
        product = product.decode("utf-8", "replace")
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    return f"{product} {version}"
