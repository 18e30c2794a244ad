"""The command line of ``run.py``: common options, each scenario's own, and ``--quick``."""

from __future__ import annotations

import argparse

from .scenarios import REGISTRY

# what --quick changes (options given explicitly still win)
QUICK = {
    "scenarios": "a,b,c,e,m,n",
    "brokers": "leveret,rabbitmq",
    "duration": 5.0,
    "rounds": 1,
    "quiet_wait": 5.0,
}


def build_parser(description: str = "") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--scenarios",
        default=",".join(REGISTRY),
        help="comma-separated scenario keys (default: all, a-n)",
    )
    ap.add_argument("--duration", type=float, default=10, help="measurement window, s (-z)")
    ap.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5673/")
    ap.add_argument(
        "--out", default=None, help="output directory (default benchmarks/out/<timestamp>)"
    )
    ap.add_argument("--brokers", default="leveret,rabbitmq")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the matrix; medians reported")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a quick check of a change (under 3 minutes): scenarios "
        f"{QUICK['scenarios']}, both brokers, --duration {QUICK['duration']:g}, 1 round, "
        f"--quiet-wait {QUICK['quiet_wait']:g}; prints the ratio table first",
    )
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
        "--profile", action="store_true",
        help="record Leveret with py-spy during each Leveret amqp-perf run (the built-in "
             "scenarios h, i and j are not profiled: attach py-spy by hand)",
    )
    ap.add_argument("--profile-rate", type=int, default=200)
    for sc in REGISTRY.values():
        if sc.add_arguments is not None:
            sc.add_arguments(ap)
    return ap


def parse_args(
    argv: list[str] | None = None, description: str = ""
) -> tuple[argparse.Namespace, list[str], list[str]]:
    """The options, the chosen scenario keys and the chosen brokers."""
    ap = build_parser(description)
    args = ap.parse_args(argv)
    if args.quick:
        ap.set_defaults(**QUICK)
        args = ap.parse_args(argv)
    selected = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    unknown = [k for k in selected if k not in REGISTRY]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {list(REGISTRY)}")
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    return args, selected, brokers
