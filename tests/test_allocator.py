"""broker/allocator.py: glibc's thresholds for a broker process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from leveret.broker import allocator

pytestmark = pytest.mark.skipif(allocator._libc is None, reason="not glibc: nothing to tune")

_PROBE = """
import ctypes
from leveret.broker import allocator
applied = allocator.tune()
# mallinfo2 is glibc >= 2.33; the thresholds themselves are not readable, so check their
# effect: 64 freed 1 MB blocks stay in the heap (fordblks) instead of going back at once.
blocks = [ctypes.create_string_buffer(1 << 20) for _ in range(64)]
del blocks
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
kept = libc.mallinfo2().fordblks
allocator.release_free_memory()
print(applied, kept >= 32 << 20, libc.mallinfo2().fordblks < kept)
"""


def _probe(**environment: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in allocator._ENVIRONMENT}
    return subprocess.run([sys.executable, "-c", _PROBE], env={**env, **environment},
                          capture_output=True, text=True, check=True).stdout.split()


def test_freed_large_blocks_are_kept_for_reuse_and_released_on_demand() -> None:
    """Tuned, 64 MB of freed 1 MB blocks stay with the allocator (no page faults for the
    next bodies); release_free_memory gives them back."""
    assert _probe() == ["True", "True", "True"]


def test_the_environment_s_choice_wins() -> None:
    """MALLOC_TRIM_THRESHOLD_ in the environment: nothing is changed, and glibc's own
    handling of that setting applies (here: a small threshold, nothing kept)."""
    applied, kept, _released = _probe(MALLOC_TRIM_THRESHOLD_="65536")
    assert (applied, kept) == ("False", "False")
