"""Disk use against live data: long-lived messages among a large stream of persistent traffic.

Starts Leveret on a fresh data directory, parks LONG_LIVED persistent messages in a durable
queue that nobody consumes, then streams TRAFFIC bytes of persistent messages with confirms
through another durable queue with an acking consumer (amqp-perf). Every 0.5 s it samples
the size of the data directory; at the end it reports the peak against the live data, the
store's compaction counters (from the broker log) and the throughput.

    .venv/bin/python benchmarks/compaction.py [--traffic-gb 10] [--size 65536] [--long-lived 50]

The store's bound to compare with: about twice the live data plus the segment being
written (64 MB) plus a merge's output while it is written.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pika
from backlog import free_port, start, stop
from run import find_amqp_perf

SEGMENT = 64 * 1024 * 1024


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traffic-gb", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=65536)
    parser.add_argument("--long-lived", type=int, default=50)
    parser.add_argument("--amqp-perf", default=None)
    args = parser.parse_args()
    amqp_perf = find_amqp_perf(args.amqp_perf)
    messages = int(args.traffic_gb * 1e9 / args.size)
    with tempfile.TemporaryDirectory(prefix="leveret-compaction-") as tmp:
        data = Path(tmp) / "data"
        port = free_port()
        log_path = Path(tmp) / "broker.log"
        process, _startup = start(port, data, log_path)
        try:
            conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
            ch = conn.channel()
            ch.queue_declare("long-lived", durable=True)
            ch.confirm_delivery()
            body = b"L" * args.size
            for _ in range(args.long_lived):
                ch.basic_publish("", "long-lived", body, pika.BasicProperties(delivery_mode=2))
            conn.close()
            live = args.long_lived * args.size
            peak = [0]
            running = [True]

            def sample() -> None:
                while running[0]:
                    peak[0] = max(peak[0], du(data))
                    time.sleep(0.5)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()
            result = subprocess.run(
                [amqp_perf, "--uri", f"amqp://guest:guest@127.0.0.1:{port}/", "-x", "1",
                 "-y", "1", "-s", str(args.size), "--persistent", "--durable", "-q", "100",
                 "--confirm", "100", "-C", str(messages), "-z", "0", "--json", "--quiet",
                 "--procs", "1", "--drain-timeout", "120"],
                capture_output=True, text=True, check=False)
            elapsed = time.monotonic() - started
            time.sleep(2)  # the last compaction
            running[0] = False
            sampler.join()
            final = du(data)
            report = json.loads(result.stdout) if result.stdout.strip() else {}
        finally:
            stop(process)
        merges = sum(1 for line in log_path.read_text().splitlines() if "merged" in line)
        print(json.dumps({
            "traffic_bytes": messages * args.size, "messages": messages, "size": args.size,
            "live_bytes": live, "peak_disk_bytes": peak[0], "final_disk_bytes": final,
            "peak_over_live": round(peak[0] / live, 1),
            "bound_2x_live_plus_2_segments": 2 * live + 2 * SEGMENT,
            "merges_logged": merges, "seconds": round(elapsed, 1),
            "verdict": report.get("verdict"), "consumed_rate": report.get("consumed_rate"),
        }, indent=1))


if __name__ == "__main__":
    main()
