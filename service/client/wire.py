"""The contract on the wire, as a client speaks it: pure functions, no I/O.

A command goes out as JSON on `commands/<queueId>`, its headers as MQTT 5 user properties
or, over MQTT 3.1.1, in the envelope `{"headers": ..., "payload": ...}`; either may be
gzipped whole (the service recognises gzip by its magic bytes, see service/core/codec.py).
Answers come on AMQP with their type in the `type` property and the command's correlation
id in `correlation_id`, gzipped when `content_encoding` says so.
"""

from __future__ import annotations

import gzip
import json
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Final

from pydantic import ValidationError

from service.core.codec import MODEL_BY_TYPE, Command
from service.models import (
    CommandRejected,
    MessageType,
    PrintCounts,
    PrinterStatusList,
    PrintJobEvent,
    PrintJobList,
    XMessageType,
)

__all__ = [
    "EVENTS_EXCHANGE",
    "MAX_REPLY_BYTES",
    "REJECTIONS_EXCHANGE",
    "Outbound",
    "Reply",
    "ReplyModel",
    "decode_reply",
    "encode_command",
    "message_type_of",
    "new_job_id",
    "reply_queue_name",
]

# The contract's exchanges (asyncapi.yaml, "Event routing").
EVENTS_EXCHANGE: Final = "print.events"
REJECTIONS_EXCHANGE: Final = "print.rejections"
# The AMQP users of the service itself and of a development broker: they may name their
# queues freely, so the broker names ours.
_UNRESTRICTED_USERS: Final = frozenset({"guest", "print-service"})
# What a reply's body may grow to once gunzipped: far above any answer the service sends
# (a page of jobs is capped by JOB_LIST_MAX), far below what would hurt.
MAX_REPLY_BYTES: Final = 16 * 1024 * 1024

ReplyModel = PrintJobEvent | CommandRejected | PrintCounts | PrintJobList | PrinterStatusList
_REPLY_MODELS: Final[dict[str, type[ReplyModel]]] = {
    XMessageType.printJobEvent.value: PrintJobEvent,
    XMessageType.commandRejected.value: CommandRejected,
    XMessageType.printCounts.value: PrintCounts,
    XMessageType.printJobList.value: PrintJobList,
    XMessageType.printerStatusList.value: PrinterStatusList,
}
_TYPE_OF_MODEL: Final = {model: message_type for message_type, model in MODEL_BY_TYPE.items()}


@dataclass(frozen=True, slots=True)
class Outbound:
    """One command, ready to publish."""

    payload: bytes
    # MQTT 5 user properties (empty over 3.1.1: the headers are in the payload).
    user_properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """One message received on the client's queue."""

    message: ReplyModel
    correlation_id: str | None


def message_type_of(command: Command) -> MessageType:
    """The `x-message-type` of a command model (the one the service decodes it as)."""
    try:
        return _TYPE_OF_MODEL[type(command)]
    except KeyError:
        raise TypeError(f"{type(command).__name__} is not a command of the contract") from None


def encode_command(
    command: Command,
    *,
    correlation_id: str,
    api_key: str | None,
    v5: bool,
    compress: bool,
) -> Outbound:
    """The payload (and MQTT 5 user properties) of `command`."""
    headers = {
        "x-message-type": message_type_of(command).value,
        "x-correlation-id": correlation_id,
    }
    if api_key:
        headers["x-api-key"] = api_key
    body = command.model_dump(mode="json", exclude_none=True)
    document = body if v5 else {"headers": headers, "payload": body}
    payload = json.dumps(document, separators=(",", ":")).encode()
    if compress:
        payload = gzip.compress(payload)
    return Outbound(payload=payload, user_properties=headers if v5 else {})


def decode_reply(
    *,
    message_type: str | None,
    body: bytes,
    content_encoding: str | None,
    correlation_id: str | None,
) -> Reply | None:
    """The answer a message holds, or None for one that is not for a client (another
    type, or a body that does not match the contract: a broken message is skipped, it does
    not end the client's consumer)."""
    model = _REPLY_MODELS.get(message_type or "")
    if model is None:
        return None
    try:
        if content_encoding == "gzip":
            body = _gunzip(body)
        parsed = model.model_validate_json(body)
    except (ValueError, ValidationError, EOFError, zlib.error):
        return None
    return Reply(message=parsed, correlation_id=correlation_id)


def _gunzip(data: bytes) -> bytes:
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = decompressor.decompress(data, MAX_REPLY_BYTES)
    if decompressor.unconsumed_tail:
        raise ValueError(f"a reply larger than {MAX_REPLY_BYTES} bytes once gunzipped")
    return out


def reply_queue_name(username: str | None) -> str:
    """The name of the client's own AMQP queue: `tenants/<user>/client.<uuid>` for a tenant
    of the shipped RabbitMQ permissions (deploy/rabbitmq/make_users.py lets a tenant declare
    only `tenants/<user>/...`), else "" (a server-named queue)."""
    if username and username not in _UNRESTRICTED_USERS:
        return f"tenants/{username}/client.{uuid.uuid4()}"
    return ""


def new_job_id(queue_id: str) -> str:
    """A new jobId; on a tenant's queue (`<tenant>.<name>`) it begins with `<tenant>.`, as
    the tenant's key and its AMQP permissions ask."""
    tenant, dot, _ = queue_id.partition(".")
    return f"{tenant}.{uuid.uuid4()}" if dot and tenant else str(uuid.uuid4())
