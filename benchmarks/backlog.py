"""Scenario (i) and the persistence measurements: a large persistent backlog.

Publishes N persistent messages of SIZE bytes to a durable queue with no consumer, records
the broker's peak RSS, SIGKILLs it, restarts it on the same data directory (recovery time
and RSS after recovery), then drains the queue with one consumer (drain rate, peak RSS).

    .venv/bin/python benchmarks/backlog.py --messages 1000000 --size 1024

Stand-alone, Leveret only (working tree), pika client. ``run.py --scenarios i`` runs the same
measurement against Leveret and RabbitMQ side by side, with a faster client (amqp_lite.py)
and publisher confirms.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """Samples a process's RSS every ``interval`` seconds and keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0.0
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return
            time.sleep(self.interval)

    def stop(self) -> float:
        self.running = False
        self.join()
        return self.peak


def start(port: int, data_dir: Path, log_path: Path,
          log_level: str = "info") -> tuple[subprocess.Popen, float]:
    """Start ``python -m leveret serve`` on ``port``; return it and the seconds until it
    accepts TCP (exits the script if the broker dies first)."""
    started = time.monotonic()
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "leveret", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--data-dir", str(data_dir), "--log-level", log_level],
            stderr=log_file, stdout=subprocess.DEVNULL, cwd=ROOT,
        )
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, time.monotonic() - started
        except OSError:
            if process.poll() is not None:
                raise SystemExit(
                    f"broker exited with {process.returncode}; see {log_path}") from None
            time.sleep(0.02)


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it has not exited within ``timeout``."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def queue_depth(port: int, queue: str) -> int:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    depth = conn.channel().queue_declare(queue, durable=True, passive=True).method.message_count
    conn.close()
    return depth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="leveret-backlog-"))
    data_dir = args.data_dir or workdir / "data"
    log_path = workdir / "broker.log"
    port = free_port()
    queue = "backlog"
    result: dict[str, object] = {"messages": args.messages, "size": args.size}

    broker, startup = start(port, data_dir, log_path)
    sampler = Sampler(broker.pid)
    sampler.start()
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = conn.channel()
    channel.queue_declare(queue, durable=True)
    body = os.urandom(args.size)
    properties = pika.BasicProperties(delivery_mode=2)
    began = time.monotonic()
    for _ in range(args.messages):
        channel.basic_publish("", queue, body, properties)
    conn.close()
    while queue_depth(port, queue) < args.messages:
        time.sleep(0.2)
    result["publish_rate"] = round(args.messages / (time.monotonic() - began))
    result["peak_rss_mb_publishing"] = round(sampler.stop(), 1)
    time.sleep(1)
    result["rss_mb_backlog_idle"] = round(rss_mb(broker.pid), 1)
    result["data_dir_mb"] = round(sum(f.stat().st_size for f in data_dir.rglob("*")
                                      if f.is_file()) / 2**20, 1)

    broker.send_signal(signal.SIGKILL)
    broker.wait()
    broker, recovery = start(port, data_dir, log_path)
    result["recovery_s"] = round(recovery, 2)
    time.sleep(0.5)
    result["rss_mb_after_recovery"] = round(rss_mb(broker.pid), 1)
    result["recovered"] = queue_depth(port, queue)

    sampler = Sampler(broker.pid)
    sampler.start()
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = conn.channel()
    channel.basic_qos(prefetch_count=500)
    drained = 0
    began = time.monotonic()
    for method, _props, _body in channel.consume(queue, inactivity_timeout=5):
        if method is None:
            break
        drained += 1
        last = drained == result["recovered"]
        if drained % 250 == 0 or last:  # once per tag: acking a tag twice closes the channel
            channel.basic_ack(method.delivery_tag, multiple=True)
        if last:
            break
    result["drain_rate"] = round(drained / (time.monotonic() - began))
    result["drained"] = drained
    result["peak_rss_mb_draining"] = round(sampler.stop(), 1)
    conn.close()
    stop(broker)
    result["startup_s"] = round(startup, 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
