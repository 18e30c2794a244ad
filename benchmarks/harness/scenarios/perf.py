"""The amqp-perf scenarios a-g and k-n: one row each, the same flags for both brokers."""

from __future__ import annotations

from .base import perf_scenario

SCENARIOS = [
    perf_scenario("a", "1p/1c 16 B autoack", "-x 1 -y 1 -s 16 -a"),
    perf_scenario(
        "b",
        "1p/1c 16 B manual ack, prefetch 100, confirm 100",
        "-x 1 -y 1 -s 16 -q 100 --confirm 100",
    ),
    perf_scenario(
        "c",
        "1p/1c 1 KB persistent, durable queue, confirm 100, prefetch 100",
        "-x 1 -y 1 -s 1024 --persistent --durable -q 100 --confirm 100",
    ),
    perf_scenario(
        "d",
        "fanout to 10 queues, 1p/10c, 16 B autoack",
        "-x 1 -y 10 -s 16 -a --exchange fanout --queues 10",
    ),
    perf_scenario("e", "1p/1c 64 KB autoack", "-x 1 -y 1 -s 65536 -a"),
    perf_scenario(
        "f",
        "10p/10c, 10 queues, 16 B, confirm 100, prefetch 100",
        "-x 10 -y 10 -s 16 --queues 10 -q 100 --confirm 100",
    ),
    perf_scenario(
        "g",
        "latency: 1p/1c 16 B autoack at fixed 10k msg/s",
        "-x 1 -y 1 -s 16 -a --rate 10000",
        latency=True,
    ),
    perf_scenario("k", "1p/1c 1 MB autoack", "-x 1 -y 1 -s 1048576 -a"),
    perf_scenario(
        "l",
        "1p/1c 64 KB persistent, durable queue, confirm 100, prefetch 100",
        "-x 1 -y 1 -s 65536 --persistent --durable -q 100 --confirm 100",
    ),
    perf_scenario(
        "m",
        "task-like: 256 B, properties new per message, prefetch 100, confirm 100",
        "-x 1 -y 1 -s 256 -q 100 --confirm 100 --task-props",
    ),
    perf_scenario(
        "n",
        "task-like, persistent: 256 B, properties new per message, durable, confirm 100",
        "-x 1 -y 1 -s 256 -q 100 --confirm 100 --task-props --persistent --durable",
    ),
]
