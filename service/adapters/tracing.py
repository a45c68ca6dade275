"""OpenTelemetry behind the `Tracer` port, configured the way OpenTelemetry configures itself.

Off unless configured: with no `OTEL_*` setting that asks for traces, the service uses
`NO_TRACING` and pays nothing. On with `OTEL_TRACES_EXPORTER` (`otlp`, `console`, or both,
comma-separated; `none`: off), or with an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and no exporter named. `OTEL_SDK_DISABLED=true` turns
it off whatever else is set. The SDK reads the rest itself: `OTEL_SERVICE_NAME` and
`OTEL_RESOURCE_ATTRIBUTES` (the service name defaults to `print-service`),
`OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`, and the OTLP exporter's endpoint, headers,
timeout and protocol (`http/protobuf` by default; `grpc` needs its exporter installed).

Only the API is a dependency of the service; the SDK and the OTLP exporter are the
`tracing` extra. Asking for traces without them is a `ConfigError` at start, not a
silence. The provider is the service's own, not the global one: two services in one
process (the tests) each keep theirs.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags, TraceState

from service.config import ConfigError
from service.core.tracecontext import TraceContext
from service.ports import NO_TRACING, Span, SpanAttributes, SpanKind, Tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

__all__ = ["INSTRUMENTATION", "OtelTracer", "Tracing", "from_provider", "tracing_from_env"]

INSTRUMENTATION: Final = "print-service"
DEFAULT_SERVICE_NAME: Final = "print-service"
_INSTALL: Final = "install the tracing extra: pip install 'print-service[tracing]'"
_KINDS: Final = {
    "internal": otel_trace.SpanKind.INTERNAL,
    "consumer": otel_trace.SpanKind.CONSUMER,
    "producer": otel_trace.SpanKind.PRODUCER,
}


class _OtelSpan:
    __slots__ = ("_span",)

    def __init__(self, span: otel_trace.Span) -> None:
        self._span = span

    @property
    def context(self) -> TraceContext | None:
        found = self._span.get_span_context()
        if not found.is_valid:
            return None
        traceparent = f"00-{found.trace_id:032x}-{found.span_id:016x}-{int(found.trace_flags):02x}"
        return TraceContext(traceparent, found.trace_state.to_header() or None)

    def end(self, *, error: BaseException | None = None) -> None:
        if error is not None:
            self._span.record_exception(error)
            self._span.set_status(StatusCode.ERROR, type(error).__name__)
        self._span.end()


class OtelTracer:
    """The port over an OpenTelemetry tracer; parents come as W3C contexts, not as the
    ambient context (a batch holds commands of many traces)."""

    enabled: Final = True

    def __init__(self, *, tracer: otel_trace.Tracer) -> None:
        self._tracer = tracer

    def start(
        self,
        name: str,
        *,
        parent: TraceContext | None,
        kind: SpanKind = "internal",
        start_ns: int | None = None,
        attributes: SpanAttributes | None = None,
    ) -> Span:
        span = self._tracer.start_span(
            name,
            context=_context_of(parent),
            kind=_KINDS[kind],
            attributes=attributes,
            start_time=start_ns,
        )
        return _OtelSpan(span)


def _context_of(parent: TraceContext | None) -> otel_context.Context:
    """The OpenTelemetry context with `parent` as the remote parent; an empty one (a new
    trace, never the ambient span) without it. `parent` was checked by the core."""
    empty = otel_context.Context()
    if parent is None:
        return empty
    traceparent = parent.traceparent
    state = TraceState.from_header([parent.tracestate]) if parent.tracestate else None
    remote = SpanContext(
        trace_id=int(traceparent[3:35], 16),
        span_id=int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(traceparent[53:55], 16) & TraceFlags.SAMPLED),
        trace_state=state,
    )
    return otel_trace.set_span_in_context(NonRecordingSpan(remote), empty)


@dataclass(frozen=True, slots=True)
class Tracing:
    """What the service traces with, and how to flush what is left at its stop."""

    tracer: Tracer
    shutdown: Callable[[], None] = lambda: None


def tracing_from_env(environ: Mapping[str, str] | None = None) -> Tracing:
    """The tracing the `OTEL_*` variables ask for (see the module's docstring), or a
    ConfigError saying what is wrong or missing."""
    env = os.environ if environ is None else environ
    exporters = _exporters(env)
    if not exporters:
        return Tracing(NO_TRACING)
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={','.join(exporters)} needs the OpenTelemetry SDK: {_INSTALL}"
        ) from None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    for name in exporters:
        provider.add_span_processor(_processor(name, env))
    return from_provider(provider)


def from_provider(provider: TracerProvider) -> Tracing:
    """Tracing through `provider` (the tests give one with an in-memory exporter)."""
    return Tracing(
        OtelTracer(tracer=provider.get_tracer(INSTRUMENTATION)), shutdown=provider.shutdown
    )


def _exporters(env: Mapping[str, str]) -> list[str]:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    exporters = [name.strip() for name in named.split(",") if name.strip()]
    if exporters == ["none"]:
        return []
    unknown = sorted(set(exporters) - {"otlp", "console"})
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not one of otlp, console, none"
        )
    return list(dict.fromkeys(exporters))


def _processor(name: str, env: Mapping[str, str]) -> SpanProcessor:
    # Imported only once the SDK is known to be there.
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        ConsoleSpanExporter,
    )

    if name == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    modules = {
        "http/protobuf": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "grpc": "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    }
    if protocol not in modules:
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not one of {', '.join(modules)}"
        )
    try:
        exporter = importlib.import_module(modules[protocol]).OTLPSpanExporter
    except ImportError:
        package = "opentelemetry-exporter-otlp-proto-" + ("grpc" if protocol == "grpc" else "http")
        extra = "" if protocol == "grpc" else f", or {_INSTALL}"
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER=otlp ({protocol}) needs {package}: pip install {package}{extra}"
        ) from None
    # The exporter reads its endpoint, headers, timeout and compression from OTEL_*.
    return BatchSpanProcessor(exporter())
