"""TLS to the brokers: one way to build it, for the service and for its clients.

The service and `service.client` read the same settings (`MQTT_CA_FILE`, `MQTT_CERT_FILE`,
`MQTT_KEY_FILE`, `AMQP_CA_FILE`, ...): a client that uses this module reaches every broker
the service reaches, a private CA and client certificates included.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from service.config import Settings

__all__ = ["amqp_ssl_context", "mqtt_ssl_context", "ssl_context"]


def ssl_context(
    *, ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A client context that verifies the server (against `ca_file`, else the system's CAs)
    and its host name, and presents `cert_file` (its key in `key_file`, or in the same file)
    when given. An unreadable or mismatched file raises OSError or ssl.SSLError here, at
    start, rather than at the first handshake."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


def mqtt_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The context for `MQTT_URL`: None unless it is `mqtts://`."""
    if not settings.mqtt.tls:
        return None
    return ssl_context(
        ca_file=settings.mqtt_ca_file,
        cert_file=settings.mqtt_cert_file,
        key_file=settings.mqtt_key_file,
    )


def amqp_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The context for `AMQP_URL`: None unless it is `amqps://`."""
    if not settings.amqp.tls:
        return None
    return ssl_context(
        ca_file=settings.amqp_ca_file,
        cert_file=settings.amqp_cert_file,
        key_file=settings.amqp_key_file,
    )
