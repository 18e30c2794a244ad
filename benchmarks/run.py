#!/usr/bin/env python3
"""Leveret vs RabbitMQ throughput/latency benchmark, driven by amqp-perf.

    .venv/bin/python benchmarks/run.py [--scenarios a,b,...] [--duration S]
        [--rabbitmq-url URL] [--out benchmarks/out/NAME] [--rounds N]
        [--brokers leveret,rabbitmq] [--leveret-ref REV] [--profile] [--quick]

For every selected scenario it runs the workload once against a freshly started Leveret
(subprocess, free port, temporary data dir) and once against the reference RabbitMQ,
alternating which broker goes first from one scenario to the next.

Scenarios a-g and k-n run amqp-perf (``--json --procs 1``, identical flags). Per run it records
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

The code is in ``harness/`` (one module per job, one per scenario family; see its
``__init__``). a-g and k-n need only the stdlib and amqp-perf; h and i import pamqp (through
amqp_lite) and j runs Celery, all from the project venv. Nothing outside this directory is
modified; Leveret's logs, the data dir and the profiles go into ``--out`` / a temp dir. h, i
and j delete the queues they declared on RabbitMQ.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from pathlib import Path

from harness import cli
from harness.amqp_perf import find_amqp_perf, perf_version
from harness.leveret_proc import export_ref, git_source_info
from harness.matrix import run_matrix
from harness.paths import HERE, log
from harness.procs import raise_nofile
from harness.rabbitmq import ensure_rabbitmq
from harness.records import verdict_of
from harness.report import machine_info, render_report, versions_of, write_json
from harness.scenarios import needs_amqp_perf


def main() -> int:
    args, selected, brokers = cli.parse_args(description=__doc__.split("\n\n")[0])
    nofile = raise_nofile()
    log(f"RLIMIT_NOFILE (soft, hard) = {nofile}")
    out_dir = (
        Path(args.out) if args.out else (HERE / "out" / dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    )
    out_dir.mkdir(parents=True, exist_ok=True)

    # only a-g and k-n run amqp-perf: h, i and j alone do not need it
    perf = find_amqp_perf(args.amqp_perf) if needs_amqp_perf(selected) else None
    if "rabbitmq" in brokers:
        ensure_rabbitmq(args.rabbitmq_url)
    version = perf_version(perf) if perf else None
    started = dt.datetime.now().isoformat(timespec="seconds")

    leveret_src = None
    source = git_source_info()
    if args.leveret_ref:
        leveret_src, source = export_ref(args.leveret_ref)
    log(f"Leveret source: {source}")
    try:
        results, startups = run_matrix(args, selected, brokers, perf, out_dir, leveret_src)
    finally:
        if leveret_src:
            shutil.rmtree(leveret_src, ignore_errors=True)

    versions = versions_of(results, perf, version)
    machine = machine_info()
    report = render_report(args, results, selected, startups, source, versions, started, machine)
    print(report)
    (out_dir / "results.md").write_text(report)
    write_json(
        out_dir / "results.json",
        started=started,
        argv=sys.argv,
        versions=versions,
        leveret_source=source,
        machine=machine,
        leveret_starts=startups,
        runs=results,
    )
    log(f"wrote {out_dir / 'results.md'} and {out_dir / 'results.json'}")
    failed = any(verdict_of(r) != "OK" for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
