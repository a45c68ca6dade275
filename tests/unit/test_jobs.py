"""The job state machine: every operation from every status, and idempotent creation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.core import jobs
from service.core.jobs import FINAL_STATUSES, PRIORITY_RANK, Job, Refusal
from service.models import CreatePrintJob, JobStatus, Priority, RejectionReason, UpdatePrintJob

CREATED_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NOW = CREATED_AT + timedelta(minutes=5)
QUEUE = "queue-1"
JOB_ID = "job-1"
# A sequence that is not 1, so an increment cannot be mistaken for a fresh job.
SEQUENCE = 7


def a_create(job_id: str = JOB_ID, **fields: Any) -> CreatePrintJob:
    return CreatePrintJob.model_validate({"jobId": job_id, **fields})


def a_job(status: JobStatus, **overrides: Any) -> Job:
    """A job that has reached `status`, with every field set to something recognisable."""
    job = Job(
        job_id=JOB_ID,
        queue_id=QUEUE,
        status=status,
        sequence=SEQUENCE,
        priority=Priority.low,
        user_id="alice",
        document_name="report.pdf",
        created_at=CREATED_AT,
        updated_at=CREATED_AT + timedelta(seconds=1),
        correlation_id="corr-original",
    )
    return dataclasses.replace(job, **overrides)


# The job `a_job` describes, as a create command would ask for it.
SAME_CREATE = {"userId": "alice", "documentName": "report.pdf", "priority": "low"}

Operation = Callable[[Job], Job | Refusal]

OPERATIONS: dict[str, Operation] = {
    "start": lambda job: jobs.start(job, now=NOW),
    "finish": lambda job: jobs.finish(job, now=NOW),
    "cancel": lambda job: jobs.cancel(job, force=False, now=NOW),
    "force-cancel": lambda job: jobs.cancel(job, force=True, now=NOW),
    "fail": lambda job: jobs.fail(job, reason="printer on fire", now=NOW),
    "begin": lambda job: jobs.begin(job, now=NOW),
}

# (operation, from status) -> the new status and its reason, or the refusal's reason.
# Every pair is listed; `test_the_table_covers_every_pair` keeps it that way.
ALLOWED: dict[tuple[str, JobStatus], tuple[JobStatus, str | None]] = {
    ("start", JobStatus.created): (JobStatus.started, None),
    ("finish", JobStatus.started): (JobStatus.finished, None),
    ("cancel", JobStatus.created): (JobStatus.canceled, "canceled before it started"),
    ("force-cancel", JobStatus.created): (JobStatus.canceled, "canceled before it started"),
    ("force-cancel", JobStatus.started): (JobStatus.canceled, "force-canceled while printing"),
    ("fail", JobStatus.created): (JobStatus.failed, "printer on fire"),
    ("fail", JobStatus.started): (JobStatus.failed, "printer on fire"),
    # `begin` is `start` for a job without expireAfter.
    ("begin", JobStatus.created): (JobStatus.started, None),
    # A held job goes to no printer; it may be canceled, and fails only if told to.
    ("cancel", JobStatus.held): (JobStatus.canceled, "canceled while held"),
    ("force-cancel", JobStatus.held): (JobStatus.canceled, "canceled while held"),
    ("fail", JobStatus.held): (JobStatus.failed, "printer on fire"),
}
REFUSED: dict[tuple[str, JobStatus], RejectionReason] = {
    ("start", JobStatus.started): RejectionReason.job_started,
    ("start", JobStatus.finished): RejectionReason.job_final,
    ("start", JobStatus.canceled): RejectionReason.job_final,
    ("finish", JobStatus.created): RejectionReason.job_started,
    ("finish", JobStatus.finished): RejectionReason.job_final,
    ("finish", JobStatus.canceled): RejectionReason.job_final,
    ("cancel", JobStatus.started): RejectionReason.job_started,
    ("cancel", JobStatus.finished): RejectionReason.job_final,
    ("cancel", JobStatus.canceled): RejectionReason.job_final,
    ("force-cancel", JobStatus.finished): RejectionReason.job_final,
    ("force-cancel", JobStatus.canceled): RejectionReason.job_final,
    ("start", JobStatus.failed): RejectionReason.job_final,
    ("finish", JobStatus.failed): RejectionReason.job_final,
    ("cancel", JobStatus.failed): RejectionReason.job_final,
    ("force-cancel", JobStatus.failed): RejectionReason.job_final,
    ("fail", JobStatus.finished): RejectionReason.job_final,
    ("fail", JobStatus.canceled): RejectionReason.job_final,
    ("fail", JobStatus.failed): RejectionReason.job_final,
    ("begin", JobStatus.started): RejectionReason.job_started,
    ("begin", JobStatus.finished): RejectionReason.job_final,
    ("begin", JobStatus.canceled): RejectionReason.job_final,
    ("begin", JobStatus.failed): RejectionReason.job_final,
    ("start", JobStatus.held): RejectionReason.job_started,
    ("begin", JobStatus.held): RejectionReason.job_started,
    ("finish", JobStatus.held): RejectionReason.job_started,
}


def test_the_table_covers_every_pair() -> None:
    every_pair = {(op, status) for op in OPERATIONS for status in JobStatus}
    assert ALLOWED.keys() | REFUSED.keys() == every_pair
    assert not ALLOWED.keys() & REFUSED.keys()


@pytest.mark.parametrize(
    ("operation", "status", "expected_status", "expected_reason"),
    [(op, status, *outcome) for (op, status), outcome in ALLOWED.items()],
)
def test_allowed_transition(
    operation: str,
    status: JobStatus,
    expected_status: JobStatus,
    expected_reason: str | None,
) -> None:
    job = a_job(status)

    result = OPERATIONS[operation](job)

    assert isinstance(result, Job)
    assert result.status is expected_status
    assert result.sequence == SEQUENCE + 1
    assert result.reason == expected_reason
    assert result.updated_at == NOW
    # Nothing but the status and its bookkeeping changes.
    assert dataclasses.replace(
        result, status=status, sequence=SEQUENCE, updated_at=job.updated_at, reason=None
    ) == dataclasses.replace(job, reason=None)
    # The job given in is a value: it is left as it was.
    assert job == a_job(status)


@pytest.mark.parametrize(
    ("operation", "status", "expected_reason"),
    [(op, status, reason) for (op, status), reason in REFUSED.items()],
)
def test_refused_transition(
    operation: str, status: JobStatus, expected_reason: RejectionReason
) -> None:
    job = a_job(status)

    result = OPERATIONS[operation](job)

    assert isinstance(result, Refusal)
    assert result.reason is expected_reason
    assert JOB_ID in result.message
    assert job == a_job(status)


def test_a_final_status_is_named_in_the_refusal() -> None:
    result = jobs.cancel(a_job(JobStatus.finished), force=True, now=NOW)

    assert isinstance(result, Refusal)
    assert "finished" in result.message


def test_an_unforced_cancel_of_a_printing_job_says_how_to_force_it() -> None:
    result = jobs.cancel(a_job(JobStatus.started), force=False, now=NOW)

    assert isinstance(result, Refusal)
    assert "force" in result.message


def test_a_transition_does_not_carry_an_old_reason_over() -> None:
    # Only `canceled` carries a reason today; a later transition must not inherit one.
    job = a_job(JobStatus.created, reason="stale")

    result = jobs.start(job, now=NOW)

    assert isinstance(result, Job)
    assert result.reason is None


def test_a_whole_lifecycle_counts_each_change() -> None:
    job = jobs.create(None, a_create(), queue_id=QUEUE, correlation_id="c", now=CREATED_AT)
    assert isinstance(job, Job)
    started = jobs.start(job, now=NOW)
    assert isinstance(started, Job)
    finished = jobs.finish(started, now=NOW + timedelta(seconds=1))
    assert isinstance(finished, Job)

    assert [j.sequence for j in (job, started, finished)] == [1, 2, 3]
    assert [j.status for j in (job, started, finished)] == [
        JobStatus.created,
        JobStatus.started,
        JobStatus.finished,
    ]
    assert finished.created_at == CREATED_AT


# --- create -----------------------------------------------------------------------------------


def test_create_a_new_job() -> None:
    command = a_create(userId="bob", documentName="a.pdf", priority="high")

    job = jobs.create(None, command, queue_id=QUEUE, correlation_id="corr-1", now=NOW)

    assert job == Job(
        job_id=JOB_ID,
        queue_id=QUEUE,
        status=JobStatus.created,
        sequence=1,
        priority=Priority.high,
        user_id="bob",
        document_name="a.pdf",
        created_at=NOW,
        updated_at=NOW,
        correlation_id="corr-1",
        reason=None,
        request_digest=jobs.request_digest(command),
    )


def test_a_new_job_without_a_priority_waits_as_medium() -> None:
    job = jobs.create(None, a_create(), queue_id=QUEUE, correlation_id="c", now=NOW)

    assert isinstance(job, Job)
    assert job.priority is Priority.medium
    assert job.user_id is None
    assert job.document_name is None


@pytest.mark.parametrize("status", list(JobStatus))
def test_an_identical_create_is_a_no_op_in_every_status(status: JobStatus) -> None:
    existing = a_job(status)

    result = jobs.create(
        existing, a_create(**SAME_CREATE), queue_id=QUEUE, correlation_id="other", now=NOW
    )

    assert result is None


@pytest.mark.parametrize("priority", [None, "medium"])
def test_an_absent_priority_and_medium_are_the_same_request(priority: str | None) -> None:
    existing = a_job(JobStatus.created, priority=Priority.medium)
    fields: dict[str, Any] = {**SAME_CREATE, "priority": priority}

    result = jobs.create(existing, a_create(**fields), queue_id=QUEUE, correlation_id="c", now=NOW)

    assert result is None


CONFLICTS = {
    "other user": ({**SAME_CREATE, "userId": "mallory"}, QUEUE),
    "no user": ({**SAME_CREATE, "userId": None}, QUEUE),
    "other document": ({**SAME_CREATE, "documentName": "other.pdf"}, QUEUE),
    "other priority": ({**SAME_CREATE, "priority": "high"}, QUEUE),
    "default priority": ({**SAME_CREATE, "priority": None}, QUEUE),
    "other queue": (SAME_CREATE, "queue-2"),
}


@pytest.mark.parametrize("status", list(JobStatus))
@pytest.mark.parametrize(("fields", "queue_id"), list(CONFLICTS.values()), ids=list(CONFLICTS))
def test_a_conflicting_create_is_refused_in_every_status(
    status: JobStatus, fields: dict[str, Any], queue_id: str
) -> None:
    existing = a_job(status)

    result = jobs.create(
        existing, a_create(**fields), queue_id=queue_id, correlation_id="c", now=NOW
    )

    assert isinstance(result, Refusal)
    assert result.reason is RejectionReason.job_conflict
    assert JOB_ID in result.message


# --- the constants ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(JobStatus))
def test_is_final(status: JobStatus) -> None:
    final = {JobStatus.finished, JobStatus.canceled, JobStatus.failed}
    assert a_job(status).is_final is (status in final)


def test_final_statuses() -> None:
    assert frozenset({JobStatus.finished, JobStatus.canceled, JobStatus.failed}) == FINAL_STATUSES


def test_priority_rank_puts_high_first_and_covers_every_priority() -> None:
    assert set(PRIORITY_RANK) == set(Priority)
    assert (
        PRIORITY_RANK[Priority.high] < PRIORITY_RANK[Priority.medium] < PRIORITY_RANK[Priority.low]
    )


# --- what a create asks the printer for ---------------------------------------------------------

PDF_B64 = "JVBERi0xLjQK"  # "%PDF-1.4\n"


def test_create_keeps_the_print_request() -> None:
    command = a_create(
        title="Quarterly report",
        copies=3,
        document={"contentType": "application/pdf", "data": PDF_B64},
        options={"sides": "two-sided-long-edge", "pageRanges": [{"start": 1, "end": 2}]},
        expireAfter="2024-05-01T13:00:00Z",
    )

    job = jobs.create(None, command, queue_id=QUEUE, correlation_id="c", now=NOW)

    assert isinstance(job, Job)
    assert job.title == "Quarterly report"
    assert job.display_title == "Quarterly report"
    assert job.copies == 3
    assert job.options == command.options
    assert job.document == jobs.DocumentRef(content_type="application/pdf", size=9)
    assert job.expire_at == datetime(2024, 5, 1, 13, 0, tzinfo=UTC)


def test_a_url_document_is_kept_as_its_url() -> None:
    url = "https://files.example.com/a.pdf"
    command = a_create(document={"contentType": "application/pdf", "url": url})

    job = jobs.create(None, command, queue_id=QUEUE, correlation_id="c", now=NOW)

    assert isinstance(job, Job)
    assert job.document == jobs.DocumentRef(content_type="application/pdf", url=url)


@pytest.mark.parametrize(
    ("fields", "title"),
    [
        ({"title": "T", "documentName": "d.pdf"}, "T"),
        ({"documentName": "d.pdf"}, "d.pdf"),
        ({}, JOB_ID),
    ],
    ids=["title", "documentName", "neither"],
)
def test_display_title(fields: dict[str, Any], title: str) -> None:
    job = jobs.create(None, a_create(**fields), queue_id=QUEUE, correlation_id="c", now=NOW)

    assert isinstance(job, Job)
    assert job.display_title == title


@pytest.mark.parametrize(
    "changed",
    [
        {"copies": 2},
        {"options": {"quality": "high"}},
        {"title": "other"},
        {"expireAfter": "2030-01-01T00:00:00Z"},
    ],
)
def test_a_create_that_differs_in_any_print_field_conflicts(changed: dict[str, Any]) -> None:
    original = jobs.create(None, a_create(), queue_id=QUEUE, correlation_id="c", now=NOW)
    assert isinstance(original, Job)

    result = jobs.create(original, a_create(**changed), queue_id=QUEUE, correlation_id="d", now=NOW)

    assert isinstance(result, Refusal)
    assert result.reason is RejectionReason.job_conflict


def test_the_same_create_after_an_update_is_still_a_repeat() -> None:
    command = a_create(priority="low")
    original = jobs.create(None, command, queue_id=QUEUE, correlation_id="c", now=NOW)
    assert isinstance(original, Job)
    updated = jobs.update(original, UpdatePrintJob(jobId=JOB_ID, priority=Priority.high), now=NOW)
    assert not isinstance(updated, Refusal)

    assert jobs.create(updated[0], command, queue_id=QUEUE, correlation_id="c", now=NOW) is None


# --- expiry ---------------------------------------------------------------------------------------


def test_begin_cancels_a_job_past_its_expiry() -> None:
    job = a_job(JobStatus.created, expire_at=NOW - timedelta(seconds=1))

    result = jobs.begin(job, now=NOW)

    assert isinstance(result, Job)
    assert (result.status, result.reason) == (JobStatus.canceled, "expired")


def test_begin_starts_a_job_before_its_expiry() -> None:
    result = jobs.begin(a_job(JobStatus.created, expire_at=NOW + timedelta(seconds=1)), now=NOW)

    assert isinstance(result, Job)
    assert result.status is JobStatus.started


@pytest.mark.parametrize(
    ("status", "expire_at", "reason"),
    [
        (JobStatus.created, NOW + timedelta(seconds=1), RejectionReason.job_conflict),
        (JobStatus.created, None, RejectionReason.job_conflict),
        (JobStatus.started, NOW - timedelta(seconds=1), RejectionReason.job_started),
        (JobStatus.finished, NOW - timedelta(seconds=1), RejectionReason.job_final),
    ],
    ids=["not-yet", "no-expiry", "started", "final"],
)
def test_expire_only_a_waiting_job_past_its_time(
    status: JobStatus, expire_at: datetime | None, reason: RejectionReason
) -> None:
    result = jobs.expire(a_job(status, expire_at=expire_at), now=NOW)

    assert isinstance(result, Refusal)
    assert result.reason is reason


# --- update ---------------------------------------------------------------------------------------


def test_update_changes_priority_and_options_of_a_waiting_job() -> None:
    job = a_job(JobStatus.created)
    command = UpdatePrintJob.model_validate(
        {"jobId": JOB_ID, "priority": "high", "options": {"colorMode": "monochrome"}}
    )

    result = jobs.update(job, command, now=NOW)

    assert not isinstance(result, Refusal)
    updated, fields = result
    assert fields == ["priority", "options"]
    assert updated.priority is Priority.high
    assert updated.options == command.options
    assert updated.sequence == SEQUENCE + 1
    assert (updated.status, updated.created_at) == (JobStatus.created, job.created_at)


def test_update_of_options_only_keeps_the_priority() -> None:
    command = UpdatePrintJob.model_validate({"jobId": JOB_ID, "options": {"sides": "one-sided"}})

    result = jobs.update(a_job(JobStatus.created), command, now=NOW)

    assert not isinstance(result, Refusal)
    assert result[0].priority is Priority.low
    assert result[1] == ["options"]


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (JobStatus.started, RejectionReason.job_started),
        (JobStatus.finished, RejectionReason.job_final),
        (JobStatus.canceled, RejectionReason.job_final),
        (JobStatus.failed, RejectionReason.job_final),
    ],
)
def test_update_of_a_job_that_has_started_or_ended_is_refused(
    status: JobStatus, reason: RejectionReason
) -> None:
    result = jobs.update(
        a_job(status), UpdatePrintJob(jobId=JOB_ID, priority=Priority.high), now=NOW
    )

    assert isinstance(result, Refusal)
    assert result.reason is reason


def test_an_update_that_changes_nothing_is_refused() -> None:
    result = jobs.update(a_job(JobStatus.created), UpdatePrintJob(jobId=JOB_ID), now=NOW)

    assert isinstance(result, Refusal)
    assert result.reason is RejectionReason.schema_violation


# --- hold and release -------------------------------------------------------------------


def test_a_create_digest_is_the_one_stored_before_holds_existed():
    """A job stored by 1.3.0 keeps its digest: its redelivery is a repeat, not a conflict."""
    command = a_create(
        "job-1",
        userId="alice",
        title="Report",
        copies=2,
        priority="high",
        document={"contentType": "application/pdf", "data": "JVBERi0="},
        expireAfter="2026-01-01T00:00:00Z",
    )
    # Computed with the 1.3.0 models: sha256 of `model_dump_json()`.
    assert jobs.request_digest(command) == (
        "cd6cffb0110c0562b5d4042d2f2afbb0e99a4f7423b84fcc3075de3329583b2f"
    )


def test_a_digest_tells_a_pin_from_none_but_never_holds_it():
    held = a_create(hold="indefinite")
    with_pin = a_create(hold="indefinite", releasePin="4711")
    other_pin = a_create(hold="indefinite", releasePin="0815")
    assert jobs.request_digest(held) != jobs.request_digest(with_pin)
    assert jobs.request_digest(with_pin) == jobs.request_digest(other_pin)


def held_job(**overrides: Any) -> Job:
    fields = {"hold_expires_at": NOW + timedelta(hours=1), "pin_hash": "h", **overrides}
    return a_job(JobStatus.held, **fields)


def test_release_clears_the_hold_and_keeps_the_age():
    released = jobs.release(held_job(pin_attempts=2), now=NOW)
    assert isinstance(released, Job)
    assert (released.status, released.sequence, released.reason) == (
        JobStatus.created,
        SEQUENCE + 1,
        "released",
    )
    assert (released.hold_expires_at, released.pin_hash, released.pin_attempts) == (None, None, 0)
    assert released.created_at == CREATED_AT
    refused = jobs.release(a_job(JobStatus.created), now=NOW)
    assert isinstance(refused, Refusal)


@pytest.mark.parametrize(
    ("until", "expires", "expected"),
    [
        (None, NOW, (JobStatus.canceled, "hold_expired")),
        (NOW, NOW + timedelta(hours=1), (JobStatus.created, "hold_ended")),
        (NOW, NOW, (JobStatus.canceled, "hold_expired")),  # the timeout wins a tie
        (NOW + timedelta(seconds=1), NOW + timedelta(hours=1), None),
        (None, NOW + timedelta(seconds=1), None),
    ],
)
def test_end_hold(until: Any, expires: Any, expected: Any):
    job = held_job(hold_until=until, hold_expires_at=expires)
    assert job.hold_due_at == (expires if until is None else min(until, expires))
    ended = jobs.end_hold(job, now=NOW)
    if expected is None:
        assert isinstance(ended, Refusal)
    else:
        assert isinstance(ended, Job)
        assert (ended.status, ended.reason) == expected


def test_wrong_pins_count_without_a_new_sequence_until_the_limit():
    job = held_job()
    for attempt in range(1, 3):
        job = jobs.wrong_pin(job, now=NOW, limit=3)
        assert (job.status, job.pin_attempts, job.sequence) == (JobStatus.held, attempt, SEQUENCE)
    job = jobs.wrong_pin(job, now=NOW, limit=3)
    assert (job.status, job.reason, job.sequence) == (
        JobStatus.canceled,
        "pin_attempts_exceeded",
        SEQUENCE + 1,
    )


def test_a_create_holds_only_for_a_time_to_come():
    later = NOW + timedelta(minutes=5)
    for hold, status in (
        ("indefinite", JobStatus.held),
        (later.isoformat(), JobStatus.held),
        ((NOW - timedelta(seconds=1)).isoformat(), JobStatus.created),
    ):
        job = jobs.create(
            None,
            a_create(hold=hold),
            queue_id=QUEUE,
            correlation_id="c",
            now=NOW,
            hold_timeout=timedelta(hours=2),
        )
        assert isinstance(job, Job)
        assert job.status is status
        if status is JobStatus.held:
            assert job.hold_expires_at == NOW + timedelta(hours=2)
        else:
            assert job.hold_expires_at is None
            assert job.hold_due_at is None
