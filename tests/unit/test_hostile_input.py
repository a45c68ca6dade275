"""Property-based tests (issue 10): hostile commands never break decoding or rejections.

For any bytes, topic, header of any JSON type, Unicode (lone surrogates included) or length,
`CommandDecoder.decode` returns a command or a rejection and never raises; every rejection it
yields becomes an event that validates against the contract and encodes as an AMQP publish
(with pamqp, as aiormq does); every accepted create becomes a job event that does too.
Bounded in time: each property has its own `settings` (no global profile, no example database).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, TypeAlias
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as count_outcome
from hypothesis import strategies as st
from pamqp import commands, frame

from service.adapters.amqp import REJECTIONS_EXCHANGE, gzip_body
from service.adapters.amqp_frames import PublishFrames
from service.adapters.amqp_properties import PropertyEncoder
from service.core.access import AccessControl, KeyTable
from service.core.codec import CommandDecoder, DecodedCommand, Inbound, Rejection, valid_queue_id
from service.core.events import INVALID_QUEUE_ROUTE, REJECTION_ROUTE_PREFIX, Outgoing, job_event
from service.core.events import rejection_event as build_rejection_event
from service.core.jobs import Job, create
from service.models import (
    CommandRejected,
    CreatePrintJob,
    MessageType,
    PrintJobEvent,
    RejectionReason,
)
from tests.unit.test_amqp_properties import decode_properties

API_KEYS: Final = frozenset({"key-one", "key-two"})
MAX_BYTES: Final = 64 * 1024
MAX_DECOMPRESSED: Final = 256 * 1024
GENERATED_ID: Final = "generated-correlation-id"
CORRELATION_ID: Final = re.compile(r"[ -~]{1,255}")
QUEUE_ID_TEXT: Final = r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,30}\Z"
JOB_ID_TEXT: Final = r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,40}\Z"
HEADER_NAMES: Final = ("x-message-type", "x-api-key", "x-correlation-id", "content-encoding")
# aiormq splits a body into frames of frame_max (RabbitMQ's default 131072) less 8 bytes.
MAX_CONTENT_SIZE: Final = 131072 - 8

# The properties run many examples; each is bounded in examples, not by a wall-clock deadline.
BOUNDED: Final = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
Json: TypeAlias = Any


# --- strategies --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawJson:
    """A JSON fragment written as is: an integer too long for Python's str-to-int limit."""

    text: str


ANY_CHAR: Final = st.one_of(
    st.characters(codec=None),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates
    st.sampled_from(["é", "\x00", "\x7f", "\u2028", "\ufeff", "\U0001f600", "/", "#", "+"]),
)
ANY_TEXT: Final = st.text(ANY_CHAR, max_size=40)
LONG_TEXT: Final = st.text(ANY_CHAR, min_size=200, max_size=3000)
HUGE_DIGITS: Final = st.integers(min_value=4300, max_value=6000).map(lambda n: RawJson("9" * n))

JSON_LEAVES: Final = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    HUGE_DIGITS,
    st.floats(),  # NaN and infinities too: Python's json writes and reads them
    ANY_TEXT,
    st.sampled_from(["createPrintJob", "gzip", "key-one", "job-1", "", "\ud800", "\udfff"]),
)
ANY_JSON: Final = st.recursive(
    JSON_LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(ANY_TEXT, st.sampled_from(HEADER_NAMES)), children, max_size=5),
    ),
    max_leaves=20,
)


def dump(value: Json, *, ascii_only: bool = True) -> str:
    """`value` as JSON text; lone surrogates become `\\ud800` escapes (or stay raw)."""
    if isinstance(value, RawJson):
        return value.text
    if isinstance(value, list):
        return "[" + ",".join(dump(item, ascii_only=ascii_only) for item in value) + "]"
    if isinstance(value, dict):
        items = (
            f"{json.dumps(str(key), ensure_ascii=ascii_only)}:{dump(item, ascii_only=ascii_only)}"
            for key, item in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, ensure_ascii=ascii_only)


