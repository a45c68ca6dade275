"""Fixtures shared by the integration and fault tests: the real brokers, found or started once."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from tests.integration.brokers import BrokerUnavailableError, amqp_broker, mqtt_broker


@dataclass(frozen=True)
class Brokers:
    mqtt_url: str
    amqp_url: str


@pytest.fixture(scope="session")
def brokers() -> Iterator[Brokers]:
    try:
        with mqtt_broker() as mqtt_url, amqp_broker() as amqp_url:
            yield Brokers(mqtt_url=mqtt_url, amqp_url=amqp_url)
    except BrokerUnavailableError as exc:
        pytest.fail(f"integration tests need real brokers: {exc}", pytrace=False)


def _postgres_server() -> str:
    return os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A DATABASE_URL on a fresh schema of the test PostgreSQL, dropped afterwards."""
    server = _postgres_server()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL tests need a server at {server} (set TEST_POSTGRES_URL): {exc}\n"
            "  start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            pytrace=False,
        )
    separator = "&" if "?" in server else "?"
    yield f"{server}{separator}options=-csearch_path%3D{schema}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
