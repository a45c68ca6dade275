"""Jobs and outbox messages as table rows: the mapping both SQL stores share."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from service.core.events import Kind, Outgoing
from service.core.jobs import DocumentRef, Job
from service.core.text import capped
from service.core.tracecontext import TraceContext, trace_context
from service.models import JobStatus, PrintOptions, Priority
from service.ports import DeadLetter, OutboxRecord, StoreRefused

__all__ = [
    "DEAD_LETTER_COLUMNS",
    "JOB_COLUMNS",
    "JOB_UPDATED",
    "JOB_UPDATES",
    "OUTBOX_COLUMNS",
    "Row",
    "checked",
    "dead_letter_from_row",
    "dead_letter_row",
    "history_row",
    "job_as_stored",
    "job_from_row",
    "job_row",
    "outbox_row",
    "outgoing_as_stored",
    "outgoing_from_row",
    "record_from_row",
]

Row = tuple[Any, ...]

JOB_COLUMNS: Final = (
    "job_id, queue_id, status, sequence, priority, user_id, document_name, "
    "created_at, updated_at, correlation_id, reason, details"
)
# What an upsert of an existing job changes (`queue_id`: a move); the others stay as created.
JOB_UPDATED: Final = (
    "queue_id",
    "status",
    "sequence",
    "priority",
    "updated_at",
    "reason",
    "details",
)
JOB_UPDATES: Final = ", ".join(f"{column} = excluded.{column}" for column in JOB_UPDATED)
OUTBOX_COLUMNS: Final = (
    "position, message_id, kind, routing_key, order_key, body, correlation_id, label, "
    "received_at, traceparent, tracestate, enqueued_at, lane"
)
# The columns an outbox insert gives (position is assigned by the database).
OUTBOX_INSERT_COLUMNS: Final = OUTBOX_COLUMNS.removeprefix("position, ")

DEAD_LETTER_COLUMNS: Final = "source, at, reason, address, payload, properties, attempts"
_INT64: Final = range(-(2**63), 2**63)

Timestamp = Callable[[datetime], Any]


def checked(rows: list[Row], *, nul_in_text: bool) -> list[Row]:
    """`rows` if every value can be written, else StoreRefused: the one transaction that
    carries bad data is refused at once, not the group commit it would have joined.

    Text must be valid UTF-8 (no lone surrogates); PostgreSQL's text holds no NUL.
    """
    for row in rows:
        for value in row:
            if isinstance(value, str):
                try:
                    value.encode()
                except UnicodeEncodeError as exc:
                    raise StoreRefused(f"text that is not valid Unicode: {exc.reason}") from exc
                if not nul_in_text and "\x00" in value:
                    raise StoreRefused("text with a NUL character")
            elif isinstance(value, int) and value not in _INT64:
                raise StoreRefused("an integer out of the 64-bit range")
    return rows


def dead_letter_row(letter: DeadLetter) -> Row:
    # The properties as ASCII JSON: whatever they hold, the column can store it.
    return (
        letter.source,
        letter.at,
        _storable(letter.reason),
        _storable(letter.address),
        letter.payload,
        json.dumps(dict(letter.properties), ensure_ascii=True),
        letter.attempts,
    )


def _storable(text: str) -> str:
    return capped(text, 4096).replace("\x00", "\ufffd")


def dead_letter_from_row(row: Row) -> DeadLetter:
    id_, source, at, reason, address, payload, properties, attempts = row
    return DeadLetter(
        id=id_,
        source=source,
        at=at,
        reason=reason,
        address=address,
        payload=bytes(payload),
        properties=json.loads(properties),
        attempts=attempts,
    )


def job_row(job: Job, timestamp: Timestamp) -> Row:
    return (
        job.job_id,
        job.queue_id,
        job.status.value,
        job.sequence,
        job.priority.value,
        job.user_id,
        job.document_name,
        timestamp(job.created_at),
        timestamp(job.updated_at),
        job.correlation_id,
        job.reason,
        _details(job),
    )


def _details(job: Job) -> str:
    """The job's print request, as JSON: read whole whenever the job is read, never queried."""
    details: dict[str, Any] = {"digest": job.request_digest}
    if job.title is not None:
        details["title"] = job.title
    if job.copies != 1:
        details["copies"] = job.copies
    if job.options is not None:
        details["options"] = job.options.model_dump(mode="json", exclude_none=True)
    if (document := job.document) is not None:
        details["document"] = {"contentType": document.content_type}
        if document.url is not None:
            details["document"]["url"] = document.url
        if document.size is not None:
            details["document"]["size"] = document.size
    if job.expire_at is not None:
        details["expireAfter"] = job.expire_at.isoformat()
    if job.printer_job is not None:
        details["printerJob"] = job.printer_job
    if job.interruptions:
        details["interruptions"] = job.interruptions
    if job.handed_over:
        details["handedOver"] = True
    if job.impressions is not None:
        details["impressions"] = job.impressions
    if job.sheets is not None:
        details["sheets"] = job.sheets
    details.update(_hold_details(job))
    details.update(_trace_details(job.trace))
    return json.dumps(details, separators=(",", ":"))