def job_ids() -> st.SearchStrategy[Json]:
    odd = st.sampled_from(["\ud800", "job-1\n", "job 1", "a" * 129, "events/#", "*"])
    return st.one_of(st.from_regex(JOB_ID_TEXT), ANY_JSON, odd, LONG_TEXT)


def documents() -> st.SearchStrategy[Json]:
    inline = st.fixed_dictionaries(
        {
            "contentType": st.sampled_from(["application/pdf", "text/plain"]),
            "data": st.one_of(
                st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()), ANY_TEXT
            ),
        }
    )
    by_url = st.fixed_dictionaries(
        {
            "contentType": st.just("application/pdf"),
            "url": st.sampled_from(["https://docs.example/a.pdf", "file:///etc/passwd", ""]),
        }
    )
    return st.one_of(inline, by_url, ANY_JSON)


def plausible_commands() -> st.SearchStrategy[dict[str, Json]]:
    """Commands near the contract, so that many decode and the accepted paths are covered too."""
    text = st.one_of(st.text(max_size=20), ANY_JSON)
    return st.fixed_dictionaries(
        {"jobId": job_ids()},
        optional={
            "userId": text,
            "documentName": text,
            "title": text,
            "priority": st.one_of(st.sampled_from(["high", "medium", "low", "HIGH"]), ANY_JSON),
            "copies": st.one_of(st.integers(min_value=-1, max_value=1000), ANY_JSON),
            "document": documents(),
            "force": st.one_of(st.booleans(), ANY_JSON),
            "expireAfter": st.one_of(st.just("2030-01-01T00:00:00Z"), ANY_JSON),
            "options": st.one_of(st.just({"sides": "one-sided"}), ANY_JSON),
            "hold": st.one_of(
                st.sampled_from(["indefinite", "2030-01-01T00:00:00Z", "Indefinite"]), ANY_JSON
            ),
            "releasePin": st.one_of(st.sampled_from(["1234", "12 34", "\ud800" * 4]), ANY_JSON),
            "pin": st.one_of(st.text(max_size=70), ANY_JSON),
        },
    )


def header_values() -> st.SearchStrategy[Json]:
    return st.one_of(
        ANY_JSON,
        st.sampled_from([t.value for t in MessageType]),
        st.sampled_from(sorted(API_KEYS)),
        st.sampled_from(["gzip", "identity", "GZIP", "br"]),
        LONG_TEXT,
    )


def json_headers() -> st.SearchStrategy[dict[str, Json]]:
    return st.dictionaries(
        st.one_of(st.sampled_from(HEADER_NAMES), ANY_TEXT), header_values(), max_size=6
    )


def bodies() -> st.SearchStrategy[Json]:
    """A command body: bare, in an MQTT 3.1.1 envelope, or any JSON at all."""
    payload = st.one_of(plausible_commands(), ANY_JSON)
    envelope = st.fixed_dictionaries(
        {}, optional={"headers": st.one_of(json_headers(), ANY_JSON), "payload": payload}
    )
    return st.one_of(plausible_commands(), envelope, ANY_JSON)


def deeply_nested() -> st.SearchStrategy[bytes]:
    return st.integers(min_value=1, max_value=200_000).map(
        lambda n: ("[" * n + "]" * n).encode() if n % 2 else ('{"a":' * n + "1" + "}" * n).encode()
    )


def corrupt(data: bytes, cut: int, flip: int) -> bytes:
    """A gzip stream truncated, with a byte flipped, or with trailing data."""
    if not data:
        return b"\x1f\x8b"
    mode = flip % 3
    if mode == 0:
        return data[: cut % len(data)]
    if mode == 1:
        i = cut % len(data)
        return data[:i] + bytes([data[i] ^ (flip % 255 + 1)]) + data[i + 1 :]
    return data + b"trailing"


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json", "json", "json", "raw-surrogates", "bytes", "nested"]))
    if kind == "bytes":
        data = draw(st.binary(max_size=300))
    elif kind == "nested":
        data = draw(deeply_nested())
    else:
        text = dump(draw(bodies()), ascii_only=kind == "json" and draw(st.booleans()))
        data = text.encode("utf-8", "surrogatepass")  # raw surrogates: invalid UTF-8
    wrapping = draw(st.sampled_from(["none", "none", "gzip", "corrupt-gzip"]))
    if wrapping == "gzip":
        data = gzip.compress(data)
    elif wrapping == "corrupt-gzip":
        data = corrupt(
            gzip.compress(data), draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6))
        )
    return data


