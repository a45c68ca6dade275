"""Applies one command: decode, decide with the pure core, store the change with its events.

A command's whole effect (job row and outbox messages) is one store transaction. Nothing here
raises for bad input: every command that cannot be applied becomes a `commandRejected`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from service.core import jobs
from service.core.codec import CommandDecoder, DecodedCommand, Inbound, Rejection
from service.core.events import Outgoing, job_event, rejection_event
from service.dispatcher import PrintDispatcher
from service.metrics import Metrics
from service.models import (
    CancelPrintJob,
    CreatePrintJob,
    JobStatus,
    RejectionReason,
)
from service.ports import JobStore, StoreTransaction

__all__ = ["CommandHandler"]

log = structlog.get_logger(__name__)


@dataclass(slots=True, kw_only=True)
class _Step:
    """One command being applied: its transaction, and what to do once that commits."""

    tx: StoreTransaction
    command: DecodedCommand
    now: datetime
    after_commit: list[Callable[[], None]] = field(default_factory=list)


class CommandHandler:
    def __init__(
        self,
        *,
        decoder: CommandDecoder,
        store: JobStore,
        dispatcher: PrintDispatcher,
        metrics: Metrics,
        on_commit: Callable[[], None],
    ) -> None:
        self._decoder = decoder
        self._store = store
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._on_commit = on_commit

    async def handle(self, inbound: Inbound) -> None:
        """Apply `inbound`; returns once its effect (or its rejection) is committed."""
        decoded = self._decoder.decode(inbound)
        if isinstance(decoded, Rejection):
            await self._reject(decoded)
            return
        with structlog.contextvars.bound_contextvars(
            correlation_id=decoded.correlation_id,
            job_id=decoded.message.jobId,
            queue_id=decoded.queue_id,
        ):
            try:
                await self._apply(decoded)
            except Exception:
                # A bug or a store failure: the sender hears of it, the next command goes on.
                log.exception("command_failed", message_type=decoded.message_type.value)
                await self._reject(
                    _refused(decoded, RejectionReason.internal_error, "the command failed")
                )

    async def _apply(self, command: DecodedCommand) -> None:
        message = command.message
        async with self._store.transaction() as tx:
            step = _Step(tx=tx, command=command, now=datetime.now(UTC))
            job = await tx.get(message.jobId)
            if isinstance(message, CreatePrintJob):
                outcome = self._create(step, message, job)
            elif isinstance(message, CancelPrintJob):
                outcome = self._cancel(step, message, job)
            else:
                outcome = self._status(step, job)
        for effect in step.after_commit:
            effect()
        self._metrics.commands.labels(command.message_type.value, outcome).inc()
        self._on_commit()

    def _create(self, step: _Step, message: CreatePrintJob, existing: jobs.Job | None) -> str:
        command = step.command
        result = jobs.create(
            existing,
            message,
            queue_id=command.queue_id,
            correlation_id=command.correlation_id,
            now=step.now,
        )
        if result is None:
            log.info("duplicate_create_ignored")
            return "duplicate"
        if isinstance(result, jobs.Refusal):
            return self._refuse(step, result)
        step.tx.put(result)
        step.tx.emit(_event(result, command))
        step.after_commit.append(lambda: self._dispatcher.enqueue(result))
        step.after_commit.append(self._metrics.jobs.labels(JobStatus.created.value).inc)
        log.info("job_created", priority=result.priority.value)
        return "accepted"

    def _cancel(self, step: _Step, message: CancelPrintJob, job: jobs.Job | None) -> str:
        if job is None:
            return self._refuse(step, _unknown(message.jobId))
        result = jobs.cancel(job, force=message.force, now=step.now)
        if isinstance(result, jobs.Refusal):
            return self._refuse(step, result)
        step.tx.put(result)
        step.tx.emit(_event(result, step.command))
        step.after_commit.append(lambda: self._dispatcher.withdraw(job))
        step.after_commit.append(self._metrics.jobs.labels(job.status.value).dec)
        step.after_commit.append(self._metrics.jobs.labels(result.status.value).inc)
        log.info("job_canceled", force=message.force, was=job.status.value)
        return "accepted"

    def _status(self, step: _Step, job: jobs.Job | None) -> str:
        if job is None:
            return self._refuse(step, _unknown(step.command.message.jobId))
        step.tx.emit(_event(job, step.command, snapshot_at=step.now))
        return "accepted"

    def _refuse(self, step: _Step, refusal: jobs.Refusal) -> str:
        rejection = _refused(step.command, refusal.reason, refusal.message)
        step.tx.emit(rejection_event(rejection, event_id=uuid.uuid4(), now=datetime.now(UTC)))
        self._log_rejection(rejection)
        return "rejected"

    async def _reject(self, rejection: Rejection) -> None:
        async with self._store.transaction() as tx:
            tx.emit(rejection_event(rejection, event_id=uuid.uuid4(), now=datetime.now(UTC)))
        self._metrics.commands.labels(rejection.message_type or "unknown", "rejected").inc()
        with structlog.contextvars.bound_contextvars(
            correlation_id=rejection.correlation_id,
            job_id=rejection.job_id,
            queue_id=rejection.queue_id,
        ):
            self._log_rejection(rejection)
        self._on_commit()

    @staticmethod
    def _log_rejection(rejection: Rejection) -> None:
        log.warning(
            "command_rejected",
            reason=rejection.reason.value,
            detail=rejection.message,
            message_type=rejection.message_type,
        )


def _event(
    job: jobs.Job, command: DecodedCommand, *, snapshot_at: datetime | None = None
) -> Outgoing:
    return job_event(
        job,
        event_id=uuid.uuid4(),
        correlation_id=command.correlation_id,
        received_at=command.received_at,
        snapshot_at=snapshot_at,
    )


def _unknown(job_id: str) -> jobs.Refusal:
    return jobs.Refusal(RejectionReason.unknown_job, f"no job has id {job_id!r}")


def _refused(command: DecodedCommand, reason: RejectionReason, message: str) -> Rejection:
    return Rejection(
        reason=reason,
        message=message,
        queue_id=command.queue_id,
        correlation_id=command.correlation_id,
        received_at=command.received_at,
        job_id=command.message.jobId,
        message_type=command.message_type.value,
    )
