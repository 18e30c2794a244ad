"""The Leveret under test: a subprocess from the working tree or a ``--leveret-ref`` export."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .paths import REPO
from .procs import free_port, read_status, tcp_open


class Leveret:
    """One Leveret subprocess on a free port with its own temporary data dir."""

    def __init__(
        self, log_path: Path, log_level: str, extra: list[str], src: str | None = None
    ) -> None:
        self.port = free_port()
        self.data_dir = tempfile.mkdtemp(prefix="leveret-bench-")
        self.log_path = log_path
        env = dict(os.environ)
        script = Path(sys.executable).with_name("leveret")
        if src:  # an exported git revision: its packages go first on sys.path
            env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
            # revisions before the packaging change ran as ``python -m broker``
            module = "leveret" if (Path(src) / "leveret" / "__main__.py").exists() else "broker"
            cmd = [sys.executable, "-m", module]
        elif script.exists():
            cmd = [str(script)]
        else:
            cmd = [sys.executable, "-m", "leveret"]
        self.cmd = [
            *cmd,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            self.data_dir,
            "--log-level",
            log_level,
            *extra,
        ]
        self.env = env
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.startup_s = self._spawn()
        if self.startup_s is None:
            self.stop()
            raise RuntimeError(
                f"Leveret did not start (exit {self.proc.returncode}): {self.log_tail()}"
            )
        # idle RSS: one second after it started listening, no client connected
        # (the probe connection above is closed immediately)
        time.sleep(1.0)
        self.idle_rss_kb = read_status(self.pid).get("VmRSS")

    def _spawn(self, timeout: float = 30.0) -> float | None:
        """Start the process; seconds until the port accepts TCP (None: it did not)."""
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.data_dir, env=self.env
        )
        self.pid = self.proc.pid
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                return None
            if tcp_open("127.0.0.1", self.port, timeout=0.2):
                return time.perf_counter() - t0
            time.sleep(0.002)
        return None

    def kill_and_restart(self, timeout: float = 600.0) -> float | None:
        """SIGKILL, then start again on the same port and data dir. Leveret recovers the
        store before it listens, so the returned start-up time is the recovery time."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log.flush()
        self._log.write(b"\n[run.py] --- SIGKILL, restarting on the same data dir ---\n")
        self._log.flush()
        return self._spawn(timeout)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        with contextlib.suppress(OSError):
            self._log.flush()
            data = Path(self.log_path).read_bytes()
            return data[-n:].decode("utf-8", "replace")
        return ""

    def data_dir_bytes(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self.data_dir):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.path.getsize(os.path.join(root, name))
        return total

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return self.proc.returncode


def git_source_info() -> dict:
    """HEAD commit and the files under broker/ and protocol/ that differ from it."""

    def git(*a):
        return subprocess.run(
            ["git", "-C", str(REPO), *a], capture_output=True, text=True
        ).stdout.rstrip("\n")

    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "broker", "protocol").splitlines()]
    return {
        "mode": "working tree",
        "commit": git("rev-parse", "HEAD"),
        "dirty": dirty,
        "path": str(REPO),
    }


def leveret_warning_lines(log_path: Path, start_offset: int, limit: int = 60) -> list[str]:
    """WARNING/ERROR records (with their tracebacks) Leveret logged since ``start_offset``."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start_offset)
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    keep: list[str] = []
    in_record = False
    for ln in data.splitlines():
        is_record = ln[:4].isdigit() and ln[4:5] == "-"  # "2024-01-01 12:00:00,000 LEVEL ..."
        if is_record:
            in_record = any(w in ln for w in (" WARNING ", " ERROR ", " CRITICAL "))
        if in_record or (not is_record and "Traceback" in ln):
            keep.append(ln)
        if len(keep) >= limit:
            keep.append("[... truncated, see the Leveret log file]")
            break
    return keep


def export_ref(ref: str) -> tuple[str, dict]:
    """``git archive REF`` of broker/, protocol/ (and leveret/) into a temp dir.

    Returns the directory (to put first on PYTHONPATH) and the source record of the report.
    """
    src = tempfile.mkdtemp(prefix="leveret-src-")
    tree = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # ``leveret/`` (the import package's root) exists from the packaging change on
    paths = [p for p in ("broker", "protocol", "leveret") if p in tree]
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, *paths],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", ref], capture_output=True, text=True
    ).stdout.strip()
    return src, {"mode": f"git archive {ref}", "commit": commit, "path": src}
