"""What a scenario is, and labels for the sizes a description quotes."""

from __future__ import annotations

from argparse import ArgumentParser, Namespace
from collections.abc import Callable
from dataclasses import dataclass

# runner(args, broker, url, round, rss_pids, leveret, out_dir) -> run record
Runner = Callable[..., dict]


@dataclass(frozen=True)
class Scenario:
    """One benchmark scenario: either amqp-perf flags or a built-in runner.

    ``describe`` and ``method`` take the parsed options, so that a description quotes the
    sizes that were asked for (``--h-connections`` and the like), not the defaults.
    """

    key: str
    describe: Callable[[Namespace], str]  # the report's description column
    method: Callable[[Namespace], str]  # amqp-perf flags, or how the built-in one runs
    perf_flags: str | None = None  # amqp-perf scenarios only
    run: Runner | None = None  # built-in scenarios only
    add_arguments: Callable[[ArgumentParser], None] | None = None  # its own options
    render_details: Callable[[list[dict]], list[str]] | None = None  # its detail table
    confirms: bool = False  # the report has a confirmed/s column for it
    latency: bool = False  # the p99 ratio is reported too

    @property
    def needs_amqp_perf(self) -> bool:
        return self.perf_flags is not None

    @property
    def persistent(self) -> bool:
        """An amqp-perf scenario with persistent messages (Leveret must write its data dir)."""
        return self.perf_flags is not None and "--persistent" in self.perf_flags


def perf_scenario(key: str, description: str, flags: str, latency: bool = False) -> Scenario:
    """A scenario amqp-perf runs with ``flags`` (plus the flags common to all runs)."""
    return Scenario(
        key=key,
        describe=lambda _args: description,
        method=lambda _args: flags,
        perf_flags=flags,
        confirms="--confirm" in flags,
        latency=latency,
    )


def count_label(n: int) -> str:
    """1000000 -> "1M", 50000 -> "50k", 1000 -> "1000" (round thousands from 10k on)."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 10_000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def size_label(n: int) -> str:
    """A body size: 16 -> "16 B", 1024 -> "1 KB", 1048576 -> "1 MB"."""
    for unit, div in (("MB", 2**20), ("KB", 2**10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"
