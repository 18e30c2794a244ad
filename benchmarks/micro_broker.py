"""In-process micro-benchmark of the broker's per-message path, without sockets.

Feeds raw AMQP bytes to two Connection objects (a publisher and a consumer) over fake
transports and runs the event loop: publish in -> route -> queue -> deliver out (-> ack in).
It measures the broker's own CPU time per message (process time), free of network and
client noise, so hot-path changes can be compared quickly:

    .venv/bin/python benchmarks/micro_broker.py [--messages 200000] [--ack] [--size 16]
        [--task-props] [--confirm]

``--task-props`` gives every message new Celery-like properties (as amqp-perf's flag of that
name: unique message and correlation ids, a kombu-like headers table), so no content header
repeats; ``--confirm`` puts the publisher in confirm mode.

A body larger than a frame is split into frame_max-sized body frames, and the publisher's
bytes arrive in reads of at most ``--read-size`` bytes (uvloop reads up to 256,000 at a
time), so large bodies (``--size 1048576``) cross the broker as they would from a socket.
The fake transport copies what it is given once, as the kernel's write would, so a join
before writing and a gathered write are compared fairly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pamqp import commands, encode
from pamqp import frame as pamqp_frame
from pamqp.header import ContentHeader, ProtocolHeader

from leveret.broker.config import BrokerConfig
from leveret.broker.connection import Connection
from leveret.broker.server import Broker

FRAME_MAX = 131072


class FakeTransport:
    """Takes what the broker writes, copying it once (as a socket write would); never
    pushes back."""

    def __init__(self) -> None:
        self.written = 0
        self.closing = False
        self._sink = memoryview(bytearray(1 << 20))

    def _room(self, size: int) -> memoryview:
        if size > len(self._sink):
            self._sink = memoryview(bytearray(size))
        return self._sink

    def write(self, data: bytes) -> None:
        size = len(data)
        self._room(size)[:size] = data
        self.written += size

    def writelines(self, parts: list[bytes]) -> None:
        sink = self._room(sum(map(len, parts)))
        at = 0
        for part in parts:
            size = len(part)
            sink[at : at + size] = part
            at += size
        self.written += at

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 1)

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def frames(*items: tuple[int, object]) -> bytes:
    return b"".join(pamqp_frame.marshal(value, channel) for channel, value in items)


def handshake() -> bytes:
    return ProtocolHeader().marshal() + frames(
        (0, commands.Connection.StartOk(client_properties={"capabilities": {}},
                                        mechanism="PLAIN", response="\0guest\0guest")),
        (0, commands.Connection.TuneOk(channel_max=2047, frame_max=FRAME_MAX, heartbeat=0)),
        (0, commands.Connection.Open(virtual_host="/")),
        (1, commands.Channel.Open()),
    )


def reads(data: bytes, read_size: int) -> list[bytes]:
    """``data`` cut into reads of at most ``read_size`` bytes."""
    return [data[at : at + read_size] for at in range(0, len(data), read_size)]


def task_properties(seq: int, persistent: bool, shuffle: bool = False
                    ) -> commands.Basic.Properties:
    """amqp-perf's ``--task-props``: new ids and headers for every message (with ``shuffle``,
    the headers table's fields in a new order each time, as amqp-perf's Go map sends them)."""
    ident = f"00000000-{seq >> 32 & 0xFFFF:04x}-4000-8000-{seq:012x}"
    headers = {"lang": "py", "task": "tasks.add", "id": ident, "root_id": ident,
               "parent_id": None, "group": None, "retries": 0, "eta": None,
               "expires": None, "argsrepr": "(2, 2)", "kwargsrepr": "{}",
               "origin": "gen1@perf", "ignore_result": False}
    if shuffle:
        fields = list(headers.items())
        random.Random(seq).shuffle(fields)
        headers = dict(fields)  # encoded in this order: see unsorted_tables()
    return commands.Basic.Properties(
        content_type="application/json", content_encoding="utf-8", message_id=ident,
        correlation_id=ident, priority=0, delivery_mode=2 if persistent else None,
        headers=headers)


def _table_in_dict_order(value: dict[str, object]) -> bytes:
    data = b"".join(encode.short_string(key) + encode.encode_table_value(item)
                    for key, item in value.items())
    return len(data).to_bytes(4, "big") + data


@contextlib.contextmanager
def unsorted_tables() -> Iterator[None]:
    """pamqp encodes a table's fields sorted by name; within this, in the dict's order."""
    sorted_encoder = encode.METHODS["table"]
    encode.METHODS["table"] = _table_in_dict_order
    try:
        yield
    finally:
        encode.METHODS["table"] = sorted_encoder


async def run(messages: int, size: int, ack: bool, batch: int,
              data_dir: str | None = None, read_size: int = 256_000,
              task_props: bool = False, confirm: bool = False, shuffle: bool = False,
              single_acks: bool = False, setup_only: bool = False) -> float:
    broker = Broker(BrokerConfig(port=0, data_dir=Path(data_dir) if data_dir else None))
    await broker.start()
    publisher, consumer = Connection(broker), Connection(broker)
    for connection in (publisher, consumer):
        connection.connection_made(FakeTransport())  # type: ignore[arg-type]
        connection.data_received(handshake())
    consumer.data_received(frames(
        (1, commands.Queue.Declare(queue="bench", durable=data_dir is not None)),
        (1, commands.Basic.Qos(prefetch_count=0 if not ack else 1000)),
        (1, commands.Basic.Consume(queue="bench", consumer_tag="c", no_ack=not ack)),
    ))
    if data_dir or confirm:
        publisher.data_received(frames((1, commands.Confirm.Select())))
    queues = broker.vhosts["/"].queues
    for _ in range(500):  # a durable declare-ok waits for its fsync: so does the consume
        await asyncio.sleep(0.002)
        if "bench" in queues and queues["bench"].consumers:
            break
    body = b"x" * size
    queue = queues["bench"]
    properties = commands.Basic.Properties(delivery_mode=2 if data_dir else None)
    piece = FRAME_MAX - 8

    def message(properties: commands.Basic.Properties) -> bytes:
        return frames((1, commands.Basic.Publish(exchange="", routing_key="bench")),
                      (1, ContentHeader(body_size=size, properties=properties)),
                      *((1, pamqp_frame.body.ContentBody(body[at : at + piece]))
                        for at in range(0, size, piece)))

    if task_props:  # every message its own header (made before the clock starts)
        with unsorted_tables() if shuffle else contextlib.nullcontext():
            rounds = [reads(b"".join(message(task_properties(seq, data_dir is not None,
                                                             shuffle))
                                     for seq in range(start, start + batch)), read_size)
                      for start in range(0, messages - batch + 1, batch)]
    else:
        rounds = [reads(message(properties) * batch, read_size)] * (messages // batch)
    delivered_tag = 0
    single_ack_rounds = [frames(*((1, commands.Basic.Ack(delivery_tag=tag))
                                  for tag in range(start + 1, start + batch + 1)))
                         for start in range(0, messages - batch + 1, batch)]
    single_ack_rounds.reverse()  # popped from the end, one per round
    if setup_only:  # for instruction counts: see --setup-only
        await broker.stop()
        return 0.0
    started = time.process_time()
    for chunks in rounds:
        for chunk in chunks:
            publisher.data_received(chunk)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        while not ack and queue.message_count:
            await asyncio.sleep(0)  # big bodies: deliveries are limited per iteration
        if ack and single_acks:
            consumer.data_received(single_ack_rounds.pop())
        elif ack:
            delivered_tag += batch
            consumer.data_received(frames(
                (1, commands.Basic.Ack(delivery_tag=delivered_tag, multiple=True))))
    elapsed = time.process_time() - started
    assert queue.message_count == 0, queue
    await broker.stop()
    return elapsed / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=0,
                        help="messages per round of the loop (default: 100, fewer for bodies "
                             "over 16 KB, so a round carries about 2 MB)")
    parser.add_argument("--read-size", type=int, default=256_000,
                        help="the largest read the publisher's bytes arrive in")
    parser.add_argument("--ack", action="store_true", help="manual acks (multiple per batch)")
    parser.add_argument("--single-acks", action="store_true",
                        help="with --ack: one basic.ack per message, as amqp-perf and Celery "
                             "send them (default: one multiple ack per round)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--setup-only", action="store_true",
                        help="build everything, then stop before the timed part: under "
                             "valgrind --tool=callgrind, the difference between a run with "
                             "and one without it, divided by --messages, is the timed part's "
                             "instructions per message (noise-free, unlike CPU time)")
    parser.add_argument("--task-props", action="store_true",
                        help="new Celery-like properties for every message (amqp-perf's flag)")
    parser.add_argument("--shuffle-headers", action="store_true",
                        help="with --task-props: the headers table's fields in a new order "
                             "every message, as amqp-perf's Go client sends them")
    parser.add_argument("--confirm", action="store_true", help="publisher confirms")
    parser.add_argument("--persistent", action="store_true",
                        help="persistent messages, durable queue, confirms, fsync (implies --ack)")
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    batch = args.batch or max(1, min(100, (2 << 20) // max(args.size, 1)))
    results = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as data_dir:
            results.append(asyncio.run(run(
                args.messages, args.size, args.ack or args.persistent, batch,
                data_dir if args.persistent else None, args.read_size, args.task_props,
                args.confirm, args.shuffle_headers, args.single_acks, args.setup_only)))
    if args.setup_only:
        print("set up only (nothing timed)")
        return
    best = min(results)
    print(f"{best:.2f} us/message (best of {args.rounds}; {1e6 / best:,.0f} msg/s on one core) "
          f"size={args.size} ack={args.ack or args.persistent} persistent={args.persistent} "
          f"task_props={args.task_props} shuffle={args.shuffle_headers} "
          f"confirm={args.confirm or args.persistent} single_acks={args.single_acks}")


if __name__ == "__main__":
    main()
