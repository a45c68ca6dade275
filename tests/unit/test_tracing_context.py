"""The W3C trace context a command carries: parsed in the core, and never a reason to reject.

Property-based on the parser (any value at all) and on the decoder (any traceparent, as a
user property or an envelope header, leaves a valid command valid).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.codec import CommandDecoder, DecodedCommand, Inbound
from service.core.tracecontext import TRACESTATE_MAX, TraceContext, trace_context
from service.models import CommandHeaders, EventHeaders

TRACE_ID: Final = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID: Final = "00f067aa0ba902b7"
VALID: Final = f"00-{TRACE_ID}-{SPAN_ID}-01"
PATTERN: Final = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
CREATE: Final = {"jobId": "job-1", "userId": "alice"}
BOUNDED: Final = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

hex_digits = st.text("0123456789abcdef", min_size=1, max_size=1)


def hex_text(size: int) -> st.SearchStrategy[str]:
    return st.text("0123456789abcdef", min_size=size, max_size=size)


valid_traceparents = st.builds(
    lambda version, trace, span, flags: f"{version}-{trace}-{span}-{flags}",
    hex_text(2).filter(lambda v: v != "ff"),
    hex_text(32).filter(lambda t: t != "0" * 32),
    hex_text(16).filter(lambda s: s != "0" * 16),
    hex_text(2),
)
# Anything a hostile sender may put in a header: text of any length and alphabet, and (in an
# envelope's JSON) any other JSON type.
any_header_value = st.one_of(
    st.text(max_size=200),
    st.text(alphabet="0123456789abcdefABCDEF-", min_size=50, max_size=60),
    st.integers(),
    st.none(),
    st.booleans(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)


def a_decoder(*, read_trace: bool = True) -> CommandDecoder:
    return CommandDecoder(
        max_bytes=64 * 1024,
        max_decompressed_bytes=256 * 1024,
        access=None,
        new_id=lambda: "generated",
        read_trace=read_trace,
    )


def mqtt5(properties: dict[str, str], payload: dict[str, Any] = CREATE) -> Inbound:
    return Inbound(
        topic="commands/q1",
        payload=json.dumps(payload).encode(),
        properties={"x-message-type": "createPrintJob", **properties},
    )


def envelope(headers: dict[str, Any]) -> Inbound:
    body = {"headers": {"x-message-type": "createPrintJob", **headers}, "payload": CREATE}
    return Inbound(topic="commands/q1", payload=json.dumps(body).encode())


# --- the parser --------------------------------------------------------------------------------


def test_the_parser_takes_the_contracts_pattern() -> None:
    # One rule for the core and the contract: the generated models carry the same pattern.
    for model in (CommandHeaders, EventHeaders):
        (constraint,) = (
            m for m in model.model_fields["traceparent"].metadata if hasattr(m, "pattern")
        )
        assert constraint.pattern == PATTERN.pattern


def test_a_valid_traceparent_and_its_tracestate() -> None:
    found = trace_context(VALID, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    assert found == TraceContext(VALID, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    assert (found.trace_id, found.span_id) == (TRACE_ID, SPAN_ID)


@pytest.mark.parametrize(
    "value",
    [
        "",
        VALID.upper(),  # W3C: lower-case hex only
        VALID + "-extra",  # longer than the contract allows (a future version's fields)
        VALID[:-1],
        f"ff-{TRACE_ID}-{SPAN_ID}-01",  # version ff is forbidden
        f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"00_{TRACE_ID}_{SPAN_ID}_01",
        " " + VALID[1:],
        "x" * 1_000_000,  # oversized: refused by its length before any matching
    ],
)
def test_a_malformed_traceparent_is_none(value: str) -> None:
    assert trace_context(value) is None


@pytest.mark.parametrize(
    "state", ["", "a" * (TRACESTATE_MAX + 1), "bad\x00state", "caf\u00e9=1", 42]
)
def test_a_bad_tracestate_is_dropped_and_the_traceparent_kept(state: object) -> None:
    assert trace_context(VALID, state) == TraceContext(VALID, None)


@BOUNDED
@given(value=st.one_of(any_header_value, st.binary(max_size=80)), state=any_header_value)
def test_any_value_parses_to_none_or_a_context_of_the_contracts_form(
    value: object, state: object
) -> None:
    found = trace_context(value, state)  # never raises
    if found is not None:
        assert isinstance(value, str)
        assert PATTERN.fullmatch(found.traceparent)
        assert found.traceparent == value
        assert found.tracestate is None or len(found.tracestate) <= TRACESTATE_MAX


@BOUNDED
@given(value=valid_traceparents)
def test_every_valid_traceparent_is_taken_as_it_is(value: str) -> None:
    found = trace_context(value)
    assert found is not None
    assert found.traceparent == value
    assert found.trace_id == value[3:35]


@BOUNDED
@given(value=valid_traceparents, at=st.integers(0, 54), char=st.characters())
def test_a_traceparent_with_one_character_changed_is_valid_only_if_still_of_the_form(
    value: str, at: int, char: str
) -> None:
    changed = value[:at] + char + value[at + 1 :]
    found = trace_context(changed)
    still_valid = (
        PATTERN.fullmatch(changed) is not None
        and not changed.startswith("ff")
        and changed[3:35] != "0" * 32
        and changed[36:52] != "0" * 16
    )
    assert (found is not None) == still_valid


# --- the decoder -------------------------------------------------------------------------------


def test_an_mqtt5_user_property_is_the_commands_trace() -> None:
    decoded = a_decoder().decode(mqtt5({"traceparent": VALID, "tracestate": "k=v"}))
    assert isinstance(decoded, DecodedCommand)
    assert decoded.trace == TraceContext(VALID, "k=v")
    assert not decoded.trace_invalid


def test_an_envelope_header_is_the_commands_trace() -> None:
    decoded = a_decoder().decode(envelope({"traceparent": VALID}))
    assert isinstance(decoded, DecodedCommand)
    assert decoded.trace == TraceContext(VALID)


@pytest.mark.parametrize("bad", ["not-a-traceparent", VALID.upper(), "0" * 55, "x" * 20_000])
def test_a_malformed_traceparent_is_ignored_not_rejected(bad: str) -> None:
    for inbound in (mqtt5({"traceparent": bad}), envelope({"traceparent": bad, "tracestate": 7})):
        decoded = a_decoder().decode(inbound)
        assert isinstance(decoded, DecodedCommand), decoded
        assert decoded.trace is None
        assert decoded.trace_invalid


def test_a_rejection_keeps_the_senders_trace() -> None:
    decoded = a_decoder().decode(mqtt5({"traceparent": VALID}, payload={"jobId": 7}))
    assert not isinstance(decoded, DecodedCommand)
    assert decoded.trace == TraceContext(VALID)


def test_with_tracing_off_the_headers_are_dropped_unread() -> None:
    decoder = a_decoder(read_trace=False)
    for value in (VALID, "garbage"):
        decoded = decoder.decode(envelope({"traceparent": value}))
        assert isinstance(decoded, DecodedCommand)
        assert (decoded.trace, decoded.trace_invalid) == (None, False)


@BOUNDED
@given(value=any_header_value, state=any_header_value, read_trace=st.booleans())
def test_no_traceparent_turns_a_valid_command_into_a_rejection(
    value: object, state: object, read_trace: bool
) -> None:
    decoder = a_decoder(read_trace=read_trace)
    inbounds = [envelope({"traceparent": value, "tracestate": state})]
    if isinstance(value, str) and isinstance(state, str):
        inbounds.append(mqtt5({"traceparent": value, "tracestate": state}))
    for inbound in inbounds:
        decoded = decoder.decode(inbound)
        assert isinstance(decoded, DecodedCommand), decoded
        assert decoded.job_id == "job-1"
        if decoded.trace is not None:
            assert read_trace
            assert decoded.trace.traceparent == value
