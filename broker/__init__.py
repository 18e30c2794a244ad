"""Leveret: a pure-Python AMQP 0-9-1 message broker."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("leveret")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
