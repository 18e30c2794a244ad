"""What the built-in scenarios share: the asyncio client, run records, clean-up."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

from .paths import HERE


def _new_loop():
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def arun(coro):
    """Run a coroutine on a fresh (uv)loop, as the benchmark client."""
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(coro)


def _lite():
    sys.path.insert(0, str(HERE))
    import amqp_lite

    return amqp_lite


def _pct(sorted_vals: list, q: float):
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


async def _delete_queue(url: str, queue: str, exchange: str | None = None) -> str:
    al = _lite()
    conn = await al.connect(url, name=f"{queue}-cleanup")
    await conn.channel(1)
    try:
        ok = await conn.queue_delete(1, queue)
        out = f"deleted queue {queue} ({ok.message_count} messages)"
        if exchange:
            from pamqp import commands

            await conn.rpc(
                1, commands.Exchange.Delete(exchange=exchange), commands.Exchange.DeleteOk
            )
            out += f", exchange {exchange}"
        return out
    finally:
        await conn.close()


def _wait_file(path: Path, timeout: float, alive=lambda: True) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with contextlib.suppress(ValueError, OSError):
                return float(path.read_text())
        if not alive():
            return None
        time.sleep(0.05)
    return None
