#!/usr/bin/env python3
"""Leveret vs RabbitMQ throughput/latency benchmark, driven by amqp-perf.

    .venv/bin/python benchmarks/run.py [--scenarios a,b,...] [--duration S]
        [--rabbitmq-url URL] [--out benchmarks/out/NAME] [--rounds N]
        [--brokers leveret,rabbitmq] [--profile]

For every selected scenario it runs amqp-perf (``--json --procs 1``, identical flags) once
against a freshly started Leveret (subprocess, free port, temporary data dir) and once
against the reference RabbitMQ, alternating which broker goes first from one scenario to
the next. Per run it records published/consumed msg/s, latency p50/p99, broker CPU %,
broker peak RSS and the verdict; the Leveret/RabbitMQ ratio of consumed msg/s (and of p99
for the fixed-rate latency scenario g). It prints a markdown table and writes
``results.md`` and ``results.json`` (raw amqp-perf output included) into ``--out``. It
also measures Leveret's start-up time (process start to accepting TCP) and idle RSS.

``--profile`` attaches py-spy (``record --format raw --function --nonblocking``) to Leveret
during each Leveret run and prints the top functions by own time; profiled runs are slowed
down by the sampler and are marked as such in the table.

Stdlib only. Nothing outside this directory is modified; Leveret's logs, the data dir and
the profiles go into ``--out`` / a temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
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
    ("h", "1000 idle connections + burst", None),
    ("i", "1M message backlog (fill, then drain)", None),
    ("j", "Celery workload (kombu/celery clients)", None),
]
SCENARIO_BY_KEY = {s[0]: s for s in SCENARIOS}
LATENCY_SCENARIOS = {"g"}  # the ratio of p99 is reported too
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
    subprocess.run([str(RABBITMQ_LOCAL), "start"], check=True, env=env)
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
            cmd = [sys.executable, "-m", "broker"]
        elif script.exists():
            cmd = [str(script)]
        else:
            cmd = [sys.executable, "-m", "broker"]
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
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.data_dir, env=env
        )
        self.pid = self.proc.pid
        self.startup_s: float | None = None
        while time.perf_counter() - t0 < 30:
            if self.proc.poll() is not None:
                break
            if tcp_open("127.0.0.1", self.port, timeout=0.2):
                self.startup_s = time.perf_counter() - t0
                break
            time.sleep(0.002)
        if self.startup_s is None:
            self.stop()
            raise RuntimeError(
                f"Leveret did not start (exit {self.proc.returncode}): {self.log_tail()}"
            )
        # idle RSS: one second after it started listening, no client connected
        # (the probe connection above is closed immediately)
        time.sleep(1.0)
        self.idle_rss_kb = read_status(self.pid).get("VmRSS")

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
        if flags is None:
            rows.append(
                f"| {key} | {desc} |"
                + " - |" * 10
                + " **not implemented yet - skipped** (TODO) | - | - |"
            )
            continue
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
            conf = fmt_rate(a["conf"]) if "--confirm" in flags else NA
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
            parts.append("amqp-perf error (verbatim):\n\n```\n" + str(perf["error"]) + "\n```\n")
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
        if perf.get("notes"):
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
        if "--persistent" in flags and lv:
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
        help="comma-separated scenario keys (default: all, a-j)",
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
    args = ap.parse_args()

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
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.leveret_ref, "broker", "protocol"],
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
        runnable = [k for k in selected if SCENARIO_BY_KEY[k][2] is not None]
        for k in selected:
            if SCENARIO_BY_KEY[k][2] is None:
                print(
                    f"scenario {k} ({SCENARIO_BY_KEY[k][1]}): not implemented yet - skipped",
                    flush=True,
                )
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
                        lv = shared_leveret
                        if lv is None or not lv.alive():
                            lv = new_leveret(f"{key}-r{rnd}")
                            if args.reuse_leveret:
                                shared_leveret = lv
                        log_offset = Path(lv.log_path).stat().st_size
                        try:
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
                            if not args.reuse_leveret:
                                lv.stop()
                        run["fresh_leveret"] = not args.reuse_leveret
                        run["leveret_error_lines"] = leveret_warning_lines(
                            Path(lv.log_path), log_offset
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
        from broker import __version__

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
