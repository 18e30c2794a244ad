"""Number formatting for the report tables."""

from __future__ import annotations

import statistics

NA = "n/a"


def med(values):
    """Median of the values that are not None (None if there are none)."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt_rate(v) -> str:
    return NA if v is None else f"{v:,.0f}"


def fmt_ms(us) -> str:
    """Microseconds as milliseconds, with fewer decimals as the value grows."""
    if us is None:
        return NA
    ms = us / 1000
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:,.0f}"


def fmt_num(v, unit="") -> str:
    return NA if v is None else f"{v:,.0f}{unit}"


def mb(kb) -> str:
    """KiB as MiB with one decimal."""
    return NA if kb is None else f"{kb / 1024:,.1f}"


def num(v, fmt="{:,.0f}") -> str:
    return NA if v is None else fmt.format(v)


def ratio(a, b) -> str:
    if a is None or b in (None, 0):
        return NA
    return f"{a / b:.2f}"


BROKER_NAME = {"leveret": "Leveret", "rabbitmq": "RabbitMQ"}
