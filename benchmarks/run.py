#!/usr/bin/env python3
"""Leveret vs RabbitMQ throughput/latency benchmark, driven by amqp-perf.

    .venv/bin/python benchmarks/run.py [--scenarios a,b,...] [--duration S]
        [--rabbitmq-url URL] [--out benchmarks/out/NAME] [--rounds N]
        [--brokers leveret,rabbitmq] [--leveret-ref REV] [--profile]

For every selected scenario it runs the workload once against a freshly started Leveret
(subprocess, free port, temporary data dir) and once against the reference RabbitMQ,
alternating which broker goes first from one scenario to the next.

Scenarios a-g run amqp-perf (``--json --procs 1``, identical flags). Per run it records
published/consumed msg/s, latency p50/p99, broker CPU %, broker peak RSS and the verdict; the
Leveret/RabbitMQ ratio of consumed msg/s (and of p99 for the latency scenarios). It prints a
markdown table and writes ``results.md`` and ``results.json`` (raw amqp-perf output included)
into ``--out``. It also measures Leveret's start-up time (process start to accepting TCP) and
idle RSS.

Scenarios h, i and j are built in, because amqp-perf cannot express them:

* h: 1,000 idle connections (each a channel, an auto-delete queue and a consumer), opened by
  ``amqp_lite.py`` (a minimal asyncio client); broker RSS before/with them; then a burst
  from one producer spread over the queues (delivered msg/s, latency p50/p99).
* i: a 1M x 1 KB persistent backlog in a durable queue (publisher confirms), peak RSS while
  filling, RSS idle with the backlog, SIGKILL + restart recovery (Leveret; RabbitMQ with
  ``--rabbitmq-restart``), drain rate. ``backlog.py`` is the older stand-alone version.
* j: Celery, ``celery_noop.py``: tasks/s of no-op tasks through one worker.

``--profile`` attaches py-spy (``record --format raw --function --nonblocking``) to Leveret
during each Leveret amqp-perf run and prints the top functions by own time; profiled runs
are slowed down by the sampler and are marked as such in the table.

a-g need only the stdlib; h and i import pamqp (through amqp_lite) and j runs Celery, all
from the project venv. Nothing outside this directory is modified; Leveret's logs, the data
dir and the profiles go into ``--out`` / a temp dir. h, i and j delete the queues they
declared on RabbitMQ.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TOOLS = (REPO / ".." / "shared" / "tools").resolve()
RABBITMQ_LOCAL = TOOLS / "rabbitmq-local.sh"
AMQP_PERF_SRC = TOOLS / "amqp-perf"

# key, description, amqp-perf flags (None: not implemented yet)
SCENARIOS: list[tuple[str, str, str | None]] = [
    ("a", "1p/1c 16 B autoack", "-x 1 -y 1 -s 16 -a"),
    (
        "b",
        "1p/1c 16 B manual ack, prefetch 100, confirm 100",
        "-x 1 -y 1 -s 16 -q 100 --confirm 100",
    ),
    (
        "c",
        "1p/1c 1 KB persistent, durable queue, confirm 100, prefetch 100",
        "-x 1 -y 1 -s 1024 --persistent --durable -q 100 --confirm 100",
    ),
    (
        "d",
        "fanout to 10 queues, 1p/10c, 16 B autoack",
        "-x 1 -y 10 -s 16 -a --exchange fanout --queues 10",
    ),
    ("e", "1p/1c 64 KB autoack", "-x 1 -y 1 -s 65536 -a"),
    (
        "f",
        "10p/10c, 10 queues, 16 B, confirm 100, prefetch 100",
        "-x 10 -y 10 -s 16 --queues 10 -q 100 --confirm 100",
    ),
    ("g", "latency: 1p/1c 16 B autoack at fixed 10k msg/s", "-x 1 -y 1 -s 16 -a --rate 10000"),
    (
        "h",
        "1000 idle connections (channel + consumer + own queue each), then a 50k x 16 B burst",
        "built-in (amqp_lite): 1000 conns, prefetch 20, manual ack; 1 producer, round robin",
    ),
    (
        "i",
        "1M x 1 KB persistent backlog: fill (confirms), idle, crash recovery, drain",
        "built-in (amqp_lite): --persistent --durable, confirm window 10000, drain prefetch 500",
    ),
    (
        "j",
        "Celery: 10k no-op tasks through 1 worker (-P threads -c 4, prefetch x4)",
        "built-in: celery_noop.py worker + publisher (pyamqp://)",
    ),
    ("k", "1p/1c 1 MB autoack", "-x 1 -y 1 -s 1048576 -a"),
    (
        "l",
        "1p/1c 64 KB persistent, durable queue, confirm 100, prefetch 100",
        "-x 1 -y 1 -s 65536 --persistent --durable -q 100 --confirm 100",
    ),
    (
        "m",
        "task-like: 256 B, properties new per message, prefetch 100, confirm 100",
        "-x 1 -y 1 -s 256 -q 100 --confirm 100 --task-props",
    ),
    (
        "n",
        "task-like, persistent: 256 B, properties new per message, durable, confirm 100",
        "-x 1 -y 1 -s 256 -q 100 --confirm 100 --task-props --persistent --durable",
    ),
]
CUSTOM = {"h", "i", "j"}  # run by run_h / run_i / run_j, not by amqp-perf
SCENARIO_BY_KEY = {s[0]: s for s in SCENARIOS}
LATENCY_SCENARIOS = {"g", "h"}  # the ratio of p99 is reported too
NA = "n/a"


# --------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in KiB ({} when it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def pids_by_comm(name: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == name:
                    pids.append(int(entry))
        except OSError:
            pass
    return sorted(pids)


def sys_busy(interval: float = 1.0) -> float:
    """Whole-machine CPU busy over ``interval`` (100 = one core)."""

    def read():
        with open("/proc/stat") as f:
            v = list(map(int, f.readline().split()[1:9]))
        return sum(v) - v[3] - v[4], sum(v)

    b0, t0 = read()
    time.sleep(interval)
    b1, t1 = read()
    return (b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1) * 100


def wait_quiet(threshold: float, max_wait: float) -> tuple[float, float]:
    t0 = time.monotonic()
    busy = sys_busy()
    while busy > threshold and time.monotonic() - t0 < max_wait:
        busy = sys_busy()
    return round(busy, 1), round(time.monotonic() - t0, 1)


class RssSampler(threading.Thread):
    """Samples the summed VmRSS of some processes every ``interval`` seconds."""

    def __init__(self, pid_source, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid_source = pid_source  # callable -> list of pids
        self.interval = interval
        self.peak_kb = 0
        self.first_kb: int | None = None
        self.samples = 0
        self._halt = threading.Event()

    def sample(self) -> int:
        return sum(read_status(p).get("VmRSS", 0) for p in self.pid_source())

    def run(self) -> None:
        while True:
            kb = self.sample()
            if self.first_kb is None:
                self.first_kb = kb
            self.peak_kb = max(self.peak_kb, kb)
            self.samples += 1
            if self._halt.wait(self.interval):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join()


def find_amqp_perf(explicit: str | None) -> str:
    candidates = []
    if explicit:
        candidates.append(Path(explicit))
    if os.environ.get("AMQP_PERF"):
        candidates.append(Path(os.environ["AMQP_PERF"]))
    out_dir = Path(os.environ.get("AMQP_PERF_OUT", Path.home() / ".cache" / "amqp-perf"))
    candidates += [out_dir / "amqp-perf", AMQP_PERF_SRC / "amqp-perf"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    build = AMQP_PERF_SRC / "build.sh"
    if explicit is None and build.exists():
        log(f"amqp-perf not found, running {build}")
        subprocess.run([str(build)], check=True)
        for c in candidates:
            if c.is_file() and os.access(c, os.X_OK):
                return str(c)
    raise SystemExit(
        "amqp-perf binary not found; run /work/shared/tools/amqp-perf/build.sh "
        "or pass --amqp-perf PATH"
    )


def ensure_rabbitmq(url: str) -> None:
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 5672
    if tcp_open(host, port):
        return
    if host not in ("127.0.0.1", "localhost", "::1") or not RABBITMQ_LOCAL.exists():
        raise SystemExit(f"RabbitMQ at {host}:{port} is not reachable")
    log(f"RabbitMQ not reachable on {host}:{port}; starting it with {RABBITMQ_LOCAL}")
    env = dict(os.environ, RMQ_PORT=str(port))
    subprocess.run([*rabbitmq_start_prefix(), str(RABBITMQ_LOCAL), "start"], check=True, env=env)
    for _ in range(100):
        if tcp_open(host, port):
            return
        time.sleep(0.2)
    raise SystemExit(f"RabbitMQ did not come up on {host}:{port}")


# --------------------------------------------------------------------------- Leveret
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


# --------------------------------------------------------------------------- py-spy
def pyspy_path() -> str | None:
    p = Path(sys.executable).with_name("py-spy")
    return str(p) if p.exists() else shutil.which("py-spy")


def start_pyspy(pid: int, out: Path, duration: float, rate: int) -> subprocess.Popen | None:
    exe = pyspy_path()
    if not exe:
        log("--profile: py-spy not found (pip install py-spy into the venv)")
        return None
    cmd = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--function",
        "--nonblocking",
        "--rate",
        str(rate),
        "--duration",
        str(max(1, int(duration))),
        "-o",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def own_time_top(raw_path: Path, n: int = 15) -> tuple[int, list[tuple[str, int]]]:
    """Top ``n`` leaf frames (own time) of a py-spy raw/collapsed file."""
    own: Counter[str] = Counter()
    total = 0
    with open(raw_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            try:
                k = int(count)
            except ValueError:
                continue
            leaf = stack.rsplit(";", 1)[-1] or "(no Python frame: native code, e.g. uvloop)"
            own[leaf] += k
            total += k
    return total, own.most_common(n)


# --------------------------------------------------------------------------- one run
def run_amqp_perf(
    args,
    perf: str,
    broker: str,
    url: str,
    key: str,
    flags: str,
    rnd: int,
    cpu_flags: list[str],
    rss_pids,
    leveret: Leveret | None,
    out_dir: Path,
):
    prefix = f"lvbench-{key}-{broker}-{rnd}"
    cmd = [
        perf,
        "--uri",
        url,
        "-z",
        str(args.duration),
        "--json",
        "--quiet",
        "--procs",
        str(args.procs),
        "--queue-prefix",
        prefix,
        "--drain-timeout",
        str(args.drain_timeout),
        *flags.split(),
        *cpu_flags,
    ]
    busy_before, waited = wait_quiet(args.quiet_busy, args.quiet_wait)
    sampler = RssSampler(rss_pids)
    rss_before_kb = sampler.sample()
    sampler.start()
    prof = None
    prof_path = out_dir / f"profile-{key}-r{rnd}.txt"
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if args.profile and leveret is not None:
        time.sleep(1.0)  # skip connection set-up; roughly the measurement window
        prof = start_pyspy(leveret.pid, prof_path, args.duration, args.profile_rate)
    try:
        out, err = p.communicate(timeout=args.duration + args.drain_timeout + 120)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        err += "\n[run.py] amqp-perf killed after timeout"
    wall = time.monotonic() - t0
    sampler.stop()
    res: dict = {}
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
    if lines:
        try:
            res = json.loads(lines[-1])
        except json.JSONDecodeError:
            res = {}
    if not res:
        res = {"ok": False, "error": "no JSON output from amqp-perf"}
    run = {
        "scenario": key,
        "broker": broker,
        "round": rnd,
        "cmd": " ".join(cmd),
        "exit_code": p.returncode,
        "stderr_tail": err[-3000:],
        "wall_s": round(wall, 1),
        "busy_before_pct": busy_before,
        "quiet_wait_s": waited,
        "rss_before_mb": round(rss_before_kb / 1024, 1),
        "rss_peak_sampled_mb": round(sampler.peak_kb / 1024, 1),
        "profiled": bool(prof),
        "duration": args.duration,
        "perf": res,
    }
    if leveret is not None:
        st = read_status(leveret.pid)
        run["leveret_pid"] = leveret.pid
        run["leveret_vmhwm_mb"] = round(st["VmHWM"] / 1024, 1) if "VmHWM" in st else None
        run["leveret_alive_after"] = leveret.alive()
        run["leveret_data_dir_bytes"] = leveret.data_dir_bytes()
        if not leveret.alive():
            run["leveret_exit_code"] = leveret.proc.returncode
            run["leveret_log_tail"] = leveret.log_tail()
    if prof is not None:
        try:
            _, perr = prof.communicate(timeout=args.duration + 30)
        except subprocess.TimeoutExpired:
            prof.send_signal(signal.SIGINT)
            _, perr = prof.communicate()
        if prof_path.exists():
            total, top = own_time_top(prof_path)
            run["profile"] = {
                "raw": str(prof_path),
                "samples": total,
                "rate_hz": args.profile_rate,
                "top_own": top,
            }
        else:
            run["profile"] = {"error": perr.decode("utf-8", "replace")[-2000:]}
    return run


# --------------------------------------------------------------------------- CPU accounting
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float | None:
    """user + system CPU seconds of a process (all its threads), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def _sys_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:9]))
    return sum(v) - v[3] - v[4], sum(v)


