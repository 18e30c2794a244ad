"""Delayed messages at scale: how late does Leveret deliver them?

Target (issue): a message published to an ``x-delayed-message`` exchange is delivered within
100 ms of its due time, even with a million messages scheduled.

What it does:

1. Starts a fresh Leveret from this working tree (``python -m leveret serve`` on a free port,
   temp data dir) -- or uses ``--url`` for a broker that is already running.
2. Declares an ``x-delayed-message`` exchange (``x-delayed-type: direct``) and one queue bound
   to it, then publishes ``--messages`` N messages with publisher confirms (at most
   ``--confirm-window`` unconfirmed). Message i is due at
   ``t0 + start_offset + window * i / N``, i.e. the due times are spread evenly over
   ``--window`` seconds beginning ``--start-offset`` seconds after the script started. Its
   ``x-delay`` header is computed just before the message is written (``round((due - now) *
   1000)`` ms) and its body carries the due time (8-byte double, epoch seconds).
3. Reads the broker's RSS with everything scheduled, then subscribes one consumer
   (``basic.qos(--prefetch)``, auto-ack) before the first message is due, and records for
   every delivery ``lateness = receive time - due time``.

The client is ``amqp_lite.py`` (asyncio, uvloop when installed): the frames are packed with
``struct`` and a delivery costs the consumer about a microsecond, so the consumer is not the
bottleneck at the due rates used here. ``--consumer pika`` uses a pika BlockingConnection
consumer instead (what ``/tmp/delay_1m.py`` did) to show how much of the lateness a slow
client adds. To check that the consumer keeps up, the JSON reports the due rate
(N / window), the consumer's receive rate, the client's and the broker's CPU % over the
delivery phase, and the lateness per tenth of the due window (a consumer that falls behind
shows up as lateness growing from one tenth to the next).

The delay is relative (as in RabbitMQ's plugin): the broker starts the clock when it reads
the publish, so a message that waits in socket buffers before the broker reads it is
delivered that much later. ``transit_ms`` (send -> confirm; the broker confirms a held
message as soon as it has scheduled it) bounds that wait; keep the confirm window small so it
stays at a few ms. ``lateness_minus_transit_ms`` subtracts each message's own transit from its
lateness: a lower bound of the lateness the broker itself added (``lateness_ms`` is the upper
bound).

    .venv/bin/python benchmarks/delayed.py --messages 1000000 [--window 60] \\
        [--start-offset 75] [--prefetch 5000] [--consumer lite|pika] [--persistent]

Prints one JSON object. ``publish_s`` must stay below ``--start-offset`` (otherwise the
first messages are published after they are due; ``published_after_due`` counts them).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import itertools
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pamqp import commands
from pamqp import frame as pframe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import amqp_lite
from backlog import Sampler, free_port, rss_mb, start, stop

ROOT = Path(__file__).resolve().parent.parent
EXCHANGE = "lvbench-delayed-x"
QUEUE = "lvbench-delayed-q"
ROUTING_KEY = "k"
CHANNEL = 1

_FRAME = struct.Struct(">BHI")
_I32 = struct.Struct(">i")
_DUE = struct.Struct(">d")


# ---------------------------------------------------------------------------- broker process
def cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def git_revision() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout
    return {"commit": git("rev-parse", "--short", "HEAD").strip(),
            "uncommitted_broker_files": [line[3:] for line in
                                         git("status", "--short", "broker", "protocol")
                                         .splitlines()]}


# ---------------------------------------------------------------------------- frames
def message_frames(size: int, persistent: bool):
    """Return ``encode(delay_ms, due) -> bytes`` for one publish + header + body."""
    publish = pframe.marshal(commands.Basic.Publish(exchange=EXCHANGE, routing_key=ROUTING_KEY),
                             CHANNEL)
    table = b"\x07x-delay" + b"I"  # + signed 32-bit value
    flags = 0x2000 | (0x1000 if persistent else 0)  # headers [, delivery_mode]
    payload_size = 2 + 2 + 8 + 2 + 4 + len(table) + 4 + (1 if persistent else 0)
    head = (publish + _FRAME.pack(2, CHANNEL, payload_size)
            + struct.pack(">HHQHI", 60, 0, size, flags, len(table) + 4) + table)
    tail = (b"\x02" if persistent else b"") + b"\xce" + _FRAME.pack(3, CHANNEL, size)
    pad = b"\x00" * (size - 8) + b"\xce"
    pack_delay, pack_due = _I32.pack, _DUE.pack

    def encode(delay_ms: int, due: float) -> bytes:
        return head + pack_delay(delay_ms) + tail + pack_due(due) + pad

    # self-check with pamqp: the frames decode to the intended publish, header and body
    raw = encode(123456, 1.5)
    pos, decoded = 0, []
    while pos < len(raw):
        used, _ch, value = pframe.unmarshal(raw[pos:])
        decoded.append(value)
        pos += used
    assert decoded[0].exchange == EXCHANGE and decoded[0].routing_key == ROUTING_KEY
    assert decoded[1].body_size == size
    assert decoded[1].properties.headers == {"x-delay": 123456}, decoded[1].properties
    assert decoded[1].properties.delivery_mode == (2 if persistent else None)
    assert _DUE.unpack(decoded[2].value[:8])[0] == 1.5 and len(decoded[2].value) == size
    return encode


# ---------------------------------------------------------------------------- phases
async def setup_and_publish(args, url: str, t0: float) -> tuple[dict, array.array]:
    n = args.messages
    conn = await amqp_lite.connect(url, name="delayed-publisher")
    await conn.channel(CHANNEL)
    await conn.rpc(CHANNEL, commands.Exchange.Declare(
        exchange=EXCHANGE, exchange_type="x-delayed-message", durable=args.persistent,
        arguments={"x-delayed-type": "direct"}), commands.Exchange.DeclareOk)
    await conn.queue_declare(CHANNEL, QUEUE, durable=args.persistent)
    await conn.rpc(CHANNEL, commands.Queue.Purge(queue=QUEUE), commands.Queue.PurgeOk)
    await conn.rpc(CHANNEL, commands.Queue.Bind(queue=QUEUE, exchange=EXCHANGE,
                                                routing_key=ROUTING_KEY), commands.Queue.BindOk)

    sent_at = array.array("d", bytes(8 * n))
    transit = array.array("d", bytes(8 * n))  # confirm time - send time, per message
    state = {"confirmed": 0, "nacked": 0, "upto": 0}
    loop = asyncio.get_running_loop()
    wake: list[asyncio.Future | None] = [None]

    def on_confirm(tag: int, multiple: bool, nack: bool) -> None:
        now = time.time()
        seqs = range(state["upto"] + 1, tag + 1) if multiple else (tag,)
        for seq in seqs:
            if transit[seq - 1] == 0.0:
                transit[seq - 1] = max(now - sent_at[seq - 1], 1e-9)
                state["confirmed"] += 1
                if nack:
                    state["nacked"] += 1
        state["upto"] = max(state["upto"], tag)
        fut = wake[0]
        if fut is not None and not fut.done():
            fut.set_result(None)

    await conn.confirm_select(CHANNEL, on_confirm)
    encode = message_frames(args.size, args.persistent)
    first_due, window, batch = t0 + args.start_offset, args.window, args.batch
    limit = max(args.confirm_window - batch, 0)
    after_due = 0
    began = time.time()
    i = 0
    while i < n:
        while i - state["confirmed"] > limit:
            wake[0] = loop.create_future()
            await wake[0]
        k = min(batch, n - i)
        now = time.time()
        parts = []
        for j in range(i, i + k):
            due = first_due + window * j / n
            delay = round((due - now) * 1000)
            if delay <= 0:
                after_due += 1
            parts.append(encode(delay, due))
            sent_at[j] = now
        conn.write(b"".join(parts))
        await conn.drain()
        i += k
    while state["confirmed"] < n:
        wake[0] = loop.create_future()
        await asyncio.wait_for(wake[0], 60)
    ended = time.time()
    await conn.close()
    transit_ms = sorted(v * 1000 for v in transit)
    return {
        "publish_s": round(ended - began, 2),
        "publish_rate": round(n / (ended - began)),
        "published_after_due": after_due,
        "nacked": state["nacked"],
        "transit_ms": percentiles(transit_ms),
        "publish_done_before_first_due_s": round(first_due - ended, 1),
    }, transit


async def consume_lite(args, url: str, dues: array.array, stamps: array.array,
                       last_due: float, deadline: float) -> None:
    conn = await amqp_lite.connect(url, name="delayed-consumer")
    await conn.channel(CHANNEL)
    await conn.qos(CHANNEL, args.prefetch)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    n = args.messages
    unpack, clock = _DUE.unpack, time.time
    append_due, append_stamp = dues.append, stamps.append

    def on_deliver(_tag: int, head: bytes) -> None:
        append_stamp(clock())
        append_due(unpack(head)[0])
        if len(stamps) >= n and not done.done():
            done.set_result(None)

    await conn.consume(CHANNEL, QUEUE, on_deliver, no_ack=True)
    try:
        while not done.done() and time.time() < deadline:
            before = len(stamps)
            await asyncio.wait([done], timeout=args.idle_timeout)
            if len(stamps) == before and time.time() > last_due + args.idle_timeout:
                break  # nothing arrived for idle_timeout after the last due time
    finally:
        await conn.close()


def consume_pika(args, port: int, dues: array.array, stamps: array.array,
                 last_due: float, deadline: float) -> None:
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = conn.channel()
    channel.basic_qos(prefetch_count=args.prefetch)
    n = args.messages
    clock, unpack = time.time, _DUE.unpack
    for method, _props, body in channel.consume(QUEUE, auto_ack=True,
                                                inactivity_timeout=args.idle_timeout):
        if method is None:
            if time.time() > min(deadline, last_due + args.idle_timeout):
                break  # nothing arrived for idle_timeout after the last due time
            continue
        now = clock()
        stamps.append(now)
        dues.append(unpack(body[:8])[0])
        if len(stamps) >= n or now > deadline:
            break
    conn.close()


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    n = len(values)
    return {"min": round(values[0], 1), "p50": round(values[n // 2], 1),
            "p99": round(values[min(int(n * 0.99), n - 1)], 1),
            "p999": round(values[min(int(n * 0.999), n - 1)], 1), "max": round(values[-1], 1)}


# ---------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", "-n", type=int, default=1_000_000)
    parser.add_argument("--window", type=float, default=60.0,
                        help="due times are spread evenly over this many seconds")
    parser.add_argument("--start-offset", type=float, default=75.0,
                        help="the first message is due this many seconds after the start")
    parser.add_argument("--size", type=int, default=16, help="body bytes (>= 8: due time)")
    parser.add_argument("--prefetch", type=int, default=5000)
    parser.add_argument("--confirm-window", type=int, default=300,
                        help="max unconfirmed publishes (bounds the time a publish waits "
                             "before the broker reads it)")
    parser.add_argument("--batch", type=int, default=100, help="messages per socket write")
    parser.add_argument("--consumer", choices=("lite", "pika"), default="lite")
    parser.add_argument("--persistent", action="store_true",
                        help="durable exchange and queue, persistent messages (held on disk)")
    parser.add_argument("--idle-timeout", type=float, default=5.0)
    parser.add_argument("--grace", type=float, default=60.0,
                        help="stop waiting this long after the last due time")
    parser.add_argument("--url", default=None,
                        help="use this broker instead of starting a Leveret (RSS/CPU n/a)")
    args = parser.parse_args()
    if args.size < 8:
        parser.error("--size must be >= 8")
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    t0 = time.time()
    result: dict = {"messages": args.messages, "window_s": args.window,
                    "start_offset_s": args.start_offset, "size": args.size,
                    "persistent": args.persistent, "consumer": args.consumer,
                    "prefetch": args.prefetch, "confirm_window": args.confirm_window}
    broker = None
    workdir = Path(tempfile.mkdtemp(prefix="leveret-delayed-"))
    if args.url:
        url, port = args.url, amqp_lite.parse_url(args.url)["port"]
    else:
        port = free_port()
        url = f"amqp://guest:guest@127.0.0.1:{port}/"
        broker, startup = start(port, workdir / "data", workdir / "broker.log", "warning")
        result["leveret"] = git_revision()
        result["broker_log"] = str(workdir / "broker.log")
        result["startup_s"] = round(startup, 3)
        result["rss_mb_idle"] = round(rss_mb(broker.pid), 1)
    sampler = Sampler(broker.pid, interval=0.1) if broker else None
    if sampler:
        sampler.start()
    try:
        published, transit = asyncio.run(setup_and_publish(args, url, t0))
        result.update(published)
        time.sleep(1.0)
        if broker:
            result["rss_mb_scheduled"] = round(rss_mb(broker.pid), 1)
            result["peak_rss_mb_publishing"] = round(sampler.peak, 1)
        first_due = t0 + args.start_offset
        last_due = first_due + args.window
        if time.time() > first_due - 1:
            result["warning"] = "publishing ended less than 1 s before the first due time"

        dues, stamps = array.array("d"), array.array("d")
        cpu0, wall0 = time.process_time(), time.time()
        broker_cpu0 = cpu_s(broker.pid) if broker else 0.0
        machine0 = machine_cpu_s()
        deadline = last_due + args.grace
        if args.consumer == "lite":
            asyncio.run(consume_lite(args, url, dues, stamps, last_due, deadline))
        else:
            consume_pika(args, port, dues, stamps, last_due, deadline)
        wall = time.time() - wall0
        client_cpu = time.process_time() - cpu0
        broker_cpu = (cpu_s(broker.pid) - broker_cpu0) if broker else float("nan")
        machine = machine_cpu_s() - machine0
        if broker:
            result["rss_mb_after_delivery"] = round(rss_mb(broker.pid), 1)
            result["peak_rss_mb"] = round(sampler.stop(), 1)
    finally:
        if broker:
            stop(broker)

    received = len(stamps)
    late = [rx - due for rx, due in zip(stamps, dues, strict=True)]
    result["received"] = received
    result["lost"] = args.messages - received
    lateness_ms = sorted(v * 1000 for v in late)
    result["lateness_ms"] = percentiles(lateness_ms)
    # The broker started each message's clock somewhere between its send and its confirm,
    # so lateness - transit is a lower bound of the lateness the broker itself added.
    n = args.messages
    index = [min(max(round((due - first_due) * n / args.window), 0), n - 1) for due in dues]
    result["lateness_minus_transit_ms"] = percentiles(
        sorted((v - transit[i]) * 1000 for v, i in zip(late, index, strict=True)))
    result["out_of_due_order"] = sum(1 for a, b in itertools.pairwise(index) if b < a)
    result["late_over_100ms"] = sum(1 for v in lateness_ms if v > 100.0)
    result["early"] = sum(1 for v in lateness_ms if v < 0.0)
    # does the consumer keep up? due rate vs receive rate, CPU over the delivery phase
    result["due_rate"] = round(args.messages / args.window)
    if received > 1:
        first_rx, last_rx = stamps[0], stamps[-1]
        result["receive_rate"] = round(received / max(last_rx - first_rx, 1e-9))
        result["first_receive_after_first_due_s"] = round(first_rx - first_due, 3)
        result["last_receive_after_last_due_s"] = round(last_rx - last_due, 3)
        # the phase from the first to the last due time (plus what came after)
        span = max(last_rx, last_due) - first_due
        result["delivery_phase_s"] = round(span, 1)
    result["consume_wall_s"] = round(wall, 1)
    result["client_cpu_pct_consuming"] = round(100 * client_cpu / wall, 1)
    if broker:
        result["broker_cpu_pct_consuming"] = round(100 * broker_cpu / wall, 1)
    result["other_cpu_pct_consuming"] = round(
        100 * (machine - client_cpu - (broker_cpu if broker else 0.0)) / wall, 1)
    # lateness per tenth of the due window, in message order (= due order)
    tenths = []
    for part in range(10):
        lo, hi = received * part // 10, received * (part + 1) // 10
        chunk = sorted(late[lo:hi])
        if chunk:
            tenths.append({"p50": round(chunk[len(chunk) // 2] * 1000, 1),
                           "p99": round(chunk[min(int(len(chunk) * 0.99), len(chunk) - 1)]
                                        * 1000, 1),
                           "max": round(chunk[-1] * 1000, 1)})
    result["lateness_ms_by_tenth"] = tenths
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
