"""Durable storage: definitions and persistent messages on disk, and their recovery.

Layout of a data directory (format version 2)::

    FORMAT                      "leveret-store 2": any other is refused with a clear message
    LOCK                        flock'ed while a broker uses the directory
    definitions.<g>.json        a snapshot of the durable definitions, with its CRC
    definitions.<g>.log         the changes since that snapshot, one CRC'd record each
    segments/NNNNNNNN.log       the message log: append-only records, each with a CRC

Modules: ``records`` (the record format), ``segments`` (reading the log's files), ``index``
(where each stored message lives and who holds it), ``writer`` (the thread that writes and
fsyncs), ``recovery`` (replaying the log), ``compactor`` (bounding disk use),
``definitions`` (the definitions log) and ``store`` (the contract with the model).
"""

from leveret.broker.store.store import MessageStore, StoreError

__all__ = ["MessageStore", "StoreError"]
