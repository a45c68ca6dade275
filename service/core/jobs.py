"""The print job and its state machine: pure values in, pure values out.

```
held ──release / its hold time came──▶ created
held ──cancel / hold timeout / too many wrong PINs──▶ canceled
held ──update, move──▶ held (a new sequence)
created ──start──▶ started ──finish──▶ finished
 │ │ │                │ │
 │ │ └──cancel──▶ canceled ◀──cancel(force)
 │ └──expire──▶ canceled  │
 └─────fail───▶ failed ◀──fail (printer aborted, unreachable, refused an option)
created ──update──▶ created (priority or options changed; a new sequence)
created ──move────▶ created (on another queue, its age and priority kept; a new sequence)
started ──progress──▶ started (the printer's impressions and sheets grew; a new sequence)
```

Every function here returns either the changed job or a `Refusal` that says why the change
is not allowed; nothing raises for a refused transition and nothing does I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from service.core.text import capped
from service.core.tracecontext import TraceContext
from service.models import (
    CreatePrintJob,
    HoldIndefinite,
    InlineDocument,
    JobStatus,
    PrintOptions,
    Priority,
    RejectionReason,
    UpdatePrintJob,
)

__all__ = [
    "FINAL_STATUSES",
    "PRIORITY_RANK",
    "DocumentRef",
    "Job",
    "Refusal",
    "begin",
    "cancel",
    "create",
    "document_name",
    "end_hold",
    "expire",
    "fail",
    "finish",
    "move",
    "progress",
    "release",
    "request_digest",
    "start",
    "update",
    "wrong_pin",
]

FINAL_STATUSES: Final = frozenset({JobStatus.finished, JobStatus.canceled, JobStatus.failed})
EXPIRED: Final = "expired"
RELEASED: Final = "released"
HOLD_ENDED: Final = "hold_ended"
HOLD_EXPIRED: Final = "hold_expired"
PIN_ATTEMPTS_EXCEEDED: Final = "pin_attempts_exceeded"

# Lower rank prints first. A create without a priority waits as `medium`.
PRIORITY_RANK: Final[dict[Priority, int]] = {
    Priority.high: 0,
    Priority.medium: 1,
    Priority.low: 2,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentRef:
    """What to print: a URL to fetch, or (`url` None) bytes kept in the store with the job."""

    content_type: str
    url: str | None = None
    size: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A print job as the service knows it. `sequence` counts its changes."""

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
    title: str | None = None
    copies: int = 1
    options: PrintOptions | None = None
    document: DocumentRef | None = None
    expire_at: datetime | None = None
    # Fingerprint of the create that made the job: a redelivery has the same one.
    request_digest: str = ""
    # The printer's own job for it, once submitted: taken up again, it is followed there.
    printer_job: str | None = None
    # Times its printing was cut short by the service stopping (a crash, a takeover).
    interruptions: int = 0
    # Left `started` by a clean stop: the next holder resumes it without counting that.
    handed_over: bool = False
    # What the printer reported done (impressions: printed sides; sheets: media sheets),
    # the totals once finished; None until it reports them.
    impressions: int | None = None
    sheets: int | None = None
    # A held job: released by itself at `hold_until` (None: only by a release), canceled at
    # `hold_expires_at` unless released before; `pin_hash` (pins.py) and the wrong PINs
    # tried so far, when its release needs a PIN.
    hold_until: datetime | None = None
    hold_expires_at: datetime | None = None
    pin_hash: str | None = None
    pin_attempts: int = 0
    # The trace of the create that made it (tracing on): its print span's parent.
    trace: TraceContext | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def hold_due_at(self) -> datetime | None:
        """When a held job's hold ends by itself (released or canceled), if it is held."""
        if self.status is not JobStatus.held or self.hold_expires_at is None:
            return None
        if self.hold_until is None:
            return self.hold_expires_at
        return min(self.hold_until, self.hold_expires_at)

    @property
    def display_title(self) -> str:
        """The title printers show: `title`, else the deprecated `documentName`, else the id."""
        return self.title or self.document_name or self.job_id

    def same_request(self, queue_id: str, command: CreatePrintJob) -> bool:
        """Whether `command` asks for this very job (a redelivery), not a different one."""
        if self.queue_id != queue_id:
            return False
        if self.request_digest:
            return self.request_digest == request_digest(command)
        # A job stored before digests were kept.
        return (
            self.user_id == command.userId
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
    hold_timeout: timedelta = timedelta(days=1),
    pin_hash: str | None = None,
) -> Job | Refusal | None:
    """A new job, `None` for a repeat of an existing create (idempotent), or a refusal.

    `pin_hash` is the hash of the command's `releasePin` (the caller computes it: it is
    slow, and it needs a salt). A repeat whose PIN differs is the caller's to tell, and so
    is a PIN without `hold: indefinite` (the decoder refuses it: `codec._check_release_pin`).
    """
    if existing is not None:
        if existing.same_request(queue_id, command):
            return None
        return Refusal(
            RejectionReason.job_conflict,
            f"job {existing.job_id!r} already exists with a different payload or queue",
        )
    held = command.hold is HoldIndefinite.indefinite or (
        isinstance(command.hold, datetime) and command.hold > now
    )
    return Job(
        job_id=command.jobId,
        queue_id=queue_id,
        status=JobStatus.held if held else JobStatus.created,
        sequence=1,
        priority=command.priority or Priority.medium,
        user_id=command.userId,
        document_name=document_name(command),
        created_at=now,
        updated_at=now,
        correlation_id=correlation_id,
        title=command.title,
        copies=command.copies or 1,
        options=command.options,
        document=_document_ref(command),
        expire_at=command.expireAfter,
        request_digest=request_digest(command),
        hold_until=command.hold if held and isinstance(command.hold, datetime) else None,
        hold_expires_at=now + hold_timeout if held else None,
        pin_hash=pin_hash if held else None,
    )