class CpuMeter:
    """CPU % (100 = one core) of the broker, the client side and everything else between
    start() and stop(). ``broker_pids``/``client_pids`` are callables returning pid lists;
    this process is always counted as client."""

    def __init__(self, broker_pids, client_pids=lambda: []) -> None:
        self.broker_pids = broker_pids
        self.client_pids = client_pids

    def _snap(self) -> dict:
        b = {p: proc_cpu_s(p) for p in self.broker_pids()}
        c = {p: proc_cpu_s(p) for p in self.client_pids()}
        return {
            "t": time.monotonic(),
            "sys": _sys_jiffies(),
            "self": time.process_time(),
            "broker": {p: v for p, v in b.items() if v is not None},
            "client": {p: v for p, v in c.items() if v is not None},
        }

    def start(self) -> CpuMeter:
        self.s0 = self._snap()
        return self

    def stop(self, extra_client_s: float = 0.0) -> dict:
        if not hasattr(self, "s0"):
            return {}
        s1 = self._snap()
        s0 = self.s0
        wall = max(1e-6, s1["t"] - s0["t"])

        def delta(kind):
            return sum(v - s0[kind].get(p, v) for p, v in s1[kind].items())

        broker = delta("broker") / wall * 100
        client = (delta("client") + s1["self"] - s0["self"] + extra_client_s) / wall * 100
        (b0, t0), (b1, t1) = s0["sys"], s1["sys"]
        system = (b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1) * 100
        return {
            "wall_s": round(wall, 2),
            "broker_pct": round(broker, 1),
            "client_pct": round(client, 1),
            "system_busy_pct": round(system, 1),
            "other_pct": round(max(0.0, system - broker - client), 1),
        }


