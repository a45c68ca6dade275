"""Decoding raw MQTT commands: every kind of bad input, each with its reason and correlation ID."""

from __future__ import annotations

import base64
import functools
import gzip
import json
import tracemalloc
import zlib
from typing import Any

import pytest

from service.core.access import AccessControl
from service.core.codec import CommandDecoder, DecodedCommand, Inbound, Rejection
from service.models import (
    CancelPrintJob,
    CreatePrintJob,
    GetPrintCounts,
    GetPrintJobStatus,
    InlineDocument,
    MessageType,
    Priority,
    RejectionReason,
    UpdatePrintJob,
    UrlDocument,
)

QUEUE = "queue-1"
TOPIC = f"commands/{QUEUE}"
JOB_ID = "job-1"
GENERATED_ID = "generated-correlation-id"
RECEIVED_AT = 1_700_000_000.25
MAX_BYTES = 64 * 1024
MAX_DECOMPRESSED = 256 * 1024
API_KEY = "key-one"

CREATE = {"jobId": JOB_ID, "userId": "alice", "documentName": "a.pdf", "priority": "high"}
CANCEL = {"jobId": JOB_ID, "force": True}
STATUS = {"jobId": JOB_ID}


# --- builders ----------------------------------------------------------------------------------


def a_decoder(
    *,
    api_keys: frozenset[str] | None = None,
    max_bytes: int = MAX_BYTES,
    max_decompressed_bytes: int = MAX_DECOMPRESSED,
) -> CommandDecoder:
    return CommandDecoder(
        max_bytes=max_bytes,
        max_decompressed_bytes=max_decompressed_bytes,
        access=None if api_keys is None else AccessControl.plain(api_keys),
        new_id=lambda: GENERATED_ID,
    )


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()


def an_envelope(payload: Any, **headers: str) -> bytes:
    return as_json({"headers": headers, "payload": payload})


def inbound(
    payload: bytes,
    *,
    properties: dict[str, str] | None = None,
    correlation_data: bytes | None = None,
    topic: str = TOPIC,
) -> Inbound:
    return Inbound(
        topic=topic,
        payload=payload,
        properties=properties or {},
        correlation_data=correlation_data,
        received_at=RECEIVED_AT,
    )


def typed(message_type: MessageType, correlation_id: str = "corr-1") -> dict[str, str]:
    """MQTT 5 user properties naming the type and the correlation ID."""
    return {"x-message-type": message_type.value, "x-correlation-id": correlation_id}


def decode(message: Inbound, decoder: CommandDecoder | None = None) -> DecodedCommand | Rejection:
    return (decoder or a_decoder()).decode(message)


def accepted(message: Inbound, decoder: CommandDecoder | None = None) -> DecodedCommand:
    result = decode(message, decoder)
    assert isinstance(result, DecodedCommand), result
    return result


def rejected(
    message: Inbound, reason: RejectionReason, decoder: CommandDecoder | None = None
) -> Rejection:
    result = decode(message, decoder)
    assert isinstance(result, Rejection), result
    assert result.reason is reason, result
    assert result.message
    assert result.queue_id == QUEUE
    assert result.received_at == RECEIVED_AT
    return result


def paths(rejection: Rejection) -> set[str]:
    return {error.path for error in rejection.errors}


# Where the correlation ID of a message that could not be parsed at all comes from.
CORRELATION_SOURCES = [
    pytest.param({"properties": {"x-correlation-id": "corr-prop"}}, "corr-prop", id="property"),
    pytest.param({"correlation_data": b"corr-data"}, "corr-data", id="correlation-data"),
    pytest.param({}, GENERATED_ID, id="generated"),
]


