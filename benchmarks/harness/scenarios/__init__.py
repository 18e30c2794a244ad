"""The scenario registry: every module in this package lists its scenarios in ``SCENARIOS``.

Adding a scenario touches one file: a row in ``perf.py`` for an amqp-perf scenario, or a
new module here for a built-in one (runner, options, detail table).
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Scenario


def _discover() -> dict[str, Scenario]:
    found: dict[str, Scenario] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for sc in getattr(module, "SCENARIOS", ()):
            if sc.key in found:
                raise RuntimeError(f"scenario {sc.key!r} is defined twice")
            found[sc.key] = sc
    return dict(sorted(found.items()))


REGISTRY: dict[str, Scenario] = _discover()


def needs_amqp_perf(keys: list[str]) -> bool:
    """Whether any of the chosen scenarios runs amqp-perf (h, i and j do not)."""
    return any(REGISTRY[k].needs_amqp_perf for k in keys)


__all__ = ["REGISTRY", "Scenario", "needs_amqp_perf"]