def raise_nofile() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def nofile_soft(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    v = line.split()[3]
                    return None if v == "unlimited" else int(v)
    except (OSError, IndexError, ValueError):
        pass
    return None


def rabbitmq_node_pid(url: str) -> int | None:
    """The node's beam.smp pid from rabbitmq-local.sh's pid file (None if not found)."""
    port = urllib.parse.urlsplit(url).port or 5672
    base = Path(os.environ.get("RMQ_BASE", f"/tmp/rabbitmq-ref-{port}"))
    with contextlib.suppress(OSError, ValueError):
        pid = int((base / "pid").read_text().strip())
        if Path(f"/proc/{pid}").exists():
            return pid
    pids = pids_by_comm("beam.smp")
    return max(pids, key=lambda p: read_status(p).get("VmRSS", 0)) if pids else None


def rabbitmq_server_pids() -> list[int]:
    """beam.smp processes that are RabbitMQ nodes (``-s rabbit boot``), not rabbitmqctl."""
    out = []
    for pid in pids_by_comm("beam.smp"):
        with contextlib.suppress(OSError):
            if b"\0rabbit\0boot\0" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


def dir_bytes(path: str | Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total


def _new_loop():
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def arun(coro):
    """Run a coroutine on a fresh (uv)loop, as the benchmark client."""
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(coro)


def _lite():
    sys.path.insert(0, str(HERE))
    import amqp_lite

    return amqp_lite


def _pct(sorted_vals: list, q: float):
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def custom_run_record(args, key, broker, rnd, leveret, extra: dict, perf: dict) -> dict:
    run = {
        "scenario": key,
        "broker": broker,
        "round": rnd,
        "cmd": f"run.py built-in scenario {key} ({SCENARIO_BY_KEY[key][2]})",
        "exit_code": 0 if perf.get("ok") else 1,
        "stderr_tail": "",
        "custom": extra,
        "perf": perf,
        "profiled": False,
        "duration": None,
        "rss_peak_sampled_mb": extra.get("rss_peak_mb") or 0,
    }
    if leveret is not None:
        st = read_status(leveret.pid)
        run["leveret_pid"] = leveret.pid
        run["leveret_vmhwm_mb"] = round(st["VmHWM"] / 1024, 1) if "VmHWM" in st else None
        run["leveret_alive_after"] = leveret.alive()
        run["leveret_data_dir_bytes"] = leveret.data_dir_bytes()
        if not leveret.alive():
            run["leveret_exit_code"] = leveret.proc.returncode
            run["leveret_log_tail"] = leveret.log_tail()
    return run


# --------------------------------------------------------------------------- scenario h
async def _h_client(
    url: str, prefix: str, args, rss_kb, cpu_meter: CpuMeter, sampler_factory
) -> dict:
    """1,000 connections x (channel, queue, consumer), idle, then a burst from 1 producer."""
    al = _lite()
    n_conns, n_msgs = args.h_connections, args.h_messages
    res: dict = {"connections_wanted": n_conns, "messages": n_msgs}
    errors: Counter[str] = Counter()
    lat_ns: list[int] = []
    state = {"delivered": 0, "t_last": 0}
    done = asyncio.Event()
    unpack_ts = struct.Struct(">Q").unpack_from

    def on_deliver(_tag, head, _now=al.now_ns):
        t = _now()
        lat_ns.append(t - unpack_ts(head)[0])
        state["delivered"] += 1
        state["t_last"] = t
        if state["delivered"] >= state.get("expect", n_msgs):
            done.set()

    sem = asyncio.Semaphore(args.h_open_concurrency)

    async def open_one(i: int):
        async with sem:
            conn = None
            try:
                conn = await al.connect(url, name=f"{prefix}-c{i}", timeout=60)
                await conn.channel(1)
                q = f"{prefix}-q{i}"
                await conn.queue_declare(1, q, auto_delete=True)
                await conn.qos(1, args.h_prefetch)
                await conn.consume(1, q, on_deliver)
                return conn, q
            except (TimeoutError, al.AMQPError, OSError) as e:
                errors[f"{type(e).__name__}: {e or 'timed out'}"] += 1
                if conn is not None:
                    conn.transport.close()
                return None

    t0 = time.monotonic()
    opened = [r for r in await asyncio.gather(*(open_one(i) for i in range(n_conns))) if r]
    res["open_s"] = round(time.monotonic() - t0, 2)
    res["connections_opened"] = len(opened)
    res["open_errors"] = dict(errors.most_common(5))
    conns = [c for c, _ in opened]
    queues = [q for _, q in opened]
    res["rss_after_open_kb"] = rss_kb()
    series = []
    for _ in range(int(args.h_idle)):
        await asyncio.sleep(1.0)
        series.append(rss_kb())
    await asyncio.sleep(args.h_idle - int(args.h_idle))
    res["rss_idle_kb"] = rss_kb()
    res["rss_idle_series_kb"] = series
    lost = sum(1 for c in conns if c.closed.done())
    res["connections_lost_while_idle"] = lost
    if not queues:
        res["error"] = "no connection could be opened: " + "; ".join(errors)
        return res

    try:
        await _h_burst(
            al,
            url,
            prefix,
            args,
            rss_kb,
            cpu_meter,
            sampler_factory,
            res,
            conns,
            queues,
            state,
            lat_ns,
            done,
        )
    except Exception as e:
        res["error"] = f"burst: {type(e).__name__}: {e or 'timed out'}"
    # ---- close everything (auto-delete queues go with their consumers)
    csem = asyncio.Semaphore(100)

    async def close_one(c):
        async with csem:
            await c.close(timeout=10)

    t0 = time.monotonic()
    await asyncio.gather(*(close_one(c) for c in conns))
    res["close_s"] = round(time.monotonic() - t0, 2)
    return res


async def _h_burst(
    al,
    url,
    prefix,
    args,
    rss_kb,
    cpu_meter,
    sampler_factory,
    res,
    conns,
    queues,
    state,
    lat_ns,
    done,
) -> None:
    """One producer, round robin over the queues, as fast as the socket takes it."""
    n_msgs = args.h_messages
    pub = await al.connect(url, name=f"{prefix}-producer", timeout=60)
    await pub.channel(1)
    mh = [
        al.publish_frames(1, q, b"x" * args.h_size)[: -(7 + args.h_size + 1)] for q in queues
    ]  # publish method + content header; the body frame is appended per message
    bpre, bend = al.body_frame_parts(1, args.h_size)
    pad = b"\0" * (args.h_size - 8)
    nq = len(queues)
    state["expect"] = n_msgs
    sampler = sampler_factory()
    sampler.start()
    cpu_meter.start()
    t_pub0 = al.now_ns()
    sent = 0
    chunk = 500
    while sent < n_msgs:
        k = min(chunk, n_msgs - sent)
        body = bpre + struct.pack(">Q", al.now_ns()) + pad + bend
        pub.write(b"".join([mh[(sent + j) % nq] + body for j in range(k)]))
        sent += k
        await pub.drain()
    t_pub1 = al.now_ns()
    deadline = time.monotonic() + args.h_timeout
    last, last_change = -1, time.monotonic()
    while not done.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 1.0)
        if state["delivered"] != last:
            last, last_change = state["delivered"], time.monotonic()
        elif time.monotonic() - last_change > 30:
            break
    cpu = cpu_meter.stop()
    sampler.stop()
    res["cpu"] = cpu
    res["rss_peak_burst_kb"] = sampler.peak_kb
    res["published"] = sent
    res["publish_s"] = round((t_pub1 - t_pub0) / 1e9, 3)
    res["delivered"] = state["delivered"]
    burst_s = max(1e-9, (state["t_last"] - t_pub0) / 1e9) if state["delivered"] else None
    res["burst_s"] = round(burst_s, 3) if burst_s else None
    res["delivered_rate"] = state["delivered"] / burst_s if burst_s else None
    lat_ns.sort()
    res["latency_us"] = {
        "count": len(lat_ns),
        "p50": _pct(lat_ns, 0.50) / 1000 if lat_ns else None,
        "p99": _pct(lat_ns, 0.99) / 1000 if lat_ns else None,
        "max": lat_ns[-1] / 1000 if lat_ns else None,
    }
    res["consumers_cancelled_by_broker"] = sum(len(c.cancelled) for c in conns)
    res["blocked_events"] = pub.blocked
    await asyncio.sleep(1.0)
    res["rss_after_burst_kb"] = rss_kb()
    await pub.close()


def run_h(args, broker, url, rnd, rss_pids, leveret, out_dir) -> dict:
    key = "h"
    prefix = f"lvbench-h-{broker}-{rnd}-{os.getpid()}"
    busy_before, waited = wait_quiet(args.quiet_busy, args.quiet_wait)

    def rss_kb():
        return sum(read_status(p).get("VmRSS", 0) for p in rss_pids())

    notes = []
    limit = None
    if broker == "rabbitmq":
        node = rabbitmq_node_pid(url)
        limit = nofile_soft(node) if node else None
        if limit is not None and limit < args.h_connections + 100:
            notes.append(
                f"RabbitMQ's open-files limit is {limit} (soft), too low for "
                f"{args.h_connections} connections; restart it with a higher `ulimit -n`"
            )
    elif leveret is not None:
        limit = nofile_soft(leveret.pid)
    rss_before = rss_kb()
    meter = CpuMeter(rss_pids)
    err = None
    res: dict = {}
    try:
        res = arun(_h_client(url, prefix, args, rss_kb, meter, lambda: RssSampler(rss_pids)))
    except Exception as e:  # a client-side failure: report it verbatim
        err = f"{type(e).__name__}: {e or 'timed out'}"
    res["rss_before_kb"] = rss_before
    res["broker_nofile_soft"] = limit
    res["busy_before_pct"], res["quiet_wait_s"] = busy_before, waited
    if res.get("rss_idle_kb") and res.get("connections_opened"):
        res["kb_per_idle_connection"] = round(
            (res["rss_idle_kb"] - rss_before) / res["connections_opened"], 1
        )
    err = err or res.get("error")
    ok_conns = res.get("connections_opened") == args.h_connections
    ok_msgs = res.get("delivered") == args.h_messages
    if err:
        verdict = "ERROR"
    elif not ok_conns:
        verdict = f"CONNECTIONS {res.get('connections_opened')}/{args.h_connections}"
    elif not ok_msgs:
        verdict = f"INCOMPLETE {res.get('delivered')}/{args.h_messages}"
    else:
        verdict = "OK"
    if res.get("open_errors"):
        notes.append("connection errors (count): " + json.dumps(res["open_errors"]))
    lat = res.get("latency_us") or {}
    cpu = res.get("cpu") or {}
    perf = {
        "ok": err is None,
        "verdict": verdict,
        # the whole burst goes into the socket within milliseconds: a publish rate would only
        # measure socket buffers (publish_s is in the detail table)
        "published_rate": None,
        "consumed_rate": res.get("delivered_rate"),
        "latency_us": lat,
        "cpu": {"pids_pct": {"broker": cpu.get("broker_pct")}, "other_pct": cpu.get("other_pct")}
        if cpu
        else {},
        "notes": notes,
    }
    if err:
        perf["error"] = err
    res["rss_peak_mb"] = round(res.get("rss_peak_burst_kb", 0) / 1024, 1)
    return custom_run_record(args, key, broker, rnd, leveret, res, perf)


# --------------------------------------------------------------------------- scenario i
async def _i_fill(url: str, queue: str, n: int, size: int, window: int, stall_s: float) -> dict:
    al = _lite()
    conn = await al.connect(url, name=f"{queue}-producer")
    await conn.channel(1)
    await conn.queue_declare(1, queue, durable=True, auto_delete=False)
    st = {"acked": 0, "nacked": 0, "upto": 0, "t_last": None}
    singles: set[int] = set()
    progress = asyncio.Event()

    def on_confirm(tag: int, multiple: bool, nack: bool) -> None:
        if multiple:
            newly = tag - st["upto"] - sum(1 for s in singles if s <= tag)
            for s in [s for s in singles if s <= tag]:
                singles.discard(s)
            st["upto"] = max(st["upto"], tag)
        else:
            newly = 1
            if tag > st["upto"]:
                singles.add(tag)
                while st["upto"] + 1 in singles:
                    st["upto"] += 1
                    singles.discard(st["upto"])
        st["nacked" if nack else "acked"] += newly
        st["t_last"] = time.monotonic()
        progress.set()

    await conn.confirm_select(1, on_confirm)
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    msg = al.publish_frames(1, queue, body, delivery_mode=2, frame_max=conn.frame_max)
    chunk = 100
    t0 = time.monotonic()
    sent = 0
    last_change, last_seen = time.monotonic(), 0
    while sent < n:
        confirmed = st["acked"] + st["nacked"]
        room = window - (sent - confirmed)
        if room <= 0:
            progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), 1.0)
            if confirmed != last_seen:
                last_seen, last_change = confirmed, time.monotonic()
            elif time.monotonic() - last_change > stall_s:
                raise RuntimeError(f"publish stalled: sent {sent}, confirmed {confirmed}")
            continue
        k = min(chunk, room, n - sent)
        conn.write(msg * k)
        sent += k
        await conn.drain()
    t_sent = time.monotonic()
    while st["acked"] + st["nacked"] < n:
        progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(progress.wait(), 1.0)
        confirmed = st["acked"] + st["nacked"]
        if confirmed != last_seen:
            last_seen, last_change = confirmed, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            raise RuntimeError(f"confirms stalled: sent {sent}, confirmed {confirmed}")
    depth = (await conn.queue_declare(1, queue, durable=True, passive=True)).message_count
    await conn.close()
    elapsed = (st["t_last"] or time.monotonic()) - t0
    return {
        "sent": sent,
        "confirmed": st["acked"],
        "nacked": st["nacked"],
        "blocked_events": conn.blocked,
        "write_s": round(t_sent - t0, 2),
        "fill_s": round(elapsed, 2),
        "fill_rate": n / elapsed,
        "depth_after_fill": depth,
    }