def topics() -> st.SearchStrategy[str]:
    level = st.one_of(st.from_regex(QUEUE_ID_TEXT), ANY_TEXT)
    return st.one_of(
        st.from_regex(QUEUE_ID_TEXT).map(lambda q: f"commands/{q}"),
        st.lists(level, max_size=6).map("/".join),
        LONG_TEXT,
        st.just("commands/" + "q" * 300),
        st.just("commands/" + "é" * 200),
        st.sampled_from(["commands/q\n", "commands/_invalid", "commands/q/", "commands/#", "/"]),
        st.just(""),
    )


def user_properties() -> st.SearchStrategy[dict[str, str]]:
    """MQTT 5 user properties: any text, the known headers included."""
    value = st.one_of(
        ANY_TEXT,
        LONG_TEXT,
        st.sampled_from([t.value for t in MessageType]),
        st.sampled_from([*sorted(API_KEYS), "gzip", "identity", "GZIP", "br"]),
    )
    return st.dictionaries(st.one_of(st.sampled_from(HEADER_NAMES), ANY_TEXT), value, max_size=5)


CORRELATION_DATA: Final = st.one_of(
    st.none(),
    st.binary(max_size=400),
    st.integers(min_value=120, max_value=400).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=250, max_size=260).map(
        str.encode
    ),
)  # MQTT 5 correlation data, of the lengths around both caps (126 bytes as hex, 255 as is)


@st.composite
def inbounds(draw: st.DrawFn) -> Inbound:
    return Inbound(
        topic=draw(topics()),
        payload=draw(payloads()),
        properties=draw(user_properties()),
        correlation_data=draw(CORRELATION_DATA),
        received_at=draw(st.floats(min_value=0, max_value=2e9)),
        retained=draw(st.booleans()),
    )


def a_decoder(api_keys: frozenset[str] | None) -> CommandDecoder:
    return CommandDecoder(
        max_bytes=MAX_BYTES,
        max_decompressed_bytes=MAX_DECOMPRESSED,
        access=None if api_keys is None else AccessControl.plain(api_keys),
        new_id=lambda: GENERATED_ID,
    )


def a_scoped_decoder() -> CommandDecoder:
    """`key-one` may only read, on queues `q*`, one command a second: most commands that
    carry it are `forbidden` or `rate_limited`, and those rejections must be good too."""
    digest = hashlib.sha256(b"key-one").hexdigest()
    table = KeyTable.from_toml(
        f'[keys.one]\nsha256 = "{digest}"\nqueues = ["q*"]\nscopes = ["read:job"]\nrate = 1',
        source="keys",
    )
    return CommandDecoder(
        max_bytes=MAX_BYTES,
        max_decompressed_bytes=MAX_DECOMPRESSED,
        access=AccessControl(table, rate=1.0, burst=1),
        new_id=lambda: GENERATED_ID,
    )


DECODERS: Final = st.sampled_from([a_decoder(None), a_decoder(API_KEYS)])
# And one that also refuses for the key's scope, queues and rate.
EVERY_DECODER: Final = st.sampled_from([a_decoder(None), a_decoder(API_KEYS), a_scoped_decoder()])


# --- checks ------------------------------------------------------------------------------------


