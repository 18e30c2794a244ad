"""Where the benchmarks, the repository and the shared tools are; logging to stderr."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
REPO = HERE.parent
TOOLS = (REPO / ".." / "shared" / "tools").resolve()
RABBITMQ_LOCAL = TOOLS / "rabbitmq-local.sh"
AMQP_PERF_SRC = TOOLS / "amqp-perf"


def log(msg: str) -> None:
    """One progress line on stderr (stdout carries the report)."""
    print(msg, file=sys.stderr, flush=True)
