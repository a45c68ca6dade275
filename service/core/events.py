"""What the service publishes: job events and rejections, validated against the contract.

Each is built once, as an `Outgoing` value holding the serialised body, and goes through the
outbox unchanged, so a redelivery carries the same bytes and the same message id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final
from uuid import UUID

from pydantic import ValidationError

from service.core.codec import Rejection, valid_queue_id
from service.core.jobs import Job
from service.core.text import capped, is_correlation_id
from service.core.tracecontext import TraceContext
from service.models import (
    CommandRejected,
    FieldError,
    JobStatus,
    JobSummary,
    ListPrintJobs,
    PrintCounts,
    PrintJobEvent,
    PrintJobList,
    RejectionReason,
    StatusCounts,
    UpdatableField,
)

__all__ = [
    "COUNTS_ROUTE_PREFIX",
    "EVENT_ROUTE_PREFIX",
    "INVALID_QUEUE_ROUTE",
    "JOBS_ROUTE_PREFIX",
    "PRINTERS_ROUTE_PREFIX",
    "PRINTER_LISTS_ROUTE_PREFIX",
    "REJECTION_ROUTE_PREFIX",
    "Kind",
    "Outgoing",
    "counts_event",
    "job_event",
    "job_list_event",
    "rejection_event",
    "with_trace",
]

EVENT_ROUTE_PREFIX: Final = "events/"
COUNTS_ROUTE_PREFIX: Final = "counts/"
JOBS_ROUTE_PREFIX: Final = "jobs/"
PRINTERS_ROUTE_PREFIX: Final = "printers/"
PRINTER_LISTS_ROUTE_PREFIX: Final = "printer-statuses/"
REJECTION_ROUTE_PREFIX: Final = "rejections/"
# Where a rejection goes when the topic's queueId is not one (no queueId starts with `_`).
INVALID_QUEUE_ROUTE: Final = REJECTION_ROUTE_PREFIX + "_invalid"
ECHO_MAX_BYTES: Final = 255
MESSAGE_MAX_BYTES: Final = 1024
MAX_ERRORS: Final = 20


class Kind(StrEnum):
    """The contract's message name, also the AMQP `type` property."""

    job_event = "printJobEvent"
    counts = "printCounts"
    job_list = "printJobList"
    printer_status = "printerStatus"
    printer_status_list = "printerStatusList"
    rejection = "commandRejected"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing:
    """A message ready for the outbox: routed, serialised, with its identity fixed."""

    message_id: str
    kind: Kind
    routing_key: str
    # Messages with the same order key are published in the order they were emitted.
    order_key: str
    body: bytes
    correlation_id: str
    # The event's status or the rejection's reason: a metrics label.
    label: str
    # Wall-clock time the causing command arrived, for the command-to-event latency.
    received_at: float | None
    # The trace of the command that caused it (tracing on): kept with the outbox row, since
    # it is published later, and parent of the span that publishes it.
    trace: TraceContext | None = None


def with_trace(message: Outgoing, trace: TraceContext | None) -> Outgoing:
    """`message` in `trace`; itself, at no cost, without one (tracing off)."""
    return message if trace is None else dataclasses.replace(message, trace=trace)


def job_event(
    job: Job,
    *,
    event_id: UUID,
    correlation_id: str,
    received_at: float | None,
    snapshot_at: datetime | None = None,
    updated: Sequence[str] = (),
    moved_from: str | None = None,
) -> Outgoing:
    """The event for the job's current status; with `snapshot_at`, the answer to a query.

    `updated` names what an update changed; such an event also says the priority now.
    `moved_from` is the queue a move took the job from (its `queueId` is the new one).
    """
    event = PrintJobEvent(
        jobId=job.job_id,
        status=job.status,
        eventId=event_id,
        sequence=job.sequence,
        timestamp=snapshot_at or job.updated_at,
        queueId=job.queue_id,
        snapshot=snapshot_at is not None,
        reason=job.reason,
        updated=[UpdatableField(name) for name in updated] or None,
        priority=job.priority if updated else None,
        movedFrom=moved_from,
        # Progress so far (a repeated `started`, a snapshot), or the totals of `finished`.
        impressionsCompleted=job.impressions,
        sheetsCompleted=job.sheets,
        # What a held job waits for (the fields are kept only while it is held).
        holdUntil=job.hold_until,
        holdExpiresAt=job.hold_expires_at,
    )
    return Outgoing(
        message_id=str(event_id),
        kind=Kind.job_event,
        routing_key=EVENT_ROUTE_PREFIX + job.job_id,
        order_key=job.job_id,
        body=event.model_dump_json(exclude_none=True).encode(),
        correlation_id=correlation_id,
        label=job.status.value,
        received_at=received_at,
    )


