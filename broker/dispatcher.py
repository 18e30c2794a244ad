"""Runs queue dispatch once per event-loop iteration, in bounded batches.

Publishing marks a queue; the dispatcher then delivers from each marked queue at most
``batch`` messages per loop iteration, so one busy queue cannot starve the others and the
loop keeps reading sockets in between.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Dispatchable(Protocol):
    def dispatch(self, budget: int) -> bool:
        """Deliver up to ``budget`` messages; True when more could be delivered right away."""


class Dispatcher:
    """Batches delivery work per event-loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop, batch: int = 256) -> None:
        self.loop = loop
        self._batch = batch
        self._pending: dict[Dispatchable, None] = {}
        self._scheduled = False

    def mark(self, queue: Dispatchable) -> None:
        """Ask for ``queue`` to be dispatched in the next loop iteration."""
        self._pending[queue] = None
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        batch = self._batch
        for queue in pending:
            if queue.dispatch(batch):
                self.mark(queue)
