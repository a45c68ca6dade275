"""Turn a raw MQTT command into a validated command, or into a rejection that says why not.

Order of the checks, each of which ends the decoding with its own reason:
size → API key and its rate (MQTT 5 user property) → content encoding (gzip, capped) →
UTF-8 → JSON object (no lone surrogates) → envelope → API key and its rate (envelope) →
retained → message type (header, or inferred from a bare payload) → queueId → headers →
the key's scope and queues → payload schema → what the payload names that the key must be
allowed (a create's jobId, a move's target queue).
Authentication comes before anything that costs: a caller without a key learns nothing
else; a key over its rate is refused before its command is parsed (when the key is an MQTT 5
user property); what a key may do is checked once the command's type is known.

`decode` never raises, for any bytes, topic, header value or length: what it cannot turn
into a command becomes a `Rejection`, an unexpected failure one with `internal_error` (and
the exception, for the log). Pure: no I/O; ids and keys come in from the caller.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from service.core.access import AccessControl, ApiKey, Unauthorized
from service.core.text import capped, contains_surrogate, describe, is_correlation_id
from service.core.tracecontext import TraceContext, trace_context
from service.models import (
    CancelPrintJob,
    CommandEnvelope,
    CommandHeaders,
    CreatePrintJob,
    FieldError,
    GetPrintCounts,
    GetPrinterStatus,
    GetPrintJobStatus,
    HoldIndefinite,
    InlineDocument,
    ListPrintJobs,
    MessageType,
    MovePrintJob,
    PrintJobEvent,
    RejectionReason,
    ReleasePrintJob,
    UpdatePrintJob,
)

__all__ = [
    "Command",
    "CommandDecoder",
    "DecodedCommand",
    "Inbound",
    "Rejection",
    "valid_queue_id",
]

Command = (
    CreatePrintJob
    | CancelPrintJob
    | GetPrintJobStatus
    | UpdatePrintJob
    | GetPrintCounts
    | MovePrintJob
    | ListPrintJobs
    | GetPrinterStatus
    | ReleasePrintJob
)

MODEL_BY_TYPE: Final[dict[MessageType, type[Command]]] = {
    MessageType.createPrintJob: CreatePrintJob,
    MessageType.cancelPrintJob: CancelPrintJob,
    MessageType.getPrintJobStatus: GetPrintJobStatus,
    MessageType.updatePrintJob: UpdatePrintJob,
    MessageType.getPrintCounts: GetPrintCounts,
    MessageType.movePrintJob: MovePrintJob,
    MessageType.listPrintJobs: ListPrintJobs,
    MessageType.getPrinterStatus: GetPrinterStatus,
    MessageType.releasePrintJob: ReleasePrintJob,
}
GZIP_MAGIC: Final = b"\x1f\x8b"
CREATE_ONLY_FIELDS: Final = frozenset(
    {
        "userId",
        "documentName",
        "priority",
        "document",
        "title",
        "copies",
        "options",
        "expireAfter",
        "hold",
        "releasePin",
    }
)
MESSAGE_TYPES: Final = frozenset(t.value for t in MessageType)
# Binary MQTT 5 correlation data is echoed as 0x + hex, within the 255 bytes of AMQP.
CORRELATION_DATA_HEX_MAX: Final = 126
MAX_FIELD_ERRORS: Final = 20
FIELD_TEXT_MAX: Final = 255
_PRINTABLE_DATA: Final = re.compile(rb"[ -~]+")
# W3C Trace Context headers: read apart from the others, since a bad one is ignored, never
# a reason to reject the command (the contract's pattern would make it one).
TRACE_HEADERS: Final = ("traceparent", "tracestate")

_M = TypeVar("_M", bound=BaseModel)

# The queueId constraint, as the generated model has it (the topic's last level is the queueId).
QUEUE_ID: Final = TypeAdapter(Annotated[(str, *PrintJobEvent.model_fields["queueId"].metadata)])


@dataclass(frozen=True, slots=True, kw_only=True)
class Inbound:
    """One command as it came off the wire, whatever the transport."""

    topic: str
    payload: bytes
    # MQTT 5 user properties (names lower-cased); empty for MQTT 3.1.1.
    properties: Mapping[str, str] = field(default_factory=dict)
    correlation_data: bytes | None = None
    received_at: float = 0.0
    # Sent by the broker as a retained message (on subscription), not as it was published.
    retained: bool = False
    # The broker sent it before and it was not acknowledged (MQTT's DUP flag).
    redelivered: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodedCommand:
    message: Command
    message_type: MessageType
    queue_id: str
    correlation_id: str
    received_at: float
    # The inline document's bytes, decoded from base64 (createPrintJob only).
    document: bytes | None = None
    # The sender's trace context (read only when tracing is on), and whether it sent one
    # that was not valid (ignored).
    trace: TraceContext | None = None
    trace_invalid: bool = False

    @property
    def job_id(self) -> str | None:
        """The command's jobId; `getPrintCounts` and `listPrintJobs` have none."""
        return getattr(self.message, "jobId", None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    reason: RejectionReason
    message: str
    queue_id: str
    correlation_id: str
    received_at: float
    job_id: str | None = None
    message_type: str | None = None
    errors: tuple[FieldError, ...] = ()
    # `rate_limited`: the seconds to wait before the key's next command is taken.
    retry_after: float | None = None
    # What failed, for `internal_error`: logged with its traceback, never echoed.
    cause: BaseException | None = field(default=None, compare=False)
    trace: TraceContext | None = None
    trace_invalid: bool = False


def valid_queue_id(queue_id: str) -> bool:
    """Whether `queue_id` is one the contract allows (and so a safe routing key part)."""
    try:
        QUEUE_ID.validate_python(queue_id)
    except ValidationError:
        return False
    return True


class _Rejected(Exception):  # noqa: N818 - internal control flow, never escapes this module
    def __init__(
        self,
        reason: RejectionReason,
        message: str,
        errors: tuple[FieldError, ...] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.errors = errors
        self.retry_after = retry_after


@dataclass(slots=True)
class _Partial:
    """What is known so far about a command, for the rejection if one comes."""

    correlation_id: str
    job_id: str | None = None
    message_type: str | None = None
    # The key the command was authenticated with, and its text (to tell a second one).
    key: ApiKey | None = None
    presented: str | None = None
    trace: TraceContext | None = None
    trace_invalid: bool = False

    def note_trace(self, headers: Mapping[str, Any]) -> None:
        """Take the trace context of `headers`, if they carry one (a later valid one wins)."""
        value = headers.get("traceparent")
        if value is None:
            return
        found = trace_context(value, headers.get("tracestate"))
        if found is None:
            self.trace_invalid = True
        else:
            self.trace = found


class CommandDecoder:
    """Decodes and validates commands; configured once with the limits and the API keys
    (`access`: None when auth is disabled; its keys may be replaced while it decodes)."""

    def __init__(
        self,
        *,
        max_bytes: int,
        max_decompressed_bytes: int,
        access: AccessControl | None,
        new_id: Callable[[], str],
        read_trace: bool = False,
    ) -> None:
        """`read_trace`: keep the commands' W3C trace context (tracing is on); without it,
        the trace headers are dropped unread."""
        if max_bytes <= 0 or max_decompressed_bytes <= 0:
            raise ValueError("size limits must be positive")
        self._max_bytes = max_bytes
        self._max_decompressed = max_decompressed_bytes
        self._access = access
        self._new_id = new_id
        self._read_trace = read_trace

    @property
    def auth_enabled(self) -> bool:
        return self._access is not None

    def decode(self, inbound: Inbound) -> DecodedCommand | Rejection:
        """The command, or why not; never raises."""
        queue_id = inbound.topic.rpartition("/")[2] if isinstance(inbound.topic, str) else ""
        partial = _Partial(correlation_id="")
        try:
            partial.correlation_id = self._correlation_id(inbound.properties, inbound)
            if self._read_trace:
                partial.note_trace(inbound.properties)
            return self._decode(inbound, queue_id, partial)
        except _Rejected as rejected:
            return self._rejection(inbound, queue_id, partial, rejected)
        except Exception as exc:  # noqa: BLE001 - a bug must cost this message only
            failed = _Rejected(
                RejectionReason.internal_error,
                f"the service could not decode the command ({type(exc).__name__})",
            )
            return self._rejection(inbound, queue_id, partial, failed, cause=exc)

    def _rejection(
        self,
        inbound: Inbound,
        queue_id: str,
        partial: _Partial,
        rejected: _Rejected,
        cause: BaseException | None = None,
    ) -> Rejection:
        return Rejection(
            reason=rejected.reason,
            message=rejected.message,
            errors=rejected.errors,
            retry_after=rejected.retry_after,
            queue_id=queue_id,
            correlation_id=partial.correlation_id or self._new_id(),
            received_at=inbound.received_at,
            job_id=partial.job_id,
            message_type=partial.message_type,
            cause=cause,
            trace=partial.trace,
            trace_invalid=partial.trace_invalid,
        )

    def _decode(self, inbound: Inbound, queue_id: str, partial: _Partial) -> DecodedCommand:
        if len(inbound.payload) > self._max_bytes:
            raise _Rejected(
                RejectionReason.payload_too_large,
                f"message is {len(inbound.payload)} bytes; the limit is {self._max_bytes}",
            )
        if "x-api-key" in inbound.properties:
            self._authenticate(inbound.properties["x-api-key"], inbound, partial)
        body = self._parse(inbound, partial)
        raw_headers: dict[str, Any] = dict(inbound.properties)
        if "content-encoding" in raw_headers:
            raw_headers["content-encoding"] = raw_headers["content-encoding"].lower()
        if "headers" in body or "payload" in body:
            # Read what the envelope says of itself before validating it, so that even a
            # rejected envelope is answered with its sender's correlation id and type.
            if isinstance(envelope_headers := body.get("headers"), dict):
                raw_headers.update(envelope_headers)
                partial.correlation_id = self._correlation_id(raw_headers, inbound)
                if self._read_trace:
                    partial.note_trace(envelope_headers)
                _drop_trace(envelope_headers)
            self._authenticate(raw_headers.get("x-api-key"), inbound, partial)
            if isinstance(envelope_payload := body.get("payload"), dict):
                _note_job_id(partial, envelope_payload)
            _check_type(raw_headers, partial)
            body = _validate(CommandEnvelope, body, prefix="").payload
        else:
            self._authenticate(raw_headers.get("x-api-key"), inbound, partial)
        _note_job_id(partial, body)
        if inbound.retained:
            raise _Rejected(
                RejectionReason.retained_command,
                "a retained command is never applied (it would be applied again on every "
                "subscription); publish it without the retain flag, and clear the retained "
                "one with an empty retained message",
            )
        _check_type(raw_headers, partial)
        _check_queue_id(queue_id)
        _drop_trace(raw_headers)
        headers = _validate(CommandHeaders, raw_headers, prefix="headers.")
        message_type = headers.x_message_type or _infer_type(body)
        partial.message_type = message_type.value
        self._authorize(partial, queue_id, message_type)
        message = _validate(MODEL_BY_TYPE[message_type], body, prefix="")
        if isinstance(message, CreatePrintJob):
            self._authorize_create(partial, message.jobId)
            _check_release_pin(message)
        elif isinstance(message, MovePrintJob):
            self._authorize_move(partial, message.toQueue)
        return DecodedCommand(
            message=message,
            message_type=message_type,
            queue_id=queue_id,
            correlation_id=partial.correlation_id,
            received_at=inbound.received_at,
            document=_inline_document(message),
            trace=partial.trace,
            trace_invalid=partial.trace_invalid,
        )

    def _parse(self, inbound: Inbound, partial: _Partial) -> dict[str, Any]:
        data = inbound.payload
        encoding = inbound.properties.get("content-encoding", "").lower()
        if encoding not in ("", "gzip", "identity"):
            raise _Rejected(
                RejectionReason.invalid_encoding,
                f"unsupported content-encoding {describe(encoding)}",
            )
        if encoding == "gzip" or (encoding == "" and data.startswith(GZIP_MAGIC)):
            data = self._gunzip(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Rejected(
                RejectionReason.invalid_encoding, f"payload is not UTF-8: {exc.reason}"
            ) from exc
        try:
            body = json.loads(text)
        except (ValueError, RecursionError) as exc:
            # ValueError: malformed, or an integer too long to convert; RecursionError: nested
            # deeper than the parser goes. Both are the sender's JSON, not our failure.
            detail = capped(str(exc), 200)
            raise _Rejected(RejectionReason.invalid_json, f"invalid JSON: {detail}") from exc
        if not isinstance(body, dict):
            raise _Rejected(
                RejectionReason.invalid_json,
                f"a command is a JSON object, not {type(body).__name__}",
            )
        if "\\u" in text and contains_surrogate(body):
            payload = body.get("payload")
            _note_job_id(partial, payload if isinstance(payload, dict) else body)
            raise _Rejected(
                RejectionReason.invalid_encoding,
                "the JSON holds a lone surrogate (a \\ud800-\\udfff escape that is not "
                "part of a pair): it is not Unicode text",
            )
        return body

    def _gunzip(self, data: bytes) -> bytes:
        # A decompressor with an output cap: a gzip bomb stops at the limit, not in memory.
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(data, self._max_decompressed + 1)
        except zlib.error as exc:
            raise _Rejected(RejectionReason.invalid_encoding, f"corrupt gzip: {exc}") from exc
        if len(out) > self._max_decompressed:
            raise _Rejected(
                RejectionReason.payload_too_large,
                f"decompressed payload exceeds {self._max_decompressed} bytes",
            )
        if not inflater.eof:
            raise _Rejected(RejectionReason.invalid_encoding, "corrupt gzip: truncated stream")
        if inflater.unused_data:
            raise _Rejected(
                RejectionReason.invalid_encoding, "corrupt gzip: data after the end of the stream"
            )
        return out

    def _authenticate(self, presented: object, inbound: Inbound, partial: _Partial) -> None:
        """Who sent the command, charged one command of its rate; else rejected.

        A command carries one key: the envelope's, or the MQTT 5 user property, or both
        the same (a second, different key is refused: which one would it act as?)."""
        if self._access is None:
            return
        if partial.key is not None:
            if presented != partial.presented:
                raise _Rejected(
                    RejectionReason.unauthorized, "the command carries two different x-api-key"
                )
            return
        key = self._access.authenticate(presented)
        if isinstance(key, Unauthorized):
            raise _Rejected(RejectionReason.unauthorized, key.message)
        partial.key, partial.presented = key, str(presented)
        # Every command a key sends counts, whatever becomes of it: each costs the service.
        if limited := self._access.admit(key, inbound.received_at):
            raise _Rejected(
                RejectionReason.rate_limited, limited.message, retry_after=limited.retry_after
            )

    def _authorize(self, partial: _Partial, queue_id: str, message_type: MessageType) -> None:
        if self._access is None:
            return
        if partial.key is None:  # unreachable: every path authenticates; fail closed anyway
            raise _Rejected(RejectionReason.unauthorized, "x-api-key is missing")
        if forbidden := self._access.authorize(partial.key, queue_id, message_type):
            raise _Rejected(RejectionReason.forbidden, forbidden.message)

    def _authorize_create(self, partial: _Partial, job_id: str) -> None:
        if self._access is None or partial.key is None:
            return
        if forbidden := self._access.may_create(partial.key, job_id):
            raise _Rejected(RejectionReason.forbidden, forbidden.message)

    def _authorize_move(self, partial: _Partial, to_queue: str) -> None:
        # The target is in the payload: only a validated one is a queueId to check.
        if self._access is None or partial.key is None:
            return
        if forbidden := self._access.may_move_to(partial.key, to_queue):
            raise _Rejected(RejectionReason.forbidden, forbidden.message)

    def _correlation_id(self, headers: Mapping[str, Any], inbound: Inbound) -> str:
        """The sender's id for its command, in the contract's form: the header; else MQTT 5
        correlation data, as it is when printable ASCII, else hex; else one of ours."""
        value = headers.get("x-correlation-id")
        if isinstance(value, str) and is_correlation_id(value):
            return value
        data = inbound.correlation_data
        if isinstance(data, bytes) and data:
            if len(data) <= 255 and _PRINTABLE_DATA.fullmatch(data):
                return data.decode("ascii")
            if len(data) <= CORRELATION_DATA_HEX_MAX:
                return "0x" + data.hex()
        return self._new_id()


def _note_job_id(partial: _Partial, body: Mapping[str, Any]) -> None:
    job_id = body.get("jobId")
    partial.job_id = job_id if isinstance(job_id, str) else None


def _drop_trace(headers: dict[str, Any]) -> None:
    for name in TRACE_HEADERS:
        headers.pop(name, None)


def _check_type(headers: Mapping[str, Any], partial: _Partial) -> None:
    raw_type = headers.get("x-message-type")
    if raw_type is None:
        return
    partial.message_type = raw_type if isinstance(raw_type, str) else None
    if not isinstance(raw_type, str) or raw_type not in MESSAGE_TYPES:
        raise _Rejected(
            RejectionReason.unknown_message_type,
            f"x-message-type {describe(raw_type)} is not one of {', '.join(sorted(MESSAGE_TYPES))}",
        )


def _check_queue_id(queue_id: str) -> None:
    try:
        QUEUE_ID.validate_python(queue_id)
    except ValidationError as exc:
        message = exc.errors(include_url=False)[0]["msg"]
        raise _Rejected(
            RejectionReason.schema_violation,
            f"queueId {describe(queue_id)} (the topic's last level) is invalid: {message}",
            (FieldError(path="queueId", message=message),),
        ) from exc


def _check_release_pin(message: CreatePrintJob) -> None:
    """A PIN is for a person at the printer: a job that could print by itself (a hold
    time, or none) would leave the document in the tray for anyone. What the schema cannot
    say (one field's presence depending on another's value) is said here."""
    if message.releasePin is not None and message.hold is not HoldIndefinite.indefinite:
        problem = "a job with a releasePin is released only with it: `hold` must be `indefinite`"
        raise _Rejected(
            RejectionReason.schema_violation,
            f"invalid CreatePrintJob: releasePin: {problem}",
            (FieldError(path="releasePin", message=problem),),
        )


def _infer_type(body: Mapping[str, Any]) -> MessageType:
    """The type of a bare payload, only where it cannot be mistaken for another."""
    is_cancel = "force" in body
    is_create = not CREATE_ONLY_FIELDS.isdisjoint(body)
    if is_cancel and not is_create:
        return MessageType.cancelPrintJob
    if is_create and not is_cancel:
        return MessageType.createPrintJob
    raise _Rejected(
        RejectionReason.ambiguous_command,
        "cannot tell the command type: send an x-message-type header "
        "(or an envelope); a bare payload needs `force` (cancel) or one of "
        "userId/documentName/priority/document/title/copies/options/expireAfter/hold/"
        "releasePin (create), "
        "not both",
    )


def _inline_document(message: Command) -> bytes | None:
    if not isinstance(message, CreatePrintJob) or not isinstance(message.document, InlineDocument):
        return None
    try:
        return base64.b64decode(message.document.data, validate=True)
    except binascii.Error as exc:
        raise _Rejected(
            RejectionReason.schema_violation,
            f"invalid CreatePrintJob: document.data is not base64: {exc}",
            (FieldError(path="document.data", message=f"not base64: {exc}"),),
        ) from exc


def _validate(model: type[_M], data: Mapping[str, Any], *, prefix: str) -> _M:
    # Strict, and as JSON: the contract's types exactly ("yes" is no boolean), while enums,
    # UUIDs and date-times are still read from their JSON strings.
    try:
        text = json.dumps(data)
    except (ValueError, RecursionError) as exc:
        raise _Rejected(
            RejectionReason.schema_violation, f"invalid {model.__name__}: nested too deeply"
        ) from exc
    try:
        return model.model_validate_json(text, strict=True)
    except ValidationError as exc:
        found = exc.errors(include_url=False, include_input=False)
        # Capped: an attacker's payload may hold thousands of bad fields with long names.
        errors = tuple(
            FieldError(
                path=capped(
                    prefix + ".".join(str(part) for part in error["loc"]) or "(root)",
                    FIELD_TEXT_MAX,
                ),
                message=capped(error["msg"], FIELD_TEXT_MAX),
            )
            for error in found[:MAX_FIELD_ERRORS]
        )
        summary = "; ".join(f"{e.path}: {e.message}" for e in errors[:5])
        more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
        raise _Rejected(
            RejectionReason.schema_violation,
            capped(f"invalid {model.__name__}: {summary}{more}", 1000),
            errors,
        ) from exc
