"""The client's encoding of commands and decoding of answers, checked against the service's
own decoder and models (service/core/codec.py): what the client sends, the service reads."""

from __future__ import annotations

import gzip
import json
import re
import uuid
from datetime import UTC, datetime

import pytest

from service.adapters import amqp
from service.client.wire import (
    EVENTS_EXCHANGE,
    MAX_REPLY_BYTES,
    REJECTIONS_EXCHANGE,
    decode_reply,
    encode_command,
    message_type_of,
    new_job_id,
    reply_queue_name,
)
from service.core.access import AccessControl
from service.core.codec import MODEL_BY_TYPE, CommandDecoder, DecodedCommand, Inbound
from service.models import (
    CancelPrintJob,
    CommandRejected,
    CreatePrintJob,
    GetPrintCounts,
    JobStatus,
    ListPrintJobs,
    MessageType,
    PrintJobEvent,
    Priority,
    RejectionReason,
)

KEY = "k-" + "1" * 30
JOB = CreatePrintJob(jobId="job-1", title="report", copies=2, priority=Priority.high)


def decoded(payload: bytes, properties: dict[str, str], *, key: str | None = KEY):
    decoder = CommandDecoder(
        max_bytes=1 << 20,
        max_decompressed_bytes=1 << 22,
        access=AccessControl.plain(frozenset({key})) if key else None,
        new_id=lambda: "generated",
    )
    return decoder.decode(Inbound(topic="commands/office", payload=payload, properties=properties))


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311-envelope"])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_the_service_decodes_what_the_client_sends(v5, compress):
    out = encode_command(JOB, correlation_id="corr-7", api_key=KEY, v5=v5, compress=compress)
    assert out.payload.startswith(b"\x1f\x8b") is compress
    assert bool(out.user_properties) is v5, "3.1.1 has no user properties: the envelope has them"
    result = decoded(out.payload, out.user_properties)
    assert isinstance(result, DecodedCommand), result
    assert result.message == JOB
    assert result.message_type is MessageType.createPrintJob
    assert result.correlation_id == "corr-7"


def test_without_a_key_none_is_sent():
    out = encode_command(JOB, correlation_id="c", api_key=None, v5=True, compress=False)
    assert "x-api-key" not in out.user_properties
    rejected = decoded(out.payload, out.user_properties)
    assert not isinstance(rejected, DecodedCommand)
    assert rejected.reason is RejectionReason.unauthorized


@pytest.mark.parametrize("message_type", list(MessageType))
def test_every_command_of_the_contract_has_its_type(message_type):
    model = MODEL_BY_TYPE[message_type]
    assert message_type_of(model.model_construct()) is message_type  # type: ignore[call-arg]


def test_commands_that_need_the_envelope_are_typed_over_311():
    # The service cannot infer these from a bare payload (asyncapi.yaml, commandEnvelope).
    for command in (GetPrintCounts(), ListPrintJobs(limit=5)):
        out = encode_command(command, correlation_id="c", api_key=None, v5=False, compress=False)
        result = decoded(out.payload, out.user_properties, key=None)
        assert isinstance(result, DecodedCommand), result
        assert result.message == command


def test_a_model_that_is_not_a_command_is_refused():
    with pytest.raises(TypeError, match="PrintJobEvent is not a command"):
        message_type_of(an_event())  # type: ignore[arg-type]


def an_event(**fields) -> PrintJobEvent:
    return PrintJobEvent(
        jobId="job-1",
        status=JobStatus.created,
        eventId=uuid.uuid4(),
        sequence=1,
        timestamp=datetime.now(UTC),
        queueId="office",
        **fields,
    )


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_answers_are_read_as_models(encoding):
    event = an_event()
    body = event.model_dump_json().encode()
    if encoding:
        body = gzip.compress(body)
    reply = decode_reply(
        message_type="printJobEvent", body=body, content_encoding=encoding, correlation_id="c"
    )
    assert reply is not None
    assert reply.message == event
    assert reply.correlation_id == "c"


def test_a_rejection_is_read_as_one():
    body = json.dumps(
        {
            "eventId": str(uuid.uuid4()),
            "reason": "rate_limited",
            "message": "slow down",
            "correlationId": "c",
            "timestamp": "2026-01-01T00:00:00Z",
            "retryAfter": 2.5,
        }
    ).encode()
    reply = decode_reply(
        message_type="commandRejected", body=body, content_encoding=None, correlation_id="c"
    )
    assert reply is not None
    assert isinstance(reply.message, CommandRejected)
    assert reply.message.retryAfter == 2.5


@pytest.mark.parametrize(
    ("message_type", "body", "encoding"),
    [
        ("printerStatus", b"{}", None),  # not an answer a client waits for
        (None, b"{}", None),
        ("printJobEvent", b"not json", None),
        ("printJobEvent", b'{"jobId": "x"}', None),
        ("printJobEvent", b"\x1f\x8bbroken", "gzip"),
        ("printJobEvent", gzip.compress(b" " * (MAX_REPLY_BYTES + 1)), "gzip"),
    ],
    ids=["other-type", "no-type", "not-json", "not-the-schema", "corrupt-gzip", "gzip-bomb"],
)
def test_a_message_that_is_no_answer_is_skipped(message_type, body, encoding):
    reply = decode_reply(
        message_type=message_type, body=body, content_encoding=encoding, correlation_id=None
    )
    assert reply is None


def test_the_exchanges_are_the_services():
    assert (EVENTS_EXCHANGE, REJECTIONS_EXCHANGE) == (
        amqp.EVENTS_EXCHANGE,
        amqp.REJECTIONS_EXCHANGE,
    )


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        ("acme", r"tenants/acme/client\.[0-9a-f-]{36}"),
        ("guest", ""),
        ("print-service", ""),
        (None, ""),
    ],
)
def test_a_tenant_follows_events_through_a_queue_it_may_declare(username, expected):
    name = reply_queue_name(username)
    assert re.fullmatch(expected, name), name


def test_a_new_job_on_a_tenants_queue_is_named_as_the_tenants():
    assert re.fullmatch(r"acme\.[0-9a-f-]{36}", new_job_id("acme.office"))
    assert re.fullmatch(r"[0-9a-f-]{36}", new_job_id("office"))
    assert re.fullmatch(r"[0-9a-f-]{36}", new_job_id(".odd"))


def test_a_cancel_goes_out_with_its_force_flag():
    out = encode_command(
        CancelPrintJob(jobId="j", force=True),
        correlation_id="c",
        api_key=None,
        v5=True,
        compress=False,
    )
    assert json.loads(out.payload) == {"jobId": "j", "force": True}