def assert_publishable(outgoing: Outgoing, exchange: str) -> None:
    """The outgoing message as the publisher puts it on the wire: it encodes, and the
    broker's client library reads it back."""
    encoded = PropertyEncoder(user_id="guest", gzip=True).encode(outgoing)
    body = gzip_body(outgoing.body)
    frames = PublishFrames(exchange).encode(
        channel=1,
        routing_key=outgoing.routing_key,
        properties=encoded,
        body=body,
        max_body=MAX_CONTENT_SIZE,
    )
    method = frame.unmarshal(frames)[2]
    assert isinstance(method, commands.Basic.Publish)
    assert method.routing_key == outgoing.routing_key
    properties = decode_properties(encoded)
    assert properties.correlation_id == outgoing.correlation_id
    assert properties.headers is not None
    assert properties.headers["x-correlation-id"] == outgoing.correlation_id
    assert zlib.decompress(body, wbits=16 + zlib.MAX_WBITS) == outgoing.body


def assert_good_rejection(rejection: Rejection) -> CommandRejected:
    """The rejection's event: contract-valid, routable, with a usable correlation id."""
    outgoing = build_rejection_event(rejection, event_id=uuid4(), now=datetime.now(UTC))
    event = CommandRejected.model_validate_json(outgoing.body.decode("utf-8"), strict=True)
    route = outgoing.routing_key
    assert route == INVALID_QUEUE_ROUTE or (
        route.startswith(REJECTION_ROUTE_PREFIX)
        and valid_queue_id(route.removeprefix(REJECTION_ROUTE_PREFIX))
    ), route
    assert CORRELATION_ID.fullmatch(outgoing.correlation_id), outgoing.correlation_id
    assert event.correlationId == outgoing.correlation_id
    assert event.reason == rejection.reason
    for echoed in (event.jobId, event.queueId, event.messageType):
        assert echoed is None or len(echoed.encode()) <= 255
    assert_publishable(outgoing, REJECTIONS_EXCHANGE)
    return event


def assert_good_command(command: DecodedCommand) -> None:
    """An accepted command has a usable correlation id; a create makes a publishable event."""
    assert CORRELATION_ID.fullmatch(command.correlation_id), command.correlation_id
    assert valid_queue_id(command.queue_id)
    if command.message_type is not MessageType.createPrintJob:
        return
    assert isinstance(command.message, CreatePrintJob)
    job = create(
        None,
        command.message,
        queue_id=command.queue_id,
        correlation_id=command.correlation_id,
        now=datetime.now(UTC),
    )
    assert isinstance(job, Job)
    outgoing = job_event(
        job,
        event_id=uuid4(),
        correlation_id=command.correlation_id,
        received_at=command.received_at,
    )
    event = PrintJobEvent.model_validate_json(outgoing.body.decode("utf-8"), strict=True)
    assert event.jobId == command.message.jobId
    assert_publishable(outgoing, "print.events")


def assert_decodes_safely(decoder: CommandDecoder, inbound: Inbound) -> DecodedCommand | Rejection:
    result = decoder.decode(inbound)
    outcome = result.reason if isinstance(result, Rejection) else result.message_type
    count_outcome(outcome.value)
    if isinstance(result, Rejection):
        # internal_error is the safety net for a bug: no generated input should need it.
        assert result.cause is None, repr(result.cause)
        assert result.reason is not RejectionReason.internal_error, result.message
        assert_good_rejection(result)
    else:
        assert isinstance(result, DecodedCommand)
        assert_good_command(result)
    return result


# --- properties --------------------------------------------------------------------------------


@BOUNDED
@given(decoder=EVERY_DECODER, inbound=inbounds())
def test_any_inbound_decodes_to_a_command_or_a_publishable_rejection(
    decoder: CommandDecoder, inbound: Inbound
) -> None:
    """Any topic, payload (bytes, JSON, gzip, corrupt gzip), user properties, correlation data."""
    assert_decodes_safely(decoder, inbound)


@BOUNDED
@given(
    decoder=DECODERS,
    headers=json_headers(),
    payload=st.one_of(plausible_commands(), ANY_JSON),
    properties=user_properties(),
    queue=st.from_regex(QUEUE_ID_TEXT),
)
@example(  # the envelope's type header of the wrong JSON type
    decoder=a_decoder(None), headers={"x-message-type": {}}, payload={}, properties={}, queue="q"
)
def test_any_json_in_any_envelope_header(
    decoder: CommandDecoder,
    headers: dict[str, Json],
    payload: Json,
    properties: dict[str, str],
    queue: str,
) -> None:
    """MQTT 3.1.1 envelopes whose headers hold JSON of every type (on a valid topic)."""
    body = dump({"headers": headers, "payload": payload}).encode()
    assert_decodes_safely(
        decoder, Inbound(topic=f"commands/{queue}", payload=body, properties=properties)
    )


