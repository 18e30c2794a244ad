"""Durable declares as the number of durable queues grows, Leveret beside RabbitMQ.

Declares QUEUES durable queues one after another (each declare-ok waits until the queue is
on disk) and reports the mean latency of the first and the last hundred, for a fresh
Leveret (fsync on, its own data directory) and for the RabbitMQ at --rabbitmq-url. The
queues are deleted afterwards.

    .venv/bin/python benchmarks/declares.py [--queues 2500] [--rabbitmq-url URL]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pika
from backlog import free_port, start, stop


def measure(params: pika.ConnectionParameters, count: int, prefix: str) -> dict[str, float]:
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    latencies = []
    for index in range(count):
        started = time.perf_counter()
        ch.queue_declare(f"{prefix}-{index}", durable=True)
        latencies.append(time.perf_counter() - started)
    for index in range(count):
        ch.queue_delete(f"{prefix}-{index}")
    conn.close()
    first = latencies[:100]
    last = latencies[-100:]
    return {"first_100_ms": round(1000 * sum(first) / len(first), 2),
            "last_100_ms": round(1000 * sum(last) / len(last), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", type=int, default=2500)
    parser.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5673/%2F")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="leveret-declares-") as tmp:
        port = free_port()
        process, _ = start(port, Path(tmp) / "data", Path(tmp) / "broker.log")
        try:
            results["leveret"] = measure(
                pika.ConnectionParameters("127.0.0.1", port), args.queues, "declare-bench")
        finally:
            stop(process)
    try:
        results["rabbitmq"] = measure(pika.URLParameters(args.rabbitmq_url), args.queues,
                                      "declare-bench")
    except pika.exceptions.AMQPConnectionError as error:
        results["rabbitmq"] = {"error": str(error)}
    print(json.dumps({"queues": args.queues, **results}, indent=1))


if __name__ == "__main__":
    main()
