"""The run loop: every round, every scenario, each broker in alternating order."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from .amqp_perf import run_amqp_perf
from .fmt import fmt_ms, fmt_rate
from .leveret_proc import Leveret, leveret_warning_lines
from .paths import log
from .procs import pids_by_comm
from .report import metrics, write_partial_json
from .scenarios import REGISTRY


def run_matrix(
    args: Namespace,
    selected: list[str],
    brokers: list[str],
    perf: str | None,
    out_dir: Path,
    leveret_src: str | None,
) -> tuple[list[dict], list[dict]]:
    """Run everything; returns the run records and Leveret's start-ups."""
    results: list[dict] = []
    startups: list[dict] = []
    shared_leveret: Leveret | None = None

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

    def run_one(key: str, broker: str, url: str, rnd: int, cpu_flags, rss_pids, lv) -> dict:
        sc = REGISTRY[key]
        if sc.run is not None:
            return sc.run(args, broker, url, rnd, rss_pids, lv, out_dir)
        assert perf is not None and sc.perf_flags is not None
        return run_amqp_perf(
            args, perf, broker, url, key, sc.perf_flags, rnd, cpu_flags, rss_pids, lv, out_dir
        )

    try:
        if args.reuse_leveret and "leveret" in brokers:
            shared_leveret = new_leveret("shared")
        for rnd in range(1, args.rounds + 1):
            for i, key in enumerate(selected):
                desc = REGISTRY[key].describe(args)
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
                            run = run_one(
                                key,
                                broker,
                                lv.url,
                                rnd,
                                ["--cpu-pid", str(lv.pid)],
                                lambda lv=lv: [lv.pid],
                                lv,
                            )
                        finally:
                            if dedicated:
                                lv.stop()
                        run["fresh_leveret"] = dedicated
                        run["leveret_error_lines"] = leveret_warning_lines(
                            Path(lv.log_path), log_offset
                        )
                    else:
                        run = run_one(
                            key,
                            broker,
                            args.rabbitmq_url,
                            rnd,
                            ["--cpu-proc", "beam.smp"],
                            lambda: pids_by_comm("beam.smp"),
                            None,
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
                    write_partial_json(out_dir / "results.json", results, startups)
    finally:
        if shared_leveret is not None:
            shared_leveret.stop()
    return results, startups
