"""Scenario h: idle connections (a channel, a queue and a consumer each), then a burst."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import time
from argparse import ArgumentParser, Namespace
from collections import Counter

from ..builtin import _lite, _pct, arun
from ..fmt import BROKER_NAME, fmt_ms, mb, num
from ..procs import CpuMeter, RssSampler, nofile_soft, read_status, wait_quiet
from ..rabbitmq import rabbitmq_node_pid
from ..records import builtin_perf, custom_run_record, verdict_of
from .base import Scenario, count_label, size_label


def add_arguments(ap: ArgumentParser) -> None:
    g = ap.add_argument_group("scenario h (idle connections + burst)")
    g.add_argument("--h-connections", type=int, default=1000)
    g.add_argument("--h-messages", type=int, default=50_000, help="burst size")
    g.add_argument("--h-size", type=int, default=16, help="body bytes (>= 8: timestamp)")
    g.add_argument("--h-prefetch", type=int, default=20)
    g.add_argument("--h-idle", type=float, default=5.0, help="idle seconds before the burst")
    g.add_argument("--h-open-concurrency", type=int, default=50)
    g.add_argument("--h-timeout", type=float, default=300.0)


def describe(args: Namespace) -> str:
    return (
        f"{count_label(args.h_connections)} idle connections (channel + consumer + own queue "
        f"each), then a {count_label(args.h_messages)} x {size_label(args.h_size)} burst"
    )


def method(args: Namespace) -> str:
    return (
        f"built-in (amqp_lite): {args.h_connections} conns, prefetch {args.h_prefetch}, "
        "manual ack; 1 producer, round robin"
    )


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
    perf = builtin_perf(
        err,
        verdict,
        # the whole burst goes into the socket within milliseconds: a publish rate would only
        # measure socket buffers (publish_s is in the detail table)
        published_rate=None,
        consumed_rate=res.get("delivered_rate"),
        latency_us=res.get("latency_us") or {},
        cpu=res.get("cpu") or {},
        notes=notes,
    )
    res["rss_peak_mb"] = round(res.get("rss_peak_burst_kb", 0) / 1024, 1)
    return custom_run_record(method(args), key, broker, rnd, leveret, res, perf)


def render_details(runs: list[dict]) -> list[str]:
    """The h detail table, one row per run."""
    parts = [
        "### h: idle connections, then a burst\n",
        "| broker | round | connections opened | open s | RSS before MB | RSS idle MB "
        "| KB per idle connection | delivered | publish s | delivered/s | p50 ms | p99 ms "
        "| max ms | broker CPU % | client CPU % | other CPU % | peak RSS in burst MB "
        "| verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        c, lat, cpu = (
            r["custom"],
            r["custom"].get("latency_us") or {},
            r["custom"].get("cpu") or {},
        )
        parts.append(
            f"| {BROKER_NAME[r['broker']]} | {r['round']} | {num(c.get('connections_opened'))} "
            f"| {num(c.get('open_s'), '{:.1f}')} | {mb(c.get('rss_before_kb'))} "
            f"| {mb(c.get('rss_idle_kb'))} | {num(c.get('kb_per_idle_connection'), '{:.1f}')} "
            f"| {num(c.get('delivered'))} | {num(c.get('publish_s'), '{:.2f}')} "
            f"| {num(c.get('delivered_rate'))} | {fmt_ms(lat.get('p50'))} "
            f"| {fmt_ms(lat.get('p99'))} | {fmt_ms(lat.get('max'))} "
            f"| {num(cpu.get('broker_pct'))} | {num(cpu.get('client_pct'))} "
            f"| {num(cpu.get('other_pct'))} | {mb(c.get('rss_peak_burst_kb'))} "
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
    return parts


SCENARIOS = [
    Scenario(
        key="h",
        describe=describe,
        method=method,
        run=run_h,
        add_arguments=add_arguments,
        render_details=render_details,
        latency=True,
    )
]
