"""Where the broker's log goes: standard error, or a file that SIGHUP reopens.

A log file is written with ``logging.handlers.WatchedFileHandler``, which reopens it when
logrotate (or anyone) moved or removed it; SIGHUP reopens it as well (logrotate's usual
``postrotate`` step). With ``log_max_bytes`` the broker rotates the file itself
(``RotatingFileHandler``, ``log_backups`` old files kept).
"""

from __future__ import annotations

import logging
import sys
from logging.handlers import RotatingFileHandler, WatchedFileHandler
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str, log_file: Path | None = None, max_bytes: int = 0,
              backups: int = 0) -> logging.Handler:
    """Send every log record at ``level`` and above to one handler; returns it.

    Raises OSError when the log file cannot be opened.
    """
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    elif max_bytes:
        handler = RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=backups,
                                      encoding="utf-8")
    else:
        handler = WatchedFileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    return handler


def reopen(handler: logging.Handler) -> str:
    """Reopen the log file (SIGHUP); returns what was done, for the log."""
    if not isinstance(handler, logging.FileHandler):
        return "SIGHUP: logging to standard error, nothing to reopen"
    try:
        if isinstance(handler, WatchedFileHandler):
            handler.reopenIfNeeded()  # when the file was moved or removed
        else:
            old = handler.setStream(open(handler.baseFilename, handler.mode,  # noqa: SIM115
                                         encoding=handler.encoding))
            if old is not None:
                old.close()
    except OSError as error:
        return f"SIGHUP: cannot reopen log file {handler.baseFilename}: {error.strerror}"
    return f"SIGHUP: reopened log file {handler.baseFilename}"