@functools.cache
def gzip_bomb() -> bytes:
    """50 MB of zeros, gzip-compressed to about 50 kB, built without holding 50 MB at once."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1024 * 1024)
    parts = [compressor.compress(chunk) for _ in range(50)]
    parts.append(compressor.flush())
    return b"".join(parts)


# --- the good paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_type", "payload", "expected"),
    [
        (
            MessageType.createPrintJob,
            CREATE,
            CreatePrintJob(
                jobId=JOB_ID, userId="alice", documentName="a.pdf", priority=Priority.high
            ),
        ),
        (MessageType.cancelPrintJob, CANCEL, CancelPrintJob(jobId=JOB_ID, force=True)),
        (MessageType.cancelPrintJob, STATUS, CancelPrintJob(jobId=JOB_ID, force=False)),
        (MessageType.getPrintJobStatus, STATUS, GetPrintJobStatus(jobId=JOB_ID)),
    ],
)
def test_mqtt5_headers_as_user_properties(
    message_type: MessageType, payload: dict[str, Any], expected: Any
) -> None:
    properties = {**typed(message_type, "corr-42"), "x-api-key": API_KEY}

    result = accepted(
        inbound(as_json(payload), properties=properties),
        a_decoder(api_keys=frozenset({API_KEY})),
    )

    assert result == DecodedCommand(
        message=expected,
        message_type=message_type,
        queue_id=QUEUE,
        correlation_id="corr-42",
        received_at=RECEIVED_AT,
    )


def test_other_user_properties_are_ignored() -> None:
    properties = {**typed(MessageType.getPrintJobStatus), "x-trace": "abc"}

    result = accepted(inbound(as_json(STATUS), properties=properties))

    assert result.message == GetPrintJobStatus(jobId=JOB_ID)


@pytest.mark.parametrize(
    ("message_type", "payload", "model"),
    [
        (MessageType.createPrintJob, CREATE, CreatePrintJob),
        (MessageType.cancelPrintJob, CANCEL, CancelPrintJob),
        (MessageType.getPrintJobStatus, STATUS, GetPrintJobStatus),
    ],
)
def test_envelope(message_type: MessageType, payload: dict[str, Any], model: type[Any]) -> None:
    headers = {
        "x-message-type": message_type.value,
        "x-correlation-id": "corr-env",
        "x-api-key": API_KEY,
    }
    body = an_envelope(payload, **headers)

    result = accepted(inbound(body), a_decoder(api_keys=frozenset({API_KEY})))

    assert result.message == model.model_validate(payload)
    assert result.message_type is message_type
    assert result.correlation_id == "corr-env"
    assert result.queue_id == QUEUE


def test_envelope_without_a_type_infers_it_from_the_payload() -> None:
    result = accepted(inbound(an_envelope(CANCEL, **{"x-correlation-id": "corr-env"})))

    assert result.message_type is MessageType.cancelPrintJob
    assert result.correlation_id == "corr-env"


def test_envelope_correlation_id_is_preferred_to_the_user_property() -> None:
    body = an_envelope(CREATE, **{"x-correlation-id": "corr-env"})

    result = accepted(inbound(body, properties={"x-correlation-id": "corr-prop"}))

    assert result.correlation_id == "corr-env"


def test_envelope_without_a_correlation_id_keeps_the_user_property() -> None:
    result = accepted(inbound(an_envelope(CREATE), properties={"x-correlation-id": "corr-prop"}))

    assert result.correlation_id == "corr-prop"


@pytest.mark.parametrize(
    "payload",
    [
        {"jobId": JOB_ID, "userId": "alice"},
        {"jobId": JOB_ID, "documentName": "a.pdf"},
        {"jobId": JOB_ID, "priority": "low"},
        CREATE,
    ],
    ids=["userId", "documentName", "priority", "all"],
)
def test_bare_create_is_inferred(payload: dict[str, Any]) -> None:
    result = accepted(inbound(as_json(payload)))

    assert result.message_type is MessageType.createPrintJob
    assert result.message == CreatePrintJob.model_validate(payload)


@pytest.mark.parametrize("force", [True, False])
def test_bare_cancel_is_inferred(force: bool) -> None:
    result = accepted(inbound(as_json({"jobId": JOB_ID, "force": force})))

    assert result.message_type is MessageType.cancelPrintJob
    assert result.message == CancelPrintJob(jobId=JOB_ID, force=force)


@pytest.mark.parametrize("encoding", ["gzip", "GZIP"])
def test_gzip_by_header(encoding: str) -> None:
    properties = {**typed(MessageType.createPrintJob), "content-encoding": encoding}

    result = accepted(inbound(gzip.compress(as_json(CREATE)), properties=properties))

    assert result.message == CreatePrintJob.model_validate(CREATE)


@pytest.mark.parametrize(
    "body", [as_json(CREATE), an_envelope(CREATE, **{"x-message-type": "createPrintJob"})]
)
def test_gzip_by_magic_bytes(body: bytes) -> None:
    result = accepted(inbound(gzip.compress(body)))

    assert result.message == CreatePrintJob.model_validate(CREATE)


def test_identity_encoding_is_accepted() -> None:
    properties = {**typed(MessageType.getPrintJobStatus), "content-encoding": "identity"}

    assert accepted(inbound(as_json(STATUS), properties=properties)).job_id == JOB_ID


def test_a_payload_exactly_at_the_size_limit_is_accepted() -> None:
    body = as_json(CREATE)

    accepted(inbound(body), a_decoder(max_bytes=len(body)))


def test_a_decompressed_payload_exactly_at_its_limit_is_accepted() -> None:
    body = as_json(CREATE)

    accepted(inbound(gzip.compress(body)), a_decoder(max_decompressed_bytes=len(body)))


# --- correlation IDs ---------------------------------------------------------------------------


def test_the_user_property_is_preferred_to_correlation_data() -> None:
    message = inbound(
        as_json(CREATE), properties={"x-correlation-id": "corr-prop"}, correlation_data=b"data"
    )

    assert accepted(message).correlation_id == "corr-prop"


def test_correlation_data_is_used_without_the_property() -> None:
    message = inbound(as_json(CREATE), correlation_data=b"corr-data")

    assert accepted(message).correlation_id == "corr-data"


def test_binary_correlation_data_is_carried_hex_encoded() -> None:
    message = inbound(as_json(CREATE), correlation_data=b"corr-\xff")

    assert accepted(message).correlation_id == "0x636f72722dff"


def test_correlation_data_too_long_for_hex_is_replaced_by_ours() -> None:
    message = inbound(as_json(CREATE), correlation_data=b"\xff" * 127)

    assert accepted(message).correlation_id == GENERATED_ID


@pytest.mark.parametrize("data", [None, b"", b"x" * 257], ids=["absent", "empty", "too-long"])
def test_a_correlation_id_is_generated_when_none_is_usable(data: bytes | None) -> None:
    assert accepted(inbound(as_json(CREATE), correlation_data=data)).correlation_id == GENERATED_ID


# --- bad input, one test per kind --------------------------------------------------------------


@pytest.mark.parametrize(("source", "correlation_id"), CORRELATION_SOURCES)
@pytest.mark.parametrize(
    "payload", [b"", b"{not json", b'{"jobId": "job-1",}', b'{"jobId": "job-1"'], ids=repr
)
def test_invalid_json(payload: bytes, source: dict[str, Any], correlation_id: str) -> None:
    rejection = rejected(inbound(payload, **source), RejectionReason.invalid_json)

    assert rejection.correlation_id == correlation_id
    assert rejection.job_id is None
    assert rejection.message_type is None


@pytest.mark.parametrize(
    ("payload", "type_name"),
    [
        (b"[]", "list"),
        (b'"job-1"', "str"),
        (b"42", "int"),
        (b"null", "NoneType"),
        (b"true", "bool"),
    ],
)
def test_json_that_is_not_an_object(payload: bytes, type_name: str) -> None:
    message = inbound(payload, properties=typed(MessageType.createPrintJob, "corr-7"))

    rejection = rejected(message, RejectionReason.invalid_json)

    assert rejection.correlation_id == "corr-7"
    assert type_name in rejection.message


def test_json_nested_too_deeply_to_read() -> None:
    # 100 kB of brackets is under the size limit, and deeper than Python's JSON reader goes.
    payload = b"[" * 100_000 + b"]" * 100_000
    message = inbound(payload, correlation_data=b"corr-deep")

    rejection = rejected(message, RejectionReason.invalid_json, a_decoder(max_bytes=1 << 20))

    assert rejection.correlation_id == "corr-deep"


def test_json_number_too_long_to_read() -> None:
    # Python refuses integers of more than 4300 digits with a ValueError of its own.
    payload = b'{"jobId": "job-1", "priority": ' + b"1" * 5000 + b"}"
    message = inbound(payload, properties={"x-correlation-id": "corr-digits"})

    rejection = rejected(message, RejectionReason.invalid_json)

    assert rejection.correlation_id == "corr-digits"


@pytest.mark.parametrize(
    ("message_type", "payload", "path"),
    [
        (MessageType.createPrintJob, {"jobId": 42}, "jobId"),
        (MessageType.createPrintJob, {"jobId": JOB_ID, "userId": 7}, "userId"),
        (MessageType.createPrintJob, {"jobId": JOB_ID, "documentName": ["a"]}, "documentName"),
        (MessageType.createPrintJob, {"jobId": JOB_ID, "priority": 1}, "priority"),
        (MessageType.cancelPrintJob, {"jobId": JOB_ID, "force": "yes"}, "force"),
        (MessageType.cancelPrintJob, {"jobId": JOB_ID, "force": None}, "force"),
        (MessageType.getPrintJobStatus, {"jobId": None}, "jobId"),
        (MessageType.createPrintJob, {"jobId": "not a valid id"}, "jobId"),
        (MessageType.createPrintJob, {"jobId": "j" * 129}, "jobId"),
        (MessageType.createPrintJob, {"jobId": JOB_ID, "userId": "u" * 257}, "userId"),
        (MessageType.createPrintJob, {"jobId": JOB_ID, "force": True}, "force"),
        (MessageType.getPrintJobStatus, {"jobId": JOB_ID, "userId": "alice"}, "userId"),
    ],
    ids=[
        "jobId-int",
        "userId-int",
        "documentName-list",
        "priority-int",
        "force-string",
        "force-null",
        "jobId-null",
        "jobId-pattern",
        "jobId-too-long",
        "userId-too-long",
        "create-with-force",
        "status-with-userId",
    ],
)
def test_wrong_types_and_values(
    message_type: MessageType, payload: dict[str, Any], path: str
) -> None:
    message = inbound(as_json(payload), properties=typed(message_type, "corr-types"))

    rejection = rejected(message, RejectionReason.schema_violation)

    assert paths(rejection) == {path}
    assert rejection.correlation_id == "corr-types"
    assert rejection.message_type == message_type.value
    assert path in rejection.message


def test_the_job_id_is_carried_even_when_it_is_invalid() -> None:
    message = inbound(as_json({"jobId": "not a valid id", "userId": "alice"}))

    rejection = rejected(message, RejectionReason.schema_violation)

    assert rejection.job_id == "not a valid id"
    assert rejection.message_type == MessageType.createPrintJob.value


def test_every_invalid_field_is_listed() -> None:
    payload = {"jobId": 42, "userId": 7, "priority": "urgent", "colour": "red"}
    message = inbound(as_json(payload), properties=typed(MessageType.createPrintJob))

    rejection = rejected(message, RejectionReason.schema_violation)

    assert paths(rejection) == {"jobId", "userId", "priority", "colour"}
    assert all(error.message for error in rejection.errors)
    assert rejection.job_id is None  # 42 is not a job id


@pytest.mark.parametrize(
    "message_type",
    [
        t
        for t in MessageType
        if t
        not in (MessageType.getPrintCounts, MessageType.listPrintJobs, MessageType.getPrinterStatus)
    ],
)
def test_missing_job_id(message_type: MessageType) -> None:
    message = inbound(as_json({}), properties=typed(message_type, "corr-missing"))

    rejection = rejected(message, RejectionReason.schema_violation)

    # A move needs its target too.
    also = {"toQueue"} if message_type is MessageType.movePrintJob else set()
    assert paths(rejection) == {"jobId"} | also
    assert rejection.correlation_id == "corr-missing"
    assert rejection.job_id is None
    assert rejection.message_type == message_type.value


def test_unknown_priority() -> None:
    message = inbound(
        as_json({"jobId": JOB_ID, "priority": "urgent"}), correlation_data=b"corr-prio"
    )

    rejection = rejected(message, RejectionReason.schema_violation)

    assert paths(rejection) == {"priority"}
    assert rejection.correlation_id == "corr-prio"
    assert rejection.job_id == JOB_ID
    assert rejection.message_type == MessageType.createPrintJob.value


@pytest.mark.parametrize(
    "payload",
    [
        {"jobId": JOB_ID},
        {"jobId": JOB_ID, "force": True, "userId": "alice"},
        {"jobId": JOB_ID, "force": False, "documentName": "a.pdf"},
        {"jobId": JOB_ID, "force": True, "priority": "high"},
        {"jobId": JOB_ID, "colour": "red"},
    ],
    ids=["no-hints", "force-and-userId", "force-and-documentName", "force-and-priority", "unknown"],
)
def test_ambiguous_bare_payload(payload: dict[str, Any]) -> None:
    message = inbound(as_json(payload), properties={"x-correlation-id": "corr-amb"})

    rejection = rejected(message, RejectionReason.ambiguous_command)

    assert rejection.correlation_id == "corr-amb"
    assert rejection.job_id == JOB_ID
    assert rejection.message_type is None


def test_ambiguous_payload_in_an_envelope_without_a_type() -> None:
    body = an_envelope({"jobId": JOB_ID}, **{"x-correlation-id": "corr-env"})

    rejection = rejected(inbound(body), RejectionReason.ambiguous_command)

    assert rejection.correlation_id == "corr-env"
    assert rejection.job_id == JOB_ID


def test_unknown_message_type_in_a_user_property() -> None:
    properties = {"x-message-type": "deletePrintJob", "x-correlation-id": "corr-type"}

    rejection = rejected(
        inbound(as_json(STATUS), properties=properties), RejectionReason.unknown_message_type
    )

    assert rejection.correlation_id == "corr-type"
    assert rejection.message_type == "deletePrintJob"
    assert rejection.job_id == JOB_ID


def test_unknown_message_type_in_an_envelope() -> None:
    # The same command as above, from an MQTT 3.1.1 client: the same answer is due.
    body = an_envelope(
        STATUS, **{"x-message-type": "deletePrintJob", "x-correlation-id": "corr-type"}
    )

    rejection = rejected(inbound(body), RejectionReason.unknown_message_type)

    assert rejection.correlation_id == "corr-type"
    assert rejection.message_type == "deletePrintJob"
    assert rejection.job_id == JOB_ID


KEYS = frozenset({API_KEY, "key-two"})


def test_missing_api_key() -> None:
    message = inbound(as_json(CREATE), properties=typed(MessageType.createPrintJob, "corr-auth"))

    rejection = rejected(message, RejectionReason.unauthorized, a_decoder(api_keys=KEYS))

    assert rejection.correlation_id == "corr-auth"
    assert "missing" in rejection.message
    # Authenticated before the payload is read: an unauthenticated sender learns nothing.
    assert rejection.job_id is None
    assert rejection.message_type is None


@pytest.mark.parametrize("key", ["wrong", "", "key-on", "key-one ", "KEY-ONE"])
def test_wrong_api_key(key: str) -> None:
    properties = {**typed(MessageType.createPrintJob, "corr-auth"), "x-api-key": key}

    rejection = rejected(
        inbound(as_json(CREATE), properties=properties),
        RejectionReason.unauthorized,
        a_decoder(api_keys=KEYS),
    )

    assert rejection.correlation_id == "corr-auth"
    assert rejection.job_id is None


def test_wrong_api_key_in_an_envelope() -> None:
    body = an_envelope(CREATE, **{"x-api-key": "wrong", "x-correlation-id": "corr-env"})

    rejection = rejected(inbound(body), RejectionReason.unauthorized, a_decoder(api_keys=KEYS))

    assert rejection.correlation_id == "corr-env"
    assert rejection.job_id is None


def test_auth_comes_before_the_payload_schema() -> None:
    # An unauthenticated sender learns nothing about what a valid payload looks like.
    message = inbound(as_json({"jobId": 42}), properties=typed(MessageType.createPrintJob))

    rejected(message, RejectionReason.unauthorized, a_decoder(api_keys=KEYS))


@pytest.mark.parametrize("key", sorted(KEYS))
def test_any_configured_api_key_is_accepted(key: str) -> None:
    properties = {**typed(MessageType.createPrintJob), "x-api-key": key}

    accepted(inbound(as_json(CREATE), properties=properties), a_decoder(api_keys=KEYS))


def test_an_api_key_in_the_envelope_is_accepted() -> None:
    body = an_envelope(CREATE, **{"x-api-key": "key-two"})

    accepted(inbound(body), a_decoder(api_keys=KEYS))


@pytest.mark.parametrize("properties", [{}, {"x-api-key": "anything"}], ids=["no-key", "a-key"])
def test_any_key_or_none_is_accepted_when_auth_is_disabled(properties: dict[str, str]) -> None:
    decoder = a_decoder(api_keys=None)

    accepted(inbound(as_json(CREATE), properties=properties), decoder)
    assert decoder.auth_enabled is False


@pytest.mark.parametrize("properties", [{}, {"x-api-key": "anything"}], ids=["no-key", "a-key"])
def test_no_configured_key_refuses_every_command(properties: dict[str, str]) -> None:
    # Fail closed: a keys file emptied to revoke every key lets nobody in.
    decoder = a_decoder(api_keys=frozenset())

    rejected(inbound(as_json(CREATE), properties=properties), RejectionReason.unauthorized, decoder)
    assert decoder.auth_enabled is True


def test_auth_is_enabled_by_configured_keys() -> None:
    assert a_decoder(api_keys=KEYS).auth_enabled is True


@pytest.mark.parametrize(("source", "correlation_id"), CORRELATION_SOURCES)
def test_over_size_raw_payload(source: dict[str, Any], correlation_id: str) -> None:
    body = as_json(CREATE)

    rejection = rejected(
        inbound(body, **source),
        RejectionReason.payload_too_large,
        a_decoder(max_bytes=len(body) - 1),
    )

    assert rejection.correlation_id == correlation_id
    assert str(len(body)) in rejection.message


def test_over_size_decompressed_payload() -> None:
    body = as_json(CREATE)
    message = inbound(gzip.compress(body), properties={"x-correlation-id": "corr-big"})

    rejection = rejected(
        message,
        RejectionReason.payload_too_large,
        a_decoder(max_decompressed_bytes=len(body) - 1),
    )

    assert rejection.correlation_id == "corr-big"


@pytest.mark.parametrize(("source", "correlation_id"), CORRELATION_SOURCES)
@pytest.mark.parametrize(
    "properties",
    [{}, {"content-encoding": "gzip"}],
    ids=["by-magic", "by-header"],
)
def test_corrupt_gzip(
    properties: dict[str, str], source: dict[str, Any], correlation_id: str
) -> None:
    compressed = bytearray(gzip.compress(as_json(CREATE)))
    compressed[10:18] = b"\xff" * 8  # garble the deflate stream right after the header
    source_properties = source.get("properties", {})
    message = inbound(
        bytes(compressed),
        properties={**properties, **source_properties},
        correlation_data=source.get("correlation_data"),
    )

    rejection = rejected(message, RejectionReason.invalid_encoding)

    assert rejection.correlation_id == correlation_id
    assert "gzip" in rejection.message


def test_a_gzip_header_on_a_plain_payload() -> None:
    properties = {**typed(MessageType.createPrintJob, "corr-gz"), "content-encoding": "gzip"}

    rejection = rejected(
        inbound(as_json(CREATE), properties=properties), RejectionReason.invalid_encoding
    )

    assert rejection.correlation_id == "corr-gz"


@pytest.mark.parametrize("keep", [2, 10, 20, -8, -1], ids=lambda n: f"keep[:{n}]")
def test_truncated_gzip(keep: int) -> None:
    compressed = gzip.compress(as_json(CREATE))
    message = inbound(compressed[:keep], correlation_data=b"corr-trunc")

    rejection = rejected(message, RejectionReason.invalid_encoding)

    assert rejection.correlation_id == "corr-trunc"


def test_data_after_the_gzip_stream() -> None:
    message = inbound(
        gzip.compress(as_json(CREATE)) + b"trailing", properties={"x-correlation-id": "corr-tail"}
    )

    rejection = rejected(message, RejectionReason.invalid_encoding)

    assert rejection.correlation_id == "corr-tail"


def test_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip_bomb()
    assert len(bomb) < MAX_BYTES * 2  # small on the wire...
    decoder = a_decoder(max_bytes=1 << 20, max_decompressed_bytes=4 << 20)
    message = inbound(bomb, properties={"x-correlation-id": "corr-bomb"})

    tracemalloc.start()
    try:
        result = decoder.decode(message)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert isinstance(result, Rejection)
    assert result.reason is RejectionReason.payload_too_large
    assert result.correlation_id == "corr-bomb"
    # ...and it stops at the cap: nowhere near the 50 MB it would inflate to.
    assert peak < 16 << 20


@pytest.mark.parametrize(
    "payload",
    [b'{"jobId": "job-\xff"}', b'{"jobId": "\xc3\x28"}', b"\xef\xbb", b'{"jobId": "\xed\xa0\x80"}'],
    ids=["0xff", "bad-continuation", "truncated-sequence", "surrogate"],
)
def test_invalid_utf8(payload: bytes) -> None:
    message = inbound(payload, properties=typed(MessageType.createPrintJob, "corr-utf"))

    rejection = rejected(message, RejectionReason.invalid_encoding)

    assert rejection.correlation_id == "corr-utf"
    assert "UTF-8" in rejection.message


def test_invalid_utf8_inside_gzip() -> None:
    message = inbound(gzip.compress(b'{"jobId": "\xff"}'), correlation_data=b"corr-utf")

    rejection = rejected(message, RejectionReason.invalid_encoding)

    assert rejection.correlation_id == "corr-utf"


@pytest.mark.parametrize("encoding", ["br", "deflate", "compress", "x-gzip", "gzip, br"])
def test_unsupported_content_encoding(encoding: str) -> None:
    properties = {**typed(MessageType.createPrintJob, "corr-enc"), "content-encoding": encoding}

    rejection = rejected(
        inbound(as_json(CREATE), properties=properties), RejectionReason.invalid_encoding
    )

    assert rejection.correlation_id == "corr-enc"
    assert encoding in rejection.message


def test_identity_encoding_does_not_gunzip() -> None:
    properties = {"content-encoding": "identity", "x-correlation-id": "corr-id"}

    rejection = rejected(
        inbound(gzip.compress(as_json(CREATE)), properties=properties),
        RejectionReason.invalid_encoding,
    )

    assert rejection.correlation_id == "corr-id"


def test_envelope_with_extra_keys_and_the_correlation_id_in_a_property() -> None:
    body = as_json({"headers": {}, "payload": CREATE, "extra": 1})
    message = inbound(body, properties={"x-correlation-id": "corr-prop"})

    rejection = rejected(message, RejectionReason.schema_violation)

    assert paths(rejection) == {"extra"}
    assert rejection.correlation_id == "corr-prop"


def test_envelope_with_extra_keys_and_the_correlation_id_in_its_headers() -> None:
    # The contract puts an MQTT 3.1.1 client's correlation ID at payload#/headers/x-correlation-id;
    # an extra key elsewhere does not stop it being read, and the sender needs it.
    body = as_json({"headers": {"x-correlation-id": "corr-env"}, "payload": CREATE, "extra": 1})

    rejection = rejected(inbound(body), RejectionReason.schema_violation)

    assert paths(rejection) == {"extra"}
    assert rejection.correlation_id == "corr-env"
    assert rejection.job_id == JOB_ID


@pytest.mark.parametrize(
    ("envelope", "path"),
    [
        ({"headers": {"x-api-key": 5}, "payload": CREATE}, "headers.x-api-key"),
        ({"headers": {"x-correlation-id": ""}, "payload": CREATE}, "headers.x-correlation-id"),
        ({"headers": {}, "payload": "job-1"}, "payload"),
        ({"headers": {}}, "payload"),
        ({"payload": CREATE}, "headers"),
        ({"headers": [], "payload": CREATE}, "headers"),
    ],
)
def test_invalid_envelope(envelope: dict[str, Any], path: str) -> None:
    message = inbound(as_json(envelope), correlation_data=b"corr-data")

    rejection = rejected(message, RejectionReason.schema_violation)

    assert paths(rejection) == {path}
    assert rejection.correlation_id == "corr-data"


def test_invalid_payload_in_an_envelope() -> None:
    body = an_envelope(
        {"jobId": JOB_ID, "priority": "urgent"},
        **{"x-message-type": "createPrintJob", "x-correlation-id": "corr-env"},
    )

    rejection = rejected(inbound(body), RejectionReason.schema_violation)

    assert paths(rejection) == {"priority"}
    assert rejection.correlation_id == "corr-env"
    assert rejection.job_id == JOB_ID
    assert rejection.message_type == MessageType.createPrintJob.value


def test_an_over_long_correlation_id_property_is_a_header_violation() -> None:
    properties = typed(MessageType.createPrintJob, "c" * 257)

    rejection = rejected(
        inbound(as_json(CREATE), properties=properties), RejectionReason.schema_violation
    )

    assert paths(rejection) == {"headers.x-correlation-id"}
    # The ID is too long to echo back, so the sender gets a fresh one.
    assert rejection.correlation_id == GENERATED_ID


@pytest.mark.parametrize("topic", ["commands/bad queue", "commands/"])
def test_a_queue_id_the_contract_does_not_allow(topic: str) -> None:
    # QueueId has the JobId pattern: it ends up in every event's `queueId`, which must match it.
    message = inbound(as_json(CREATE), topic=topic, properties={"x-correlation-id": "corr-q"})

    result = decode(message)

    assert isinstance(result, Rejection), result
    assert result.reason is RejectionReason.schema_violation
    assert result.correlation_id == "corr-q"
    assert result.queue_id == topic.rpartition("/")[2]


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(("max_bytes", "max_decompressed"), [(0, 10), (10, 0), (-1, 10)])
def test_limits_must_be_positive(max_bytes: int, max_decompressed: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        a_decoder(max_bytes=max_bytes, max_decompressed_bytes=max_decompressed)


# --- documents, updates and counts ----------------------------------------------------------------

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"


def test_an_inline_document_is_decoded_from_base64() -> None:
    payload = {
        "jobId": JOB_ID,
        "document": {"contentType": "application/pdf", "data": base64.b64encode(PDF).decode()},
    }

    result = accepted(inbound(as_json(payload), properties=typed(MessageType.createPrintJob)))

    assert result.document == PDF
    assert isinstance(result.message, CreatePrintJob)
    assert isinstance(result.message.document, InlineDocument)


def test_a_url_document_has_no_bytes_yet() -> None:
    document = {"contentType": "application/pdf", "url": "https://files.example.com/a.pdf"}
    payload = {"jobId": JOB_ID, "document": document}

    result = accepted(inbound(as_json(payload), properties=typed(MessageType.createPrintJob)))

    assert result.document is None
    assert isinstance(result.message, CreatePrintJob)
    assert isinstance(result.message.document, UrlDocument)


@pytest.mark.parametrize(
    ("document", "path_part"),
    [
        ({"contentType": "application/pdf", "data": "JVBERi0xLjQ"}, "document.data"),
        ({"contentType": "application/pdf", "data": "not base64!"}, "document"),
        ({"contentType": "application/pdf"}, "document"),
        ({"contentType": "pdf", "data": "JVBERi0xLjQK"}, "document"),
        ({"contentType": "application/pdf", "url": "ftp://files.example.com/a.pdf"}, "document"),
        (
            {"contentType": "application/pdf", "data": "JVBERi0xLjQK", "url": "https://x/a"},
            "document",
        ),
    ],
    ids=["bad-padding", "bad-alphabet", "neither", "bad-type", "not-http", "both"],
)
def test_a_bad_document_is_a_schema_violation(document: dict[str, str], path_part: str) -> None:
    payload = {"jobId": JOB_ID, "document": document}
    message = inbound(as_json(payload), properties=typed(MessageType.createPrintJob, "corr-doc"))

    rejection = rejected(message, RejectionReason.schema_violation)

    assert any(path.startswith(path_part) for path in paths(rejection)), paths(rejection)
    assert (rejection.correlation_id, rejection.job_id) == ("corr-doc", JOB_ID)


@pytest.mark.parametrize(
    "options",
    [
        {"sides": "duplex"},
        {"colorMode": "rainbow"},
        {"pageRanges": []},
        {"pageRanges": [{"start": 0, "end": 1}]},
        {"orientation": 4},
        {"quality": "best"},
        {"media": "A4 paper"},
        {"staple": True},
    ],
)
def test_an_option_outside_the_contract_is_a_schema_violation(options: dict[str, Any]) -> None:
    payload = {"jobId": JOB_ID, "options": options}

    rejection = rejected(
        inbound(as_json(payload), properties=typed(MessageType.createPrintJob)),
        RejectionReason.schema_violation,
    )

    assert all(path.startswith("options") for path in paths(rejection)), paths(rejection)


def test_update_is_decoded() -> None:
    payload = {"jobId": JOB_ID, "priority": "low", "options": {"quality": "draft"}}

    result = accepted(inbound(as_json(payload), properties=typed(MessageType.updatePrintJob)))

    assert result.message == UpdatePrintJob.model_validate(payload)
    assert result.job_id == JOB_ID


def test_counts_query_is_decoded_and_has_no_job_id() -> None:
    result = accepted(inbound(as_json({}), properties=typed(MessageType.getPrintCounts)))

    assert result.message == GetPrintCounts()
    assert result.job_id is None
    assert result.queue_id == QUEUE


def test_counts_query_takes_no_fields() -> None:
    message = inbound(as_json({"jobId": JOB_ID}), properties=typed(MessageType.getPrintCounts))

    rejection = rejected(message, RejectionReason.schema_violation)

    assert paths(rejection) == {"jobId"}


@pytest.mark.parametrize("field", ["title", "copies", "options", "document", "expireAfter"])
def test_a_bare_payload_with_a_print_field_is_a_create(field: str) -> None:
    values = {
        "title": "T",
        "copies": 2,
        "options": {},
        "document": {"contentType": "text/plain", "data": "aGk="},
        "expireAfter": "2030-01-01T00:00:00Z",
    }

    result = accepted(inbound(as_json({"jobId": JOB_ID, field: values[field]})))

    assert result.message_type is MessageType.createPrintJob
