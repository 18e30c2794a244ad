"""Processes and sampling: ports, /proc readings, quiet-wait, RSS and CPU meters."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in KiB ({} when it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def pids_by_comm(name: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == name:
                    pids.append(int(entry))
        except OSError:
            pass
    return sorted(pids)


def sys_busy(interval: float = 1.0) -> float:
    """Whole-machine CPU busy over ``interval`` (100 = one core)."""

    def read():
        with open("/proc/stat") as f:
            v = list(map(int, f.readline().split()[1:9]))
        return sum(v) - v[3] - v[4], sum(v)

    b0, t0 = read()
    time.sleep(interval)
    b1, t1 = read()
    return (b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1) * 100


def wait_quiet(threshold: float, max_wait: float) -> tuple[float, float]:
    t0 = time.monotonic()
    busy = sys_busy()
    while busy > threshold and time.monotonic() - t0 < max_wait:
        busy = sys_busy()
    return round(busy, 1), round(time.monotonic() - t0, 1)


class RssSampler(threading.Thread):
    """Samples the summed VmRSS of some processes every ``interval`` seconds."""

    def __init__(self, pid_source, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid_source = pid_source  # callable -> list of pids
        self.interval = interval
        self.peak_kb = 0
        self.first_kb: int | None = None
        self.samples = 0
        self._halt = threading.Event()

    def sample(self) -> int:
        return sum(read_status(p).get("VmRSS", 0) for p in self.pid_source())

    def run(self) -> None:
        while True:
            kb = self.sample()
            if self.first_kb is None:
                self.first_kb = kb
            self.peak_kb = max(self.peak_kb, kb)
            self.samples += 1
            if self._halt.wait(self.interval):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float | None:
    """user + system CPU seconds of a process (all its threads), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def _sys_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:9]))
    return sum(v) - v[3] - v[4], sum(v)


class CpuMeter:
    """CPU % (100 = one core) of the broker, the client side and everything else between
    start() and stop(). ``broker_pids``/``client_pids`` are callables returning pid lists;
    this process is always counted as client."""

    def __init__(self, broker_pids, client_pids=lambda: []) -> None:
        self.broker_pids = broker_pids
        self.client_pids = client_pids

    def _snap(self) -> dict:
        b = {p: proc_cpu_s(p) for p in self.broker_pids()}
        c = {p: proc_cpu_s(p) for p in self.client_pids()}
        return {
            "t": time.monotonic(),
            "sys": _sys_jiffies(),
            "self": time.process_time(),
            "broker": {p: v for p, v in b.items() if v is not None},
            "client": {p: v for p, v in c.items() if v is not None},
        }

    def start(self) -> CpuMeter:
        self.s0 = self._snap()
        return self

    def stop(self, extra_client_s: float = 0.0) -> dict:
        if not hasattr(self, "s0"):
            return {}
        s1 = self._snap()
        s0 = self.s0
        wall = max(1e-6, s1["t"] - s0["t"])

        def delta(kind):
            return sum(v - s0[kind].get(p, v) for p, v in s1[kind].items())

        broker = delta("broker") / wall * 100
        client = (delta("client") + s1["self"] - s0["self"] + extra_client_s) / wall * 100
        (b0, t0), (b1, t1) = s0["sys"], s1["sys"]
        system = (b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1) * 100
        return {
            "wall_s": round(wall, 2),
            "broker_pct": round(broker, 1),
            "client_pct": round(client, 1),
            "system_busy_pct": round(system, 1),
            "other_pct": round(max(0.0, system - broker - client), 1),
        }


def raise_nofile() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def nofile_soft(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    v = line.split()[3]
                    return None if v == "unlimited" else int(v)
    except (OSError, IndexError, ValueError):
        pass
    return None


def dir_bytes(path: str | Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total