@BOUNDED
@given(
    decoder=DECODERS,
    body=plausible_commands(),
    properties=user_properties(),
    correlation_data=CORRELATION_DATA,
    queue=st.from_regex(QUEUE_ID_TEXT),
)
@example(
    decoder=a_decoder(None),
    body={"jobId": "0", "userId": "", "releasePin": "1234"},
    properties={},
    correlation_data=None,
    queue="0",
)
def test_bare_payloads_with_any_user_properties(
    decoder: CommandDecoder,
    body: dict[str, Json],
    properties: dict[str, str],
    correlation_data: bytes | None,
    queue: str,
) -> None:
    """MQTT 5: any user properties and correlation data; the correlation id is always usable."""
    result = assert_decodes_safely(
        decoder,
        Inbound(
            topic=f"commands/{queue}",
            payload=dump(body).encode(),
            properties=properties,
            correlation_data=correlation_data,
        ),
    )
    header = properties.get("x-correlation-id")
    if header is not None and CORRELATION_ID.fullmatch(header):
        assert result.correlation_id == header
    elif correlation_data and re.fullmatch(rb"[ -~]{1,255}", correlation_data):
        assert result.correlation_id == correlation_data.decode()


SURROGATE_ESCAPES: Final = st.sampled_from(["\\ud800", "\\udfff", "\\udbff", "\\udc00", "\\ud83d"])


@BOUNDED
@given(
    decoder=DECODERS,
    where=st.sampled_from(["key", "value", "header", "nested"]),
    escape=SURROGATE_ESCAPES,
    around=st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), max_size=5
    ),
)
@example(decoder=a_decoder(None), where="value", escape="\\ud800", around="")
def test_lone_surrogate_escapes_are_invalid_encoding(
    decoder: CommandDecoder, where: str, escape: str, around: str
) -> None:
    """JSON text written by hand with `\\ud800`-style escapes that pair with nothing."""
    text = around + escape + around
    bodies_by_place = {
        "key": '{"jobId": "job-1", "force": true, "%s": 1}' % text,  # noqa: UP031
        "value": '{"jobId": "%s", "force": true}' % text,  # noqa: UP031
        "header": '{"headers": {"x-correlation-id": "%s"}, "payload": {"jobId": "j"}}' % text,  # noqa: UP031
        "nested": '{"jobId": "j", "userId": "u", "options": {"%s": ["%s"]}}' % (text, text),  # noqa: UP031
    }
    properties = {"x-api-key": "key-one"}
    inbound = Inbound(
        topic="commands/q", payload=bodies_by_place[where].encode(), properties=properties
    )
    rejection = assert_decodes_safely(decoder, inbound)
    assert isinstance(rejection, Rejection)
    assert rejection.reason is RejectionReason.invalid_encoding


PRINTABLE: Final = st.characters(
    codec="utf-8", exclude_characters=[*map(chr, range(0x20)), "\x7f"]
)  # what the contract's text fields allow: any Unicode scalar but C0 controls and DEL


