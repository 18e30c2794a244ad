"""Leveret's server: connections, channels, the vhost/exchange/queue model, storage, CLI."""

from leveret import __version__

__all__ = ["__version__"]