def request_digest(command: CreatePrintJob) -> str:
    """A fingerprint of everything a create asks for, to tell a redelivery from a conflict.

    Never of the PIN itself (a digest of a short PIN is as good as the PIN to whoever reads
    the store), only whether there is one. Fields added since 1.4.0 are left out while
    unset, so that a job stored before has the digest its redelivery has now.
    """
    exclude = {"releasePin"} | ({"hold"} if command.hold is None else set())
    text = command.model_dump_json(exclude=exclude)
    if command.releasePin is not None:
        text += "+pin"
    return hashlib.sha256(text.encode()).hexdigest()


def _document_ref(command: CreatePrintJob) -> DocumentRef | None:
    document = command.document
    if document is None:
        return None
    if isinstance(document, InlineDocument):
        # base64 length → byte count, without decoding again.
        size = len(document.data) * 3 // 4 - document.data[-2:].count("=")
        return DocumentRef(content_type=document.contentType, size=size)
    return DocumentRef(content_type=document.contentType, url=document.url)


def document_name(command: CreatePrintJob) -> str | None:
    """`documentName`, which the contract deprecates but we still honour.

    Read from the model's field storage: attribute access emits a DeprecationWarning meant for
    clients of the model, not for the service that implements the contract.
    """
    value = vars(command).get("documentName")
    return value if isinstance(value, str) else None


# Statuses in which a job has not reached a printer: it may still change or move.
_WAITING: Final = frozenset({JobStatus.created, JobStatus.held})
REASON_MAX_BYTES: Final = 1024
_CONTROL: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def _advance(job: Job, status: JobStatus, now: datetime, reason: str | None = None) -> Job:
    if reason is not None:
        # Reasons quote printers and document servers: peers that may be hostile.
        reason = capped(_CONTROL.sub("\ufffd", reason), REASON_MAX_BYTES)
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
    if job.status is JobStatus.held:
        return Refusal(RejectionReason.job_started, f"job {job.job_id!r} is held")
    return Refusal(RejectionReason.job_started, f"job {job.job_id!r} has already started")


def finish(
    job: Job, *, now: datetime, impressions: int | None = None, sheets: int | None = None
) -> Job | Refusal:
    """The printer said the job is done; with the totals it reported last, if any (else the
    job keeps what progress recorded)."""
    if job.status is JobStatus.started:
        finished = _advance(job, JobStatus.finished, now)
        return dataclasses.replace(
            finished,
            impressions=job.impressions if impressions is None else impressions,
            sheets=job.sheets if sheets is None else sheets,
        )
    if job.is_final:
        return _final_refusal(job)
    return Refusal(
        RejectionReason.job_started, f"job {job.job_id!r} cannot finish before it starts"
    )


def progress(job: Job, *, impressions: int, sheets: int | None, now: datetime) -> Job | Refusal:
    """The printer reported how far it got: a started job records it as a new change (its
    status stays `started`). Refused unless the numbers grew: a count that did not move
    says nothing new, and one that fell (the printer began the job again) must not make a
    consumer's progress go backwards."""
    if job.status is not JobStatus.started:
        if job.is_final:
            return _final_refusal(job)
        return Refusal(
            RejectionReason.job_started, f"job {job.job_id!r} has no progress before it starts"
        )
    if impressions < 0 or (sheets is not None and sheets < 0):
        return Refusal(RejectionReason.job_conflict, "a negative count is not progress")
    before = (job.impressions or 0, job.sheets or 0)
    after = (impressions, before[1] if sheets is None else sheets)
    fell = after[0] < before[0] or after[1] < before[1]
    if fell or after == before:
        return Refusal(RejectionReason.job_conflict, f"job {job.job_id!r} made no progress")
    return dataclasses.replace(
        job,
        sequence=job.sequence + 1,
        updated_at=now,
        impressions=impressions,
        sheets=job.sheets if sheets is None else sheets,
    )


def fail(job: Job, *, reason: str, now: datetime) -> Job | Refusal:
    """The printer aborted the job, refused it, or could not be reached in time."""
    if job.is_final:
        return _final_refusal(job)
    return _advance(job, JobStatus.failed, now, reason)


