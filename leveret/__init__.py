"""Leveret: a pure-Python AMQP 0-9-1 message broker.

The code lives in the repository's ``broker/`` (the server) and ``protocol/`` (the wire
format) and is installed as ``leveret.broker`` and ``leveret.protocol`` (setuptools
``package-dir``), so that nothing named ``broker`` or ``protocol`` lands in a user's
site-packages. In a source tree that is not installed (a git export the benchmarks run, a
checkout on ``PYTHONPATH``) the two folders sit beside this package and are found there.
"""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "broker").is_dir() and (_SOURCE_ROOT / "broker").is_dir():
    __path__.append(str(_SOURCE_ROOT))

try:
    __version__ = version("leveret")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
