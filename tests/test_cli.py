"""The command line contract: serve, --version, start-up line, clean SIGTERM/SIGINT shutdown."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest
from pika.exceptions import ConnectionClosedByBroker

pytestmark = pytest.mark.leveret_only


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "leveret", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(tmp_path / "data")],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if process.poll() is not None:
                output = process.stderr.read() if process.stderr else "exited"
                raise AssertionError(output) from None
            time.sleep(0.05)
    process.kill()
    raise AssertionError("broker did not start listening")


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "leveret", "--version"], capture_output=True,
                         text=True, timeout=30, check=True)
    assert out.stdout.startswith("leveret ")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_clients_with_320_and_exits_0(tmp_path: Path, signum: int) -> None:
    port = _free_port()
    process = _start(tmp_path, port)
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        channel = conn.channel()
        channel.queue_declare("cli-test")
        process.send_signal(signum)
        with pytest.raises(ConnectionClosedByBroker) as closed:
            conn.process_data_events(time_limit=10)
            conn.sleep(5)
        assert closed.value.reply_code == 320
        assert closed.value.reply_text.startswith("CONNECTION_FORCED - ")
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    stderr = process.stderr.read() if process.stderr else ""
    assert f"listening on amqp://127.0.0.1:{port}" in stderr
    assert (tmp_path / "data").is_dir()
