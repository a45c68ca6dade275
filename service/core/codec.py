"""Turn a raw MQTT command into a validated command, or into a rejection that says why not.

Order of the checks, each of which ends the decoding with its own reason:
size → content encoding (gzip, capped) → UTF-8 → JSON object → envelope and headers →
API key → message type (header, or inferred from a bare payload) → payload schema.
Pure: no I/O; ids and keys come in from the caller.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from service.models import (
    CancelPrintJob,
    CommandEnvelope,
    CommandHeaders,
    CreatePrintJob,
    FieldError,
    GetPrintCounts,
    GetPrintJobStatus,
    InlineDocument,
    MessageType,
    PrintJobEvent,
    RejectionReason,
    UpdatePrintJob,
)

__all__ = [
    "Command",
    "CommandDecoder",
    "DecodedCommand",
    "Inbound",
    "Rejection",
]

Command = CreatePrintJob | CancelPrintJob | GetPrintJobStatus | UpdatePrintJob | GetPrintCounts

MODEL_BY_TYPE: Final[dict[MessageType, type[Command]]] = {
    MessageType.createPrintJob: CreatePrintJob,
    MessageType.cancelPrintJob: CancelPrintJob,
    MessageType.getPrintJobStatus: GetPrintJobStatus,
    MessageType.updatePrintJob: UpdatePrintJob,
    MessageType.getPrintCounts: GetPrintCounts,
}
GZIP_MAGIC: Final = b"\x1f\x8b"
CREATE_ONLY_FIELDS: Final = frozenset(
    {"userId", "documentName", "priority", "document", "title", "copies", "options", "expireAfter"}
)
CORRELATION_ID_MAX: Final = 256
MESSAGE_TYPES: Final = frozenset(t.value for t in MessageType)

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


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodedCommand:
    message: Command
    message_type: MessageType
    queue_id: str
    correlation_id: str
    received_at: float
    # The inline document's bytes, decoded from base64 (createPrintJob only).
    document: bytes | None = None

    @property
    def job_id(self) -> str | None:
        """The command's jobId; `getPrintCounts` has none."""
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