def counts_event(
    queue_id: str,
    counts: Mapping[JobStatus, int],
    *,
    event_id: UUID,
    correlation_id: str,
    received_at: float | None,
    now: datetime,
) -> Outgoing:
    """The answer to `getPrintCounts`: the queue's jobs per status."""
    event = PrintCounts(
        eventId=event_id,
        queueId=queue_id,
        timestamp=now.astimezone(UTC),
        counts=StatusCounts(**{status.value: counts.get(status, 0) for status in JobStatus}),
    )
    return Outgoing(
        message_id=str(event_id),
        kind=Kind.counts,
        routing_key=COUNTS_ROUTE_PREFIX + queue_id,
        order_key=COUNTS_ROUTE_PREFIX + queue_id,
        body=event.model_dump_json(exclude_none=True).encode(),
        correlation_id=correlation_id,
        label="counts",
        received_at=received_at,
    )


def job_list_event(
    queue_id: str,
    jobs: Sequence[Job],
    *,
    query: ListPrintJobs,
    next_cursor: str | None,
    event_id: UUID,
    correlation_id: str,
    received_at: float | None,
    now: datetime,
) -> Outgoing:
    """The answer to `listPrintJobs`: one page of the queue's jobs, the query echoed (with
    the limit the service applied)."""
    event = PrintJobList(
        eventId=event_id,
        queueId=queue_id,
        timestamp=now.astimezone(UTC),
        query=query,
        jobs=[_summary(job) for job in jobs],
        nextCursor=next_cursor,
    )
    return Outgoing(
        message_id=str(event_id),
        kind=Kind.job_list,
        routing_key=JOBS_ROUTE_PREFIX + queue_id,
        order_key=JOBS_ROUTE_PREFIX + queue_id,
        body=event.model_dump_json(exclude_none=True).encode(),
        correlation_id=correlation_id,
        label="list",
        received_at=received_at,
    )


def _summary(job: Job) -> JobSummary:
    return JobSummary(
        jobId=job.job_id,
        status=job.status,
        sequence=job.sequence,
        priority=job.priority,
        userId=job.user_id,
        title=job.title or job.document_name,
        createdAt=job.created_at.astimezone(UTC),
        updatedAt=job.updated_at.astimezone(UTC),
        reason=job.reason,
    )


def rejection_event(rejection: Rejection, *, event_id: UUID, now: datetime) -> Outgoing:
    """The answer to a command that could not be applied; never raises.

    Whatever it echoes is made valid UTF-8 and capped, the correlation id and the routing
    key fit AMQP's short strings, and an answer that still fails the contract's schema is
    replaced by a bare `internal_error` one: a rejection must always be publishable.
    """
    correlation_id = rejection.correlation_id
    if not is_correlation_id(correlation_id):
        correlation_id = str(event_id)
    queue_ok = valid_queue_id(rejection.queue_id)
    route = REJECTION_ROUTE_PREFIX + rejection.queue_id if queue_ok else INVALID_QUEUE_ROUTE
    try:
        body = _rejection_body(rejection, event_id, correlation_id, now)
    except (ValidationError, ValueError, TypeError):
        body = CommandRejected(
            eventId=event_id,
            reason=RejectionReason.internal_error,
            message="the service could not build the rejection of this command",
            correlationId=correlation_id,
            timestamp=now.astimezone(UTC),
        ).model_dump_json(exclude_none=True)
    return Outgoing(
        message_id=str(event_id),
        kind=Kind.rejection,
        routing_key=route,
        order_key=route,
        body=body.encode(),
        correlation_id=correlation_id,
        label=rejection.reason.value,
        received_at=rejection.received_at,
        trace=rejection.trace,
    )


def _rejection_body(
    rejection: Rejection, event_id: UUID, correlation_id: str, now: datetime
) -> str:
    def echo(text: str | None) -> str | None:
        return None if text is None else capped(text, ECHO_MAX_BYTES)

    event = CommandRejected(
        eventId=event_id,
        reason=rejection.reason,
        message=capped(rejection.message, MESSAGE_MAX_BYTES),
        correlationId=correlation_id,
        timestamp=now.astimezone(UTC),
        jobId=echo(rejection.job_id),
        queueId=echo(rejection.queue_id),
        messageType=echo(rejection.message_type),
        errors=[
            FieldError(path=capped(e.path, ECHO_MAX_BYTES), message=capped(e.message, 255))
            for e in rejection.errors[:MAX_ERRORS]
        ]
        or None,
        retryAfter=rejection.retry_after,
    )
    return event.model_dump_json(exclude_none=True)
