"""The command line contract in real processes: serve, check, --version, the start-up line,
refusals (exit 2) and start-up failures (exit 1) in one line, SIGHUP, clean SIGTERM/SIGINT
shutdown and a second signal that ends it at once."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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


# -- start-up refusals and operational errors (real processes) ---------------------------

def _leveret(*args: str, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leveret", *args], capture_output=True,
                          text=True, timeout=30, env=env, cwd=cwd)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "cannot start" in line or "error:" in line]
    assert len(errors) == 1, stderr
    return errors[0]


def test_a_bad_flag_exits_2_with_nothing_created(tmp_path: Path) -> None:
    out = _leveret("serve", "--port", "70000", "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 2
    line = _one_error_line(out.stderr)
    assert "--port" in line and "0..65535" in line and "'70000'" in line
    assert not (tmp_path / "data").exists()


def test_print_config_shows_precedence_in_a_real_process(tmp_path: Path) -> None:
    config = tmp_path / "leveret.toml"
    config.write_text('host = "::1"\nport = 1111\nlog_level = "warning"\nheartbeat = 5\n'
                      'default_pass = "hunter2"\n')
    env = {**os.environ, "LEVERET_PORT": "2222", "LEVERET_LOG_LEVEL": "debug",
           "LEVERET_CONFIG": str(config)}
    out = _leveret("serve", "--port", "3333", "--data-dir", "state", "--print-config",
                   env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "port = 3333  # --port" in out.stdout
    assert 'log_level = "debug"  # LEVERET_LOG_LEVEL' in out.stdout
    assert 'host = "::1"  # config file' in out.stdout
    assert "heartbeat = 5  # config file" in out.stdout
    assert "hunter2" not in out.stdout
    assert not (tmp_path / "state").exists()


def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _leveret("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 1
    line = _one_error_line(out.stderr)
    assert f"('127.0.0.1', {port})" in line and "address already in use" in line, line
    assert not (tmp_path / "data").exists()


def test_bad_host_name_is_one_line_and_exit_1(tmp_path: Path) -> None:
    out = _leveret("serve", "--host", "no-such-host.invalid", "--port", "0",
                   "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 1
    line = _one_error_line(out.stderr)
    assert "cannot resolve host 'no-such-host.invalid'" in line, line
    assert not (tmp_path / "data").exists()


@contextlib.contextmanager
def _read_only_mount(path: Path) -> Iterator[None]:
    """A read-only tmpfs at ``path`` (root only); skips the test where it cannot be had."""
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only file system needs root (mount)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                             capture_output=True, timeout=10)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr!r}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


@pytest.mark.parametrize("case", ["a file", "under a file", "unwritable", "read-only"])
def test_unusable_data_dir_is_one_line_and_exit_1(tmp_path: Path, case: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    with contextlib.ExitStack() as stack:
        if case == "a file":
            data, expected = blocker, "is not a directory"
        elif case == "under a file":
            data, expected = blocker / "data", "Not a directory"
        elif case == "unwritable":
            if os.geteuid() == 0:
                pytest.skip("running as root: permissions do not stop writes (the other "
                            "cases cover the error path)")
            locked = tmp_path / "locked"
            locked.mkdir(mode=0o500)
            data, expected = locked / "data", "Permission denied"
        else:
            stack.enter_context(_read_only_mount(tmp_path / "ro"))
            data, expected = tmp_path / "ro" / "data", "Read-only file system"
        out = _leveret("serve", "--port", "0", "--data-dir", str(data))
    assert out.returncode == 1
    line = _one_error_line(out.stderr)
    assert "cannot start" in line and expected in line, line


def _serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], int, Path]:
    """A broker logging to a file; returns it, its port and the log file."""
    port = _free_port()
    log_file = tmp_path / "leveret.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "leveret", "serve", "--port", str(port), "--data-dir",
         str(tmp_path / "data"), "--log-file", str(log_file), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    _wait_for(process, log_file, "listening on")
    return process, port, log_file


def _wait_for(process: subprocess.Popen[str], log_file: Path, text: str,
              timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log_file.read_text() if log_file.exists() else ""
        if text in content:
            return content
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {content}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"no {text!r} in the log")


def test_sighup_reopens_the_log_file_and_check_answers(tmp_path: Path) -> None:
    process, port, log_file = _serve(tmp_path)
    try:
        log_file.rename(tmp_path / "leveret.log.1")  # as logrotate does
        process.send_signal(signal.SIGHUP)
        _wait_for(process, log_file, f"SIGHUP: reopened log file {log_file}")
        assert process.poll() is None
        check = _leveret("check", "--port", str(port))
        assert check.returncode == 0, check.stderr
        assert "Leveret" in check.stdout
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "listening on" in (tmp_path / "leveret.log.1").read_text()
    assert "Leveret stopped" in log_file.read_text()


def test_check_fails_when_nothing_answers() -> None:
    out = _leveret("check", "--port", str(_free_port()), "--timeout", "2")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "refused" in out.stderr.lower()


def test_a_second_signal_ends_the_wait_for_silent_clients(tmp_path: Path) -> None:
    process, port, log_file = _serve(tmp_path)
    try:
        # A client that never answers (nor reads): the broker's connection.close waits.
        silent = socket.create_connection(("127.0.0.1", port))
        silent.sendall(b"AMQP\x00\x00\x09\x01")
        silent.settimeout(5)
        assert silent.recv(1)  # connection.start: the broker has accepted it
        process.send_signal(signal.SIGTERM)
        _wait_for(process, log_file, "waiting up to 3s for 1 client(s)")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert time.monotonic() - started < 2  # the wait is 3 s without the second signal
        silent.close()
    finally:
        if process.poll() is None:
            process.kill()
    log = log_file.read_text()
    assert "dropping 1 client(s) that did not answer connection.close (second signal)" in log
    assert "Leveret stopped" in log


def test_an_ipv6_listener_logs_its_address_in_brackets(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    process = subprocess.Popen(
        [sys.executable, "-m", "leveret", "serve", "--host", "::1", "--port", "0",
         "--data-dir", str(tmp_path / "data"), "--log-file", str(tmp_path / "log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        log = _wait_for(process, tmp_path / "log", "listening on")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "listening on amqp://[::1]:" in log
