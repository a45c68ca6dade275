"""The print job and its state machine: pure values in, pure values out.

```
created ──start──▶ started ──finish──▶ finished
   │                  │
   └──cancel──▶ canceled ◀──cancel(force)──┘
```

Every function here returns either the changed job or a `Refusal` that says why the change
is not allowed; nothing raises for a refused transition and nothing does I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from service.models import CreatePrintJob, JobStatus, Priority, RejectionReason

__all__ = [
    "FINAL_STATUSES",
    "PRIORITY_RANK",
    "Job",
    "Refusal",
    "cancel",
    "create",
    "document_name",
    "finish",
    "start",
]

FINAL_STATUSES: Final = frozenset({JobStatus.finished, JobStatus.canceled})

# Lower rank prints first. A create without a priority waits as `medium`.
PRIORITY_RANK: Final[dict[Priority, int]] = {
    Priority.high: 0,
    Priority.medium: 1,
    Priority.low: 2,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A print job as the service knows it. `sequence` counts its status changes."""

    job_id: str
    queue_id: str
    status: JobStatus
    sequence: int
    priority: Priority
    user_id: str | None
    document_name: str | None
    created_at: datetime
    updated_at: datetime
    correlation_id: str
    reason: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def same_request(self, queue_id: str, command: CreatePrintJob) -> bool:
        """Whether `command` asks for this very job (a redelivery), not a different one."""
        return (
            self.queue_id == queue_id
            and self.user_id == command.userId
            and self.document_name == document_name(command)
            and self.priority == (command.priority or Priority.medium)
        )


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a command or transition cannot be applied to a job."""

    reason: RejectionReason
    message: str


def create(
    existing: Job | None,
    command: CreatePrintJob,
    *,
    queue_id: str,
    correlation_id: str,
    now: datetime,
) -> Job | Refusal | None:
    """A new job, `None` for a repeat of an existing create (idempotent), or a refusal."""
    if existing is not None:
        if existing.same_request(queue_id, command):
            return None
        return Refusal(
            RejectionReason.job_conflict,
            f"job {existing.job_id!r} already exists with a different payload or queue",
        )
    return Job(
        job_id=command.jobId,
        queue_id=queue_id,
        status=JobStatus.created,
        sequence=1,
        priority=command.priority or Priority.medium,
        user_id=command.userId,
        document_name=document_name(command),
        created_at=now,
        updated_at=now,
        correlation_id=correlation_id,
    )


def document_name(command: CreatePrintJob) -> str | None:
    """`documentName`, which the contract deprecates but we still honour.

    Read from the model's field storage: attribute access emits a DeprecationWarning meant for
    clients of the model, not for the service that implements the contract.
    """
    value = vars(command).get("documentName")
    return value if isinstance(value, str) else None


def _advance(job: Job, status: JobStatus, now: datetime, reason: str | None = None) -> Job:
    return dataclasses.replace(
        job, status=status, sequence=job.sequence + 1, updated_at=now, reason=reason
    )


def _final_refusal(job: Job) -> Refusal:
    return Refusal(RejectionReason.job_final, f"job {job.job_id!r} is already {job.status.value}")


def start(job: Job, *, now: datetime) -> Job | Refusal:
    """The printer took the job."""
    if job.status is JobStatus.created:
        return _advance(job, JobStatus.started, now)
    if job.is_final:
        return _final_refusal(job)
    return Refusal(RejectionReason.job_started, f"job {job.job_id!r} has already started")


def finish(job: Job, *, now: datetime) -> Job | Refusal:
    """The printer said the job is done."""
    if job.status is JobStatus.started:
        return _advance(job, JobStatus.finished, now)
    if job.is_final:
        return _final_refusal(job)
    return Refusal(
        RejectionReason.job_started, f"job {job.job_id!r} cannot finish before it starts"
    )


def cancel(job: Job, *, force: bool, now: datetime) -> Job | Refusal:
    """Cancel a waiting job; a started one only with `force` (the caller stops the printer)."""
    if job.status is JobStatus.created:
        return _advance(job, JobStatus.canceled, now, "canceled before it started")
    if job.status is JobStatus.started:
        if force:
            return _advance(job, JobStatus.canceled, now, "force-canceled while printing")
        return Refusal(
            RejectionReason.job_started,
            f"job {job.job_id!r} is printing; send force: true to cancel it",
        )
    return _final_refusal(job)