class _Rejected(Exception):  # noqa: N818 - internal control flow, never escapes this module
    def __init__(
        self,
        reason: RejectionReason,
        message: str,
        errors: tuple[FieldError, ...] = (),
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.errors = errors


@dataclass(slots=True)
class _Partial:
    """What is known so far about a command, for the rejection if one comes."""

    correlation_id: str
    job_id: str | None = None
    message_type: str | None = None


class CommandDecoder:
    """Decodes and validates commands; configured once with the limits and the API keys."""

    def __init__(
        self,
        *,
        max_bytes: int,
        max_decompressed_bytes: int,
        api_keys: frozenset[str] | None,
        new_id: Callable[[], str],
    ) -> None:
        if max_bytes <= 0 or max_decompressed_bytes <= 0:
            raise ValueError("size limits must be positive")
        self._max_bytes = max_bytes
        self._max_decompressed = max_decompressed_bytes
        self._api_keys = tuple(k.encode() for k in api_keys) if api_keys else None
        self._new_id = new_id

    @property
    def auth_enabled(self) -> bool:
        return self._api_keys is not None

    def decode(self, inbound: Inbound) -> DecodedCommand | Rejection:
        queue_id = inbound.topic.rpartition("/")[2]
        partial = _Partial(correlation_id=self._correlation_id(inbound.properties, inbound))
        try:
            return self._decode(inbound, queue_id, partial)
        except _Rejected as rejected:
            return Rejection(
                reason=rejected.reason,
                message=rejected.message,
                errors=rejected.errors,
                queue_id=queue_id,
                correlation_id=partial.correlation_id,
                received_at=inbound.received_at,
                job_id=partial.job_id,
                message_type=partial.message_type,
            )

    def _decode(self, inbound: Inbound, queue_id: str, partial: _Partial) -> DecodedCommand:
        body = self._parse(inbound)
        raw_headers: dict[str, Any] = dict(inbound.properties)
        if "content-encoding" in raw_headers:
            raw_headers["content-encoding"] = raw_headers["content-encoding"].lower()
        if "headers" in body or "payload" in body:
            # Read what the envelope says of itself before validating it, so that even a
            # rejected envelope is answered with its sender's correlation id and type.
            if isinstance(envelope_headers := body.get("headers"), dict):
                raw_headers.update(envelope_headers)
                partial.correlation_id = self._correlation_id(raw_headers, inbound)
            if isinstance(envelope_payload := body.get("payload"), dict):
                _note_job_id(partial, envelope_payload)
            _check_type(raw_headers, partial)
            body = _validate(CommandEnvelope, body, prefix="").payload
        _note_job_id(partial, body)
        _check_type(raw_headers, partial)
        _check_queue_id(queue_id)
        headers = _validate(CommandHeaders, raw_headers, prefix="headers.")
        self._authenticate(headers.x_api_key)
        message_type = headers.x_message_type or _infer_type(body)
        partial.message_type = message_type.value
        message = _validate(MODEL_BY_TYPE[message_type], body, prefix="")
        return DecodedCommand(
            message=message,
            message_type=message_type,
            queue_id=queue_id,
            correlation_id=partial.correlation_id,
            received_at=inbound.received_at,
            document=_inline_document(message),
        )

    def _parse(self, inbound: Inbound) -> dict[str, Any]:
        data = inbound.payload
        if len(data) > self._max_bytes:
            raise _Rejected(
                RejectionReason.payload_too_large,
                f"message is {len(data)} bytes; the limit is {self._max_bytes}",
            )
        encoding = inbound.properties.get("content-encoding", "").lower()
        if encoding not in ("", "gzip", "identity"):
            raise _Rejected(
                RejectionReason.invalid_encoding, f"unsupported content-encoding {encoding!r}"
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
            raise _Rejected(RejectionReason.invalid_json, f"invalid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise _Rejected(
                RejectionReason.invalid_json,
                f"a command is a JSON object, not {type(body).__name__}",
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

    def _authenticate(self, key: str | None) -> None:
        if self._api_keys is None:
            return
        if key is None:
            raise _Rejected(RejectionReason.unauthorized, "x-api-key is missing")
        given = key.encode()
        # Compare against every key so the time taken does not tell which one nearly matched.
        matched = False
        for known in self._api_keys:
            matched |= hmac.compare_digest(given, known)
        if not matched:
            raise _Rejected(RejectionReason.unauthorized, "x-api-key is not valid")

    def _correlation_id(self, headers: Mapping[str, Any], inbound: Inbound) -> str:
        value = headers.get("x-correlation-id")
        if isinstance(value, str) and 0 < len(value) <= CORRELATION_ID_MAX:
            return value
        if inbound.correlation_data:
            text = inbound.correlation_data.decode("utf-8", errors="replace")
            if len(text) <= CORRELATION_ID_MAX:
                return text
        return self._new_id()


def _note_job_id(partial: _Partial, body: Mapping[str, Any]) -> None:
    job_id = body.get("jobId")
    partial.job_id = job_id if isinstance(job_id, str) else None


def _check_type(headers: Mapping[str, Any], partial: _Partial) -> None:
    raw_type = headers.get("x-message-type")
    if raw_type is None:
        return
    partial.message_type = str(raw_type)
    if raw_type not in MESSAGE_TYPES:
        raise _Rejected(
            RejectionReason.unknown_message_type,
            f"x-message-type {raw_type!r} is not one of {', '.join(sorted(MESSAGE_TYPES))}",
        )


def _check_queue_id(queue_id: str) -> None:
    try:
        QUEUE_ID.validate_python(queue_id)
    except ValidationError as exc:
        message = exc.errors(include_url=False)[0]["msg"]
        raise _Rejected(
            RejectionReason.schema_violation,
            f"queueId {queue_id!r} (the topic's last level) is invalid: {message}",
            (FieldError(path="queueId", message=message),),
        ) from exc


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
        "userId/documentName/priority/document/title/copies/options/expireAfter (create), "
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
        return model.model_validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        errors = tuple(
            FieldError(
                path=prefix + ".".join(str(part) for part in error["loc"]) or "(root)",
                message=error["msg"],
            )
            for error in exc.errors(include_url=False, include_input=False)
        )
        summary = "; ".join(f"{e.path}: {e.message}" for e in errors[:5])
        raise _Rejected(
            RejectionReason.schema_violation, f"invalid {model.__name__}: {summary}", errors
        ) from exc
