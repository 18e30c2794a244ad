"""The amqps listener's TLS context, with RabbitMQ's option names and defaults, and the user
name a client certificate gives (for the EXTERNAL mechanism)."""

from __future__ import annotations

import ssl
from typing import Any

from leveret.broker.config import BrokerConfig


def server_context(config: BrokerConfig) -> ssl.SSLContext:
    """TLS 1.2+ with the broker's certificate; with a CA, client certificates are checked
    when sent (``verify_peer``) and demanded only with ``fail_if_no_peer_cert``."""
    if config.tls_cert is None or config.tls_key is None:
        raise ValueError("a TLS listener needs tls_cert and tls_key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    if config.tls_ca is not None:
        context.load_verify_locations(cafile=str(config.tls_ca))
        if config.tls_fail_if_no_peer_cert:
            context.verify_mode = ssl.CERT_REQUIRED
        elif config.tls_verify_peer:
            context.verify_mode = ssl.CERT_OPTIONAL
    elif config.tls_fail_if_no_peer_cert:
        raise ValueError("tls_fail_if_no_peer_cert needs tls_ca to check certificates against")
    return context


def common_name(peer_certificate: dict[str, Any] | None) -> str | None:
    """The CN of a verified client certificate (``SSLObject.getpeercert()``), or None."""
    if not peer_certificate:
        return None
    for rdn in peer_certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
