#!/usr/bin/env python3
"""Micro-benchmark of content header validation and property decoding vs pamqp.

    .venv/bin/python benchmarks/micro_validate.py [--loops N] [--repeat R]

For each header, µs per call of:

* ``check_content_header`` - protocol.validate's structural check (no values built), what
  the broker runs on every published message;
* ``decode_properties`` - protocol.validate's non-recursive decoder;
* pamqp - ``ContentHeader().unmarshal(payload)``, then ``.properties``, the decoder the
  broker used before.

Headers: "celery-5" is the content header Celery 5.7 / kombu / py-amqp publish for a task
(19 header fields, among them the array ``timelimit`` and the table ``stamps``), with a
fresh task id and argsrepr per message as in real traffic (the check runs on distinct bytes
objects); "celery-4" the same with Celery 4's 14 headers; "minimal" is delivery_mode only;
"deep-100" is a 100-deep nested table.
Timing: ``time.perf_counter`` around N calls, best (and median) of R repeats.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pamqp import commands
from pamqp.header import ContentHeader

from leveret.protocol.tables import content_header
from leveret.protocol.validate import check_content_header, decode_properties


def celery_headers(task_id: str, n: int) -> dict:
    """The headers of a Celery 5.7 task message (``app.amqp.as_task_v2``), in its key order."""
    return {
        "lang": "py",
        "task": "proj.tasks.add",
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": f"({n}, {n + 1})",
        "kwargsrepr": "{}",
        "origin": "gen5719@worker-host-01",
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }


CELERY4_KEYS = ("lang", "task", "id", "shadow", "eta", "expires", "group", "retries", "timelimit",
                "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin")


def celery_header(n: int, keys: tuple[str, ...] | None = None) -> bytes:
    """A content header payload as py-amqp writes it for a Celery task (key order kept,
    ints as 'I', str as 'S', None as 'V'); ``protocol.tables`` writes the same table.
    ``keys``: only these headers (Celery 4's 14 with ``CELERY4_KEYS``)."""
    task_id = str(uuid.UUID(int=n * 7919 + 1))
    headers = celery_headers(task_id, n)
    if keys is not None:
        headers = {key: headers[key] for key in keys}
    properties = commands.Basic.Properties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=0,
        correlation_id=task_id,
        reply_to="c4e7a1f0-3b2d-3c55-9f0e-2b1a0d9c8e7f",
    )
    return content_header(64, properties)


def deep_header(depth: int) -> bytes:
    table = b"\x00\x00\x00\x00"
    for _ in range(depth):
        table = len(table + b"\x01aF").to_bytes(4, "big") + b"\x01aF" + table
    return b"\x00\x3c\x00\x00" + (0).to_bytes(8, "big") + b"\x20\x00" + table


def pamqp_properties(payload: bytes) -> commands.Basic.Properties:
    content = ContentHeader()
    content.unmarshal(payload)
    return content.properties


def bench(fns: list, payloads: list[bytes], repeat: int) -> list[tuple[float, float]]:
    """(best, median) µs per call of each of ``fns`` over ``payloads``; the functions take
    turns, so that a busy machine slows them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, fn_times in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            for payload in payloads:
                fn(payload)
            fn_times.append((time.perf_counter() - t0) / len(payloads) * 1e6)
    return [(min(ts), statistics.median(ts)) for ts in times]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loops", type=int, default=5000, help="calls per timed loop")
    ap.add_argument("--repeat", type=int, default=25, help="timed loops (best + median)")
    args = ap.parse_args()
    from importlib.metadata import version

    cases = {
        "celery-5 (19 fields)": [celery_header(n) for n in range(args.loops)],
        "celery-4 (14 fields)": [celery_header(n, CELERY4_KEYS) for n in range(args.loops)],
        "minimal": [content_header(64, commands.Basic.Properties(delivery_mode=1))] * args.loops,
        "deep-100": [deep_header(100)] * max(1, args.loops // 20),
    }
    for payloads in cases.values():  # same properties from both decoders
        assert decode_properties(payloads[0]) == pamqp_properties(payloads[0])
        check_content_header(payloads[0])
    print(
        f"# content header check/decode: Python {platform.python_version()}, "
        f"pamqp {version('pamqp')}; µs per header, best (median) of {args.repeat}\n"
    )
    print("| header | bytes | check_content_header | decode_properties | pamqp unmarshal "
          "| pamqp / check |")
    print("|---|---:|---:|---:|---:|---:|")
    f = lambda v: f"{v[0]:.2f} ({v[1]:.2f})"  # noqa: E731
    fns = [check_content_header, decode_properties, pamqp_properties]
    for name, payloads in cases.items():
        bench(fns, payloads[:1000], 1)  # warm-up
        check, decode, theirs = bench(fns, payloads, args.repeat)
        print(f"| {name} | {len(payloads[0])} | {f(check)} | {f(decode)} | {f(theirs)} "
              f"| {theirs[0] / check[0]:.0f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
