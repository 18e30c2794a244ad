"""The amqp-perf runner: find the binary, run one scenario against one broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .leveret_proc import Leveret
from .paths import AMQP_PERF_SRC, log
from .procs import RssSampler, wait_quiet
from .profiling import own_time_top, start_pyspy
from .records import leveret_fields


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
        f"amqp-perf binary not found; run {build} (../shared/tools/amqp-perf/build.sh "
        "from the repository root) or pass --amqp-perf PATH"
    )


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
        run.update(leveret_fields(leveret))
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


def perf_version(perf: str) -> str:
    """The first line of ``amqp-perf -h`` (its name and version)."""
    p = subprocess.run([perf, "-h"], capture_output=True, text=True)
    return (p.stdout + p.stderr).splitlines()[0].strip()
