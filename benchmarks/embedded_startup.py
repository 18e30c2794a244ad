"""Start-up and shutdown time of the embedded broker (what a test suite pays per broker).

Runs N start/stop cycles of one ``EmbeddedBroker`` (each start builds a fresh Broker on
the same port) and prints the median and p90 of: ``start()`` until it listens, ``start()``
until a client (pika) is logged in, and ``stop()``. In memory by default; ``--data-dir``
times persistent mode (a new, empty directory each cycle). The first import of the
broker is timed separately.

    .venv/bin/python benchmarks/embedded_startup.py [--cycles 50] [--data-dir]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

began = time.perf_counter()
from leveret.broker.embedded import EmbeddedBroker  # noqa: E402  (timed)

IMPORT_SECONDS = time.perf_counter() - began


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--data-dir", action="store_true",
                        help="persistent mode: a fresh data directory per cycle")
    args = parser.parse_args()

    import pika  # imported before timing: the client's import is not the broker's cost

    timings: dict[str, list[float]] = {"start": [], "start + client login": [], "stop": []}
    with tempfile.TemporaryDirectory() as scratch:
        embedded = None
        for cycle in range(args.cycles):
            settings = {"data_dir": Path(scratch) / str(cycle)} if args.data_dir else {}
            if embedded is None or args.data_dir:
                port = embedded.port if embedded is not None else 0
                embedded = EmbeddedBroker(port=port, **settings)
            t0 = time.perf_counter()
            embedded.start()
            t1 = time.perf_counter()
            pika.BlockingConnection(pika.URLParameters(embedded.url)).close()
            t2 = time.perf_counter()
            embedded.stop()
            t3 = time.perf_counter()
            timings["start"].append(t1 - t0)
            timings["start + client login"].append(t2 - t0)
            timings["stop"].append(t3 - t2)

    mode = "persistent (fresh data dir each cycle)" if args.data_dir else "in memory"
    print(f"embedded broker, {mode}, {args.cycles} cycles; first import "
          f"{IMPORT_SECONDS * 1000:.0f} ms")
    print(f"{'':22} {'median ms':>10} {'p90 ms':>8} {'max ms':>8}")
    for name, values in timings.items():
        print(f"{name:22} {statistics.median(values) * 1000:10.1f} "
              f"{percentile(values, 0.9) * 1000:8.1f} {max(values) * 1000:8.1f}")


if __name__ == "__main__":
    main()
