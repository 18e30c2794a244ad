"""Broker settings, with RabbitMQ's defaults where RabbitMQ has one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 4 * 1024**3


@dataclass
class BrokerConfig:
    """Everything the broker can be told at start-up."""

    host: str = "127.0.0.1"
    port: int = 5672
    data_dir: Path | None = None
    # A new data directory (or none) starts with RabbitMQ's default user and vhost, unless
    # ``users`` or ``definitions`` are given; later starts take users from the store.
    default_user: str = "guest"
    default_pass: str = "guest"
    default_user_tags: tuple[str, ...] = ("administrator",)
    default_vhost: str = "/"
    loopback_users: tuple[str, ...] = ("guest",)  # users that may log in from this host only
    # Applied at every start: users (name -> password, or a table with ``password`` or
    # ``password_hash``, ``hashing_algorithm`` and ``tags``), vhosts to create, and
    # permissions (``user``, ``vhost``, ``configure``, ``write``, ``read``; None: every
    # configured user may do anything on every vhost).
    users: dict[str, Any] | None = None
    vhosts: tuple[str, ...] = ()
    permissions: list[dict[str, str]] | None = None
    definitions: dict[str, Any] | None = None  # a RabbitMQ definitions.json, loaded at start
    # Dynamic shovels set at every start: name -> RabbitMQ's shovel parameter value
    # ({"src-uri": ..., "src-queue": ..., "dest-uri": ..., "dest-queue": ...}), plus an
    # optional "vhost" (default_vhost). See broker/shovels.py.
    shovels: dict[str, dict[str, Any]] = field(default_factory=dict)
    # TLS (amqps): a second listener beside the plain one; RabbitMQ's option names.
    tls_port: int | None = None  # None: no TLS listener (conventionally 5671)
    tls_cert: Path | None = None  # PEM certificate chain of the broker
    tls_key: Path | None = None  # PEM private key
    tls_ca: Path | None = None  # PEM CA bundle that client certificates are checked against
    tls_verify_peer: bool = True  # with a CA: check a client certificate when one is sent
    tls_fail_if_no_peer_cert: bool = False  # ... and refuse clients that send none
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "AMQPLAIN")  # add "EXTERNAL" for certificates
    # HTTP listeners on ``host``: the management API and dashboard (RabbitMQ's 15672) and
    # Prometheus metrics (15692). None: off (the command line's default turns both on);
    # 0: any free port.
    management_port: int | None = None
    metrics_port: int | None = None
    # Limits (RabbitMQ's names; None: unlimited, RabbitMQ's default).
    connection_max: int | None = None  # connections to the whole broker
    vhost_limits: dict[str, dict[str, int]] = field(default_factory=dict)
    # vhost -> {"max-connections": n, "max-queues": n}, as `rabbitmqctl set_vhost_limits`
    log_file: Path | None = None  # None: standard error
    heartbeat: int = 60  # seconds offered in connection.tune; 0 disables
    frame_max: int = 131072
    channel_max: int = 2047
    max_message_size: int = 128 * 1024 * 1024
    handshake_timeout: float = 10.0
    close_timeout: float = 3.0  # how long to wait for close-ok after we sent close
    write_timeout: float = 30.0  # a client that reads nothing this long is dropped; 0: never
    cluster_name: str = "leveret@localhost"
    consumer_timeout: float | None = None  # seconds a delivery may stay unacked; None = off
    fsync: bool = True  # fsync before confirming persistent messages (group commit)
    sync_interval: float = 0.0  # group-commit window in seconds; 0 = once per loop iteration
    disk_free_limit: int = 50 * 1000 * 1000  # bytes; below it publishers are blocked
    # Resident memory above which publishers are blocked: RabbitMQ's 0.4 of the machine's RAM.
    memory_high_watermark: int = field(default_factory=lambda: int(0.4 * physical_memory()))
    resource_check_interval: float = 1.0
    segment_limit: int = 64 * 1024 * 1024  # bytes per message-log segment file
    store_io: Any = None  # the store's system calls (fault-injection tests replace them)
    store_audit: bool = False  # check that every confirm covered fsynced records (tests)