def _hold_details(job: Job) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if job.status is not JobStatus.held:  # what a hold needs is forgotten once it ends
        return details
    if job.hold_until is not None:
        details["holdUntil"] = job.hold_until.isoformat()
    if job.hold_expires_at is not None:
        details["holdExpiresAt"] = job.hold_expires_at.isoformat()
    if job.pin_hash is not None:
        details["pinHash"] = job.pin_hash
    if job.pin_attempts:
        details["pinAttempts"] = job.pin_attempts
    return details


def _hold_fields(details: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, name in (("holdUntil", "hold_until"), ("holdExpiresAt", "hold_expires_at")):
        if key in details:
            result[name] = datetime.fromisoformat(details[key])
    if "pinHash" in details:
        result["pin_hash"] = details["pinHash"]
    if "pinAttempts" in details:
        result["pin_attempts"] = details["pinAttempts"]
    return result


def _trace_details(trace: TraceContext | None) -> dict[str, str]:
    if trace is None:
        return {}
    if trace.tracestate is None:
        return {"traceparent": trace.traceparent}
    return {"traceparent": trace.traceparent, "tracestate": trace.tracestate}


def _print_request(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    details: dict[str, Any] = json.loads(text)
    result: dict[str, Any] = {"request_digest": details.get("digest", "")}
    if "title" in details:
        result["title"] = details["title"]
    if "copies" in details:
        result["copies"] = details["copies"]
    if "options" in details:
        result["options"] = PrintOptions.model_validate(details["options"])
    if (document := details.get("document")) is not None:
        result["document"] = DocumentRef(
            content_type=document["contentType"],
            url=document.get("url"),
            size=document.get("size"),
        )
    if "expireAfter" in details:
        result["expire_at"] = datetime.fromisoformat(details["expireAfter"])
    if "printerJob" in details:
        result["printer_job"] = details["printerJob"]
    if "interruptions" in details:
        result["interruptions"] = details["interruptions"]
    if details.get("handedOver"):
        result["handed_over"] = True
    for key in ("impressions", "sheets"):
        if key in details:
            result[key] = details[key]
    result.update(_hold_fields(details))
    if "traceparent" in details:
        result["trace"] = trace_context(details["traceparent"], details.get("tracestate"))
    return result


def history_row(job: Job, timestamp: Timestamp) -> Row:
    return (job.job_id, job.sequence, job.status.value, timestamp(job.updated_at), job.reason)


def outbox_row(message: Outgoing, enqueued_at: float, lane: str | None) -> Row:
    return (
        message.message_id,
        message.kind.value,
        message.routing_key,
        message.order_key,
        message.body,
        message.correlation_id,
        message.label,
        message.received_at,
        trace.traceparent if (trace := message.trace) is not None else None,
        trace.tracestate if trace is not None else None,
        enqueued_at,
        lane,
    )


def _datetime(value: Any) -> datetime:  # noqa: ANN401 - text (SQLite) or timestamptz (PostgreSQL)
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def job_from_row(row: Row) -> Job:
    (job_id, queue_id, status, sequence, priority, user_id, document_name, created_at,
     updated_at, correlation_id, reason, details) = row  # fmt: skip
    return Job(
        job_id=job_id,
        queue_id=queue_id,
        status=JobStatus(status),
        sequence=sequence,
        priority=Priority(priority),
        user_id=user_id,
        document_name=document_name,
        created_at=_datetime(created_at),
        updated_at=_datetime(updated_at),
        correlation_id=correlation_id,
        reason=reason,
        **_print_request(details),
    )


def job_as_stored(job: Job) -> Job:
    """`job` as `job_from_row` reads back its row, without the row: what the row forgets
    (a hold's fields once the job is not held) forgotten, its trace checked again."""
    if job.status is not JobStatus.held and (
        job.hold_until is not None
        or job.hold_expires_at is not None
        or job.pin_hash is not None
        or job.pin_attempts
    ):
        job = dataclasses.replace(
            job, hold_until=None, hold_expires_at=None, pin_hash=None, pin_attempts=0
        )
    if (trace := _stored_trace(job.trace)) != job.trace:
        job = dataclasses.replace(job, trace=trace)
    return job


def outgoing_as_stored(message: Outgoing) -> Outgoing:
    """`message` as `outgoing_from_row` reads back its outbox row (its trace checked again)."""
    if (trace := _stored_trace(message.trace)) != message.trace:
        return dataclasses.replace(message, trace=trace)
    return message


def _stored_trace(trace: TraceContext | None) -> TraceContext | None:
    return None if trace is None else trace_context(trace.traceparent, trace.tracestate)


def outgoing_from_row(row: Row) -> Outgoing:
    (_, message_id, kind, routing_key, order_key, body, correlation_id, label, received_at,
     traceparent, tracestate, _, _) = row  # fmt: skip
    return Outgoing(
        message_id=message_id,
        kind=Kind(kind),
        routing_key=routing_key,
        order_key=order_key,
        body=bytes(body),
        correlation_id=correlation_id,
        label=label,
        received_at=received_at,
        # Checked again: a row is data, and a bad one must cost the trace, not the event.
        trace=trace_context(traceparent, tracestate),
    )


def record_from_row(row: Row) -> OutboxRecord:
    """An outbox row read with OUTBOX_COLUMNS."""
    return OutboxRecord(row[0], outgoing_from_row(row), row[11], row[12])