async def _i_depth(url: str, queue: str) -> int:
    al = _lite()
    conn = await al.connect(url, name=f"{queue}-probe")
    await conn.channel(1)
    try:
        return (await conn.queue_declare(1, queue, durable=True, passive=True)).message_count
    finally:
        await conn.close()


async def _i_drain(url: str, queue: str, expected: int, prefetch: int, stall_s: float) -> dict:
    al = _lite()
    conn = await al.connect(url, name=f"{queue}-consumer")
    await conn.channel(1)
    await conn.qos(1, prefetch)
    st = {"n": 0, "t_last": None}
    done = asyncio.Event()

    def on_deliver(_tag, _head):
        st["n"] += 1
        if st["n"] >= expected:
            st["t_last"] = time.monotonic()
            done.set()

    t0 = time.monotonic()
    await conn.consume(1, queue, on_deliver)
    last, last_change = 0, time.monotonic()
    stalled = False
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 1.0)
        if st["n"] != last:
            last, last_change = st["n"], time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            stalled = True
            break
    t1 = st["t_last"] or last_change
    await asyncio.sleep(0.5)  # let the last acks land
    depth = (await conn.queue_declare(1, queue, durable=True, passive=True)).message_count
    await conn.close()
    return {
        "drained": st["n"],
        "drain_s": round(t1 - t0, 2),
        "drain_rate": st["n"] / max(1e-9, t1 - t0),
        "depth_after_drain": depth,
        "stalled": stalled,
    }


async def _delete_queue(url: str, queue: str, exchange: str | None = None) -> str:
    al = _lite()
    conn = await al.connect(url, name=f"{queue}-cleanup")
    await conn.channel(1)
    try:
        ok = await conn.queue_delete(1, queue)
        out = f"deleted queue {queue} ({ok.message_count} messages)"
        if exchange:
            from pamqp import commands

            await conn.rpc(
                1, commands.Exchange.Delete(exchange=exchange), commands.Exchange.DeleteOk
            )
            out += f", exchange {exchange}"
        return out
    finally:
        await conn.close()


def rabbitmq_start_prefix() -> list[str]:
    """How to run rabbitmq-local.sh start so that the node keeps our RLIMIT_NOFILE.

    Debian's /usr/sbin/rabbitmq-server, run as root, switches to the rabbitmq user with
    `su`, and PAM then resets the soft open-files limit to 1024 (RabbitMQ: socket limit 832,
    too low for scenario h). Started as the rabbitmq user directly (setpriv, no PAM), the
    node inherits this process's raised limit."""
    import pwd

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return []
    try:
        pw = pwd.getpwnam("rabbitmq")
    except KeyError:
        return []
    return [
        "setpriv",
        f"--reuid={pw.pw_uid}",
        f"--regid={pw.pw_gid}",
        "--init-groups",
        "env",
        f"HOME={pw.pw_dir}",
    ]


