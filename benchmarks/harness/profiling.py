"""``--profile``: py-spy attached to Leveret, and the top functions by own time."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from .paths import log


def pyspy_path() -> str | None:
    p = Path(sys.executable).with_name("py-spy")
    return str(p) if p.exists() else shutil.which("py-spy")


def start_pyspy(pid: int, out: Path, duration: float, rate: int) -> subprocess.Popen | None:
    exe = pyspy_path()
    if not exe:
        log("--profile: py-spy not found (pip install py-spy into the venv)")
        return None
    cmd = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--function",
        "--nonblocking",
        "--rate",
        str(rate),
        "--duration",
        str(max(1, int(duration))),
        "-o",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def own_time_top(raw_path: Path, n: int = 15) -> tuple[int, list[tuple[str, int]]]:
    """Top ``n`` leaf frames (own time) of a py-spy raw/collapsed file."""
    own: Counter[str] = Counter()
    total = 0
    with open(raw_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            try:
                k = int(count)
            except ValueError:
                continue
            leaf = stack.rsplit(";", 1)[-1] or "(no Python frame: native code, e.g. uvloop)"
            own[leaf] += k
            total += k
    return total, own.most_common(n)
