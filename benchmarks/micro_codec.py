#!/usr/bin/env python3
"""Micro-benchmark of the per-message codec hot path: Leveret's fast path vs pamqp.

    .venv/bin/python benchmarks/micro_codec.py [--messages N] [--repeat R] [--json FILE]

One "message" is what a broker does per message in a 1p/1c manual-ack flow:

* publish in  - split the basic.publish method + content header + body frames out of the
  byte stream and decode the publish (exchange, routing key, flags) and the body size;
* deliver out - encode basic.deliver + content header + body frames into bytes;
* ack in      - split the basic.ack frame out of the stream and decode (tag, multiple).

Leveret: ``protocol.framing.FrameReader`` + ``protocol.fastpath`` (``decode_publish``,
``content_header_fields``, ``deliver_method``, ``write_delivery``,
``decode_ack``), the same calls ``broker/channel.py`` makes. The header payload is forwarded
as received; nothing is re-encoded.
pamqp: the generic ``pamqp.frame.unmarshal`` / ``pamqp.frame.marshal`` for the same frames,
i.e. what a broker built directly on pamqp would do (decode properties into an object and
marshal them again on delivery).

Before timing, the Leveret delivery bytes are checked to be identical to pamqp's encoding.
Timing: ``time.perf_counter`` around a loop over N messages, best (and median) of R repeats,
reported in microseconds per message. Stdlib + pamqp only; no pytest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pamqp import body as pbody
from pamqp import commands, frame
from pamqp import header as pheader

from leveret.protocol import fastpath
from leveret.protocol.framing import FrameReader
from leveret.protocol.methods import method_index

FRAME_MAX = 131072
CHANNEL = 1
CTAG = "amq.ctag-benchmark-consumer-0001"
EXCHANGE = ""
ROUTING_KEY = "amqp-perf-1a2b3c4d-q0"

PROPERTY_SETS = {
    "minimal": dict(delivery_mode=1),
    "rich": dict(
        content_type="application/json",
        content_encoding="utf-8",
        headers={
            "lang": "py",
            "task": "proj.tasks.add",
            "id": "5f0c1b2e-9c1a-4d0e",
            "retries": 0,
            "eta": None,
        },
        delivery_mode=2,
        priority=0,
        correlation_id="5f0c1b2e-9c1a-4d0e",
        reply_to="5f0c1b2e-reply",
        message_id="msg-000001",
        timestamp=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    ),
}


def wire_messages(body_size: int, props: dict):
    body = bytes((i * 7) & 0xFF for i in range(body_size))
    properties = commands.Basic.Properties(**props)
    publish = (
        frame.marshal(commands.Basic.Publish(exchange=EXCHANGE, routing_key=ROUTING_KEY), CHANNEL)
        + frame.marshal(pheader.ContentHeader(0, len(body), properties), CHANNEL)
        + frame.marshal(pbody.ContentBody(body), CHANNEL)
    )
    ack = frame.marshal(commands.Basic.Ack(delivery_tag=1, multiple=False), CHANNEL)
    return body, properties, publish, ack


# --------------------------------------------------------------------------- Leveret
def leveret_publish_in(reader: FrameReader, data: bytes):
    pub = header = None
    body = b""
    for frame_type, _channel, payload in reader.feed(data):
        if frame_type == 1:
            if method_index(payload) == 0x003C0028:  # basic.publish
                pub = fastpath.decode_publish(payload)
        elif frame_type == 2:
            fastpath.content_header_fields(payload)[2] & fastpath.FLAG_USER_ID
            header = payload
        else:
            body = payload
    return pub, header, body


def leveret_deliver_out(ctag_raw: bytes, tag: int, pub, header: bytes, body: bytes) -> bytes:
    out: list = []
    fastpath.write_delivery(
        out,
        CHANNEL,
        fastpath.deliver_method(ctag_raw, tag, False, pub.route_raw),
        header,
        body,
        FRAME_MAX,
    )
    return b"".join(out)


def leveret_ack_in(reader: FrameReader, data: bytes):
    result = None
    for frame_type, _channel, payload in reader.feed(data):
        if frame_type == 1 and method_index(payload) == 0x003C0050:  # basic.ack
            result = fastpath.decode_ack(payload)
    return result


def bench_leveret(n: int, publish: bytes, ack: bytes, batch: int) -> float:
    """Seconds for ``n`` messages. ``batch`` messages' bytes are fed to the reader at once."""
    reader = FrameReader(frame_max=FRAME_MAX)
    ctag_raw = fastpath.shortstr(CTAG)
    pub_chunk = publish * batch
    ack_chunk = ack * batch
    deliver = fastpath.deliver_method
    write = fastpath.write_delivery
    decode_publish = fastpath.decode_publish
    decode_ack = fastpath.decode_ack
    header_fields = fastpath.content_header_fields
    user_flag = fastpath.FLAG_USER_ID
    feed = reader.feed
    tag = 0
    t0 = time.perf_counter()
    for _ in range(n // batch):
        # publish in
        msgs = []
        pub = header = None
        for frame_type, _channel, payload in feed(pub_chunk):
            if frame_type == 1:
                if method_index(payload) == 0x003C0028:
                    pub = decode_publish(payload)
            elif frame_type == 2:
                header_fields(payload)[2] & user_flag
                header = payload
            else:
                msgs.append((pub, header, payload))
        # deliver out
        out: list = []
        for pub, header, body in msgs:
            tag += 1
            write(
                out, CHANNEL, deliver(ctag_raw, tag, False, pub.route_raw), header, body, FRAME_MAX
            )
        b"".join(out)
        # ack in
        for frame_type, _channel, payload in feed(ack_chunk):
            if frame_type == 1 and method_index(payload) == 0x003C0050:
                decode_ack(payload)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- pamqp
def pamqp_publish_in(data: bytes):
    offset = 0
    method = header = body = None
    end = len(data)
    while offset < end:
        consumed, _channel, value = frame.unmarshal(data[offset:])
        offset += consumed
        if isinstance(value, commands.Basic.Publish):
            method = value
        elif isinstance(value, pheader.ContentHeader):
            header = value
        elif isinstance(value, pbody.ContentBody):
            body = value.value
    return method, header, body


def pamqp_deliver_out(tag: int, method, header, body: bytes) -> bytes:
    return (
        frame.marshal(
            commands.Basic.Deliver(
                consumer_tag=CTAG,
                delivery_tag=tag,
                redelivered=False,
                exchange=method.exchange,
                routing_key=method.routing_key,
            ),
            CHANNEL,
        )
        + frame.marshal(pheader.ContentHeader(0, len(body), header.properties), CHANNEL)
        + frame.marshal(pbody.ContentBody(body), CHANNEL)
    )


def bench_pamqp(n: int, publish: bytes, ack: bytes) -> float:
    unmarshal = frame.unmarshal
    marshal = frame.marshal
    Deliver = commands.Basic.Deliver
    Publish = commands.Basic.Publish
    ContentHeader = pheader.ContentHeader
    ContentBody = pbody.ContentBody
    end = len(publish)
    t0 = time.perf_counter()
    for tag in range(1, n + 1):
        # publish in
        offset = 0
        method = header = body = None
        while offset < end:
            consumed, _channel, value = unmarshal(publish[offset:])
            offset += consumed
            if isinstance(value, Publish):
                method = value
            elif isinstance(value, ContentHeader):
                header = value
            else:
                body = value.value
        # deliver out
        marshal(
            Deliver(
                consumer_tag=CTAG,
                delivery_tag=tag,
                redelivered=False,
                exchange=method.exchange,
                routing_key=method.routing_key,
            ),
            CHANNEL,
        )
        marshal(ContentHeader(0, len(body), header.properties), CHANNEL)
        marshal(ContentBody(body), CHANNEL)
        # ack in
        _c, _ch, value = unmarshal(ack)
        value.delivery_tag, value.multiple  # noqa: B018
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- stages
def stage_loops(n: int, publish: bytes, ack: bytes) -> dict:
    """Seconds for ``n`` iterations of each stage alone, for both implementations."""
    res = {}
    reader = FrameReader(frame_max=FRAME_MAX)
    ctag_raw = fastpath.shortstr(CTAG)
    t0 = time.perf_counter()
    for _ in range(n):
        leveret_publish_in(reader, publish)
    res["leveret publish in"] = time.perf_counter() - t0
    pub, header, body = leveret_publish_in(reader, publish)
    t0 = time.perf_counter()
    for tag in range(n):
        leveret_deliver_out(ctag_raw, tag, pub, header, body)
    res["leveret deliver out"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        leveret_ack_in(reader, ack)
    res["leveret ack in"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        pamqp_publish_in(publish)
    res["pamqp publish in"] = time.perf_counter() - t0
    method, pheader_value, pbody_value = pamqp_publish_in(publish)
    t0 = time.perf_counter()
    for tag in range(n):
        pamqp_deliver_out(tag, method, pheader_value, pbody_value)
    res["pamqp deliver out"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        frame.unmarshal(ack)[2].delivery_tag  # noqa: B018
    res["pamqp ack in"] = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------- checks
def check_equivalence(body_size: int, props: dict) -> None:
    body, _properties, publish, ack = wire_messages(body_size, props)
    pub, header, got_body = leveret_publish_in(FrameReader(frame_max=FRAME_MAX), publish)
    method, pheader_value, pbody_value = pamqp_publish_in(publish)
    assert pub.exchange == method.exchange and pub.routing_key == method.routing_key
    assert got_body == pbody_value == body
    ours = leveret_deliver_out(fastpath.shortstr(CTAG), 7, pub, header, got_body)
    theirs = pamqp_deliver_out(7, method, pheader_value, pbody_value)
    assert ours == theirs, "Leveret delivery bytes differ from pamqp's encoding"
    assert leveret_ack_in(FrameReader(frame_max=FRAME_MAX), ack) == (1, False)


def timed(fn, repeat: int, *args) -> list[float]:
    return [fn(*args) for _ in range(repeat)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000, help="messages per timed loop")
    ap.add_argument("--repeat", type=int, default=7, help="timed loops per case (best + median)")
    ap.add_argument("--sizes", default="16,1024,65536", help="body sizes, bytes")
    ap.add_argument("--props", default="minimal,rich", help=f"property sets: {list(PROPERTY_SETS)}")
    ap.add_argument(
        "--batch",
        type=int,
        default=100,
        help="messages per FrameReader.feed() in the batched Leveret variant",
    )
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()

    n = args.messages - args.messages % args.batch
    from importlib.metadata import version

    pamqp_version = version("pamqp")

    print(
        f"# codec micro-benchmark: Python {platform.python_version()}, pamqp {pamqp_version}"
        f", {n} messages per loop, best/median of {args.repeat}; µs per message "
        "(publish in + deliver out + ack in)\n"
    )
    print(
        "| body | properties | Leveret, 1 msg per feed() | Leveret, "
        f"{args.batch} msgs per feed() | pamqp marshal/unmarshal "
        "| pamqp / Leveret (1 per feed) |"
    )
    print("|---:|---|---:|---:|---:|---:|")
    _b, _p, publish, ack = wire_messages(16, PROPERTY_SETS["minimal"])
    t_end = time.perf_counter() + 1.0  # warm-up (CPU clocks, caches, allocator)
    while time.perf_counter() < t_end:
        bench_leveret(1000, publish, ack, 1)
        bench_pamqp(200, publish, ack)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for pname in args.props.split(","):
            props = PROPERTY_SETS[pname]
            check_equivalence(size, props)
            _body, _p, publish, ack = wire_messages(size, props)
            # pamqp is ~10x slower: fewer messages per loop, same per-message unit
            n_pamqp = max(args.batch, n // 5)
            bench_leveret(args.batch * 10, publish, ack, 1)  # warm-up
            bench_leveret(args.batch * 10, publish, ack, args.batch)
            bench_pamqp(args.batch * 2, publish, ack)
            lv1 = timed(bench_leveret, args.repeat, n, publish, ack, 1)
            lvb = timed(bench_leveret, args.repeat, n, publish, ack, args.batch)
            pq = timed(bench_pamqp, args.repeat, n_pamqp, publish, ack)
            us = lambda ts, k: (min(ts) / k * 1e6, statistics.median(ts) / k * 1e6)  # noqa: E731
            r = {
                "body": size,
                "props": pname,
                "leveret_us": us(lv1, n),
                "leveret_batched_us": us(lvb, n),
                "pamqp_us": us(pq, n_pamqp),
            }
            rows.append(r)
            f = lambda v: f"{v[0]:.2f} ({v[1]:.2f})"  # noqa: E731
            print(
                f"| {size} | {pname} | {f(r['leveret_us'])} | {f(r['leveret_batched_us'])} | "
                f"{f(r['pamqp_us'])} | {r['pamqp_us'][0] / r['leveret_us'][0]:.1f}x |",
                flush=True,
            )
    print("\nCells: best (median) µs per message. gc enabled:", gc.isenabled())

    print("\n## Per stage, 16 B body (best of repeats, µs per message, 1 message per feed())\n")
    print("| properties | stage | Leveret | pamqp | pamqp / Leveret |")
    print("|---|---|---:|---:|---:|")
    stages = {}
    for pname in args.props.split(","):
        _b, _p, publish, ack = wire_messages(16, PROPERTY_SETS[pname])
        k = max(1000, n // 5)
        runs = [stage_loops(k, publish, ack) for _ in range(args.repeat)]
        best = {key: min(r[key] for r in runs) / k * 1e6 for key in runs[0]}
        stages[pname] = best
        for stage in ("publish in", "deliver out", "ack in"):
            lv, pq = best[f"leveret {stage}"], best[f"pamqp {stage}"]
            print(f"| {pname} | {stage} | {lv:.2f} | {pq:.2f} | {pq / lv:.1f}x |")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "python": platform.python_version(),
                    "pamqp": pamqp_version,
                    "messages": n,
                    "repeat": args.repeat,
                    "rows": rows,
                    "stages_16B": stages,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
