"""Tracing on real brokers: a command's W3C trace context goes in over MQTT, through the
store's outbox, and out on every AMQP event's headers, in the same trace.

The service traces through the SDK with an in-memory exporter (what `OTEL_TRACES_EXPORTER`
would configure, less the export), so the spans it made can be judged too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Final

import aio_pika
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import service.app
from service.adapters.amqp import EVENTS_EXCHANGE
from service.adapters.tracing import Tracing, from_provider
from tests.integration.conftest import (
    Listener,
    Publisher,
    Received,
    ServiceFactory,
    statuses,
    unique,
)

pytestmark = pytest.mark.brokers

TRACE_ID: Final = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID: Final = "b7ad6b7169203331"
TRACEPARENT: Final = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Services started in the test trace into this exporter (as if OTEL_* asked for it)."""
    exporter = InMemorySpanExporter()

    def tracing_from_env() -> Tracing:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return from_provider(provider)

    monkeypatch.setattr(service.app, "tracing_from_env", tracing_from_env)
    yield exporter
    exporter.clear()


async def a_listener(amqp: aio_pika.abc.AbstractChannel, job_id: str) -> Listener:
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(EVENTS_EXCHANGE, f"events/{job_id}")
    return Listener(amqp, queue)


def trace_id(received: Received) -> str:
    traceparent = received.message.headers["traceparent"]
    assert isinstance(traceparent, str), traceparent
    return traceparent[3:35]


def is_finished(received: Received) -> bool:
    return received.body.get("status") == "finished"


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_an_mqtt5_traceparent_is_on_every_event_of_its_job(
    start_service: ServiceFactory,
    amqp: aio_pika.abc.AbstractChannel,
    publisher: Publisher,
    exporter: InMemorySpanExporter,
    request: pytest.FixtureRequest,
    queue_id: str,
    store: str,
) -> None:
    overrides = {}
    if store == "postgres":
        overrides["database_url"] = request.getfixturevalue("postgres_url")
    job_id = unique("job")
    async with start_service(**overrides):
        listener = await a_listener(amqp, job_id)
        await publisher.raw(
            f"commands/{queue_id}",
            json.dumps({"jobId": job_id, "userId": "alice"}).encode(),
            user_properties={
                "x-message-type": "createPrintJob",
                "traceparent": TRACEPARENT,
                "tracestate": "vendor=opaque",
            },
        )
        events = await listener.until(is_finished)

    assert statuses(events) == ["created", "started", "finished"]
    for event in events:
        headers = event.message.headers
        traceparent = headers["traceparent"]
        assert isinstance(traceparent, str)
        assert traceparent.startswith(f"00-{TRACE_ID}-")
        assert traceparent[36:52] != PARENT_ID  # the service's publish span, the parent's child
        assert headers["tracestate"] == "vendor=opaque"
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == int(TRACE_ID, 16)]
    assert {s.name for s in spans} >= {"decode", "store", "print", "publish"}
    assert all(s.parent is not None and s.parent.span_id == int(PARENT_ID, 16) for s in spans)


async def test_an_envelopes_traceparent_and_a_malformed_one(
    start_service: ServiceFactory,
    amqp: aio_pika.abc.AbstractChannel,
    publisher: Publisher,
    exporter: InMemorySpanExporter,
    queue_id: str,
) -> None:
    traced, untraced = unique("job"), unique("job")
    async with start_service():
        listeners = [await a_listener(amqp, job_id) for job_id in (traced, untraced)]
        for job_id, traceparent in ((traced, TRACEPARENT), (untraced, "00-not-a-trace")):
            envelope = {
                "headers": {"x-message-type": "createPrintJob", "traceparent": traceparent},
                "payload": {"jobId": job_id},
            }
            await publisher.raw(f"commands/{queue_id}", json.dumps(envelope).encode(), v5=False)
        traced_events, untraced_events = [await lst.until(is_finished) for lst in listeners]

    assert {trace_id(e) for e in traced_events} == {TRACE_ID}
    # Accepted all the same, in a trace of its own (one for the whole job).
    assert statuses(untraced_events) == ["created", "started", "finished"]
    new_traces = {trace_id(e) for e in untraced_events}
    assert len(new_traces) == 1
    assert new_traces != {TRACE_ID}
    assert "tracestate" not in untraced_events[0].message.headers
