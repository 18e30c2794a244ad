"""Run records: the fields every run carries, the built-in scenarios' record, the verdict."""

from __future__ import annotations

from typing import Any

from .procs import read_status


def leveret_fields(leveret: Any) -> dict:
    """Leveret's state after a run: pid, VmHWM, alive, data dir size, log tail if it died."""
    st = read_status(leveret.pid)
    run: dict = {
        "leveret_pid": leveret.pid,
        "leveret_vmhwm_mb": round(st["VmHWM"] / 1024, 1) if "VmHWM" in st else None,
        "leveret_alive_after": leveret.alive(),
        "leveret_data_dir_bytes": leveret.data_dir_bytes(),
    }
    if not leveret.alive():
        run["leveret_exit_code"] = leveret.proc.returncode
        run["leveret_log_tail"] = leveret.log_tail()
    return run


def custom_run_record(
    method: str, key: str, broker: str, rnd: int, leveret: Any, extra: dict, perf: dict
) -> dict:
    """The run record of a built-in scenario; its own figures go under ``custom``."""
    run = {
        "scenario": key,
        "broker": broker,
        "round": rnd,
        "cmd": f"run.py built-in scenario {key} ({method})",
        "exit_code": 0 if perf.get("ok") else 1,
        "stderr_tail": "",
        "custom": extra,
        "perf": perf,
        "profiled": False,
        "duration": None,
        "rss_peak_sampled_mb": extra.get("rss_peak_mb") or 0,
    }
    if leveret is not None:
        run.update(leveret_fields(leveret))
    return run


def builtin_perf(
    err: str | None,
    verdict: str,
    *,
    published_rate: float | None,
    consumed_rate: float | None,
    latency_us: dict,
    cpu: dict,
    notes: list[str],
) -> dict:
    """A built-in scenario's ``perf`` fields; ``cpu`` is a ``CpuMeter`` reading, of which
    the broker's and the other processes' shares are kept."""
    perf = {
        "ok": err is None,
        "verdict": verdict,
        "published_rate": published_rate,
        "consumed_rate": consumed_rate,
        "latency_us": latency_us,
        "cpu": {"pids_pct": {"broker": cpu.get("broker_pct")}, "other_pct": cpu.get("other_pct")}
        if cpu
        else {},
        "notes": notes,
    }
    if err:
        perf["error"] = err
    return perf


def verdict_of(run: dict) -> str:
    """OK, or what went wrong: the scenario's verdict, the exit code, a dead Leveret."""
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