def valid_creates() -> st.SearchStrategy[dict[str, Json]]:
    """Contract-valid `createPrintJob` payloads with unusual (but allowed) text in every field."""
    inline = st.fixed_dictionaries(
        {
            "contentType": st.from_regex(
                r"\A[a-z0-9][a-z0-9.+-]{0,20}/[a-z0-9][a-z0-9.+-]{0,20}\Z"
            ),
            "data": st.binary(min_size=3, max_size=60).map(lambda b: base64.b64encode(b).decode()),
        }
    )
    by_url = st.fixed_dictionaries(
        {
            "contentType": st.just("application/pdf"),
            "url": st.from_regex(r"\Ahttps?://[a-z0-9.-]{1,30}(:[0-9]{1,5})?(/[!-~]{0,40})?\Z"),
        }
    )
    offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    )
    return st.fixed_dictionaries(
        {"jobId": st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")},
        optional={
            "userId": st.text(PRINTABLE, max_size=256),
            "documentName": st.text(PRINTABLE, max_size=1024),
            "title": st.text(PRINTABLE, min_size=1, max_size=255),
            "priority": st.sampled_from(["high", "medium", "low"]),
            "copies": st.integers(min_value=1, max_value=999),
            "document": st.one_of(inline, by_url),
            "expireAfter": st.datetimes(timezones=offsets).map(datetime.isoformat),
            "options": st.fixed_dictionaries(
                {},
                optional={
                    "sides": st.sampled_from(["one-sided", "two-sided-long-edge"]),
                    "colorMode": st.sampled_from(["auto", "monochrome", "color"]),
                    "orientation": st.sampled_from(["portrait", "reverse-landscape"]),
                    "quality": st.sampled_from(["draft", "normal", "high"]),
                    "media": st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,40}\Z"),
                },
            ),
        },
    )


@BOUNDED
@given(
    create_body=valid_creates(),
    queue=st.from_regex(QUEUE_ID_TEXT),
    transport=st.sampled_from(["mqtt5", "envelope", "bare"]),
    correlation_data=CORRELATION_DATA,
    ascii_only=st.booleans(),
    compress=st.booleans(),
)
def test_every_valid_create_is_accepted_and_makes_a_publishable_event(
    create_body: dict[str, Json],
    queue: str,
    transport: str,
    correlation_data: bytes | None,
    ascii_only: bool,
    compress: bool,
) -> None:
    """A contract-valid create, authenticated, over either transport, always decodes."""
    headers = {"x-api-key": "key-two", "x-message-type": "createPrintJob"}
    body: dict[str, Json]
    properties: dict[str, str]
    if transport == "envelope":
        body, properties = {"headers": headers, "payload": create_body}, {}
    elif transport == "mqtt5":
        body, properties = create_body, headers
    else:  # a bare payload, its type inferred from its create-only fields
        body, properties = {**create_body, "copies": 2}, {"x-api-key": "key-two"}
    payload = dump(body, ascii_only=ascii_only).encode()
    inbound = Inbound(
        topic=f"commands/{queue}",
        payload=gzip.compress(payload) if compress else payload,
        properties=properties,
        correlation_data=correlation_data,
    )
    result = assert_decodes_safely(a_decoder(API_KEYS), inbound)
    assert isinstance(result, DecodedCommand), result
    assert result.message_type is MessageType.createPrintJob
    assert result.job_id == create_body["jobId"]


# --- regressions -------------------------------------------------------------------------------


def rejected(inbound: Inbound, decoder: CommandDecoder | None = None) -> CommandRejected:
    result = (decoder or a_decoder(None)).decode(inbound)
    assert isinstance(result, Rejection), result
    return assert_good_rejection(result)


def test_an_envelope_type_header_that_is_an_object() -> None:
    body = b'{"headers": {"x-message-type": {}}, "payload": {}}'
    event = rejected(Inbound(topic="commands/q", payload=body))
    assert event.reason is RejectionReason.unknown_message_type


def test_a_jobid_that_is_a_lone_surrogate() -> None:
    event = rejected(Inbound(topic="commands/q", payload=b'{"jobId": "\\ud800", "force": true}'))
    assert event.reason is RejectionReason.invalid_encoding
    assert event.jobId is None or event.jobId.encode("utf-8")


def test_a_correlation_id_of_256_characters_is_replaced() -> None:
    long_id = "c" * 256
    event = rejected(
        Inbound(topic="commands/bad queue", payload=b"{}", properties={"x-correlation-id": long_id})
    )
    assert event.correlationId != long_id
    assert CORRELATION_ID.fullmatch(event.correlationId)


