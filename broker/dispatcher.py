"""Runs queue dispatch once per event-loop iteration, in bounded batches, and the writes.

Publishing marks a queue; the dispatcher then delivers from each marked queue at most
``batch`` messages per loop iteration, so one busy queue cannot starve the others and the
loop keeps reading sockets in between. Connections with output ask it for a flush: one
callback per iteration writes every connection's batch, and a dispatch run writes what it
produced at once rather than an iteration later (an ack's freed credit reaches the
consumer as a delivery one loop iteration sooner).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger(__name__)


class Dispatchable(Protocol):
    def dispatch(self, budget: int) -> bool:
        """Deliver up to ``budget`` messages; True when more could be delivered right away."""


class Flushable(Protocol):
    def flush(self) -> None:
        """Write what was gathered for the socket."""


class Dispatcher:
    """Batches delivery work and socket writes per event-loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop, batch: int = 256) -> None:
        self.loop = loop
        self._batch = batch
        self._pending: dict[Dispatchable, None] = {}
        self._scheduled = False
        self._writers: dict[Flushable, None] = {}
        self._flush_scheduled = False

    def want_flush(self, writer: Flushable) -> None:
        """Have ``writer.flush()`` called at the end of this iteration's work."""
        self._writers[writer] = None
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every connection's gathered output now."""
        self._flush_scheduled = False
        while self._writers:
            writers, self._writers = self._writers, {}
            for writer in writers:
                try:
                    writer.flush()
                except Exception:
                    log.exception("writing to %r failed", writer)

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
            try:
                more = queue.dispatch(batch)
            except Exception:  # a bug in one queue must not stop the others' deliveries
                log.exception("dispatch failed for %r; retrying it", queue)
                more = True
            if more:
                self.mark(queue)
        if self._writers:
            self.flush()
