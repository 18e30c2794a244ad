"""The amqps listener: pika, aio-pika and py-amqp over TLS with certificates made here by
``openssl``, client certificates (verify_peer, fail_if_no_peer_cert) and the EXTERNAL
mechanism (the certificate's CN is the user name)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest

pytestmark = [pytest.mark.leveret_only, pytest.mark.timeout(60)]


@dataclass
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(directory: Path, name: str, subject: str, ca: str, extensions: str) -> None:
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", subject, cwd=directory)
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-sha256",
             "-extfile", f"{name}.ext", cwd=directory)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: cannot make test certificates")
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "2", "-subj", "/CN=Leveret test CA", cwd=d)
    _signed(d, "server", "/CN=localhost", "ca",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed(d, "client", "/O=tests/CN=tls-user", "ca", "extendedKeyUsage=clientAuth\n")
    return Certificates(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt",
                        d / "client.key")


def client_context(certs: Certificates, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if with_cert:
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


@pytest.fixture
def tls_broker(certs: Certificates, request: pytest.FixtureRequest) -> Iterator[Any]:
    from leveret.broker.embedded import EmbeddedBroker

    settings = getattr(request, "param", {})
    with EmbeddedBroker(port=0, tls_port=0, tls_cert=certs.server_cert,
                        tls_key=certs.server_key, tls_ca=certs.ca, **settings) as embedded:
        yield embedded


def pika_params(port: int, context: ssl.SSLContext, credentials: Any = None) -> Any:
    return pika.ConnectionParameters(
        "127.0.0.1", port, credentials=credentials or pika.PlainCredentials("guest", "guest"),
        ssl_options=pika.SSLOptions(context, "localhost"), connection_attempts=1)


def roundtrip_pika(params: Any, queue: str) -> bytes:
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        channel.queue_declare(queue, exclusive=True)
        channel.confirm_delivery()
        channel.basic_publish("", queue, b"over tls " * 1000)
        _method, _props, body = channel.basic_get(queue, auto_ack=True)
        return body
    finally:
        connection.close()


def test_pika_over_tls_and_plain_beside_it(tls_broker: Any, certs: Certificates) -> None:
    port = tls_broker.broker.tls_port
    assert roundtrip_pika(pika_params(port, client_context(certs)), "tls-q") == (
        b"over tls " * 1000)
    plain = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", tls_broker.port))
    plain.close()


def test_aio_pika_over_tls(tls_broker: Any, certs: Certificates) -> None:
    import aio_pika

    async def run() -> bytes:
        connection = await aio_pika.connect(
            f"amqps://guest:guest@localhost:{tls_broker.broker.tls_port}/",
            ssl_context=client_context(certs))
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("", exclusive=True)
            await channel.default_exchange.publish(aio_pika.Message(b"aio"), queue.name)
            message = await queue.get(timeout=5)
            await message.ack()
            return message.body

    assert asyncio.run(run()) == b"aio"


def test_py_amqp_over_tls(tls_broker: Any, certs: Certificates) -> None:
    import amqp

    # py-amqp takes wrap_socket options (what kombu's and Celery's broker_use_ssl pass on)
    connection = amqp.Connection(f"localhost:{tls_broker.broker.tls_port}", ssl={
        "ca_certs": str(certs.ca), "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": "localhost"}, connect_timeout=5)
    connection.connect()
    try:
        channel = connection.channel()
        channel.queue_declare("amqp-tls", exclusive=True)
        channel.basic_publish(amqp.Message(b"py-amqp"), routing_key="amqp-tls")
        message = channel.basic_get("amqp-tls", no_ack=True)
        assert message.body == b"py-amqp"
    finally:
        connection.close()


def test_a_client_certificate_is_checked_when_sent(tls_broker: Any, certs: Certificates,
                                                   tmp_path: Path) -> None:
    port = tls_broker.broker.tls_port
    # a valid client certificate is accepted (PLAIN login still decides the user)
    assert roundtrip_pika(pika_params(port, client_context(certs, with_cert=True)), "q1")
    # a certificate from another CA is refused during the TLS handshake
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out",
             "rogue.crt", "-days", "2", "-subj", "/CN=tls-user", cwd=tmp_path)
    rogue = client_context(certs)
    rogue.load_cert_chain(str(tmp_path / "rogue.crt"), str(tmp_path / "rogue.key"))
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika_params(port, rogue))


@pytest.mark.parametrize("tls_broker", [{"tls_fail_if_no_peer_cert": True}], indirect=True)
def test_fail_if_no_peer_cert_refuses_clients_without_one(tls_broker: Any,
                                                          certs: Certificates) -> None:
    port = tls_broker.broker.tls_port
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika_params(port, client_context(certs)))
    assert roundtrip_pika(pika_params(port, client_context(certs, with_cert=True)), "q2")


@pytest.mark.parametrize("tls_broker", [{
    "auth_mechanisms": ("PLAIN", "AMQPLAIN", "EXTERNAL"),
    "users": {"guest": "guest", "tls-user": {"tags": ["management"]}},
}], indirect=True)
def test_external_login_with_the_certificate_cn(tls_broker: Any, certs: Certificates) -> None:
    port = tls_broker.broker.tls_port
    external = pika.credentials.ExternalCredentials()
    body = roundtrip_pika(pika_params(port, client_context(certs, with_cert=True), external),
                          "ext-q")
    assert body
    # without a certificate EXTERNAL has no user: refused as a failed login
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika_params(port, client_context(certs), external))
    # EXTERNAL is not offered on the plain listener
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", tls_broker.port, credentials=external, connection_attempts=1))


def test_tls_below_1_2_is_refused(tls_broker: Any, certs: Certificates) -> None:
    context = client_context(certs)
    try:
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError) as error:
        pytest.skip(f"this OpenSSL cannot offer TLS 1.1 at all: {error}")
    import socket

    port = tls_broker.broker.tls_port
    with (socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
          pytest.raises((ssl.SSLError, ConnectionResetError))):
        context.wrap_socket(raw, server_hostname="localhost")


def test_large_bodies_over_tls_arrive_byte_for_byte(tls_broker: Any,
                                                   certs: Certificates) -> None:
    """Bodies of many frames come through TLS's buffered reads into their place intact."""
    bodies = [bytes(range(256)) * (size // 256) + b"end" for size in (70_000, 300_000, 1 << 20)]
    connection = pika.BlockingConnection(pika_params(tls_broker.broker.tls_port,
                                                     client_context(certs)))
    try:
        channel = connection.channel()
        channel.queue_declare("tls-large", exclusive=True)
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", "tls-large", body)
        got = [channel.basic_get("tls-large", auto_ack=True)[2] for _ in bodies]
        assert got == bodies
    finally:
        connection.close()
