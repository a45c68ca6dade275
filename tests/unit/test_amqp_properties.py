"""The hand-encoded AMQP properties are pamqp's bytes for the contract's operation binding,
for any message, and refuse what EventHeaders refuses, before anything is sent."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pamqp.commands import Basic
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from service.adapters.amqp import AmqpPublisher
from service.adapters.amqp_properties import (
    APP_ID,
    BCC,
    CC,
    CONTENT_TYPE,
    MESSAGE_TTL_S,
    PRIORITY,
    REPLY_TO,
    PropertyEncoder,
)
from service.config import BrokerUrl, ConfigError
from service.core.events import Kind, Outgoing
from service.core.tracecontext import TraceContext, trace_context
from service.metrics import Metrics
from service.models import EventHeaders, XMessageType

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def decode_properties(encoded: bytes) -> Basic.Properties:
    """Encoded properties read back by pamqp, as a consumer's client would."""
    (flags,) = struct.unpack(">H", encoded[:2])
    properties = Basic.Properties()
    properties.unmarshal(flags, encoded[2:])
    return properties


def outgoing(
    *,
    correlation_id: str = "c-1",
    message_id: str = "m-1",
    kind: Kind = Kind.job_event,
    trace: TraceContext | None = None,
) -> Outgoing:
    return Outgoing(
        message_id=message_id,
        kind=kind,
        routing_key="events/j",
        order_key="j",
        body=b"{}",
        correlation_id=correlation_id,
        label="created",
        received_at=None,
        trace=trace,
    )


def pamqp_encoding(message: Outgoing, *, user_id: str, gzip: bool, now: float) -> bytes:
    """The oracle: the same properties through pamqp's generic encoder."""
    headers: dict[str, object] = {
        "CC": list(CC),
        "BCC": list(BCC),
        "x-correlation-id": message.correlation_id,
        "x-message-type": XMessageType(message.kind.value).value,
    }
    trace = message.trace and trace_context(message.trace.traceparent, message.trace.tracestate)
    if trace:
        headers["traceparent"] = trace.traceparent
        if trace.tracestate is not None:
            headers["tracestate"] = trace.tracestate
    return Basic.Properties(
        content_type=CONTENT_TYPE,
        content_encoding="gzip" if gzip else None,
        headers=headers,  # type: ignore[arg-type]
        delivery_mode=2,
        priority=PRIORITY,
        correlation_id=message.correlation_id,
        reply_to=REPLY_TO,
        expiration=str(MESSAGE_TTL_S * 1000),
        message_id=message.message_id,
        timestamp=datetime.fromtimestamp(now, UTC),
        message_type=message.kind.value,
        user_id=user_id,
        app_id=APP_ID,
    ).marshal()


printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=255)
traces = st.one_of(
    st.none(),
    st.builds(TraceContext, st.just(TRACEPARENT), st.one_of(st.none(), st.just("k=v,a=b"))),
    st.builds(TraceContext, st.text(max_size=60), st.one_of(st.none(), st.text(max_size=40))),
)


@given(
    correlation_id=printable,
    message_id=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60),
    kind=st.sampled_from(Kind),
    trace=traces,
    user_id=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60),
    gzip=st.booleans(),
    now=st.floats(min_value=0, max_value=2**34, allow_nan=False),
)
@example("c", "m", Kind.rejection, TraceContext(TRACEPARENT, "k=v"), "guest", True, 1.5)
def test_the_bytes_are_pamqps(
    correlation_id: str,
    message_id: str,
    kind: Kind,
    trace: TraceContext | None,
    user_id: str,
    gzip: bool,
    now: float,
) -> None:
    message = outgoing(correlation_id=correlation_id, message_id=message_id, kind=kind, trace=trace)
    encoded = PropertyEncoder(user_id=user_id, gzip=gzip).encode(message, now=now)
    assert encoded == pamqp_encoding(message, user_id=user_id, gzip=gzip, now=now)


@given(correlation_id=st.text(max_size=300))
@example("")
@example("c" * 256)
@example("tab\there")
@example("é")
def test_a_correlation_id_is_refused_exactly_when_event_headers_refuses_it(
    correlation_id: str,
) -> None:
    try:
        EventHeaders(x_correlation_id=correlation_id, x_message_type=XMessageType.printJobEvent)
    except ValidationError:
        valid = False
    else:
        valid = True
    encoder = PropertyEncoder(user_id="guest", gzip=False)
    if valid:
        encoder.encode(outgoing(correlation_id=correlation_id))
    else:
        with pytest.raises(ValueError, match="x-correlation-id"):
            encoder.encode(outgoing(correlation_id=correlation_id))


@pytest.mark.parametrize(
    "message_id", ["m" * 256, "é" * 128, "\ud800"], ids=["256 bytes", "256 UTF-8", "surrogate"]
)
def test_an_id_amqp_cannot_carry_raises_value_error(message_id: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - UnicodeEncodeError is one
        PropertyEncoder(user_id="guest", gzip=False).encode(outgoing(message_id=message_id))


def test_a_consumer_reads_the_operation_binding() -> None:
    encoded = PropertyEncoder(user_id="svc", gzip=True).encode(
        outgoing(kind=Kind.rejection, trace=TraceContext(TRACEPARENT)), now=1_764_700_000.9
    )
    properties = decode_properties(encoded)
    assert properties.content_type == "application/json"
    assert properties.content_encoding == "gzip"
    assert properties.delivery_mode == 2
    assert properties.priority == 10
    assert properties.expiration == "60000"
    assert properties.reply_to == "user.reply"
    assert properties.user_id == "svc"
    assert properties.app_id == "print-service"
    assert properties.message_type == "commandRejected"
    assert properties.timestamp == datetime.fromtimestamp(1_764_700_000, UTC)
    assert properties.headers == {
        "CC": ["user.log", "support.log"],
        "BCC": ["external.audit"],
        "x-correlation-id": "c-1",
        "x-message-type": "commandRejected",
        "traceparent": TRACEPARENT,
    }


@pytest.mark.parametrize("user", ["u" * 256, "%F0%9F%96%A8" * 64], ids=["256 bytes", "256 UTF-8"])
def test_a_user_name_amqp_cannot_carry_is_a_configuration_error(user: str) -> None:
    url = BrokerUrl(f"amqp://{user}:secret@127.0.0.1:5672/", schemes=("amqp", "amqps"))
    with pytest.raises(ConfigError, match="user name cannot be carried"):
        AmqpPublisher(
            url=url, connection_name="t", gzip_bodies=True, metrics=Metrics(CollectorRegistry())
        )
