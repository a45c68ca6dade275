"""Fixtures shared by the integration and fault tests: the real brokers, found or started once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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
