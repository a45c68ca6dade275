"""Tracing through the whole application layer (the harness), with the SDK's in-memory
exporter: which spans a command makes, whose children they are, what the events carry; and
the configuration from OpenTelemetry's own variables."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Final

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.adapters.amqp_properties import PropertyEncoder
from service.adapters.store.rows import (
    job_from_row,
    job_row,
    outbox_row,
    outgoing_from_row,
)
from service.adapters.tracing import OtelTracer, Tracing, from_provider, tracing_from_env
from service.config import ConfigError
from service.core.events import Kind, Outgoing
from service.core.tracecontext import TraceContext
from service.models import JobStatus, MessageType
from service.ports import NO_TRACING
from tests.harness.harness import Harness
from tests.unit.test_amqp_properties import decode_properties

QUEUE: Final = "queue-1"
TRACE_ID: Final = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID: Final = "00f067aa0ba902b7"
TRACEPARENT: Final = f"00-{TRACE_ID}-{PARENT_ID}-01"
CREATE: Final = MessageType.createPrintJob


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = from_provider(provider)
    yield tracing
    tracing.shutdown()


def a_create(job_id: str) -> dict[str, object]:
    return {"jobId": job_id, "userId": "alice", "title": "report"}


async def print_job(service: Harness, job_id: str, properties: dict[str, str]) -> None:
    await service.send(a_create(job_id), queue_id=QUEUE, message_type=CREATE, properties=properties)
    await service.until_status(job_id, JobStatus.finished)
    await service.drained()


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


async def test_every_span_of_a_command_is_a_child_of_its_traceparent(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async with Harness(tracer=tracing.tracer) as service:
        await print_job(service, "job-1", {"traceparent": TRACEPARENT, "tracestate": "v=1"})

    spans = by_name(exporter.get_finished_spans())
    assert {name: len(found) for name, found in spans.items()} == {
        "decode": 1,
        "store": 1,
        "print": 1,
        "publish": 3,  # created, started, finished
    }
    for span in (s for found in spans.values() for s in found):
        assert hex_ids(span)[0] == TRACE_ID, span.name
        assert parent_id(span) == PARENT_ID, span.name
        assert span.parent is not None
        assert span.parent.is_remote
        assert span.status.status_code is not StatusCode.ERROR, span.name
    assert spans["decode"][0].kind is SpanKind.CONSUMER
    assert all(s.kind is SpanKind.PRODUCER for s in spans["publish"])
    assert spans["print"][0].attributes is not None
    assert spans["print"][0].attributes["print.job_id"] == "job-1"

    # Each event carries its own publish span's context, and the sender's tracestate.
    published = service.publisher.published
    assert [m.label for m in published] == ["created", "started", "finished"]
    publish_ids = {hex_ids(s)[1] for s in spans["publish"]}
    for message in published:
        assert message.trace is not None
        assert message.trace.trace_id == TRACE_ID
        assert message.trace.tracestate == "v=1"
        assert message.trace.span_id in publish_ids
    assert len({m.trace.span_id for m in published if m.trace}) == 3


async def test_a_command_without_a_traceparent_starts_a_trace_at_its_decode(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async with Harness(tracer=tracing.tracer) as service:
        await print_job(service, "job-1", {})

    spans = by_name(exporter.get_finished_spans())
    (decode,) = spans["decode"]
    assert decode.parent is None
    trace_id, decode_id = hex_ids(decode)
    for name in ("store", "print", "publish"):
        for span in spans[name]:
            assert hex_ids(span)[0] == trace_id, name
            assert parent_id(span) == decode_id, name
    assert service.metric("print_trace_context_invalid_total") == 0


@pytest.mark.parametrize(
    "bad", ["00-zz", TRACEPARENT.upper(), f"00-{'0' * 32}-{PARENT_ID}-01", "y" * 5000]
)
async def test_a_malformed_traceparent_starts_a_new_trace_and_is_counted(
    tracing: Tracing, exporter: InMemorySpanExporter, bad: str
) -> None:
    async with Harness(tracer=tracing.tracer) as service:
        await print_job(service, "job-1", {"traceparent": bad})

    assert [e.status for e in service.events("job-1")][-1] is JobStatus.finished
    assert service.rejections() == []
    spans = by_name(exporter.get_finished_spans())
    (decode,) = spans["decode"]
    assert decode.parent is None
    assert hex_ids(decode)[0] != TRACE_ID
    assert service.metric("print_trace_context_invalid_total") == 1


async def test_a_rejection_is_published_in_the_commands_trace(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async with Harness(tracer=tracing.tracer) as service:
        await service.send(
            {"jobId": "nope"},
            queue_id=QUEUE,
            message_type=MessageType.cancelPrintJob,
            properties={"traceparent": TRACEPARENT},
        )
        await service.drained()

    (rejection,) = service.publisher.published
    assert rejection.kind is Kind.rejection
    assert rejection.trace is not None
    assert rejection.trace.trace_id == TRACE_ID
    assert set(by_name(exporter.get_finished_spans())) == {"decode", "store", "publish"}


async def test_a_release_and_a_wrong_pin_are_published_in_their_commands_trace(
    tracing: Tracing,
) -> None:
    release_trace = "0123456789abcdef0123456789abcdef"
    release = MessageType.releasePrintJob
    async with Harness(tracer=tracing.tracer, pin_attempts=1) as service:
        for job_id in ("held-1", "held-2"):
            await service.send(
                {**a_create(job_id), "hold": "indefinite", "releasePin": "2468"},
                queue_id=QUEUE,
                message_type=CREATE,
                properties={"traceparent": TRACEPARENT},
            )
        headers = {"traceparent": f"00-{release_trace}-{PARENT_ID}-01"}
        await service.send(
            {"jobId": "held-1", "pin": "2468"},
            queue_id=QUEUE,
            message_type=release,
            properties=headers,
        )
        await service.send(
            {"jobId": "held-2", "pin": "0000"},  # the last attempt: canceled
            queue_id=QUEUE,
            message_type=release,
            properties=headers,
        )
        await service.until_status("held-1", JobStatus.finished)
        await service.drained()

    answers = {
        (m.order_key, m.label): m.trace
        for m in service.publisher.published
        if m.kind is Kind.job_event and m.label in ("created", "canceled")
    }
    for answer in (("held-1", "created"), ("held-2", "canceled")):
        trace = answers[answer]
        assert trace is not None, answer
        assert trace.trace_id == release_trace, answer


async def test_a_failed_publish_is_an_error_span_and_the_retry_another(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async with Harness(tracer=tracing.tracer) as service:
        service.publisher.unconfirmed = 1  # the first publish's confirm is lost
        await service.send(
            {"jobId": "j"},
            queue_id=QUEUE,
            message_type=MessageType.getPrintJobStatus,
            properties={"traceparent": TRACEPARENT},
        )
        await service.drained()

    publishes = by_name(exporter.get_finished_spans())["publish"]
    assert [s.status.status_code for s in publishes] == [StatusCode.ERROR, StatusCode.UNSET]
    assert all(hex_ids(s)[0] == TRACE_ID for s in publishes)


async def test_with_tracing_off_nothing_is_carried() -> None:
    async with Harness(tracer=NO_TRACING) as service:
        await print_job(service, "job-1", {"traceparent": TRACEPARENT})
    assert all(m.trace is None for m in service.publisher.published)
    job = service.store.job("job-1")
    assert job is not None
    assert job.trace is None


# --- what carries the context: the AMQP headers, the outbox and job rows ---------------------


def an_outgoing(trace: TraceContext | None) -> Outgoing:
    return Outgoing(
        message_id="m-1",
        kind=Kind.job_event,
        routing_key="events/j",
        order_key="j",
        body=b"{}",
        correlation_id="c",
        label="created",
        received_at=None,
        trace=trace,
    )


def amqp_headers(message: Outgoing) -> dict[str, object]:
    encoded = PropertyEncoder(user_id="guest", gzip=False).encode(message)
    headers = decode_properties(encoded).headers
    assert headers is not None
    return dict(headers)


def test_the_amqp_headers_carry_the_trace_context() -> None:
    headers = amqp_headers(an_outgoing(TraceContext(TRACEPARENT, "k=v")))
    assert headers["traceparent"] == TRACEPARENT
    assert headers["tracestate"] == "k=v"

    headers = amqp_headers(an_outgoing(TraceContext(TRACEPARENT)))
    assert "tracestate" not in headers

    headers = amqp_headers(an_outgoing(None))
    assert "traceparent" not in headers


def test_a_bad_stored_context_costs_the_trace_not_the_event() -> None:
    headers = amqp_headers(an_outgoing(TraceContext("garbage")))
    assert "traceparent" not in headers
    assert headers["x-correlation-id"] == "c"


@pytest.mark.parametrize(
    "trace", [None, TraceContext(TRACEPARENT), TraceContext(TRACEPARENT, "a=b")]
)
def test_an_outbox_row_keeps_the_trace_context(trace: TraceContext | None) -> None:
    row = outbox_row(an_outgoing(trace), 12.5, "lane-1")
    assert outgoing_from_row((1, *row)) == an_outgoing(trace)
    assert outgoing_from_row((1, *row[:-4], "garbage", "a=b", 12.5, "lane-1")).trace is None


async def test_a_job_row_keeps_the_trace_context_for_its_print(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async with Harness(tracer=tracing.tracer) as service:
        await service.send(
            a_create("job-1"),
            queue_id=QUEUE,
            message_type=CREATE,
            properties={"traceparent": TRACEPARENT, "tracestate": "a=b"},
        )
        job = service.store.job("job-1")
    assert job is not None
    assert job.trace == TraceContext(TRACEPARENT, "a=b")
    assert job_from_row(job_row(job, lambda at: at.isoformat())).trace == job.trace


# --- configuration -----------------------------------------------------------------------------


OTEL_VARIABLES: Final = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def resource_of(tracing: Tracing) -> dict[str, object]:
    assert isinstance(tracing.tracer, OtelTracer)
    provider = tracing.tracer._tracer.resource  # type: ignore[attr-defined]
    return dict(provider.attributes)


@pytest.mark.parametrize(
    "variables",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_SERVICE_NAME": "printing"},  # a name alone asks for no traces
    ],
)
def test_tracing_is_off_unless_configured(env: pytest.MonkeyPatch, variables: dict[str, str]):
    for name, value in variables.items():
        env.setenv(name, value)
    assert tracing_from_env().tracer is NO_TRACING


@pytest.mark.parametrize(
    "variables",
    [
        {"OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"},
        {"OTEL_TRACES_EXPORTER": "console,otlp"},
    ],
)
def test_an_exporter_or_an_endpoint_turns_it_on(
    env: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        env.setenv(name, value)
    tracing = tracing_from_env()
    try:
        assert tracing.tracer.enabled
        assert resource_of(tracing)["service.name"] == "print-service"
    finally:
        tracing.shutdown()


def test_the_service_name_is_opentelemetrys(env: pytest.MonkeyPatch) -> None:
    env.setenv("OTEL_TRACES_EXPORTER", "console")
    env.setenv("OTEL_SERVICE_NAME", "print-service-eu")
    env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    tracing = tracing_from_env()
    try:
        resource = resource_of(tracing)
        assert resource["service.name"] == "print-service-eu"
        assert resource["deployment.environment"] == "test"
    finally:
        tracing.shutdown()


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "zipkin is not one of otlp, console, none"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "'http/json' is not one of http/protobuf, grpc",
        ),
    ],
)
def test_a_setting_it_cannot_honour_fails_the_start(
    env: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        tracing_from_env()


def test_configured_without_the_sdk_fails_the_start_saying_what_to_install(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    env.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs the OpenTelemetry SDK.*print-service\[tracing\]"):
        tracing_from_env()


def test_an_exporter_not_installed_fails_the_start_naming_its_package(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    env.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp-proto-grpc"):
        tracing_from_env()
