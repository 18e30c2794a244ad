"""The C allocator's settings for a ``leveret serve`` process (glibc only).

A message body over 128 KB is one ``malloc`` of its own. With glibc's defaults the heap's
free top is given back to the system as soon as it passes its trim threshold, so a stream of
large bodies (a queue of 1 MB messages filling and draining) moves the heap's end up and down
and faults fresh pages in, zeroed by the kernel, for nearly every body: in scenario k (1 MB
bodies) that page faulting cost more than every copy of the body together. Keeping up to
``TRIM_THRESHOLD`` bytes of freed memory for reuse, and serving allocations up to
``MMAP_THRESHOLD`` from the heap, made 64 KB and 1 MB bodies about 1.5x faster
(benchmarks/RESULTS.md). The price is resident memory that is not handed back at once: the
memory alarm calls ``release_free_memory`` before it believes the resident size.

Settings given in the environment (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
``GLIBC_TUNABLES``) win: then nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

TRIM_THRESHOLD = 128 * 1024 * 1024
"""Freed memory kept at the top of the heap before any is given back."""
MMAP_THRESHOLD = 32 * 1024 * 1024
"""Allocations from this size on get pages of their own (glibc's largest setting)."""

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # None (or ValueError) off glibc
            return None
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018  (present)
        libc.malloc_trim  # noqa: B018
    except (ValueError, OSError, AttributeError):
        return None
    return libc


_libc = _glibc()


def tune() -> bool:
    """Apply the thresholds above to this process; False where they do not apply (not
    glibc, or the environment already chose)."""
    if _libc is None or any(name in os.environ for name in _ENVIRONMENT):
        return False
    applied = (_libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
               and _libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    if not applied:
        log.warning("could not set the allocator's thresholds; large messages will be slower")
    return applied


def release_free_memory() -> None:
    """Give freed memory the allocator keeps back to the system (a no-op off glibc)."""
    if _libc is not None:
        _libc.malloc_trim(0)
