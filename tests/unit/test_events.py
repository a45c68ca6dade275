"""Outgoing messages: bodies that the contract's models accept, routed and identified."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest

from service.core import jobs
from service.core.codec import CommandDecoder, Inbound, Rejection
from service.core.events import (
    COUNTS_ROUTE_PREFIX,
    EVENT_ROUTE_PREFIX,
    REJECTION_ROUTE_PREFIX,
    Kind,
    Outgoing,
    counts_event,
    job_event,
    rejection_event,
)
from service.core.jobs import Job
from service.models import (
    CommandRejected,
    CreatePrintJob,
    FieldError,
    JobStatus,
    PrintCounts,
    PrintJobEvent,
    Priority,
    RejectionReason,
    StatusCounts,
    UpdatableField,
)

CREATED_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
EVENT_ID = UUID("12345678-1234-5678-1234-567812345678")
QUEUE = "queue-1"
JOB_ID = "job-1"


def a_job(status: JobStatus = JobStatus.created, *, force: bool = False) -> Job:
    """A job brought to `status` through the state machine, one second per step."""
    command = CreatePrintJob(jobId=JOB_ID, userId="alice")
    job = jobs.create(None, command, queue_id=QUEUE, correlation_id="corr-job", now=CREATED_AT)
    steps = {
        JobStatus.created: [],
        JobStatus.started: [jobs.start],
        JobStatus.finished: [jobs.start, jobs.finish],
        JobStatus.canceled: [jobs.start] if force else [],
    }[status]
    for second, step in enumerate(steps, start=1):
        assert isinstance(job, Job)
        job = step(job, now=CREATED_AT + timedelta(seconds=second))
    if status is JobStatus.canceled:
        assert isinstance(job, Job)
        job = jobs.cancel(job, force=force, now=CREATED_AT + timedelta(seconds=9))
    assert isinstance(job, Job)
    assert job.status is status
    return job


REJECTION = Rejection(
    reason=RejectionReason.schema_violation,
    message="invalid CreatePrintJob: priority: bad",
    queue_id=QUEUE,
    correlation_id="corr-rej",
    received_at=1_700_000_000.5,
    job_id=JOB_ID,
    message_type="createPrintJob",
    errors=(FieldError(path="priority", message="bad"),),
)


def a_rejection(**overrides: Any) -> Rejection:
    return dataclasses.replace(REJECTION, **overrides)


def emit_job_event(job: Job, *, snapshot_at: datetime | None = None) -> Outgoing:
    return job_event(
        job,
        event_id=EVENT_ID,
        correlation_id="corr-cmd",
        received_at=42.0,
        snapshot_at=snapshot_at,
    )


# --- job events --------------------------------------------------------------------------------

JOBS = {
    "created": a_job(JobStatus.created),
    "started": a_job(JobStatus.started),
    "finished": a_job(JobStatus.finished),
    "canceled": a_job(JobStatus.canceled),
    "force-canceled": a_job(JobStatus.canceled, force=True),
}


@pytest.mark.parametrize("job", list(JOBS.values()), ids=list(JOBS))
def test_job_event_body_follows_the_contract(job: Job) -> None:
    outgoing = emit_job_event(job)

    event = PrintJobEvent.model_validate_json(outgoing.body)

    assert event == PrintJobEvent(
        jobId=JOB_ID,
        status=job.status,
        eventId=EVENT_ID,
        sequence=job.sequence,
        timestamp=job.updated_at,
        queueId=QUEUE,
        snapshot=False,
        reason=job.reason,
    )


@pytest.mark.parametrize("job", list(JOBS.values()), ids=list(JOBS))
def test_job_event_envelope(job: Job) -> None:
    outgoing = emit_job_event(job)

    assert outgoing.message_id == str(EVENT_ID)
    assert outgoing.kind is Kind.job_event
    assert outgoing.routing_key == f"events/{JOB_ID}"
    assert outgoing.routing_key == EVENT_ROUTE_PREFIX + job.job_id
    assert outgoing.order_key == JOB_ID
    assert outgoing.correlation_id == "corr-cmd"
    assert outgoing.label == job.status.value
    assert outgoing.received_at == 42.0


def test_job_event_sequences_follow_the_lifecycle() -> None:
    sequences = [
        PrintJobEvent.model_validate_json(emit_job_event(a_job(status)).body).sequence
        for status in (JobStatus.created, JobStatus.started, JobStatus.finished)
    ]

    assert sequences == [1, 2, 3]


def test_a_forced_cancel_says_why() -> None:
    body = json.loads(emit_job_event(JOBS["force-canceled"]).body)

    assert body["status"] == "canceled"
    assert body["reason"] == "force-canceled while printing"


def test_no_reason_is_sent_when_there_is_none() -> None:
    body = json.loads(emit_job_event(JOBS["started"]).body)

    assert "reason" not in body
    assert body["snapshot"] is False


def test_snapshot_reports_the_current_state_at_the_time_asked() -> None:
    job = JOBS["started"]
    asked_at = CREATED_AT + timedelta(hours=1)

    event = PrintJobEvent.model_validate_json(emit_job_event(job, snapshot_at=asked_at).body)

    assert event.snapshot is True
    assert event.timestamp == asked_at
    assert event.status is JobStatus.started
    assert event.sequence == job.sequence  # a snapshot is not a new change


def test_a_job_event_without_received_at() -> None:
    # Printer-driven changes have no causing command.
    outgoing = job_event(JOBS["finished"], event_id=EVENT_ID, correlation_id="c", received_at=None)

    assert outgoing.received_at is None


def test_the_same_event_built_twice_is_the_same_message() -> None:
    # The outbox may redeliver; a rebuild from the same values must not change the bytes.
    assert emit_job_event(JOBS["started"]) == emit_job_event(JOBS["started"])


def test_distinct_event_ids_give_distinct_message_ids() -> None:
    first, second = uuid4(), uuid4()
    one = job_event(JOBS["created"], event_id=first, correlation_id="c", received_at=None)
    two = job_event(JOBS["created"], event_id=second, correlation_id="c", received_at=None)

    assert (one.message_id, two.message_id) == (str(first), str(second))
    assert PrintJobEvent.model_validate_json(two.body).eventId == second


# --- rejections --------------------------------------------------------------------------------


def test_rejection_body_follows_the_contract() -> None:
    now = datetime(2024, 5, 1, 13, 0, tzinfo=UTC)

    outgoing = rejection_event(a_rejection(), event_id=EVENT_ID, now=now)

    assert CommandRejected.model_validate_json(outgoing.body) == CommandRejected(
        eventId=EVENT_ID,
        reason=RejectionReason.schema_violation,
        message="invalid CreatePrintJob: priority: bad",
        correlationId="corr-rej",
        timestamp=now,
        jobId=JOB_ID,
        queueId=QUEUE,
        messageType="createPrintJob",
        errors=[FieldError(path="priority", message="bad")],
    )


def test_rejection_envelope() -> None:
    outgoing = rejection_event(a_rejection(), event_id=EVENT_ID, now=CREATED_AT)

    assert outgoing.message_id == str(EVENT_ID)
    assert outgoing.kind is Kind.rejection
    assert outgoing.routing_key == f"rejections/{QUEUE}"
    assert outgoing.routing_key.startswith(REJECTION_ROUTE_PREFIX)
    assert outgoing.order_key == f"rejections/{QUEUE}"
    assert outgoing.correlation_id == "corr-rej"
    assert outgoing.label == "schema_violation"
    assert outgoing.received_at == 1_700_000_000.5


def test_rejection_timestamp_is_sent_in_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    now = datetime(2024, 5, 1, 21, 0, tzinfo=tokyo)

    body = json.loads(rejection_event(a_rejection(), event_id=EVENT_ID, now=now).body)

    assert datetime.fromisoformat(body["timestamp"]) == now
    assert datetime.fromisoformat(body["timestamp"]).utcoffset() == timedelta(0)


def test_a_rejection_without_what_was_not_known() -> None:
    rejection = a_rejection(
        reason=RejectionReason.invalid_json, job_id=None, message_type=None, errors=()
    )

    outgoing = rejection_event(rejection, event_id=EVENT_ID, now=CREATED_AT)

    body = json.loads(outgoing.body)
    assert {"jobId", "messageType", "errors"}.isdisjoint(body)
    assert CommandRejected.model_validate_json(outgoing.body).reason is RejectionReason.invalid_json
    assert outgoing.label == "invalid_json"


@pytest.mark.parametrize("reason", list(RejectionReason))
def test_every_reason_can_be_sent(reason: RejectionReason) -> None:
    outgoing = rejection_event(a_rejection(reason=reason), event_id=EVENT_ID, now=CREATED_AT)

    assert CommandRejected.model_validate_json(outgoing.body).reason is reason
    assert outgoing.label == reason.value


@pytest.mark.parametrize(
    ("payload", "properties"),
    [
        (b"{", {}),
        (b'{"jobId": 5, "priority": "urgent"}', {"x-message-type": "createPrintJob"}),
        (b'{"jobId": "job-1"}', {"x-message-type": "nope"}),
        (b"\x1f\x8b\x08garbage", {}),
    ],
    ids=["invalid-json", "schema", "unknown-type", "corrupt-gzip"],
)
def test_the_decoders_rejections_can_be_sent(payload: bytes, properties: dict[str, str]) -> None:
    decoder = CommandDecoder(
        max_bytes=1024, max_decompressed_bytes=4096, access=None, new_id=lambda: "generated"
    )
    rejection = decoder.decode(
        Inbound(topic=f"commands/{QUEUE}", payload=payload, properties=properties)
    )
    assert isinstance(rejection, Rejection)

    outgoing = rejection_event(rejection, event_id=EVENT_ID, now=CREATED_AT)

    event = CommandRejected.model_validate_json(outgoing.body)
    assert event.reason is rejection.reason
    assert event.correlationId == "generated"
    assert event.queueId == QUEUE
    assert tuple(event.errors or ()) == rejection.errors


# --- updates and counts ---------------------------------------------------------------------------


def test_an_update_event_names_what_changed_and_the_priority_now() -> None:
    job = dataclasses.replace(a_job(JobStatus.created), priority=Priority.high, sequence=2)

    outgoing = job_event(
        job, event_id=EVENT_ID, correlation_id="c", received_at=None, updated=["priority"]
    )
    event = PrintJobEvent.model_validate_json(outgoing.body)

    assert event.updated == [UpdatableField.priority]
    assert (event.status, event.sequence, event.priority) == (JobStatus.created, 2, Priority.high)


def test_a_status_event_says_nothing_of_updates() -> None:
    body = json.loads(emit_job_event(a_job(JobStatus.started)).body)

    assert "updated" not in body
    assert "priority" not in body


def test_a_failed_job_event_carries_the_printers_reason() -> None:
    started = a_job(JobStatus.started)
    failed = jobs.fail(started, reason="printer refused sides=two-sided-long-edge", now=CREATED_AT)
    assert isinstance(failed, Job)

    event = PrintJobEvent.model_validate_json(emit_job_event(failed).body)

    assert (event.status, event.reason) == (
        JobStatus.failed,
        "printer refused sides=two-sided-long-edge",
    )


def test_counts_event_follows_the_contract_and_fills_in_zeros() -> None:
    now = CREATED_AT + timedelta(minutes=1)

    outgoing = counts_event(
        QUEUE,
        {JobStatus.created: 3, JobStatus.failed: 1},
        event_id=EVENT_ID,
        correlation_id="corr-q",
        received_at=7.0,
        now=now,
    )

    assert PrintCounts.model_validate_json(outgoing.body) == PrintCounts(
        eventId=EVENT_ID,
        queueId=QUEUE,
        timestamp=now,
        counts=StatusCounts(created=3, started=0, finished=0, canceled=0, failed=1, held=0),
    )
    assert outgoing.kind is Kind.counts
    assert outgoing.routing_key == COUNTS_ROUTE_PREFIX + QUEUE == f"counts/{QUEUE}"
    assert (outgoing.correlation_id, outgoing.received_at) == ("corr-q", 7.0)
