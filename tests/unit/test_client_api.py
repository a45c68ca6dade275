"""The client's public surface, its constructor's checks and its exception tree."""

from __future__ import annotations

import inspect
import ssl
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

import service.client
from service.client import (
    ClientError,
    ConfigurationError,
    ConnectionFailed,
    PrintClient,
    Rejected,
    Timeout,
)
from service.config import Settings
from service.models import CommandRejected, FieldError, RejectionReason

PUBLIC_METHODS = {
    "submit",
    "cancel",
    "update",
    "move",
    "release",
    "status",
    "watch",
    "follow",
    "counts",
    "printer_statuses",
    "list_jobs",
    "job_pages",
    "all_jobs",
    "from_settings",
    "from_env",
}


def test_the_public_api_is_pinned():
    assert set(service.client.__all__) == {
        "ClientError",
        "ClientOptions",
        "ConfigurationError",
        "ConnectionFailed",
        "JobCommand",
        "JobEvents",
        "PrintClient",
        "Rejected",
        "Reply",
        "Timeout",
    }
    public = {name for name in vars(PrintClient) if not name.startswith("_")}
    assert public == PUBLIC_METHODS


def test_the_constructor_takes_keywords_only():
    parameters = inspect.signature(PrintClient).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)


def test_every_error_is_a_client_error():
    for error in (ConfigurationError, ConnectionFailed, Timeout, Rejected):
        assert issubclass(error, ClientError)
    assert issubclass(Timeout, TimeoutError), "`except TimeoutError` catches it too"
    assert issubclass(ConfigurationError, ValueError)


def test_a_rejection_says_why():
    rejection = CommandRejected(
        eventId=uuid.uuid4(),
        reason=RejectionReason.schema_violation,
        message="copies: too many",
        correlationId="corr-1",
        timestamp=datetime.now(UTC),
        jobId="job-1",
        errors=[FieldError(path="copies", message="at most 999")],
        retryAfter=None,
    )
    error = Rejected(rejection)
    assert str(error) == "schema_violation: copies: too many"
    assert error.reason is RejectionReason.schema_violation
    assert [e.path for e in error.errors] == ["copies"]
    assert (error.correlation_id, error.job_id, error.retry_after) == ("corr-1", "job-1", None)


def test_bad_arguments_are_all_refused_at_once(tmp_path):
    with pytest.raises(ConfigurationError) as caught:
        PrintClient(
            mqtt_url="http://broker",
            amqp_url="amqps://broker",
            queue="a/b",
            mqtt_version="4",  # type: ignore[arg-type]
            timeout=0,
            amqp_ca_file=tmp_path / "missing.pem",
        )
    message = str(caught.value)
    for says in ("mqtt_url: scheme", "queue: 'a/b'", "mqtt_version", "timeout", "amqp TLS files"):
        assert says in message, message


def test_a_tls_file_is_used_only_for_a_tls_broker(tmp_path):
    # As the service does: a CA file beside a plain URL is not read.
    PrintClient(mqtt_url="mqtt://broker", mqtt_ca_file=tmp_path / "absent.pem")


def test_the_api_key_is_never_shown():
    client = PrintClient(api_key="s3cret-key", queue="office")
    assert "s3cret" not in repr(client)
    assert "office" in repr(client)


def test_from_settings_takes_the_services_brokers_and_tls_files(tmp_path, monkeypatch):
    ca = _a_ca(tmp_path)
    settings = Settings(
        mqtt_url="mqtts://broker:8883",
        amqp_url="amqps://user:pw@broker/",
        mqtt_ca_file=ca,
        amqp_ca_file=ca,
        auth_disabled=True,
    )
    loaded: list[str | None] = []
    real = ssl.create_default_context

    def spy(*args, cafile=None, **kwargs):
        loaded.append(cafile)
        return real(*args, cafile=cafile, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", spy)
    client = PrintClient.from_settings(settings, queue="office", timeout=5)
    assert loaded == [str(ca), str(ca)], "one context per broker, each with the private CA"
    assert (client.queue, client.timeout) == ("office", 5)


def _a_ca(directory: Path) -> Path:
    key, cert = directory / "ca.key", directory / "ca.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=test-ca", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert
