"""Every kind of bad input: answered on the rejections route with the sender's correlation id
and a machine-readable reason, logged, counted, and the next good command still works."""

from __future__ import annotations

import gzip
import json
import os

import pytest
import structlog
from structlog.testing import capture_logs

from service.app import Service
from tests.integration.conftest import (
    Listener,
    Publisher,
    ServiceFactory,
    counter,
    eventually,
    unique,
)

pytestmark = pytest.mark.brokers

CREATE = {"x-message-type": "createPrintJob"}

# (name, payload, user properties, expected reason)
BAD_INPUTS = [
    ("invalid JSON", b'{"jobId": ', CREATE, "invalid_json"),
    ("JSON that is not an object", b'["jobId"]', CREATE, "invalid_json"),
    ("wrong types", b'{"jobId": 42, "userId": ["x"]}', CREATE, "schema_violation"),
    ("missing jobId", b'{"userId": "dave"}', CREATE, "schema_violation"),
    ("unknown enum", b'{"jobId": "j-enum", "priority": "urgent"}', CREATE, "schema_violation"),
    ("unknown field", b'{"jobId": "j-extra", "colour": 2}', CREATE, "schema_violation"),
    ("ambiguous bare payload", b'{"jobId": "j-amb"}', {}, "ambiguous_command"),
    (
        "bare payload with create and cancel fields",
        b'{"jobId": "j", "force": true, "userId": "u"}',
        {},
        "ambiguous_command",
    ),
    (
        "unknown message type",
        b'{"jobId": "j-type"}',
        {"x-message-type": "deletePrintJob"},
        "unknown_message_type",
    ),
    ("over-size", b'{"jobId": "' + b"x" * 70_000 + b'"}', CREATE, "payload_too_large"),
    ("corrupt gzip", b"\x1f\x8b\x08\x00garbage-not-deflate", CREATE, "invalid_encoding"),
    ("gzip bomb", gzip.compress(b"{" + b" " * 20_000_000 + b"}"), CREATE, "payload_too_large"),
    ("invalid UTF-8", b'{"jobId": "\xff\xfe"}', CREATE, "invalid_encoding"),
    (
        "unsupported content-encoding",
        b'{"jobId": "j"}',
        {**CREATE, "content-encoding": "br"},
        "invalid_encoding",
    ),
    ("invalid jobId for a routing key", b'{"jobId": "a#b"}', CREATE, "schema_violation"),
]


@pytest.fixture
async def strict_service(start_service: ServiceFactory):
    async with start_service(max_message_bytes=65_536, max_decompressed_bytes=1_048_576) as s:
        yield s


@pytest.fixture
async def strict_listener(strict_service: Service, amqp, queue_id: str) -> Listener:
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind("print.rejections", f"rejections/{queue_id}")
    return Listener(amqp, queue)


@pytest.mark.parametrize(
    ("payload", "properties", "reason"),
    [pytest.param(p, props, r, id=name) for name, p, props, r in BAD_INPUTS],
)
async def test_bad_input_is_rejected_and_the_next_command_works(
    strict_service: Service,
    strict_listener: Listener,
    publisher: Publisher,
    queue_id: str,
    payload: bytes,
    properties: dict[str, str],
    reason: str,
):
    correlation_id = unique("bad")
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await publisher.raw(
            f"commands/{queue_id}",
            payload,
            user_properties={**properties, "x-correlation-id": correlation_id},
        )
        rejected = await strict_listener.next()
    assert rejected.kind == "commandRejected"
    assert rejected.body["reason"] == reason, rejected.body["message"]
    assert rejected.body["correlationId"] == correlation_id
    assert rejected.message.correlation_id == correlation_id
    assert rejected.body["queueId"] == queue_id
    assert rejected.body["message"]
    assert rejected.message.routing_key == f"rejections/{queue_id}"
    logged = [e for e in logs if e["event"] == "command_rejected"]
    assert [(e["reason"], e["correlation_id"], e["log_level"]) for e in logged] == [
        (reason, correlation_id, "warning")
    ]
    assert await eventually(lambda: counter(strict_service, "print_rejections_total", reason) == 1)

    good = unique("good")
    await strict_listener.bind_job(good)
    await publisher.create(queue_id, good)
    event = await strict_listener.next()
    assert (event.body["jobId"], event.body["status"]) == (good, "created")


async def test_schema_violation_lists_every_bad_field(
    service: Service, listener: Listener, publisher: Publisher, queue_id: str
):
    await publisher.raw(
        f"commands/{queue_id}",
        json.dumps({"jobId": 7, "priority": "urgent"}).encode(),
        user_properties=CREATE,
    )
    rejected = await listener.next()
    assert {e["path"] for e in rejected.body["errors"]} == {"jobId", "priority"}
    assert rejected.body["messageType"] == "createPrintJob"


async def test_api_keys(start_service: ServiceFactory, amqp, publisher: Publisher, queue_id: str):
    key = os.urandom(8).hex()
    async with start_service(api_keys=frozenset({key, "other-key"})):
        queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind("print.rejections", f"rejections/{queue_id}")
        listener = Listener(amqp, queue)
        job_id = unique("job")
        await listener.bind_job(job_id)

        await publisher.command(queue_id, "createPrintJob", {"jobId": job_id}, api_key="wrong")
        wrong = await listener.next()
        assert (wrong.body["reason"], wrong.body["message"]) == (
            "unauthorized",
            "x-api-key is not valid",
        )
        await publisher.command(queue_id, "createPrintJob", {"jobId": job_id})
        missing = await listener.next()
        assert (missing.body["reason"], missing.body["message"]) == (
            "unauthorized",
            "x-api-key is missing",
        )
        await publisher.command(queue_id, "createPrintJob", {"jobId": job_id}, api_key=key)
        created = await listener.next()
        assert (created.body["jobId"], created.body["status"]) == (job_id, "created")