def rabbitmq_foreign_connections(url: str) -> list[str] | None:
    """Names of the client connections open on the node (management API; None if it
    cannot be asked). Used to avoid restarting a RabbitMQ that somebody else is using."""
    import base64
    import urllib.request

    u = urllib.parse.urlsplit(url)
    mgmt = int(os.environ.get("RMQ_MGMT_PORT", (u.port or 5672) + 10000))
    req = urllib.request.Request(f"http://{u.hostname or '127.0.0.1'}:{mgmt}/api/connections")
    user = urllib.parse.unquote(u.username or "guest")
    cred = f"{user}:{urllib.parse.unquote(u.password or 'guest')}"
    req.add_header("Authorization", "Basic " + base64.b64encode(cred.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            conns = json.loads(r.read())
    except (OSError, ValueError):
        return None
    return [
        (c.get("client_properties") or {}).get("connection_name") or c.get("name", "?")
        for c in conns
    ]


def restart_rabbitmq(url: str, mode: str) -> dict:
    """Stop (gracefully, or SIGKILL the node) and start the rabbitmq-local.sh node."""
    port = urllib.parse.urlsplit(url).port or 5672
    env = dict(os.environ, RMQ_PORT=str(port))
    node = rabbitmq_node_pid(url)
    if mode == "kill":
        if node:
            os.kill(node, signal.SIGKILL)
            for _ in range(100):
                if not Path(f"/proc/{node}").exists():
                    break
                time.sleep(0.1)
    else:
        subprocess.run([str(RABBITMQ_LOCAL), "stop"], env=env, capture_output=True, timeout=300)
    t0 = time.monotonic()
    p = subprocess.run(
        [*rabbitmq_start_prefix(), str(RABBITMQ_LOCAL), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return {
        "start_s": time.monotonic() - t0,
        "t0": t0,
        "rc": p.returncode,
        "out": (p.stdout + p.stderr)[-1000:],
    }


def run_i(args, broker, url, rnd, rss_pids, leveret, out_dir) -> dict:
    key = "i"
    queue = f"lvbench-i-{broker}-{rnd}-{os.getpid()}"
    n = args.i_messages
    busy_before, waited = wait_quiet(args.quiet_busy, args.quiet_wait)

    def rss_kb():
        return sum(read_status(p).get("VmRSS", 0) for p in rss_pids())

    res: dict = {
        "messages": n,
        "size": args.i_size,
        "queue": queue,
        "busy_before_pct": busy_before,
        "quiet_wait_s": waited,
    }
    notes: list[str] = []
    err = None
    rmq_dir = None
    if broker == "rabbitmq":
        port = urllib.parse.urlsplit(url).port or 5672
        rmq_dir = Path(os.environ.get("RMQ_BASE", f"/tmp/rabbitmq-ref-{port}")) / "mnesia"
        if not rmq_dir.is_dir():
            rmq_dir = None
    disk0 = dir_bytes(rmq_dir) if rmq_dir else 0
    res["rss_before_kb"] = rss_kb()
    try:
        # ---- fill
        sampler = RssSampler(rss_pids)
        sampler.start()
        meter = CpuMeter(rss_pids).start()
        try:
            fill = arun(_i_fill(url, queue, n, args.i_size, args.i_confirm_window, 60))
        finally:
            cpu_fill = meter.stop()
            sampler.stop()
        res.update(fill)
        res["cpu_fill"] = cpu_fill
        res["rss_peak_fill_kb"] = sampler.peak_kb
        time.sleep(2.0)
        res["rss_idle_backlog_kb"] = rss_kb()
        if leveret is not None:
            res["disk_mb"] = round(leveret.data_dir_bytes() / 2**20, 1)
        elif rmq_dir:
            res["disk_mb"] = round((dir_bytes(rmq_dir) - disk0) / 2**20, 1)
            notes.append("RabbitMQ disk_mb is the growth of its mnesia dir during the fill")
        # ---- crash + recovery
        if leveret is not None:
            # the new process only: a first sample of the old one (still holding the
            # backlog until the SIGKILL lands) would count as the recovery peak
            old_pid = leveret.pid
            sampler = RssSampler(lambda: [p for p in rss_pids() if p != old_pid], interval=0.05)
            sampler.start()
            try:
                rec = leveret.kill_and_restart()
            finally:
                sampler.stop()
            # the new process's VmHWM right after it listens = its peak while recovering
            hwm = read_status(leveret.pid).get("VmHWM")
            res["rss_peak_recovery_kb"] = max(sampler.peak_kb, hwm or 0)
            if rec is None:
                raise RuntimeError(f"Leveret did not come back after SIGKILL: {leveret.log_tail()}")
            t_listen = time.monotonic()
            res["recovered"] = arun(_i_depth(url, queue))
            res["recovery_s"] = round(rec + time.monotonic() - t_listen, 2)
            res["recovery_listen_s"] = round(rec, 2)
            res["recovery_mode"] = "SIGKILL + restart"
            time.sleep(1.0)
            res["rss_after_recovery_kb"] = rss_kb()
        elif args.rabbitmq_restart != "none" and (foreign := rabbitmq_foreign_connections(url)):
            res["recovery_mode"] = "skipped: other clients connected"
            notes.append(f"RabbitMQ restart skipped, connections open: {foreign[:5]}")
            res["recovered"] = arun(_i_depth(url, queue))
        elif args.rabbitmq_restart != "none":
            # node processes only: rabbitmq-local.sh start runs rabbitmqctl (another beam.smp)
            sampler = RssSampler(rabbitmq_server_pids, interval=0.05)
            sampler.start()
            try:
                rr = restart_rabbitmq(url, args.rabbitmq_restart)
            finally:
                sampler.stop()
            res["rss_peak_recovery_kb"] = sampler.peak_kb
            if rr["rc"] != 0:
                raise RuntimeError(f"rabbitmq-local.sh start failed: {rr['out']}")
            deadline = time.monotonic() + 600
            while True:
                try:
                    res["recovered"] = arun(_i_depth(url, queue))
                    break
                except Exception as e:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"queue not back after restart: {e}") from e
                    time.sleep(0.2)
            res["recovery_s"] = round(time.monotonic() - rr["t0"], 2)
            res["recovery_mode"] = {
                "kill": "SIGKILL beam.smp + rabbitmq-local.sh start",
                "stop": "rabbitmq-local.sh stop + start",
            }[args.rabbitmq_restart]
            time.sleep(1.0)
            res["rss_after_recovery_kb"] = rss_kb()
        else:
            res["recovery_mode"] = "skipped (--rabbitmq-restart none)"
            res["recovered"] = arun(_i_depth(url, queue))
        # ---- drain
        sampler = RssSampler(rss_pids)
        sampler.start()
        meter = CpuMeter(rss_pids).start()
        try:
            drain = arun(_i_drain(url, queue, res["recovered"], args.i_prefetch, 60))
        finally:
            cpu_drain = meter.stop()
            sampler.stop()
        res.update(drain)
        res["cpu_drain"] = cpu_drain
        res["rss_peak_drain_kb"] = sampler.peak_kb
        time.sleep(1.0)
        res["rss_after_drain_kb"] = rss_kb()
    except Exception as e:
        err = f"{type(e).__name__}: {e}"
    finally:
        try:
            res["cleanup"] = arun(_delete_queue(url, queue))
        except Exception as e:
            res["cleanup"] = f"queue.delete failed: {type(e).__name__}: {e}"
            if broker == "rabbitmq":
                notes.append(f"could not delete {queue} on RabbitMQ: {res['cleanup']}")
    if err:
        verdict = "ERROR"
    elif res.get("nacked"):
        verdict = f"NACKED {res['nacked']}"
    elif res.get("recovered") != n:
        verdict = f"RECOVERED {res.get('recovered')}/{n}"
    elif res.get("drained") != n or res.get("depth_after_drain"):
        verdict = f"INCOMPLETE drained {res.get('drained')}/{n}"
    else:
        verdict = "OK"
    cf, cd = res.get("cpu_fill") or {}, res.get("cpu_drain") or {}
    perf = {
        "ok": err is None,
        "verdict": verdict,
        "published_rate": res.get("fill_rate"),
        "confirmed_rate": res.get("fill_rate"),
        "consumed_rate": res.get("drain_rate"),
        "latency_us": {},
        "cpu": {
            "pids_pct": {"broker": cd.get("broker_pct")},
            "other_pct": max(cf.get("other_pct") or 0, cd.get("other_pct") or 0),
        }
        if cd
        else {},
        "notes": notes,
    }
    if err:
        perf["error"] = err
    res["rss_peak_mb"] = round(
        max(
            res.get("rss_peak_fill_kb", 0),
            res.get("rss_peak_recovery_kb", 0),
            res.get("rss_peak_drain_kb", 0),
        )
        / 1024,
        1,
    )
    return custom_run_record(args, key, broker, rnd, leveret, res, perf)


# --------------------------------------------------------------------------- scenario j
def _wait_file(path: Path, timeout: float, alive=lambda: True) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with contextlib.suppress(ValueError, OSError):
                return float(path.read_text())
        if not alive():
            return None
        time.sleep(0.05)
    return None


def run_j(args, broker, url, rnd, rss_pids, leveret, out_dir) -> dict:
    key = "j"
    n = args.j_tasks
    queue = f"lvbench-j-{broker}-{rnd}-{os.getpid()}"
    busy_before, waited = wait_quiet(args.quiet_busy, args.quiet_wait)
    u = urllib.parse.urlsplit(url)
    kombu_url = urllib.parse.urlunsplit(("pyamqp", u.netloc, u.path or "/", "", ""))
    res: dict = {
        "tasks": n,
        "queue": queue,
        "pool": args.j_pool,
        "concurrency": args.j_concurrency,
        "busy_before_pct": busy_before,
        "quiet_wait_s": waited,
    }
    notes: list[str] = []
    err = None
    celery = Path(sys.executable).with_name("celery")
    worker_cmd = [
        str(celery),
        "-A",
        "celery_noop",
        "worker",
        "-P",
        args.j_pool,
        "-c",
        str(args.j_concurrency),
        "--prefetch-multiplier",
        "4",
        "-Q",
        queue,
        "-n",
        f"{queue}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "warning",
    ]
    res["worker_cmd"] = " ".join(worker_cmd)
    logs = []

    def start_worker(phase: str, state: Path):
        env = dict(
            os.environ,
            LVBENCH_BROKER_URL=kombu_url,
            LVBENCH_QUEUE=queue,
            LVBENCH_EXPECT=str(n),
            LVBENCH_STATE_DIR=str(state),
        )
        logp = out_dir / f"celery-worker-j-{broker}-r{rnd}-{phase}.log"
        logs.append(logp)
        f = open(logp, "wb")  # noqa: SIM115
        p = subprocess.Popen(worker_cmd, cwd=HERE, env=env, stdout=f, stderr=subprocess.STDOUT)
        p._lvbench_log = f  # type: ignore[attr-defined]
        return p

    def stop_worker(p) -> int | None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        p._lvbench_log.close()
        return p.returncode

    def publish(on_go=None) -> dict:
        """Run the Celery publisher; it imports and connects first, then ``on_go()`` is
        called (clocks start) and it publishes."""
        env = dict(
            os.environ, LVBENCH_BROKER_URL=kombu_url, LVBENCH_QUEUE=queue, LVBENCH_EXPECT=str(n)
        )
        p = subprocess.Popen(
            [sys.executable, str(HERE / "celery_noop.py"), "publish-on-go", str(n)],
            cwd=HERE,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = p.stdout.readline()
        if '"ready"' in first:
            if on_go:
                on_go()
            p.stdin.write("go\n")
            p.stdin.flush()
        try:
            out, errtxt = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            p.kill()
            out, errtxt = p.communicate()
        lines = [ln for ln in (first + out).splitlines() if ln.startswith('{"n"')]
        if p.returncode != 0 or not lines:
            raise RuntimeError(f"publisher exit {p.returncode}: {errtxt.strip()[-1500:]}")
        return json.loads(lines[-1])

    tmp = Path(tempfile.mkdtemp(prefix="lvbench-j-"))
    try:
        # ---- phase 1: worker running, the harness publishes n tasks
        st1 = tmp / "p1"
        st1.mkdir()
        w = start_worker("live", st1)
        try:
            if _wait_file(st1 / "ready", 60, lambda: w.poll() is None) is None:
                raise RuntimeError(
                    f"worker not ready (exit {w.poll()}): "
                    + logs[-1].read_text(errors="replace")[-1500:]
                )
            sampler = RssSampler(rss_pids)
            sampler.start()
            meter = CpuMeter(rss_pids, lambda: [w.pid])
            pub = None
            try:
                pub = publish(meter.start)
                t_done = _wait_file(st1 / "done", args.j_timeout, lambda: w.poll() is None)
            finally:
                cpu = meter.stop(extra_client_s=pub["cpu_s"] if pub else 0.0)
                sampler.stop()
            res["cpu_live"] = cpu
            res["rss_peak_kb"] = sampler.peak_kb
            res["publish_cpu_s"] = pub["cpu_s"]
            res["publish_s"] = round(pub["t_last"] - pub["t_first"], 3)
            res["publish_rate"] = n / max(1e-9, pub["t_last"] - pub["t_first"])
            if t_done is None:
                raise RuntimeError(
                    f"phase 1: the {n}th task did not run within {args.j_timeout}"
                    f" s (worker exit {w.poll()})"
                )
            t_first = float((st1 / "first").read_text())
            res["e2e_s"] = round(t_done - pub["t_first"], 3)
            res["tasks_per_s"] = n / (t_done - pub["t_first"])
            res["live_exec_rate"] = (n - 1) / max(1e-9, t_done - t_first)
        finally:
            res["worker_exit_live"] = stop_worker(w)
        # ---- phase 2: n tasks queued first, then a fresh worker drains them
        st2 = tmp / "p2"
        st2.mkdir()
        pub2 = publish()
        res["publish_rate_no_worker"] = n / max(1e-9, pub2["t_last"] - pub2["t_first"])
        w = start_worker("backlog", st2)
        try:
            meter = CpuMeter(rss_pids, lambda: [w.pid]).start()
            t_done = _wait_file(st2 / "done", args.j_timeout, lambda: w.poll() is None)
            cpu2 = meter.stop()
            if t_done is None:
                raise RuntimeError(
                    f"phase 2: the {n}th task did not run within {args.j_timeout}"
                    f" s (worker exit {w.poll()})"
                )
            t_first = float((st2 / "first").read_text())
            res["backlog_exec_rate"] = (n - 1) / max(1e-9, t_done - t_first)
            res["cpu_backlog"] = cpu2
        finally:
            res["worker_exit_backlog"] = stop_worker(w)
    except Exception as e:
        err = f"{type(e).__name__}: {e}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            res["cleanup"] = arun(_delete_queue(url, queue, exchange=queue))
        except Exception as e:
            res["cleanup"] = f"cleanup failed: {type(e).__name__}: {e}"
            if broker == "rabbitmq":
                notes.append(f"could not delete {queue} on RabbitMQ: {res['cleanup']}")
    for logp in logs:
        text = logp.read_text(errors="replace") if logp.exists() else ""
        bad = [
            ln for ln in text.splitlines() if "ERROR" in ln or "CRITICAL" in ln or "Traceback" in ln
        ]
        if bad:
            notes.append(f"{logp.name}: " + " | ".join(bad[:5]))
    cpu = res.get("cpu_live") or {}
    perf = {
        "ok": err is None,
        "verdict": "ERROR" if err else "OK",
        "published_rate": res.get("publish_rate"),
        "consumed_rate": res.get("tasks_per_s"),
        "latency_us": {},
        "cpu": {"pids_pct": {"broker": cpu.get("broker_pct")}, "other_pct": cpu.get("other_pct")}
        if cpu
        else {},
        "notes": notes,
    }
    if err:
        perf["error"] = err
    res["rss_peak_mb"] = round(res.get("rss_peak_kb", 0) / 1024, 1)
    return custom_run_record(args, key, broker, rnd, leveret, res, perf)


CUSTOM_RUNNERS = {"h": run_h, "i": run_i, "j": run_j}


# --------------------------------------------------------------------------- summary
def metrics(run: dict) -> dict:
    r = run["perf"]
    lat = r.get("latency_us") or {}
    pids_pct = (r.get("cpu") or {}).get("pids_pct") or {}
    peak = run["rss_peak_sampled_mb"]
    if run.get("leveret_vmhwm_mb") and run.get("fresh_leveret"):
        peak = max(peak, run["leveret_vmhwm_mb"])
    totals = r.get("totals") or {}
    e2e = None
    if r.get("window_s") and totals.get("delivered") is not None:
        e2e = totals["delivered"] / (r["window_s"] + (totals.get("drain_s") or 0))
    return {
        "e2e": e2e,
        "pub": r.get("published_rate"),
        "conf": r.get("confirmed_rate"),
        "cons": r.get("consumed_rate"),
        "p50": lat.get("p50") if lat.get("count") else None,
        "p99": lat.get("p99") if lat.get("count") else None,
        "cpu": round(sum(pids_pct.values()), 1) if pids_pct else None,
        "other": (r.get("cpu") or {}).get("other_pct"),
        "rss": peak,
        "verdict": verdict_of(run),
    }


def verdict_of(run: dict) -> str:
    r = run["perf"]
    if not r.get("ok", False) or "verdict" not in r:
        v = f"ERROR (exit {run['exit_code']})"
    else:
        v = r["verdict"]
        if run["exit_code"] not in (0, None):
            v += f" (exit {run['exit_code']})"
    if run.get("leveret_alive_after") is False:
        v += f"; Leveret died (exit {run.get('leveret_exit_code')})"
    return v


def med(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt_rate(v) -> str:
    return NA if v is None else f"{v:,.0f}"


def fmt_ms(us) -> str:
    if us is None:
        return NA
    ms = us / 1000
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:,.0f}"


def fmt_num(v, unit="") -> str:
    return NA if v is None else f"{v:,.0f}{unit}"


def aggregate(runs: list[dict]) -> dict:
    ms = [metrics(r) for r in runs]
    agg = {
        k: med([m[k] for m in ms])
        for k in ("pub", "conf", "cons", "e2e", "p50", "p99", "cpu", "other", "rss")
    }
    agg["verdict"] = ", ".join(sorted({m["verdict"] for m in ms}))
    agg["n"] = len(ms)
    return agg


def ratio(a, b) -> str:
    if a is None or b in (None, 0):
        return NA
    return f"{a / b:.2f}"


def render_table(args, results: list[dict], selected: list[str]) -> str:
    rows = [
        "| scen. | description | broker | published/s | confirmed/s | consumed/s "
        "| delivered/(window+drain) | p50 ms "
        "| p99 ms | broker CPU % | broker peak RSS MB | other CPU % | verdict "
        "| Leveret/RabbitMQ consumed/s | Leveret/RabbitMQ p99 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for key in selected:
        _, desc, flags = SCENARIO_BY_KEY[key]
        per = {}
        for broker in ("leveret", "rabbitmq"):
            rs = [r for r in results if r["scenario"] == key and r["broker"] == broker]
            if rs:
                per[broker] = (aggregate(rs), any(r.get("profiled") for r in rs))
        lv = per.get("leveret", (None,))[0]
        rq = per.get("rabbitmq", (None,))[0]
        cons_ratio = ratio(
            lv["cons"] if lv and lv["verdict"] == "OK" else None, rq["cons"] if rq else None
        )
        lv_runs = [r for r in results if r["scenario"] == key and r["broker"] == "leveret"]
        if (
            "--persistent" in flags
            and key not in CUSTOM
            and cons_ratio != NA
            and lv_runs
            and all(r.get("leveret_data_dir_bytes") == 0 for r in lv_runs)
        ):
            cons_ratio += " (not comparable: nothing persisted)"
        p99_ratio = NA
        if key in LATENCY_SCENARIOS and lv and rq and lv["verdict"] == "OK":
            p99_ratio = ratio(lv["p99"], rq["p99"])
        for broker, (a, profiled) in per.items():
            name = {"leveret": "Leveret", "rabbitmq": "RabbitMQ"}[broker]
            if profiled:
                name += " (py-spy)"
            conf = fmt_rate(a["conf"]) if "--confirm" in flags or "confirm" in flags else NA
            is_lv = broker == "leveret"
            rows.append(
                f"| {key} | {desc} | {name} | {fmt_rate(a['pub'])} | {conf} | "
                f"{fmt_rate(a['cons'])} | {fmt_rate(a['e2e'])} | {fmt_ms(a['p50'])} | "
                f"{fmt_ms(a['p99'])} | "
                f"{fmt_num(a['cpu'])} | {fmt_num(a['rss'])} | {fmt_num(a['other'])} | "
                f"{a['verdict']} | {cons_ratio if is_lv else ''} | {p99_ratio if is_lv else ''} |"
            )
    return "\n".join(rows)


def render_failures(results: list[dict]) -> str:
    parts = []
    for r in results:
        perf = r["perf"]
        bad = (
            not perf.get("ok", False)
            or perf.get("verdict") not in (None, "OK")
            or r["exit_code"] != 0
            or r.get("leveret_alive_after") is False
        )
        if not bad:
            continue
        parts.append(
            f"### scenario {r['scenario']} / {r['broker']} (round {r['round']}): {verdict_of(r)}\n"
        )
        parts.append(f"command: `{r['cmd']}`\n")
        if perf.get("error"):
            label = "error" if "custom" in r else "amqp-perf error"
            parts.append(f"{label} (verbatim):\n\n```\n" + str(perf["error"]) + "\n```\n")
        if "custom" in r and perf.get("notes"):
            parts.append("notes: " + "; ".join(perf["notes"]) + "\n")
        if perf.get("totals"):
            t = perf["totals"]
            parts.append(
                "accounting: "
                + ", ".join(
                    f"{k}={t.get(k)}"
                    for k in (
                        "published",
                        "confirmed",
                        "nacked",
                        "unconfirmed",
                        "delivered",
                        "unique",
                        "duplicates",
                        "missing",
                        "queued_at_end",
                        "drain_end",
                    )
                )
                + "\n"
            )
        if perf.get("notes") and "custom" not in r:
            parts.append("amqp-perf notes: " + json.dumps(perf["notes"]) + "\n")
        if r.get("stderr_tail", "").strip():
            tail = "\n".join(r["stderr_tail"].strip().splitlines()[-15:])
            parts.append("amqp-perf stderr (tail):\n\n```\n" + tail + "\n```\n")
        if r.get("leveret_log_tail"):
            parts.append("Leveret log (tail):\n\n```\n" + r["leveret_log_tail"].strip() + "\n```\n")
        if r.get("leveret_error_lines"):
            parts.append(
                "Leveret log, warning/error lines during the run:\n\n```\n"
                + "\n".join(r["leveret_error_lines"])
                + "\n```\n"
            )
    return "\n".join(parts)


def render_notes(results: list[dict]) -> str:
    notes = []
    for key in dict.fromkeys(r["scenario"] for r in results):
        flags = SCENARIO_BY_KEY[key][2] or ""
        lv = [r for r in results if r["scenario"] == key and r["broker"] == "leveret"]
        if "--persistent" in flags and lv and key not in CUSTOM:
            written = [r.get("leveret_data_dir_bytes") for r in lv]
            if all(w == 0 for w in written):
                notes.append(
                    f"- {key}: Leveret's data dir was empty after the run (0 bytes written): "
                    "persistent messages / durable queues are not stored on disk yet, so this "
                    "Leveret number is for in-memory queues and is **not comparable** with "
                    "RabbitMQ, which writes (and fsyncs before confirming) persistent messages."
                )
            else:
                notes.append(f"- {key}: Leveret data dir size after the run: {written} bytes.")
    return "\n".join(notes)


def _mb(kb) -> str:
    return NA if kb is None else f"{kb / 1024:,.1f}"


def _f(v, fmt="{:,.0f}") -> str:
    return NA if v is None else fmt.format(v)


def render_custom(results: list[dict]) -> str:
    """Detail tables for the built-in scenarios h, i and j (one row per run)."""
    parts = []
    name = {"leveret": "Leveret", "rabbitmq": "RabbitMQ"}

    def runs(key):
        return sorted(
            (r for r in results if r["scenario"] == key and "custom" in r),
            key=lambda r: (r["broker"] != "leveret", r["round"]),
        )

    hs = runs("h")
    if hs:
        parts += [
            "### h: idle connections, then a burst\n",
            "| broker | round | connections opened | open s | RSS before MB | RSS idle MB "
            "| KB per idle connection | delivered | publish s | delivered/s | p50 ms | p99 ms "
            "| max ms | broker CPU % | client CPU % | other CPU % | peak RSS in burst MB "
            "| verdict |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
            "|---:|---|",
        ]
        for r in hs:
            c, lat, cpu = (
                r["custom"],
                r["custom"].get("latency_us") or {},
                r["custom"].get("cpu") or {},
            )
            parts.append(
                f"| {name[r['broker']]} | {r['round']} | {_f(c.get('connections_opened'))} "
                f"| {_f(c.get('open_s'), '{:.1f}')} | {_mb(c.get('rss_before_kb'))} "
                f"| {_mb(c.get('rss_idle_kb'))} | {_f(c.get('kb_per_idle_connection'), '{:.1f}')} "
                f"| {_f(c.get('delivered'))} | {_f(c.get('publish_s'), '{:.2f}')} "
                f"| {_f(c.get('delivered_rate'))} | {fmt_ms(lat.get('p50'))} "
                f"| {fmt_ms(lat.get('p99'))} | {fmt_ms(lat.get('max'))} "
                f"| {_f(cpu.get('broker_pct'))} | {_f(cpu.get('client_pct'))} "
                f"| {_f(cpu.get('other_pct'))} | {_mb(c.get('rss_peak_burst_kb'))} "
                f"| {verdict_of(r)} |"
            )
        parts.append(
            "\nRSS idle is read after the connections have been open and idle for "
            "`--h-idle` seconds; KB per idle connection = (RSS idle - RSS before) / connections "
            "(each with a channel, a queue and a consumer). delivered/s = burst messages / "
            "(last delivery - first publish); latency is per message, publish to delivery. "
            "CPU is over the burst; client = this harness (consumers and producer, one "
            "process).\n"
        )
    is_ = runs("i")
    if is_:
        parts += [
            "### i: persistent backlog\n",
            "| broker | round | fill msg/s (confirmed) | fill s | peak RSS fill MB "
            "| RSS idle w/ backlog MB | disk MB | recovery | recovery s | peak RSS recovering MB "
            "| RSS after recovery MB "
            "| recovered | drain msg/s | drain s | peak RSS drain MB | broker CPU % fill / drain "
            "| other CPU % fill / drain | verdict |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
        ]
        for r in is_:
            c = r["custom"]
            cf, cd = c.get("cpu_fill") or {}, c.get("cpu_drain") or {}
            parts.append(
                f"| {name[r['broker']]} | {r['round']} | {_f(c.get('fill_rate'))} "
                f"| {_f(c.get('fill_s'), '{:.1f}')} | {_mb(c.get('rss_peak_fill_kb'))} "
                f"| {_mb(c.get('rss_idle_backlog_kb'))} | {_f(c.get('disk_mb'), '{:,.1f}')} "
                f"| {c.get('recovery_mode', NA)} | {_f(c.get('recovery_s'), '{:.2f}')} "
                f"| {_mb(c.get('rss_peak_recovery_kb'))} "
                f"| {_mb(c.get('rss_after_recovery_kb'))} | {_f(c.get('recovered'))} "
                f"| {_f(c.get('drain_rate'))} | {_f(c.get('drain_s'), '{:.1f}')} "
                f"| {_mb(c.get('rss_peak_drain_kb'))} "
                f"| {_f(cf.get('broker_pct'))} / {_f(cd.get('broker_pct'))} "
                f"| {_f(cf.get('other_pct'))} / {_f(cd.get('other_pct'))} | {verdict_of(r)} |"
            )
        parts.append(
            "\nFill: one producer, publisher confirms with at most `--i-confirm-window` "
            "unconfirmed, rate = messages / (last confirm - first publish). Recovery s: "
            "process start (Leveret) or `rabbitmq-local.sh start` (RabbitMQ) until a passive "
            "queue.declare returns; Leveret recovers before it listens. Drain: one consumer, "
            "prefetch `--i-prefetch`, one multiple ack per socket read.\n"
        )
    js = runs("j")
    if js:
        parts += [
            "### j: Celery no-op tasks\n",
            "| broker | round | publish tasks/s (worker running) | tasks/s first publish -> "
            "last executed | worker exec/s (live) | worker exec/s from a backlog "
            "| broker CPU % | worker + publisher CPU % | other CPU % | broker peak RSS MB "
            "| verdict |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in js:
            c, cpu = r["custom"], r["custom"].get("cpu_live") or {}
            parts.append(
                f"| {name[r['broker']]} | {r['round']} | {_f(c.get('publish_rate'))} "
                f"| {_f(c.get('tasks_per_s'))} | {_f(c.get('live_exec_rate'))} "
                f"| {_f(c.get('backlog_exec_rate'))} | {_f(cpu.get('broker_pct'))} "
                f"| {_f(cpu.get('client_pct'))} | {_f(cpu.get('other_pct'))} "
                f"| {_mb(c.get('rss_peak_kb'))} | {verdict_of(r)} |"
            )
        parts.append(
            "\nLive: the worker is running and the harness publishes the tasks (one kombu "
            "producer, `apply_async`); tasks/s = tasks / (time the last task ran - first "
            "publish). Backlog: the same number of tasks queued with no worker, then a fresh "
            "worker; rate = (tasks - 1) / (last - first task executed). CPU is over the live "
            "phase.\n"
        )
    return "\n".join(parts)


def render_profiles(results: list[dict]) -> str:
    parts = []
    for r in results:
        prof = r.get("profile")
        if not prof:
            continue
        parts.append(f"### py-spy, scenario {r['scenario']} (round {r['round']})\n")
        if "error" in prof:
            parts.append("```\n" + prof["error"] + "\n```\n")
            continue
        expected = prof["rate_hz"] * r_duration(r)
        parts.append(
            f"{prof['samples']} non-idle samples at {prof['rate_hz']} Hz "
            f"(~{expected:.0f} would be 100% busy); raw: `{prof['raw']}`\n"
        )
        parts.append("| # | own samples | own % of non-idle | function (file:first line) |")
        parts.append("|---:|---:|---:|---|")
        for i, (fn, k) in enumerate(prof["top_own"], 1):
            parts.append(f"| {i} | {k} | {100 * k / max(1, prof['samples']):.1f} | `{fn}` |")
        parts.append("")
    return "\n".join(parts)


def r_duration(run: dict) -> float:
    return float(run.get("duration") or 0)


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


# --------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--scenarios",
        default=",".join(s[0] for s in SCENARIOS),
        help="comma-separated scenario keys (default: all, a-n)",
    )
    ap.add_argument("--duration", type=float, default=10, help="measurement window, s (-z)")
    ap.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5673/")
    ap.add_argument(
        "--out", default=None, help="output directory (default benchmarks/out/<timestamp>)"
    )
    ap.add_argument("--brokers", default="leveret,rabbitmq")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the matrix; medians reported")
    ap.add_argument("--procs", type=int, default=1, help="amqp-perf --procs (GOMAXPROCS)")
    ap.add_argument("--drain-timeout", type=float, default=60)
    ap.add_argument("--amqp-perf", default=None, help="path of the amqp-perf binary")
    ap.add_argument(
        "--quiet-busy",
        type=float,
        default=30.0,
        help="before each run wait until the machine is below this CPU %% (100 = one core) ...",
    )
    ap.add_argument("--quiet-wait", type=float, default=30.0, help="... for at most this long")
    ap.add_argument(
        "--reuse-leveret",
        action="store_true",
        help="one Leveret for all runs instead of a fresh one per run",
    )
    ap.add_argument("--leveret-log-level", default="info")
    ap.add_argument(
        "--leveret-arg",
        action="append",
        default=[],
        help="extra argument for `leveret serve` (repeatable)",
    )
    ap.add_argument(
        "--leveret-ref",
        default=None,
        help="benchmark this git revision (e.g. HEAD) exported with `git archive` to a "
        "temp dir, instead of the working tree",
    )
    ap.add_argument(
        "--profile", action="store_true", help="record Leveret with py-spy during each Leveret run"
    )
    ap.add_argument("--profile-rate", type=int, default=200)
    g = ap.add_argument_group("scenario h (idle connections + burst)")
    g.add_argument("--h-connections", type=int, default=1000)
    g.add_argument("--h-messages", type=int, default=50_000, help="burst size")
    g.add_argument("--h-size", type=int, default=16, help="body bytes (>= 8: timestamp)")
    g.add_argument("--h-prefetch", type=int, default=20)
    g.add_argument("--h-idle", type=float, default=5.0, help="idle seconds before the burst")
    g.add_argument("--h-open-concurrency", type=int, default=50)
    g.add_argument("--h-timeout", type=float, default=300.0)
    g = ap.add_argument_group("scenario i (persistent backlog)")
    g.add_argument("--i-messages", type=int, default=1_000_000)
    g.add_argument("--i-size", type=int, default=1024)
    g.add_argument("--i-confirm-window", type=int, default=10_000)
    g.add_argument("--i-prefetch", type=int, default=500)
    g.add_argument(
        "--rabbitmq-restart",
        choices=("none", "stop", "kill"),
        default="none",
        help="i: restart RabbitMQ with the backlog (kill = SIGKILL the node, then "
        "rabbitmq-local.sh start; stop = graceful stop/start); off by default because the "
        "node may be shared",
    )
    g = ap.add_argument_group("scenario j (Celery)")
    g.add_argument("--j-tasks", type=int, default=10_000)
    g.add_argument("--j-pool", default="threads")
    g.add_argument("--j-concurrency", type=int, default=4)
    g.add_argument("--j-timeout", type=float, default=300.0)
    args = ap.parse_args()
    nofile = raise_nofile()
    log(f"RLIMIT_NOFILE (soft, hard) = {nofile}")

    selected = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    unknown = [k for k in selected if k not in SCENARIO_BY_KEY]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {list(SCENARIO_BY_KEY)}")
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    out_dir = (
        Path(args.out) if args.out else (HERE / "out" / dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    )
    out_dir.mkdir(parents=True, exist_ok=True)

    perf = find_amqp_perf(args.amqp_perf)
    if "rabbitmq" in brokers:
        ensure_rabbitmq(args.rabbitmq_url)
    perf_version = subprocess.run([perf, "-h"], capture_output=True, text=True)
    perf_version = (perf_version.stdout + perf_version.stderr).splitlines()[0].strip()

    results: list[dict] = []
    startups: list[dict] = []
    shared_leveret: Leveret | None = None
    started = dt.datetime.now().isoformat(timespec="seconds")

    leveret_src = None
    source = git_source_info()
    if args.leveret_ref:
        leveret_src = tempfile.mkdtemp(prefix="leveret-src-")
        tree = subprocess.run(
            ["git", "-C", str(REPO), "ls-tree", "--name-only", args.leveret_ref],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        # ``leveret/`` (the import package's root) exists from the packaging change on
        paths = [p for p in ("broker", "protocol", "leveret") if p in tree]
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.leveret_ref, *paths],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", leveret_src], input=archive, check=True)
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", args.leveret_ref], capture_output=True, text=True
        ).stdout.strip()
        source = {"mode": f"git archive {args.leveret_ref}", "commit": commit, "path": leveret_src}
    log(f"Leveret source: {source}")

    def new_leveret(tag: str) -> Leveret:
        lv = Leveret(
            out_dir / f"leveret-{tag}.log", args.leveret_log_level, args.leveret_arg, leveret_src
        )
        startups.append(
            {
                "tag": tag,
                "startup_s": lv.startup_s,
                "idle_rss_mb": round((lv.idle_rss_kb or 0) / 1024, 1),
            }
        )
        log(
            f"  Leveret pid {lv.pid} on port {lv.port}: accepting TCP after "
            f"{lv.startup_s * 1000:.0f} ms, idle RSS {startups[-1]['idle_rss_mb']} MB"
        )
        return lv

    try:
        runnable = list(selected)
        if args.reuse_leveret and "leveret" in brokers:
            shared_leveret = new_leveret("shared")
        for rnd in range(1, args.rounds + 1):
            for i, key in enumerate(runnable):
                _, desc, flags = SCENARIO_BY_KEY[key]
                order = list(brokers)
                if (i + rnd) % 2 == 0:
                    order.reverse()  # alternate which broker goes first
                for broker in order:
                    log(f"[{key} r{rnd}] {broker}: {desc}")
                    if broker == "leveret":
                        # i SIGKILLs its broker, so it always gets a dedicated one
                        dedicated = not args.reuse_leveret or key == "i"
                        lv = None if dedicated else shared_leveret
                        if lv is None or not lv.alive():
                            lv = new_leveret(f"{key}-r{rnd}")
                            if not dedicated:
                                shared_leveret = lv
                        log_offset = Path(lv.log_path).stat().st_size
                        try:
                            if key in CUSTOM:
                                run = CUSTOM_RUNNERS[key](
                                    args, broker, lv.url, rnd, lambda lv=lv: [lv.pid], lv, out_dir
                                )
                            else:
                                run = run_amqp_perf(
                                    args,
                                    perf,
                                    broker,
                                    lv.url,
                                    key,
                                    flags,
                                    rnd,
                                    ["--cpu-pid", str(lv.pid)],
                                    lambda lv=lv: [lv.pid],
                                    lv,
                                    out_dir,
                                )
                        finally:
                            if dedicated:
                                lv.stop()
                        run["fresh_leveret"] = dedicated
                        run["leveret_error_lines"] = leveret_warning_lines(
                            Path(lv.log_path), log_offset
                        )
                    elif key in CUSTOM:
                        run = CUSTOM_RUNNERS[key](
                            args,
                            broker,
                            args.rabbitmq_url,
                            rnd,
                            lambda: pids_by_comm("beam.smp"),
                            None,
                            out_dir,
                        )
                    else:
                        run = run_amqp_perf(
                            args,
                            perf,
                            broker,
                            args.rabbitmq_url,
                            key,
                            flags,
                            rnd,
                            ["--cpu-proc", "beam.smp"],
                            lambda: pids_by_comm("beam.smp"),
                            None,
                            out_dir,
                        )
                    results.append(run)
                    m = metrics(run)
                    log(
                        f"    pub {fmt_rate(m['pub'])}/s cons {fmt_rate(m['cons'])}/s "
                        f"p50 {fmt_ms(m['p50'])} ms p99 {fmt_ms(m['p99'])} ms "
                        f"cpu {m['cpu']}% rss {m['rss']} MB other {m['other']}% "
                        f"-> {m['verdict']}"
                        + (f": {run['perf'].get('error')}" if run["perf"].get("error") else "")
                    )
                    with open(out_dir / "results.json", "w") as f:
                        json.dump({"runs": results, "leveret_starts": startups}, f, indent=1)
    finally:
        if shared_leveret is not None:
            shared_leveret.stop()
        if leveret_src:
            shutil.rmtree(leveret_src, ignore_errors=True)

    # ------------------------------------------------------------------ report
    versions = {
        "leveret": _leveret_version(),
        "rabbitmq": next(
            (
                r["perf"].get("broker")
                for r in results
                if r["broker"] == "rabbitmq" and r["perf"].get("broker")
            ),
            None,
        ),
        "python": platform.python_version() + f" ({sys.executable})",
        "amqp_perf": perf_version + f" ({perf})",
    }
    machine = machine_info()
    st = [s["startup_s"] for s in startups if s["startup_s"]]
    idle = [s["idle_rss_mb"] for s in startups if s["idle_rss_mb"]]
    lines = [
        f"# Leveret vs RabbitMQ (amqp-perf), {started}",
        "",
        f"- command: `{' '.join([_rel(sys.executable), *sys.argv])}` (cwd {os.getcwd()})",
        f"- Leveret source: {source['mode']}, commit {source['commit']}"
        + (
            f"; uncommitted changes in: {', '.join(source['dirty'])}" if source.get("dirty") else ""
        ),
        f"- machine: {machine['nproc']} CPUs, {machine['cpu_model']}, {machine['ram']}",
        f"- versions: Leveret {versions['leveret']}; {versions['rabbitmq']}; "
        f"Python {versions['python']}; {versions['amqp_perf']}",
        f"- amqp-perf flags common to all runs: `-z {args.duration:g} --json --procs {args.procs}"
        f" --drain-timeout {args.drain_timeout:g}` (+ `--cpu-pid <leveret pid>` or "
        "`--cpu-proc beam.smp`)",
        "- Leveret start-up (process start to accepting TCP): "
        + (
            f"median {statistics.median(st) * 1000:.0f} ms, min {min(st) * 1000:.0f} ms, "
            f"max {max(st) * 1000:.0f} ms over {len(st)} starts"
            if st
            else "n/a"
        ),
        "- Leveret idle RSS (1 s after listening, no clients): "
        + (f"median {statistics.median(idle):.1f} MB over {len(idle)} starts" if idle else "n/a"),
        "",
        render_table(args, results, selected),
        "",
        "published/confirmed/consumed/s and latency are amqp-perf's in-window numbers; "
        "delivered/(window+drain) is every message the consumers got divided by the window plus "
        "the post-window drain time (an end-to-end rate that counts the backlog a broker "
        "built up during the window). "
        "Ratios are Leveret/RabbitMQ of the median consumed msg/s (only when Leveret's verdict "
        "is OK) and, for the fixed-rate latency scenario g, of p99 (>1 = Leveret slower). "
        "Broker peak RSS: Leveret = max(VmHWM, sampled VmRSS) of a fresh process per run; "
        'RabbitMQ = sampled VmRSS summed over all beam.smp processes. "other CPU" is '
        "machine CPU not attributed to amqp-perf or the broker (contamination).",
    ]
    custom = render_custom(results)
    if custom:
        lines += ["", "## Built-in scenarios h, i, j (per run)", "", custom]
    notes = render_notes(results)
    if notes:
        lines += ["", "Notes:", "", notes]
    failures = render_failures(results)
    if failures:
        lines += ["", "## Runs that were not clean", "", failures]
    profiles = render_profiles(results)
    if profiles:
        lines += ["", "## Profiles (own time)", "", profiles]
    report = "\n".join(lines) + "\n"
    print(report)
    (out_dir / "results.md").write_text(report)
    with open(out_dir / "results.json", "w") as f:
        json.dump(
            {
                "started": started,
                "argv": sys.argv,
                "versions": versions,
                "leveret_source": source,
                "machine": machine,
                "leveret_starts": startups,
                "runs": results,
            },
            f,
            indent=1,
        )
    log(f"wrote {out_dir / 'results.md'} and {out_dir / 'results.json'}")
    failed = any(verdict_of(r) != "OK" for r in results)
    return 1 if failed else 0


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


def _rel(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


def _leveret_version() -> str:
    try:
        sys.path.insert(0, str(REPO))
        from leveret.broker import __version__

        return __version__
    except Exception as error:
        return f"? ({error})"


def machine_info() -> dict:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
                break
    return {"nproc": os.cpu_count(), "cpu_model": model, "ram": ram, "kernel": platform.release()}


if __name__ == "__main__":
    sys.exit(main())
