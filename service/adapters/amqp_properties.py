"""The AMQP properties of an outgoing message, encoded in runs fixed once per publisher.

Every event and rejection carries the contract's operation binding (content type,
persistence, priority, expiration, reply-to, CC and BCC, app and user id); only the message
id, the correlation id, the type, the timestamp and the trace differ. pamqp encodes each
property of each message through its generic, type-dispatching encoder, which a profile
showed as the largest part of a publish; here the constant runs are encoded once and the
per-message fields packed between them. The bytes are pamqp's to the byte (a property test
compares the two for any message); `amqp_frames` puts them in the content header.
"""

from __future__ import annotations

import re
import struct
import time
from typing import Final

from pamqp.commands import Basic

from service.core.events import Kind, Outgoing
from service.core.tracecontext import trace_context
from service.models import XMessageType

__all__ = [
    "APP_ID",
    "BCC",
    "CC",
    "CONTENT_TYPE",
    "MESSAGE_TTL_S",
    "PRIORITY",
    "REPLY_TO",
    "PropertyEncoder",
]

# The operation binding of `printJobEvent` and `commandRejection` in asyncapi.yaml.
CONTENT_TYPE: Final = "application/json"
MESSAGE_TTL_S: Final = 60
PRIORITY: Final = 10
CC: Final = ("user.log", "support.log")
BCC: Final = ("external.audit",)
REPLY_TO: Final = "user.reply"
APP_ID: Final = "print-service"
_PERSISTENT: Final = 2

# The header `x-correlation-id` as EventHeaders has it: 1-255 printable ASCII.
_CORRELATION_ID: Final = re.compile(r"[ -~]{1,255}")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")

# Property flags, in the order AMQP 0-9-1 encodes the properties (Basic.Properties.flags).
_FLAGS: Final = Basic.Properties.flags


def _short(value: str) -> bytes:
    """A short string: one length octet, at most 255 bytes of UTF-8."""
    data = value.encode()
    if len(data) > 255:
        raise ValueError(f"a short string holds at most 255 bytes, not {len(data)}")
    return bytes((len(data),)) + data


def _long_field(value: str) -> bytes:
    """A field-table value of type long string ('S')."""
    data = value.encode()
    return b"S" + _U32.pack(len(data)) + data


def _array_field(values: tuple[str, ...]) -> bytes:
    """A field-table value of type array ('A') of long strings."""
    items = b"".join(_long_field(value) for value in values)
    return b"A" + _U32.pack(len(items)) + items


# The header table's first entries (keys sort as pamqp writes them: "BCC" < "CC" < "trace..."
# < "x-..."), and the tail of each message type's.
_TABLE_HEAD: Final = _short("BCC") + _array_field(BCC) + _short("CC") + _array_field(CC)
_TYPE_ENTRY: Final = {
    kind: _short("x-message-type") + _long_field(XMessageType(kind.value).value) for kind in Kind
}
_TYPE_PROPERTY: Final = {kind: _short(kind.value) for kind in Kind}
_CORRELATION_KEY: Final = _short("x-correlation-id")
_TRACEPARENT_KEY: Final = _short("traceparent")
_TRACESTATE_KEY: Final = _short("tracestate")


class PropertyEncoder:
    """The properties of one publisher's messages (its user id; gzip or not)."""

    __slots__ = ("_head", "_tail")

    def __init__(self, *, user_id: str, gzip: bool) -> None:
        self._head = _prefix(gzip=gzip)
        self._tail = _short(user_id) + _short(APP_ID)

    def encode(self, message: Outgoing, *, now: float | None = None) -> bytes:
        """The message's properties (flags, then values), stamped `now` (default: the
        time of the call).

        ValueError (UnicodeError included) if a field cannot be carried: a correlation id
        that is not 1-255 printable ASCII (the contract's EventHeaders), an id over 255
        bytes, a lone surrogate. Nothing has been sent then.
        """
        correlation_id = message.correlation_id
        if not _CORRELATION_ID.fullmatch(correlation_id):
            raise ValueError("x-correlation-id must be 1-255 printable ASCII characters")
        return b"".join(
            (
                self._head,
                _table(message, correlation_id),
                _PERSISTENT_PRIORITY,
                _short(correlation_id),
                _REPLY_AND_EXPIRATION,
                _short(message.message_id),
                _U64.pack(int(time.time() if now is None else now)),
                _TYPE_PROPERTY[message.kind],
                self._tail,
            )
        )


_PERSISTENT_PRIORITY: Final = bytes((_PERSISTENT, PRIORITY))
_REPLY_AND_EXPIRATION: Final = _short(REPLY_TO) + _short(str(MESSAGE_TTL_S * 1000))


def _prefix(*, gzip: bool) -> bytes:
    """The property flags (every property this service sets) and the content type and
    encoding."""
    names = [
        "content_type",
        "headers",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "message_type",
        "user_id",
        "app_id",
    ]
    if gzip:
        names.append("content_encoding")
    flags = sum(_FLAGS[name] for name in names)
    encoding = _short("gzip") if gzip else b""
    return struct.pack(">H", flags) + _short(CONTENT_TYPE) + encoding


def _table(message: Outgoing, correlation_id: str) -> bytes:
    """The headers table: CC, BCC, the trace (checked again: a bad stored context costs the
    trace, never the event), the correlation id and the message type."""
    entries = [_TABLE_HEAD]
    if message.trace is not None and (
        trace := trace_context(message.trace.traceparent, message.trace.tracestate)
    ):
        entries += (_TRACEPARENT_KEY, _long_field(trace.traceparent))
        if trace.tracestate is not None:
            entries += (_TRACESTATE_KEY, _long_field(trace.tracestate))
    entries += (_CORRELATION_KEY, _long_field(correlation_id), _TYPE_ENTRY[message.kind])
    table = b"".join(entries)
    return _U32.pack(len(table)) + table
