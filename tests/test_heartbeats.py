"""Heartbeats: negotiated intervals keep idle clients alive and drop silent ones.

Observed on RabbitMQ 3.10.8 (and encoded below): with heartbeat=1 the server sends a
heartbeat frame every 0.5 s, and drops a peer that sends nothing after ~3 s, with no
connection.close frame (just EOF/RST). With heartbeat=0 nothing is sent and an idle peer
is kept.
"""

from __future__ import annotations

import contextlib
import time

import amqp
import pika
import pytest
from conftest import BrokerAddress
from rawamqp import FRAME_HEARTBEAT, RawClient, connect

IDLE_SECONDS = 3.0


@pytest.mark.timeout(20)
def test_pika_blocking_heartbeat_1_survives_idle(broker: BrokerAddress, unique: str) -> None:
    """pika with heartbeat=1 idles 3 s inside connection.sleep (which drives heartbeats)."""
    params = pika.URLParameters(broker.url)
    params.heartbeat = 1
    params.blocked_connection_timeout = None
    conn = pika.BlockingConnection(params)
    try:
        assert conn._impl.params.heartbeat == 1, "heartbeat 1 was not negotiated"
        ch = conn.channel()
        conn.sleep(IDLE_SECONDS)
        assert conn.is_open
        ok = ch.queue_declare(f"{unique}-hb", exclusive=True)
        assert ok.method.queue == f"{unique}-hb"
        ch.close()
    finally:
        if conn.is_open:
            conn.close()


@pytest.mark.timeout(20)
def test_py_amqp_heartbeat_1_survives_idle(broker: BrokerAddress, unique: str) -> None:
    """py-amqp with heartbeat=1 idles 3 s calling heartbeat_tick/drain_events.

    heartbeat_tick also raises ConnectionForced if the *server* sends no heartbeats for two
    intervals, so this checks the server side of the exchange too.
    """
    conn = amqp.Connection(
        host=f"{broker.host}:{broker.port}",
        userid="guest",
        password="guest",
        virtual_host="/",
        heartbeat=1,
        connect_timeout=10,
    )
    conn.connect()
    try:
        assert conn.heartbeat == 1
        ch = conn.channel()
        deadline = time.monotonic() + IDLE_SECONDS
        while time.monotonic() < deadline:
            conn.heartbeat_tick()
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.1)
        assert conn.connected
        name, _, _ = ch.queue_declare(f"{unique}-hb", exclusive=True)
        assert name == f"{unique}-hb"
        ch.close()
    finally:
        conn.close()


@pytest.mark.timeout(15)
def test_silent_peer_with_heartbeat_1_is_dropped(broker: BrokerAddress) -> None:
    """A raw client that negotiates heartbeat=1 and then goes silent is disconnected.

    agreed with RabbitMQ 3.10.8: heartbeats arrive every 0.5 s; EOF at ~3 s after tune-ok;
    no connection.close frame is sent first.
    """
    client = connect(broker.host, broker.port, heartbeat=1)
    try:
        start = time.monotonic()
        time.sleep(2.0)  # neither read nor write
        frames = client.expect_socket_closed(timeout=5.0)
        elapsed = time.monotonic() - start
        assert elapsed < 6.5, f"silent peer dropped only after {elapsed:.1f} s"
        assert frames, "server sent no heartbeat at all before dropping the peer"
        assert all(f.frame_type == FRAME_HEARTBEAT for f in frames), (
            f"only heartbeats expected before EOF, got {frames!r}"
        )
    finally:
        client.close_socket()


@pytest.mark.timeout(15)
def test_server_sends_heartbeats(broker: BrokerAddress) -> None:
    """With heartbeat=1 negotiated, the server sends heartbeat frames on channel 0."""
    client = connect(broker.host, broker.port, heartbeat=1)
    try:
        seen = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            client.send_heartbeat()
            try:
                f = client.read_frame(timeout=0.3)
            except TimeoutError:
                continue
            assert f.frame_type == FRAME_HEARTBEAT, f"unexpected {f!r}"
            assert f.channel == 0
            seen += 1
        assert seen >= 1, "no heartbeat from the server in 2 s"
        client.open_channel(1)  # we kept sending heartbeats, so we are still served
        client.close_connection()
    finally:
        client.close_socket()


@pytest.mark.timeout(15)
def test_heartbeat_0_silent_peer_is_kept(broker: BrokerAddress) -> None:
    """heartbeat=0 disables heartbeats: 3 s of silence, no frames, then channel.open works."""
    client = connect(broker.host, broker.port, heartbeat=0)
    try:
        client.expect_silence(IDLE_SECONDS)  # no heartbeats may arrive either
        client.open_channel(1)
        client.close_connection()
    finally:
        client.close_socket()


@pytest.mark.timeout(15)
def test_heartbeat_offer_is_accepted_when_client_echoes_it(broker: BrokerAddress) -> None:
    """A client that accepts the server's heartbeat offer (any value, here RabbitMQ's 60) works."""
    client = RawClient(broker.host, broker.port)
    try:
        client.handshake(heartbeat=None)
        assert client.heartbeat == client.server_heartbeat
        client.open_channel(1)
        client.close_connection()
    finally:
        client.close_socket()
