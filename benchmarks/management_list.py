"""Listing many queues over the management API: the paged, sorted page and the whole list.

Starts ``python -m leveret serve`` with the management API on a free port, declares QUEUES
transient queues over AMQP (pika; every queue gets ``n % 7`` messages, so sorting by
``messages`` has work to do), then times each request REPEATS times, from sending it until
the whole body is read (the client parses nothing). Prints one line per request: median,
min, max (ms), the body size, and the slowest AMQP round trip (a passive queue.declare,
looped on another connection meanwhile: how long the broker stopped serving AMQP), then the
broker's RSS.

    .venv/bin/python benchmarks/management_list.py [--queues 50000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import base64
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pika
from backlog import ROOT, free_port, rss_mb, stop

REQUESTS = [
    ("paged, sort=messages", "/api/queues?page=1&page_size=100&sort=messages&sort_reverse=true"),
    ("paged, default order", "/api/queues?page=1&page_size=100"),
    ("paged, last page by name", "/api/queues?page={last}&page_size=100&sort=name"),
    ("paged, name regex filter", "/api/queues?page=1&page_size=100&name=^q-1234&use_regex=true"),
    ("paged, sort by a rate", "/api/queues?page=1&page_size=100"
                              "&sort=message_stats.publish_details.rate"),
    ("unpaged, columns=name,messages", "/api/queues?columns=name,messages"),
    ("unpaged, everything", "/api/queues"),
]


def fetch(url: str) -> int:
    token = base64.b64encode(b"guest:guest").decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return len(response.read())


def serve(port: int, http: int, data_dir: Path) -> subprocess.Popen:
    """``leveret serve`` with the management API on ``http``, once both ports answer."""
    process = subprocess.Popen(
        [sys.executable, "-m", "leveret", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--management-port", str(http), "--data-dir", str(data_dir), "--log-level",
         "warning"], stdout=subprocess.DEVNULL, cwd=ROOT)
    for wanted in (port, http):
        while True:
            try:
                socket.create_connection(("127.0.0.1", wanted), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None:
                    raise SystemExit(f"broker exited with {process.returncode}") from None
                time.sleep(0.02)
    return process


def declare(port: int, count: int) -> float:
    started = time.perf_counter()
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = connection.channel()
    for n in range(count):
        channel.queue_declare(f"q-{n}")
        for _ in range(n % 7):
            channel.basic_publish("", f"q-{n}", b"x")
    connection.close()
    return time.perf_counter() - started


class Prober(threading.Thread):
    """Passive queue.declare round trips in a loop; keeps the slowest (ms)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        self.channel = self.connection.channel()
        self.slowest = 0.0
        self.running = True

    def run(self) -> None:
        while self.running:
            began = time.perf_counter()
            self.channel.queue_declare("q-0", passive=True)
            self.slowest = max(self.slowest, 1000 * (time.perf_counter() - began))
            time.sleep(0.005)

    def finish(self) -> float:
        self.running = False
        self.join()
        self.connection.close()
        return self.slowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="leveret-mgmt-list-") as tmp:
        port, http = free_port(), free_port()
        process = serve(port, http, Path(tmp) / "data")
        try:
            took = declare(port, args.queues)
            messages = sum(n % 7 for n in range(args.queues))
            print(f"{args.queues} queues declared and {messages} messages published in "
                  f"{took:.1f} s; broker RSS {rss_mb(process.pid):.0f} MB")
            base = f"http://127.0.0.1:{http}"
            last = -(-args.queues // 100)
            print(f"{'request':34} {'median':>9} {'min':>9} {'max':>9} {'body':>10} "
                  f"{'AMQP stall':>10}")
            for label, path in REQUESTS:
                url = base + path.format(last=last)
                times, size = [], 0
                prober = Prober(port)
                prober.start()
                for _ in range(args.repeats):
                    began = time.perf_counter()
                    size = fetch(url)
                    times.append(1000 * (time.perf_counter() - began))
                stall = prober.finish()
                print(f"{label:34} {statistics.median(times):8.1f}ms {min(times):8.1f}ms "
                      f"{max(times):8.1f}ms {size / 1024:8.0f}KB {stall:8.1f}ms")
            print(f"broker RSS after the requests: {rss_mb(process.pid):.0f} MB")
        finally:
            stop(process)


if __name__ == "__main__":
    main()
