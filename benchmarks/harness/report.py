"""The report: the main table with ratios, detail tables, failures, profiles; results.json."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
from argparse import Namespace
from pathlib import Path

from .fmt import NA, fmt_ms, fmt_num, fmt_rate, med, ratio
from .paths import REPO
from .records import verdict_of
from .scenarios import REGISTRY


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


def aggregate(runs: list[dict]) -> dict:
    ms = [metrics(r) for r in runs]
    agg = {
        k: med([m[k] for m in ms])
        for k in ("pub", "conf", "cons", "e2e", "p50", "p99", "cpu", "other", "rss")
    }
    agg["verdict"] = ", ".join(sorted({m["verdict"] for m in ms}))
    agg["n"] = len(ms)
    return agg


def render_table(args, results: list[dict], selected: list[str]) -> str:
    rows = [
        "| scen. | description | broker | published/s | confirmed/s | consumed/s "
        "| delivered/(window+drain) | p50 ms "
        "| p99 ms | broker CPU % | broker peak RSS MB | other CPU % | verdict "
        "| Leveret/RabbitMQ consumed/s | Leveret/RabbitMQ p99 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for key in selected:
        sc = REGISTRY[key]
        desc = sc.describe(args)
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
            sc.persistent
            and cons_ratio != NA
            and lv_runs
            and all(r.get("leveret_data_dir_bytes") == 0 for r in lv_runs)
        ):
            cons_ratio += " (not comparable: nothing persisted)"
        p99_ratio = NA
        if sc.latency and lv and rq and lv["verdict"] == "OK":
            p99_ratio = ratio(lv["p99"], rq["p99"])
        for broker, (a, profiled) in per.items():
            name = {"leveret": "Leveret", "rabbitmq": "RabbitMQ"}[broker]
            if profiled:
                name += " (py-spy)"
            conf = fmt_rate(a["conf"]) if sc.confirms else NA
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
        lv = [r for r in results if r["scenario"] == key and r["broker"] == "leveret"]
        if REGISTRY[key].persistent and lv:
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


def render_custom(results: list[dict]) -> str:
    """Detail tables of the built-in scenarios (h, i, j), one row per run."""
    parts: list[str] = []
    for key, sc in REGISTRY.items():
        runs = sorted(
            (r for r in results if r["scenario"] == key and "custom" in r),
            key=lambda r: (r["broker"] != "leveret", r["round"]),
        )
        if runs and sc.render_details is not None:
            parts += sc.render_details(runs)
    return "\n".join(parts)


def render_ratio_summary(args: Namespace, results: list[dict], selected: list[str]) -> str:
    """A compact table for ``--quick``: consumed/s of each broker and their ratio."""
    rows = [
        "| scen. | description | Leveret consumed/s | RabbitMQ consumed/s "
        "| Leveret/RabbitMQ | verdicts |",
        "|---|---|---:|---:|---:|---|",
    ]
    for key in selected:
        agg = {
            b: aggregate(rs)
            for b in ("leveret", "rabbitmq")
            if (rs := [r for r in results if r["scenario"] == key and r["broker"] == b])
        }
        lv, rq = agg.get("leveret"), agg.get("rabbitmq")
        r = ratio(lv["cons"] if lv and lv["verdict"] == "OK" else None, rq["cons"] if rq else None)
        verdicts = "; ".join(f"{b}: {a['verdict']}" for b, a in agg.items())
        rows.append(
            f"| {key} | {REGISTRY[key].describe(args)} | {fmt_rate(lv['cons'] if lv else None)} "
            f"| {fmt_rate(rq['cons'] if rq else None)} | **{r}** | {verdicts} |"
        )
    return "\n".join(rows)


def render_report(
    args: Namespace,
    results: list[dict],
    selected: list[str],
    startups: list[dict],
    source: dict,
    versions: dict,
    started: str,
    machine: dict,
) -> str:
    """The whole markdown report (``results.md``)."""
    st = [s["startup_s"] for s in startups if s["startup_s"]]
    idle = [s["idle_rss_mb"] for s in startups if s["idle_rss_mb"]]
    lines = []
    if getattr(args, "quick", False):
        lines += [
            f"# Quick check: Leveret/RabbitMQ consumed msg/s ({args.duration:g} s, "
            f"{args.rounds} round)",
            "",
            render_ratio_summary(args, results, selected),
            "",
        ]
    lines += [
        f"# Leveret vs RabbitMQ (amqp-perf), {started}",
        "",
        f"- command: `{' '.join([_rel(sys.executable), *sys.argv])}` (cwd {os.getcwd()})",
        f"- Leveret source: {source['mode']}, commit {source['commit']}"
        + (
            f"; uncommitted changes in: {', '.join(source['dirty'])}" if source.get("dirty") else ""
        ),
        f"- machine: {machine['nproc']} CPUs, {machine['cpu_model']}, {machine['ram']}",
        f"- versions: Leveret {versions['leveret']}; {versions['rabbitmq']}; "
        f"Python {versions['python']}; {versions['amqp_perf'] or 'amqp-perf not used'}",
    ]
    if versions["amqp_perf"]:
        lines.append(
            f"- amqp-perf flags common to all runs: `-z {args.duration:g} --json --procs "
            f"{args.procs} --drain-timeout {args.drain_timeout:g}` (+ `--cpu-pid <leveret pid>` "
            "or `--cpu-proc beam.smp`)"
        )
    lines += [
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
    return "\n".join(lines) + "\n"


def versions_of(results: list[dict], perf: str | None, perf_version: str | None) -> dict:
    """Leveret, RabbitMQ (as amqp-perf saw it), Python and amqp-perf versions."""
    return {
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
        "amqp_perf": perf_version + f" ({perf})" if perf else None,
    }


def write_partial_json(path: Path, results: list[dict], startups: list[dict]) -> None:
    """results.json while the matrix runs (rewritten after every run)."""
    with open(path, "w") as f:
        json.dump({"runs": results, "leveret_starts": startups}, f, indent=1)


def write_json(path: Path, **fields) -> None:
    """The final results.json: started, argv, versions, leveret_source, machine, ..."""
    with open(path, "w") as f:
        json.dump(fields, f, indent=1)
