"""The wire: MQTT 5 and 3.1.1 forms, gzip both ways, every AMQP property, and routing."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest

from service.app import Service
from service.models import PrintJobEvent
from tests.integration.conftest import (
    Listener,
    Publisher,
    ServiceFactory,
    decode,
    statuses,
    unique,
)
from tests.waits import wait_until_async

pytestmark = pytest.mark.brokers


async def created_event(listener: Listener, job_id: str):
    event = await listener.next()
    assert event.kind == "printJobEvent", event.body
    assert (event.body["jobId"], event.body["status"]) == (job_id, "created")
    return event


async def test_mqtt5_headers_and_correlation_data(
    service: Service, listener: Listener, publisher: Publisher, queue_id: str
):
    job_id = unique("job")
    await listener.bind_job(job_id)
    # No x-correlation-id property: the MQTT 5 correlation data is honoured instead.
    await publisher.raw(
        f"commands/{queue_id}",
        json.dumps({"jobId": job_id}).encode(),
        user_properties={"x-message-type": "createPrintJob"},
        correlation_data=b"from-correlation-data",
    )
    event = await created_event(listener, job_id)
    assert event.message.correlation_id == "from-correlation-data"


async def test_mqtt311_envelope(
    service: Service, listener: Listener, publisher: Publisher, queue_id: str
):
    job_id = unique("job")
    await listener.bind_job(job_id)
    envelope = {
        "headers": {"x-message-type": "createPrintJob", "x-correlation-id": "env-1"},
        "payload": {"jobId": job_id},
    }
    await publisher.raw(f"commands/{queue_id}", json.dumps(envelope).encode(), v5=False)
    event = await created_event(listener, job_id)
    assert event.message.correlation_id == "env-1"


async def test_mqtt311_bare_payloads_are_inferred_when_unambiguous(
    service: Service, listener: Listener, publisher: Publisher, queue_id: str
):
    job_id = unique("job")
    await listener.bind_job(job_id)
    bare_create = {"jobId": job_id, "userId": "carol"}
    await publisher.raw(f"commands/{queue_id}", json.dumps(bare_create).encode(), v5=False)
    event = await created_event(listener, job_id)
    assert uuid.UUID(event.message.correlation_id), "a correlation id is generated when absent"

    bare_cancel = {"jobId": job_id, "force": True}
    await publisher.raw(f"commands/{queue_id}", json.dumps(bare_cancel).encode(), v5=False)
    rest = await listener.until(lambda r: r.body.get("status") in ("canceled", "finished"))
    assert statuses(rest)[-1] in ("canceled", "finished")


async def test_gzip_commands_by_header_and_by_magic_bytes(
    service: Service, listener: Listener, publisher: Publisher, queue_id: str
):
    by_header, by_magic = unique("gz-header"), unique("gz-magic")
    await listener.bind_job(by_header)
    await listener.bind_job(by_magic)
    await publisher.raw(
        f"commands/{queue_id}",
        gzip.compress(json.dumps({"jobId": by_header}).encode()),
        user_properties={"x-message-type": "createPrintJob", "content-encoding": "gzip"},
    )
    await created_event(listener, by_header)
    envelope = {"headers": {"x-message-type": "createPrintJob"}, "payload": {"jobId": by_magic}}
    await publisher.raw(
        f"commands/{queue_id}", gzip.compress(json.dumps(envelope).encode()), v5=False
    )
    # by_header's started event may come in between.
    events = await listener.until(lambda r: r.body.get("jobId") == by_magic)
    assert events[-1].body["status"] == "created"


async def test_every_amqp_property_of_the_operation_binding(
    service: Service, listener: Listener, publisher: Publisher, queue_id: str, amqp
):
    # BCC is stripped by the broker before delivery: it shows only as a copy routed to it.
    audit = await amqp.declare_queue(exclusive=True, auto_delete=True)
    await audit.bind("print.events", "external.audit")
    cc_copy = await amqp.declare_queue(exclusive=True, auto_delete=True)
    await cc_copy.bind("print.events", "user.log")
    job_id = unique("job")
    await listener.bind_job(job_id)
    before = datetime.now(UTC).replace(microsecond=0)
    await publisher.create(queue_id, job_id, correlation_id="props-1")

    event = await created_event(listener, job_id)
    m = event.message
    assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert m.expiration == 60.0  # seconds; "60000" ms on the wire
    assert m.priority == 10
    assert m.headers["CC"] == ["user.log", "support.log"]
    assert "BCC" not in m.headers
    assert m.headers["x-correlation-id"] == "props-1"
    assert m.headers["x-message-type"] == "printJobEvent"
    assert m.reply_to == "user.reply"
    assert m.timestamp is not None
    assert before <= m.timestamp <= datetime.now(UTC) + timedelta(seconds=1)
    assert m.user_id == "guest"
    assert m.content_type == "application/json"
    assert m.content_encoding == "gzip"
    assert m.type == "printJobEvent"
    assert m.correlation_id == "props-1"
    assert m.app_id == "print-service"
    parsed = PrintJobEvent.model_validate(event.body)
    assert m.message_id == str(parsed.eventId)
    assert m.routing_key == f"events/{job_id}"

    audited = decode(await _get(audit))
    assert audited.body["eventId"] == event.body["eventId"]
    copied = decode(await _get(cc_copy))
    assert copied.body["eventId"] == event.body["eventId"]


async def test_event_gzip_can_be_turned_off(
    start_service: ServiceFactory, amqp, publisher: Publisher, queue_id: str
):
    async with start_service(event_gzip=False):
        queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
        job_id = unique("job")
        await queue.bind("print.events", f"events/{job_id}")
        await publisher.create(queue_id, job_id)
        message = await _get(queue)
        assert message.content_encoding in (None, "")
        assert json.loads(message.body)["status"] == "created"


async def test_one_job_route_alone_and_events_jobs_gets_all(
    service: Service, listener: Listener, publisher: Publisher, queue_id: str, amqp
):
    # Earlier tests (the fault tests publish tens of thousands of events) fill the durable
    # queue; empty it so that reading it back finds this test's events at once.
    shared = await amqp.declare_queue("events/jobs", passive=True)
    await shared.purge()
    followed, other = unique("followed"), unique("other")
    await listener.bind_job(followed)
    await publisher.create(queue_id, other)
    await publisher.create(queue_id, followed)

    events = await listener.until(lambda r: r.body.get("status") == "finished", timeout=10)
    assert {e.body["jobId"] for e in events} == {followed}

    # The durable queue of the contract receives every job's events.
    seen: set[tuple[str, str]] = set()
    while (message := await shared.get(no_ack=False, fail=False)) is not None:
        body = decode(message).body
        await message.ack()
        seen.add((body["jobId"], body["status"]))
        if {(followed, "created"), (other, "created")} <= seen:
            break
    assert {(followed, "created"), (other, "created")} <= seen


async def test_rejections_reach_the_durable_rejections_queue(
    service: Service, publisher: Publisher, queue_id: str, amqp
):
    shared = await amqp.declare_queue("events/rejections", passive=True)
    await shared.purge()  # what earlier tests left there would come first
    correlation_id = unique("corr")
    await publisher.raw(
        f"commands/{queue_id}", b"not json", user_properties={"x-correlation-id": correlation_id}
    )

    async def ours() -> dict[str, Any] | None:
        message = await shared.get(no_ack=False, fail=False)
        if message is None:
            return None
        await message.ack()
        candidate = decode(message).body
        return candidate if candidate["correlationId"] == correlation_id else None

    body = await wait_until_async(ours, what="the rejection on events/rejections")
    assert body["reason"] == "invalid_json"
    assert body["queueId"] == queue_id


async def _get(queue, timeout: float = 10.0):
    return await wait_until_async(
        lambda: queue.get(no_ack=True, fail=False),
        what=f"a message on {queue.name}",
        timeout=timeout,
    )


async def test_service_on_mqtt311_takes_envelopes(
    start_service: ServiceFactory, amqp, publisher: Publisher, queue_id: str
):
    # A 3.1.1 broker connection carries no user properties: the envelope carries the headers.
    async with start_service(mqtt_protocol="3.1.1"):
        queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
        listener = Listener(amqp, queue)
        job_id = unique("job")
        await listener.bind_job(job_id)
        envelope = {
            "headers": {"x-message-type": "createPrintJob", "x-correlation-id": "v311"},
            "payload": {"jobId": job_id},
        }
        await publisher.raw(f"commands/{queue_id}", json.dumps(envelope).encode(), v5=False)
        event = await created_event(listener, job_id)
        assert event.message.correlation_id == "v311"