def expire(job: Job, *, now: datetime) -> Job | Refusal:
    """Cancel a job that has not started by its `expireAfter`."""
    if job.is_final:
        return _final_refusal(job)
    if job.status is not JobStatus.created:
        return Refusal(RejectionReason.job_started, f"job {job.job_id!r} started in time")
    if job.expire_at is None or job.expire_at > now:
        return Refusal(RejectionReason.job_conflict, f"job {job.job_id!r} has not expired")
    return _advance(job, JobStatus.canceled, now, EXPIRED)


def update(job: Job, command: UpdatePrintJob, *, now: datetime) -> tuple[Job, list[str]] | Refusal:
    """Change the priority or options of a waiting (or held) job; returns it with the
    changed fields."""
    if job.is_final:
        return _final_refusal(job)
    if job.status not in _WAITING:
        return Refusal(
            RejectionReason.job_started, f"job {job.job_id!r} has started; it cannot change"
        )
    given = [name for name in ("priority", "options") if getattr(command, name) is not None]
    if not given:
        return Refusal(
            RejectionReason.schema_violation, "updatePrintJob needs `priority` or `options`"
        )
    changed = dataclasses.replace(
        job,
        priority=command.priority or job.priority,
        options=command.options if command.options is not None else job.options,
        sequence=job.sequence + 1,
        updated_at=now,
        reason=None,
    )
    return changed, given


def move(job: Job, *, to_queue: str, now: datetime) -> Job | Refusal:
    """Put a waiting job on another queue. Whether that queue takes it is the queue
    configuration's to say (`QueueMap.check_move`), not the job's.

    `created_at` is kept: the job's age is its place among jobs of the same priority, and a
    move must neither send it to the back of its new queue nor let it jump ahead.
    """
    if job.is_final:
        return _final_refusal(job)
    if job.status not in _WAITING:
        return Refusal(
            RejectionReason.job_started, f"job {job.job_id!r} has started; it cannot move"
        )
    return dataclasses.replace(
        job, queue_id=to_queue, sequence=job.sequence + 1, updated_at=now, reason=None
    )


def begin(job: Job, *, now: datetime) -> Job | Refusal:
    """A printer is ready for the job: start it, or cancel it if it expired while waiting."""
    if job.status is JobStatus.created and job.expire_at is not None and job.expire_at <= now:
        return expire(job, now=now)
    return start(job, now=now)


def cancel(job: Job, *, force: bool, now: datetime, reason: str | None = None) -> Job | Refusal:
    """Cancel a waiting job; a started one only with `force` (the caller stops the printer)."""
    if job.status is JobStatus.held:
        return _advance(job, JobStatus.canceled, now, reason or "canceled while held")
    if job.status is JobStatus.created:
        return _advance(job, JobStatus.canceled, now, reason or "canceled before it started")
    if job.status is JobStatus.started:
        if force:
            return _advance(job, JobStatus.canceled, now, reason or "force-canceled while printing")
        return Refusal(
            RejectionReason.job_started,
            f"job {job.job_id!r} is printing; send force: true to cancel it",
        )
    return _final_refusal(job)


def release(job: Job, *, now: datetime, reason: str = RELEASED) -> Job | Refusal:
    """A held job may go to the printers: it waits in its place (its age is kept, so a job
    released at the printer prints before jobs sent after it)."""
    if job.is_final:
        return _final_refusal(job)
    if job.status is not JobStatus.held:
        return Refusal(RejectionReason.job_started, f"job {job.job_id!r} is not held")
    return dataclasses.replace(
        _advance(job, JobStatus.created, now, reason),
        hold_until=None,
        hold_expires_at=None,
        pin_hash=None,
        pin_attempts=0,
    )


def end_hold(job: Job, *, now: datetime) -> Job | Refusal:
    """A held job's time came: canceled if its hold timeout passed, else released if its hold
    time did; refused if neither has (a timer that fired early, or a job changed since)."""
    if job.status is not JobStatus.held:
        return release(job, now=now)  # the refusal that says why
    if job.hold_expires_at is not None and job.hold_expires_at <= now:
        return _advance(job, JobStatus.canceled, now, HOLD_EXPIRED)
    if job.hold_until is not None and job.hold_until <= now:
        return release(job, now=now, reason=HOLD_ENDED)
    return Refusal(RejectionReason.job_conflict, f"job {job.job_id!r} is held a while longer")


def wrong_pin(job: Job, *, now: datetime, limit: int) -> Job:
    """A release with a wrong PIN: counted (not a change of the job's: no new sequence);
    the `limit`th cancels the job, so that guessing a PIN costs the guesser the job."""
    attempts = job.pin_attempts + 1
    if attempts >= limit:
        return dataclasses.replace(
            _advance(job, JobStatus.canceled, now, PIN_ATTEMPTS_EXCEEDED), pin_attempts=attempts
        )
    return dataclasses.replace(job, pin_attempts=attempts)
