"""The names the CLI picks fit the shipped permissions of a tenant."""

from __future__ import annotations

import re

import pytest

from service.cli import _events_queue_name, _new_job_id
from service.config import Settings


@pytest.mark.parametrize(
    ("amqp_url", "expected"),
    [
        ("amqp://acme:secret@broker/", r"tenants/acme/cli\.[0-9a-f-]{36}"),
        ("amqp://guest:guest@broker/", ""),
        ("amqp://print-service:secret@broker/", ""),
        ("amqp://broker/", ""),
    ],
)
def test_a_tenant_follows_events_through_a_queue_it_may_declare(
    amqp_url: str, expected: str
) -> None:
    name = _events_queue_name(Settings(amqp_url=amqp_url, auth_disabled=True))
    assert re.fullmatch(expected, name), name


def test_a_new_job_on_a_tenants_queue_is_named_as_the_tenants() -> None:
    assert re.fullmatch(r"acme\.[0-9a-f-]{36}", _new_job_id("acme.office"))
    assert re.fullmatch(r"[0-9a-f-]{36}", _new_job_id("office"))
    assert re.fullmatch(r"[0-9a-f-]{36}", _new_job_id(".odd"))
