"""Scenario i: a persistent backlog: fill with confirms, idle, crash recovery, drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import urllib.parse
from argparse import ArgumentParser, Namespace
from pathlib import Path

from ..builtin import _delete_queue, _lite, arun
from ..fmt import BROKER_NAME, NA, mb, num
from ..procs import CpuMeter, RssSampler, dir_bytes, read_status, wait_quiet
from ..rabbitmq import rabbitmq_foreign_connections, rabbitmq_server_pids, restart_rabbitmq
from ..records import custom_run_record, verdict_of
from .base import Scenario, count_label, size_label


def add_arguments(ap: ArgumentParser) -> None:
    g = ap.add_argument_group("scenario i (persistent backlog)")
    g.add_argument("--i-messages", type=int, default=1_000_000)
    g.add_argument("--i-size", type=int, default=1024)
    g.add_argument("--i-confirm-window", type=int, default=10_000)
    g.add_argument("--i-prefetch", type=int, default=500)
    g.add_argument(
        "--rabbitmq-restart",
        choices=("none", "stop", "kill"),
        default="none",
        help="i: restart RabbitMQ with the backlog (kill = SIGKILL the node, then "
        "rabbitmq-local.sh start; stop = graceful stop/start); off by default because the "
        "node may be shared",
    )


def describe(args: Namespace) -> str:
    return (
        f"{count_label(args.i_messages)} x {size_label(args.i_size)} persistent backlog: "
        "fill (confirms), idle, crash recovery, drain"
    )


def method(args: Namespace) -> str:
    return (
        "built-in (amqp_lite): --persistent --durable, confirm window "
        f"{args.i_confirm_window}, drain prefetch {args.i_prefetch}"
    )


async def _i_fill(url: str, queue: str, n: int, size: int, window: int, stall_s: float) -> dict:
    al = _lite()
    conn = await al.connect(url, name=f"{queue}-producer")
    await conn.channel(1)
    await conn.queue_declare(1, queue, durable=True, auto_delete=False)
    st = {"acked": 0, "nacked": 0, "upto": 0, "t_last": None}
    singles: set[int] = set()
    progress = asyncio.Event()

    def on_confirm(tag: int, multiple: bool, nack: bool) -> None:
        if multiple:
            newly = tag - st["upto"] - sum(1 for s in singles if s <= tag)
            for s in [s for s in singles if s <= tag]:
                singles.discard(s)
            st["upto"] = max(st["upto"], tag)
        else:
            newly = 1
            if tag > st["upto"]:
                singles.add(tag)
                while st["upto"] + 1 in singles:
                    st["upto"] += 1
                    singles.discard(st["upto"])
        st["nacked" if nack else "acked"] += newly
        st["t_last"] = time.monotonic()
        progress.set()

    await conn.confirm_select(1, on_confirm)
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    msg = al.publish_frames(1, queue, body, delivery_mode=2, frame_max=conn.frame_max)
    chunk = 100
    t0 = time.monotonic()
    sent = 0
    last_change, last_seen = time.monotonic(), 0
    while sent < n:
        confirmed = st["acked"] + st["nacked"]
        room = window - (sent - confirmed)
        if room <= 0:
            progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), 1.0)
            if confirmed != last_seen:
                last_seen, last_change = confirmed, time.monotonic()
            elif time.monotonic() - last_change > stall_s:
                raise RuntimeError(f"publish stalled: sent {sent}, confirmed {confirmed}")
            continue
        k = min(chunk, room, n - sent)
        conn.write(msg * k)
        sent += k
        await conn.drain()
    t_sent = time.monotonic()
    while st["acked"] + st["nacked"] < n:
        progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(progress.wait(), 1.0)
        confirmed = st["acked"] + st["nacked"]
        if confirmed != last_seen:
            last_seen, last_change = confirmed, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            raise RuntimeError(f"confirms stalled: sent {sent}, confirmed {confirmed}")
    depth = (await conn.queue_declare(1, queue, durable=True, passive=True)).message_count
    await conn.close()
    elapsed = (st["t_last"] or time.monotonic()) - t0
    return {
        "sent": sent,
        "confirmed": st["acked"],
        "nacked": st["nacked"],
        "blocked_events": conn.blocked,
        "write_s": round(t_sent - t0, 2),
        "fill_s": round(elapsed, 2),
        "fill_rate": n / elapsed,
        "depth_after_fill": depth,
    }


async def _i_depth(url: str, queue: str) -> int:
    al = _lite()
    conn = await al.connect(url, name=f"{queue}-probe")
    await conn.channel(1)
    try:
        return (await conn.queue_declare(1, queue, durable=True, passive=True)).message_count
    finally:
        await conn.close()


async def _i_drain(url: str, queue: str, expected: int, prefetch: int, stall_s: float) -> dict:
    al = _lite()
    conn = await al.connect(url, name=f"{queue}-consumer")
    await conn.channel(1)
    await conn.qos(1, prefetch)
    st = {"n": 0, "t_last": None}
    done = asyncio.Event()

    def on_deliver(_tag, _head):
        st["n"] += 1
        if st["n"] >= expected:
            st["t_last"] = time.monotonic()
            done.set()

    t0 = time.monotonic()
    await conn.consume(1, queue, on_deliver)
    last, last_change = 0, time.monotonic()
    stalled = False
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 1.0)
        if st["n"] != last:
            last, last_change = st["n"], time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            stalled = True
            break
    t1 = st["t_last"] or last_change
    await asyncio.sleep(0.5)  # let the last acks land
    depth = (await conn.queue_declare(1, queue, durable=True, passive=True)).message_count
    await conn.close()
    return {
        "drained": st["n"],
        "drain_s": round(t1 - t0, 2),
        "drain_rate": st["n"] / max(1e-9, t1 - t0),
        "depth_after_drain": depth,
        "stalled": stalled,
    }


def run_i(args, broker, url, rnd, rss_pids, leveret, out_dir) -> dict:
    key = "i"
    queue = f"lvbench-i-{broker}-{rnd}-{os.getpid()}"
    n = args.i_messages
    busy_before, waited = wait_quiet(args.quiet_busy, args.quiet_wait)

    def rss_kb():
        return sum(read_status(p).get("VmRSS", 0) for p in rss_pids())

    res: dict = {
        "messages": n,
        "size": args.i_size,
        "queue": queue,
        "busy_before_pct": busy_before,
        "quiet_wait_s": waited,
    }
    notes: list[str] = []
    err = None
    rmq_dir = None
    if broker == "rabbitmq":
        port = urllib.parse.urlsplit(url).port or 5672
        rmq_dir = Path(os.environ.get("RMQ_BASE", f"/tmp/rabbitmq-ref-{port}")) / "mnesia"
        if not rmq_dir.is_dir():
            rmq_dir = None
    disk0 = dir_bytes(rmq_dir) if rmq_dir else 0
    res["rss_before_kb"] = rss_kb()
    try:
        # ---- fill
        sampler = RssSampler(rss_pids)
        sampler.start()
        meter = CpuMeter(rss_pids).start()
        try:
            fill = arun(_i_fill(url, queue, n, args.i_size, args.i_confirm_window, 60))
        finally:
            cpu_fill = meter.stop()
            sampler.stop()
        res.update(fill)
        res["cpu_fill"] = cpu_fill
        res["rss_peak_fill_kb"] = sampler.peak_kb
        time.sleep(2.0)
        res["rss_idle_backlog_kb"] = rss_kb()
        if leveret is not None:
            res["disk_mb"] = round(leveret.data_dir_bytes() / 2**20, 1)
        elif rmq_dir:
            res["disk_mb"] = round((dir_bytes(rmq_dir) - disk0) / 2**20, 1)
            notes.append("RabbitMQ disk_mb is the growth of its mnesia dir during the fill")
        # ---- crash + recovery
        if leveret is not None:
            # the new process only: a first sample of the old one (still holding the
            # backlog until the SIGKILL lands) would count as the recovery peak
            old_pid = leveret.pid
            sampler = RssSampler(lambda: [p for p in rss_pids() if p != old_pid], interval=0.05)
            sampler.start()
            try:
                rec = leveret.kill_and_restart()
            finally:
                sampler.stop()
            # the new process's VmHWM right after it listens = its peak while recovering
            hwm = read_status(leveret.pid).get("VmHWM")
            res["rss_peak_recovery_kb"] = max(sampler.peak_kb, hwm or 0)
            if rec is None:
                raise RuntimeError(f"Leveret did not come back after SIGKILL: {leveret.log_tail()}")
            t_listen = time.monotonic()
            res["recovered"] = arun(_i_depth(url, queue))
            res["recovery_s"] = round(rec + time.monotonic() - t_listen, 2)
            res["recovery_listen_s"] = round(rec, 2)
            res["recovery_mode"] = "SIGKILL + restart"
            time.sleep(1.0)
            res["rss_after_recovery_kb"] = rss_kb()
        elif args.rabbitmq_restart != "none" and (foreign := rabbitmq_foreign_connections(url)):
            res["recovery_mode"] = "skipped: other clients connected"
            notes.append(f"RabbitMQ restart skipped, connections open: {foreign[:5]}")
            res["recovered"] = arun(_i_depth(url, queue))
        elif args.rabbitmq_restart != "none":
            # node processes only: rabbitmq-local.sh start runs rabbitmqctl (another beam.smp)
            sampler = RssSampler(rabbitmq_server_pids, interval=0.05)
            sampler.start()
            try:
                rr = restart_rabbitmq(url, args.rabbitmq_restart)
            finally:
                sampler.stop()
            res["rss_peak_recovery_kb"] = sampler.peak_kb
            if rr["rc"] != 0:
                raise RuntimeError(f"rabbitmq-local.sh start failed: {rr['out']}")
            deadline = time.monotonic() + 600
            while True:
                try:
                    res["recovered"] = arun(_i_depth(url, queue))
                    break
                except Exception as e:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"queue not back after restart: {e}") from e
                    time.sleep(0.2)
            res["recovery_s"] = round(time.monotonic() - rr["t0"], 2)
            res["recovery_mode"] = {
                "kill": "SIGKILL beam.smp + rabbitmq-local.sh start",
                "stop": "rabbitmq-local.sh stop + start",
            }[args.rabbitmq_restart]
            time.sleep(1.0)
            res["rss_after_recovery_kb"] = rss_kb()
        else:
            res["recovery_mode"] = "skipped (--rabbitmq-restart none)"
            res["recovered"] = arun(_i_depth(url, queue))
        # ---- drain
        sampler = RssSampler(rss_pids)
        sampler.start()
        meter = CpuMeter(rss_pids).start()
        try:
            drain = arun(_i_drain(url, queue, res["recovered"], args.i_prefetch, 60))
        finally:
            cpu_drain = meter.stop()
            sampler.stop()
        res.update(drain)
        res["cpu_drain"] = cpu_drain
        res["rss_peak_drain_kb"] = sampler.peak_kb
        time.sleep(1.0)
        res["rss_after_drain_kb"] = rss_kb()
    except Exception as e:
        err = f"{type(e).__name__}: {e}"
    finally:
        try:
            res["cleanup"] = arun(_delete_queue(url, queue))
        except Exception as e:
            res["cleanup"] = f"queue.delete failed: {type(e).__name__}: {e}"
            if broker == "rabbitmq":
                notes.append(f"could not delete {queue} on RabbitMQ: {res['cleanup']}")
    if err:
        verdict = "ERROR"
    elif res.get("nacked"):
        verdict = f"NACKED {res['nacked']}"
    elif res.get("recovered") != n:
        verdict = f"RECOVERED {res.get('recovered')}/{n}"
    elif res.get("drained") != n or res.get("depth_after_drain"):
        verdict = f"INCOMPLETE drained {res.get('drained')}/{n}"
    else:
        verdict = "OK"
    cf, cd = res.get("cpu_fill") or {}, res.get("cpu_drain") or {}
    perf = {
        "ok": err is None,
        "verdict": verdict,
        "published_rate": res.get("fill_rate"),
        "confirmed_rate": res.get("fill_rate"),
        "consumed_rate": res.get("drain_rate"),
        "latency_us": {},
        "cpu": {
            "pids_pct": {"broker": cd.get("broker_pct")},
            "other_pct": max(cf.get("other_pct") or 0, cd.get("other_pct") or 0),
        }
        if cd
        else {},
        "notes": notes,
    }
    if err:
        perf["error"] = err
    res["rss_peak_mb"] = round(
        max(
            res.get("rss_peak_fill_kb", 0),
            res.get("rss_peak_recovery_kb", 0),
            res.get("rss_peak_drain_kb", 0),
        )
        / 1024,
        1,
    )
    return custom_run_record(method(args), key, broker, rnd, leveret, res, perf)


def render_details(runs: list[dict]) -> list[str]:
    """The i detail table, one row per run."""
    parts = [
        "### i: persistent backlog\n",
        "| broker | round | fill msg/s (confirmed) | fill s | peak RSS fill MB "
        "| RSS idle w/ backlog MB | disk MB | recovery | recovery s | peak RSS recovering MB "
        "| RSS after recovery MB "
        "| recovered | drain msg/s | drain s | peak RSS drain MB | broker CPU % fill / drain "
        "| other CPU % fill / drain | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in runs:
        c = r["custom"]
        cf, cd = c.get("cpu_fill") or {}, c.get("cpu_drain") or {}
        parts.append(
            f"| {BROKER_NAME[r['broker']]} | {r['round']} | {num(c.get('fill_rate'))} "
            f"| {num(c.get('fill_s'), '{:.1f}')} | {mb(c.get('rss_peak_fill_kb'))} "
            f"| {mb(c.get('rss_idle_backlog_kb'))} | {num(c.get('disk_mb'), '{:,.1f}')} "
            f"| {c.get('recovery_mode', NA)} | {num(c.get('recovery_s'), '{:.2f}')} "
            f"| {mb(c.get('rss_peak_recovery_kb'))} "
            f"| {mb(c.get('rss_after_recovery_kb'))} | {num(c.get('recovered'))} "
            f"| {num(c.get('drain_rate'))} | {num(c.get('drain_s'), '{:.1f}')} "
            f"| {mb(c.get('rss_peak_drain_kb'))} "
            f"| {num(cf.get('broker_pct'))} / {num(cd.get('broker_pct'))} "
            f"| {num(cf.get('other_pct'))} / {num(cd.get('other_pct'))} | {verdict_of(r)} |"
        )
    parts.append(
        "\nFill: one producer, publisher confirms with at most `--i-confirm-window` "
        "unconfirmed, rate = messages / (last confirm - first publish). Recovery s: "
        "process start (Leveret) or `rabbitmq-local.sh start` (RabbitMQ) until a passive "
        "queue.declare returns; Leveret recovers before it listens. Drain: one consumer, "
        "prefetch `--i-prefetch`, one multiple ack per socket read.\n"
    )
    return parts


SCENARIOS = [
    Scenario(
        key="i",
        describe=describe,
        method=method,
        run=run_i,
        add_arguments=add_arguments,
        render_details=render_details,
        confirms=True,
    )
]
