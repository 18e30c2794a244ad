"""Scenario j: Celery no-op tasks through one worker (``celery_noop.py``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
from argparse import ArgumentParser, Namespace
from pathlib import Path

from ..builtin import _delete_queue, _wait_file, arun
from ..fmt import BROKER_NAME, mb, num
from ..paths import HERE
from ..procs import CpuMeter, RssSampler, wait_quiet
from ..records import builtin_perf, custom_run_record, verdict_of
from .base import Scenario, count_label


def add_arguments(ap: ArgumentParser) -> None:
    g = ap.add_argument_group("scenario j (Celery)")
    g.add_argument("--j-tasks", type=int, default=10_000)
    g.add_argument("--j-pool", default="threads")
    g.add_argument("--j-concurrency", type=int, default=4)
    g.add_argument("--j-timeout", type=float, default=300.0)


def describe(args: Namespace) -> str:
    return (
        f"Celery: {count_label(args.j_tasks)} no-op tasks through 1 worker "
        f"(-P {args.j_pool} -c {args.j_concurrency}, prefetch x4)"
    )


def method(_args: Namespace) -> str:
    return "built-in: celery_noop.py worker + publisher (pyamqp://)"


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
    perf = builtin_perf(
        err,
        "ERROR" if err else "OK",
        published_rate=res.get("publish_rate"),
        consumed_rate=res.get("tasks_per_s"),
        latency_us={},
        cpu=res.get("cpu_live") or {},
        notes=notes,
    )
    res["rss_peak_mb"] = round(res.get("rss_peak_kb", 0) / 1024, 1)
    return custom_run_record(method(args), key, broker, rnd, leveret, res, perf)


def render_details(runs: list[dict]) -> list[str]:
    """The j detail table, one row per run."""
    parts = [
        "### j: Celery no-op tasks\n",
        "| broker | round | publish tasks/s (worker running) | tasks/s first publish -> "
        "last executed | worker exec/s (live) | worker exec/s from a backlog "
        "| broker CPU % | worker + publisher CPU % | other CPU % | broker peak RSS MB "
        "| verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        c, cpu = r["custom"], r["custom"].get("cpu_live") or {}
        parts.append(
            f"| {BROKER_NAME[r['broker']]} | {r['round']} | {num(c.get('publish_rate'))} "
            f"| {num(c.get('tasks_per_s'))} | {num(c.get('live_exec_rate'))} "
            f"| {num(c.get('backlog_exec_rate'))} | {num(cpu.get('broker_pct'))} "
            f"| {num(cpu.get('client_pct'))} | {num(cpu.get('other_pct'))} "
            f"| {mb(c.get('rss_peak_kb'))} | {verdict_of(r)} |"
        )
    parts.append(
        "\nLive: the worker is running and the harness publishes the tasks (one kombu "
        "producer, `apply_async`); tasks/s = tasks / (time the last task ran - first "
        "publish). Backlog: the same number of tasks queued with no worker, then a fresh "
        "worker; rate = (tasks - 1) / (last - first task executed). CPU is over the live "
        "phase.\n"
    )
    return parts


SCENARIOS = [
    Scenario(
        key="j",
        describe=describe,
        method=method,
        run=run_j,
        add_arguments=add_arguments,
        render_details=render_details,
    )
]