def test_binary_correlation_data_is_hex_encoded() -> None:
    event = rejected(Inbound(topic="commands/q", payload=b"\xff", correlation_data=b"\xff\xfe"))
    assert event.correlationId == "0xfffe"


@pytest.mark.parametrize("level", ["q" * 300, "é" * 200], ids=["300-ascii", "200-e-acute"])
def test_an_overlong_queue_level_goes_to_the_invalid_route(level: str) -> None:
    result = a_decoder(None).decode(
        Inbound(topic=f"commands/{level}", payload=b'{"jobId": "j", "force": true}')
    )
    assert isinstance(result, Rejection)
    outgoing = build_rejection_event(result, event_id=uuid4(), now=datetime.now(UTC))
    assert outgoing.routing_key == INVALID_QUEUE_ROUTE
    event = assert_good_rejection(result)
    assert event.reason is RejectionReason.schema_violation
    assert event.queueId is not None
    assert len(event.queueId.encode()) <= 255


@pytest.mark.parametrize("key", [42, 1.5, True, None, ["key-one"], {"k": "key-one"}], ids=repr)
@pytest.mark.parametrize("payload", [{"jobId": "job-1", "force": True}, {"jobId": 7, "force": "x"}])
def test_an_api_key_that_is_not_text_is_unauthorized(key: Json, payload: dict[str, Json]) -> None:
    """With keys configured, a key of another JSON type is refused before the payload is read:
    no type, no schema errors; of the payload only the sender's own jobId may come back."""
    body = json.dumps({"headers": {"x-api-key": key}, "payload": payload})
    event = rejected(Inbound(topic="commands/q", payload=body.encode()), a_decoder(API_KEYS))
    assert event.reason is RejectionReason.unauthorized
    # An envelope's jobId is echoed as sent (tests/unit/test_codec.py pins this); nothing else.
    assert event.jobId in {None, "job-1"}
    if not isinstance(payload["jobId"], str):
        assert event.jobId is None
    assert event.messageType is None
    assert event.errors is None


def test_a_wrong_mqtt5_api_key_echoes_no_job_id() -> None:
    inbound = Inbound(
        topic="commands/q",
        payload=b'{"jobId": "job-1", "force": true}',
        properties={"x-api-key": "wrong", "x-message-type": "cancelPrintJob"},
    )
    event = rejected(inbound, a_decoder(API_KEYS))
    assert event.reason is RejectionReason.unauthorized
    assert event.jobId is None
    assert event.messageType is None


def test_the_huge_and_odd_numbers_are_json_errors_or_schema_errors() -> None:
    """Python's json reads NaN and refuses 4300+ digit integers: neither is our failure."""
    for text in ('{"jobId": "j", "copies": NaN, "userId": "u"}', '{"jobId": ' + "9" * 5000 + "}"):
        event = rejected(Inbound(topic="commands/q", payload=text.encode()))
        assert event.reason in {RejectionReason.invalid_json, RejectionReason.schema_violation}


def test_forbidden_and_rate_limited_rejections_are_good() -> None:
    decoder = a_scoped_decoder()
    status = {"x-api-key": "key-one", "x-message-type": "getPrintJobStatus"}

    def send(queue: str, properties: dict[str, str], at: float) -> DecodedCommand | Rejection:
        payload = b'{"jobId": "job-1"}'
        return decoder.decode(
            Inbound(
                topic=f"commands/{queue}", payload=payload, properties=properties, received_at=at
            )
        )

    assert isinstance(send("q1", status, 100.0), DecodedCommand)
    limited = send("q1", status, 100.5)
    assert isinstance(limited, Rejection)
    event = assert_good_rejection(limited)
    assert (event.reason, event.retryAfter) == (RejectionReason.rate_limited, 0.5)
    # Refused before its payload is read: nothing of the command is echoed.
    assert (event.jobId, event.messageType) == (None, None)
    forbidden = send("other", status, 200.0)
    assert isinstance(forbidden, Rejection)
    event = assert_good_rejection(forbidden)
    assert (event.reason, event.retryAfter) == (RejectionReason.forbidden, None)
    assert event.messageType == "getPrintJobStatus"
