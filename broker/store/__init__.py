"""Durable storage: definitions and persistent messages on disk, and their recovery.

Layout of a data directory (format version 1)::

    FORMAT              "leveret-store 1": refused with a clear message if it differs
    LOCK                flock'ed while a broker uses the directory
    definitions.json    durable vhosts' exchanges, queues and bindings (write, fsync, rename)
    segments/NNNNNNNN.log   the message log: append-only records, each with a CRC32

Records (``records.py``): PUBLISH carries one persistent message once, with the names of
every durable queue it went to; REMOVE, DELIVERED and PURGE record what happened to it in a
queue. A restart replays the segments in order and rebuilds every queue in publish order.
A segment file is deleted once it holds no live message and no older segment still needs
its removal records.
"""

from broker.store.store import MessageStore, StoreError

__all__ = ["MessageStore", "StoreError"]
