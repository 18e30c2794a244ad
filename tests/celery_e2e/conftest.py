"""Processes for the Celery end-to-end tests: a Leveret subprocess, Celery workers, beat, CLI.

Everything runs as a real process: ``python -m leveret serve`` on a free port with a temporary
data directory, ``python -m celery -A tests.celery_e2e.app worker|beat|inspect|control|purge``
with the broker URL in ``LEVERET_E2E_BROKER_URL``. Every process writes its output to a log
file; when a test fails, the tails of the logs of the processes still registered are attached
to the report. Every wait has a deadline.

``LEVERET_E2E_BROKER_ROOT`` runs the broker from another checkout (e.g. a ``git archive`` of a
commit), for comparing broker versions; by default the broker is this repository's.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .app import BACKEND_ENV, BEAT_ENV, BROKER_ENV, RECORD_ENV, create_app, read_records

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
APP = "tests.celery_e2e.app"
BROKER_ROOT = Path(os.environ.get("LEVERET_E2E_BROKER_ROOT") or ROOT)

T = TypeVar("T")

# Processes whose log tails go into the report of a failing test.
_LIVE: list[Any] = []


@atexit.register
def _kill_leftovers() -> None:
    """Never leave a worker or a broker behind, even when the run is interrupted."""
    for process in list(_LIVE):
        popen = process.process
        if popen is not None and popen.poll() is None:
            popen.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], T], timeout: float, message: str | Callable[[], str] = "",
               interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.0f}s: {text}")
        time.sleep(interval)


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class Leveret:
    """``python -m leveret serve`` in a subprocess, stoppable and restartable on the same port."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.data_dir = directory / "data"
        self.log_path = directory / "leveret.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def url(self, scheme: str = "pyamqp") -> str:
        return f"{scheme}://guest:guest@127.0.0.1:{self.port}//"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 15) -> Leveret:
        assert not self.running
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== leveret start #{self.starts} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [PYTHON, "-m", "leveret", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), "--log-level", "debug"],
                cwd=BROKER_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        if self not in _LIVE:
            _LIVE.append(self)

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"leveret exited {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                return False
            return True

        wait_until(listening, timeout, lambda: f"leveret not listening:\n{self.log()}",
                   interval=0.05)
        return self

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM (Leveret closes clients with 320 and exits 0); SIGKILL after ``timeout``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def log(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def __repr__(self) -> str:
        return f"leveret:{self.port}"


def celery_env(broker_url: str, record_dir: Path | None, backend: str = "rpc://",
               beat: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LEVERET_TEST_URL", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env[BROKER_ENV] = broker_url
    env[BACKEND_ENV] = backend
    if record_dir is not None:
        env[RECORD_ENV] = str(record_dir)
    if beat:
        env[BEAT_ENV] = "1"
    else:
        env.pop(BEAT_ENV, None)
    return env


class CeleryProcess:
    """A ``python -m celery -A tests.celery_e2e.app ...`` process (worker or beat)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> CeleryProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "celery", "-A", APP, *self.argv],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        _LIVE.append(self)
        return self

    def log(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float) -> None:
        def seen() -> bool:
            if text in self.log_text():
                return True
            if not self.running:
                raise AssertionError(f"{self.name} exited before logging {text!r}:\n{self.log()}")
            return False

        wait_until(seen, timeout, lambda: f"{self.name} never logged {text!r}:\n{self.log()}")

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM (warm shutdown), SIGKILL after ``timeout``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self in _LIVE:
            _LIVE.remove(self)
        return self.process.returncode

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def __repr__(self) -> str:
        return self.name


class Worker(CeleryProcess):
    """``celery worker -P threads`` with a fixed node name ``<name>@e2e``."""

    @property
    def nodename(self) -> str:
        return f"{self.name}@e2e"


def start_worker(broker_url: str, directory: Path, record_dir: Path, name: str,
                 queues: list[str], backend: str = "rpc://", concurrency: int = 4,
                 extra: list[str] | None = None, ready_timeout: float = 30) -> Worker:
    argv = ["worker", "-P", "threads", "-c", str(concurrency), "--without-gossip",
            "--without-mingle", "-l", "info", "-n", f"{name}@e2e", "-Q", ",".join(queues),
            *(extra or [])]
    worker = Worker(name, argv, celery_env(broker_url, record_dir, backend),
                    directory / f"worker-{name}.log")
    worker.start()
    worker.wait_for_log(f"{name}@e2e ready.", ready_timeout)
    return worker


def start_beat(broker_url: str, directory: Path, record_dir: Path) -> CeleryProcess:
    argv = ["beat", "-l", "info", "-s", str(directory / "beat-schedule"),
            "--pidfile", str(directory / "beat.pid"), "--max-interval", "1"]
    beat = CeleryProcess("beat", argv, celery_env(broker_url, record_dir, beat=True),
                         directory / "beat.log")
    return beat.start()


def run_celery(broker_url: str, *args: str, timeout: float = 30,
               ) -> subprocess.CompletedProcess[str]:
    """Run a one-shot ``celery`` command (inspect, control, purge) and return its output."""
    env = celery_env(broker_url, None)
    return subprocess.run([PYTHON, "-m", "celery", "-A", APP, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


class Records:
    """The execution records the e2e tasks append to ``<dir>/executions.jsonl``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def all(self) -> list[dict[str, Any]]:
        return read_records(self.directory)

    def of(self, label: str, phase: str | None = None) -> list[dict[str, Any]]:
        return [entry for entry in self.all()
                if entry["label"] == label and (phase is None or entry["phase"] == phase)]

    def wait(self, label: str, count: int, timeout: float, phase: str = "done",
             ) -> list[dict[str, Any]]:
        return wait_until(lambda: len(self.of(label, phase)) >= count and self.of(label, phase),
                          timeout, lambda: f"{count} {phase!r} records of {label!r}; have "
                          f"{self.of(label)}")


def close_app(app: Any) -> None:
    """Close a client app's connections, including the rpc:// result consumer's, so Leveret's
    shutdown does not wait for a connection nobody reads any more."""
    consumer = getattr(app.backend, "result_consumer", None)
    connection = getattr(consumer, "_connection", None)
    if connection is not None:
        with contextlib.suppress(Exception):  # already broken: the broker went away
            connection.close()
    producers = app.amqp.__dict__.get("_producer_pool")
    if producers is not None:  # kombu's global pool of connections for this broker URL
        with contextlib.suppress(Exception):
            producers.connections.force_close_all()
    app.close()


# ---------------------------------------------------------------------------------------------
# Fixtures shared by the modules


@pytest.fixture(scope="module")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def leveret(e2e_dir: Path) -> Iterator[Leveret]:
    """A Leveret subprocess for the module."""
    process = Leveret(e2e_dir).start()
    yield process
    process.stop()
    if process in _LIVE:
        _LIVE.remove(process)


@pytest.fixture(scope="module")
def records(e2e_dir: Path) -> Records:
    directory = e2e_dir / "records"
    directory.mkdir(exist_ok=True)
    return Records(directory)


@pytest.fixture(scope="module")
def rpc_client(leveret: Leveret) -> Iterator[Any]:
    """A client Celery app (the test process's side) with the rpc:// result backend."""
    client = create_app(broker_url=leveret.url("pyamqp"), result_backend="rpc://")
    yield client
    close_app(client)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed or (call.when == "call" and hasattr(report, "wasxfail")):
        for process in list(_LIVE):
            report.sections.append((f"log of {process!r}", process.log(80)))
