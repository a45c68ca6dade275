"""Applies one command: decode, decide with the pure core, store the change with its events.

A command's whole effect (job row and outbox messages) is one store transaction. Nothing here
raises for bad input: every command that cannot be applied becomes a `commandRejected`.

What one command does never costs another. A batch that fails for anything but a store
outage is applied again one command at a time; the command that fails is answered with
`internal_error`; one whose answer cannot be stored either is parked as a dead letter with
its raw bytes. Only a `StoreError` (the store is away) leaves commands unacknowledged, to
be delivered again once it is back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

import structlog

from service.aio import resolved
from service.application.dispatch import PrintDispatcher
from service.core import jobs, pins
from service.core.clock import Clock, IdSource, new_id, utc_now
from service.core.codec import MESSAGE_TYPES, CommandDecoder, DecodedCommand, Inbound, Rejection
from service.core.events import (
    Outgoing,
    counts_event,
    job_event,
    job_list_event,
    rejection_event,
    with_trace,
)
from service.core.listing import BadCursor, PageKey, encode_cursor, query_of
from service.core.printers import printer_status_list_event
from service.core.queues import QueueMap
from service.core.text import capped
from service.metrics import Metrics
from service.models import (
    CancelPrintJob,
    CreatePrintJob,
    FieldError,
    GetPrintCounts,
    GetPrinterStatus,
    GetPrintJobStatus,
    HoldIndefinite,
    JobStatus,
    ListPrintJobs,
    MovePrintJob,
    PrinterStatus,
    RejectionReason,
    ReleasePrintJob,
    UpdatePrintJob,
)
from service.ports import (
    NO_TRACING,
    DeadLetter,
    JobStore,
    Span,
    StoreError,
    StoreRefused,
    StoreTransaction,
    Tracer,
)

__all__ = ["CommandHandler"]

log = structlog.get_logger(__name__)


@dataclass(slots=True, kw_only=True)
class _Step:
    """One command being applied: its transaction, and what to do once that commits."""

    tx: StoreTransaction
    command: DecodedCommand
    now: datetime
    new_id: IdSource
    after_commit: list[Callable[[], None]] = field(default_factory=list)

    def emit(self, message: Outgoing) -> None:
        """Emit `message` in the command's trace (if tracing is on and it has one)."""
        self.tx.emit(with_trace(message, self.command.trace))

    def ids(self) -> dict[str, str | None]:
        """What every log line about this command carries (passed, not bound: cheaper)."""
        command = self.command
        return {
            "correlation_id": command.correlation_id,
            "job_id": command.job_id,
            "queue_id": command.queue_id,
        }


class CommandHandler:
    def __init__(
        self,
        *,
        decoder: CommandDecoder,
        store: JobStore,
        queues: QueueMap,
        dispatcher: PrintDispatcher,
        metrics: Metrics,
        clock: Clock = utc_now,
        new_id: IdSource = new_id,
        list_max: int = 100,
        printer_statuses: Callable[[str], Sequence[PrinterStatus]] = lambda _lane: (),
        hold_timeout: timedelta = timedelta(days=1),
        pin_attempts: int = 5,
        new_salt: Callable[[], bytes] = lambda: secrets.token_bytes(pins.SALT_BYTES),
        tracer: Tracer = NO_TRACING,
    ) -> None:
        self._list_max = list_max
        self._tracer = tracer
        # A queue's own hold timeout, else this one; wrong PINs that cancel a held job.
        self._hold_timeout = hold_timeout
        self._pin_attempts = pin_attempts
        self._new_salt = new_salt
        # The last reported status of a lane's printers (the PrinterMonitor's).
        self._printer_statuses = printer_statuses
        self._decoder = decoder
        self._queues = queues
        self._store = store
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._clock = clock
        self._new_id = new_id

    async def handle(self, inbounds: Sequence[Inbound]) -> asyncio.Future[None]:
        """Apply a batch of commands in one transaction; returns when it is applied, with a
        future that resolves once it is committed (its effects on the service run then).

        One commit for many commands is what keeps durability cheap under load, and not
        waiting for it lets the next batch be applied while this one is being committed. A
        bug hit by one command must not cost the others: the batch is then applied one by
        one, and the command that fails is answered with `internal_error`. A `StoreError` is
        not answered: it propagates (or fails the future), nothing is acknowledged, and the
        broker delivers again.
        """
        if self._tracer.enabled:
            decoded = [self._decode_traced(inbound) for inbound in inbounds]
        else:
            decoded = [self._decoder.decode(inbound) for inbound in inbounds]
        try:
            return await self._apply(decoded)
        except StoreError:
            # It may have committed all the same: the printers catch up with the store.
            self._dispatcher.resync()
            raise
        except Exception:  # noqa: BLE001 - one command's fault; found and answered below
            for inbound, one in zip(inbounds, decoded, strict=True):
                await self._handle_alone(inbound, one)
            return resolved()

    def _decode_traced(self, inbound: Inbound) -> DecodedCommand | Rejection:
        """Decode with a `decode` span: a child of the sender's traceparent, found only by
        decoding (an envelope's header), so the span is started at the time taken before.
        Without a valid one, that span starts the command's trace."""
        started = time.time_ns()
        decoded = self._decoder.decode(inbound)
        span = self._tracer.start(
            "decode",
            parent=decoded.trace,
            kind="consumer",
            start_ns=started,
            attributes=_span_attributes(decoded, inbound.topic),
        )
        span.end()
        if decoded.trace_invalid:
            self._metrics.trace_context_invalid.inc()
            log.debug("traceparent_ignored", correlation_id=decoded.correlation_id)
        if decoded.trace is None and span.context is not None:
            decoded = dataclasses.replace(decoded, trace=span.context)
        return decoded

    async def _handle_alone(self, inbound: Inbound, decoded: DecodedCommand | Rejection) -> None:
        """Apply one command and wait for its commit; if that fails, answer it with
        `internal_error`; if that fails too, park it. Raises only StoreError."""
        try:
            await self._commit([decoded])
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged by _failed, answered below
            self._failed(exc, decoded)
        else:
            return
        answer = _internal_error(decoded)
        try:
            await self._commit([answer])
        except StoreError:
            raise
        except Exception as exc:
            log.exception("rejection_failed", correlation_id=answer.correlation_id)
            await self._park(inbound, f"neither applied nor answered: {exc!r}")

    def _failed(self, exc: Exception, decoded: DecodedCommand | Rejection) -> None:
        ids = {"correlation_id": decoded.correlation_id, "queue_id": decoded.queue_id}
        if isinstance(exc, StoreRefused):
            self._metrics.store_refusals.inc()
            log.error("command_refused_by_store", error=str(exc), **ids)
        else:
            log.error("command_failed", exc_info=exc, **ids)

    async def _park(self, inbound: Inbound, reason: str) -> None:
        letter = DeadLetter(
            source="command",
            reason=reason,
            address=inbound.topic,
            payload=inbound.payload,
            properties=dict(inbound.properties),
            attempts=1,
            at=self._clock().timestamp(),
        )
        try:
            await self._store.park(letter)
        except StoreError:
            raise
        except Exception:
            # Not even that can be stored: the log is the last place it is kept.
            log.exception("dead_letter_lost", topic=letter.address, size=len(inbound.payload))
        else:
            log.error("command_parked", topic=letter.address, reason=reason)
        self._metrics.dead_letters.labels("command").inc()

    async def _commit(self, commands: Sequence[DecodedCommand | Rejection]) -> None:
        """Apply `commands` and wait until they are durable."""
        durable = await self._apply(commands)
        await durable

    async def _apply(self, commands: Sequence[DecodedCommand | Rejection]) -> asyncio.Future[None]:
        after_commit: list[Callable[[], None]] = []
        spans: list[Span] = []
        try:
            async with self._store.apply_commands() as tx:
                await self._apply_in(tx, commands, after_commit, spans)
        except BaseException as exc:
            for span in spans:
                span.end(error=exc)
            raise
        if spans:
            tx.durable.add_done_callback(partial(_end_spans, spans))
        tx.durable.add_done_callback(partial(_run_after_commit, after_commit))
        return tx.durable

    async def _apply_in(
        self,
        tx: StoreTransaction,
        commands: Sequence[DecodedCommand | Rejection],
        after_commit: list[Callable[[], None]],
        spans: list[Span],
    ) -> None:
        now = self._clock()
        for command in commands:
            if self._tracer.enabled:
                # From its first write to the commit that makes its effects durable.
                spans.append(
                    self._tracer.start(
                        "store", parent=command.trace, attributes=_span_attributes(command)
                    )
                )
            if isinstance(command, Rejection):
                self._emit_rejection(tx, command, now, after_commit)
                continue
            step = _Step(
                tx=tx, command=command, now=now, new_id=self._new_id, after_commit=after_commit
            )
            outcome = await self._apply_one(step)
            after_commit.append(self._metrics.commands_of(command.message_type.value, outcome).inc)

    async def _apply_one(self, step: _Step) -> str:
        message = step.command.message
        if isinstance(message, GetPrintCounts):
            return await self._counts(step)
        if isinstance(message, ListPrintJobs):
            return await self._list(step, message)
        if isinstance(message, GetPrinterStatus):
            return self._printers(step)
        job = await step.tx.get(message.jobId)
        if isinstance(message, CreatePrintJob):
            return await self._create(step, message, job)
        if job is not None and job.queue_id != step.command.queue_id:
            # A job is acted on through its own queue only; through another, it is answered
            # exactly as one that does not exist, so that no key learns of other queues' jobs.
            log.info("job_of_another_queue", job_queue_id=job.queue_id, **step.ids())
            job = None
        if isinstance(message, ReleasePrintJob):
            return await self._release(step, message, job)
        return self._on_job(step, message, job)

    def _on_job(
        self,
        step: _Step,
        message: CancelPrintJob | UpdatePrintJob | MovePrintJob | GetPrintJobStatus,
        job: jobs.Job | None,
    ) -> str:
        if isinstance(message, CancelPrintJob):
            return self._cancel(step, message, job)
        if isinstance(message, UpdatePrintJob):
            return self._update(step, message, job)
        if isinstance(message, MovePrintJob):
            return self._move(step, message, job)
        return self._status(step, job)

    async def _create(self, step: _Step, message: CreatePrintJob, existing: jobs.Job | None) -> str:
        command = step.command
        if existing is None and (refusal := self._queues.check_create(command.queue_id, message)):
            return self._refuse(step, refusal)
        pin_hash = None
        if (pin := message.releasePin) is not None and message.hold is HoldIndefinite.indefinite:
            if existing is None:
                # scrypt is slow on purpose: in a thread, so that other work goes on.
                pin_hash = await asyncio.to_thread(pins.hash_pin, pin, salt=self._new_salt())
            elif (
                existing.pin_hash is not None
                and existing.same_request(command.queue_id, message)
                and not await asyncio.to_thread(pins.verify_pin, pin, existing.pin_hash)
            ):
                # The same create with another PIN is another request (the digest knows
                # only that there is a PIN).
                return self._refuse(step, _conflict(existing.job_id))
        result = jobs.create(
            existing,
            message,
            queue_id=command.queue_id,
            correlation_id=command.correlation_id,
            now=step.now,
            hold_timeout=self._queues.hold_timeout(command.queue_id) or self._hold_timeout,
            pin_hash=pin_hash,
        )
        if result is None:
            log.info("duplicate_create_ignored", **step.ids())
            return "duplicate"
        if isinstance(result, jobs.Refusal):
            return self._refuse(step, result)
        if command.trace is not None:
            result = dataclasses.replace(result, trace=command.trace)  # for its print span
        step.tx.put(result)
        if command.document is not None:
            step.tx.put_document(result.job_id, command.document)
        step.emit(_event(step, result))
        step.after_commit.append(lambda: self._dispatcher.enqueue(result))
        step.after_commit.append(self._metrics.jobs_in(result.status.value).inc)
        log.info(
            "job_created",
            priority=result.priority.value,
            held=result.status is JobStatus.held,
            **step.ids(),
        )
        return "accepted"

    async def _release(self, step: _Step, message: ReleasePrintJob, job: jobs.Job | None) -> str:
        if job is None:
            return self._refuse(step, _unknown(message.jobId))
        if job.status is JobStatus.held and (refused := await self._check_pin(step, message, job)):
            return refused
        result = jobs.release(job, now=step.now)
        if isinstance(result, jobs.Refusal):
            if job.is_final:
                return self._refuse(step, result)  # job_final
            # Released already (a release delivered twice, or its hold time came): say where
            # the job is rather than refuse.
            return self._status(step, job)
        step.tx.put(result)
        step.emit(_event(step, result))
        step.after_commit.append(lambda: self._dispatcher.release(result))
        step.after_commit.append(self._metrics.jobs_in(job.status.value).dec)
        step.after_commit.append(self._metrics.jobs_in(result.status.value).inc)
        log.info("job_released", **step.ids())
        return "accepted"

    async def _check_pin(self, step: _Step, message: ReleasePrintJob, job: jobs.Job) -> str | None:
        """None if the release carries the job's PIN (or it needs none); else refused, and a
        wrong one counted."""
        if job.pin_hash is None:
            return None
        if message.pin is None:
            return self._refuse(step, _release_refused(f"job {job.job_id!r} needs its PIN"))
        if await asyncio.to_thread(pins.verify_pin, message.pin, job.pin_hash):
            return None
        return self._wrong_pin(step, job)

    def _wrong_pin(self, step: _Step, job: jobs.Job) -> str:
        """Count a wrong PIN; the last one allowed cancels the job. Never says the PIN."""
        result = jobs.wrong_pin(job, now=step.now, limit=self._pin_attempts)
        step.tx.put(result)
        log.warning("release_pin_wrong", attempts=result.pin_attempts, **step.ids())
        if not result.is_final:
            left = self._pin_attempts - result.pin_attempts
            return self._refuse(step, _release_refused(f"wrong PIN ({left} attempts left)"))
        step.emit(_event(step, result))
        step.after_commit.append(lambda: self._dispatcher.withdraw(job))
        step.after_commit.append(self._metrics.jobs_in(job.status.value).dec)
        step.after_commit.append(self._metrics.jobs_in(result.status.value).inc)
        log.warning("job_canceled", reason=result.reason, **step.ids())
        return self._refuse(
            step,
            _release_refused(
                f"wrong PIN; job {job.job_id!r} is canceled after {result.pin_attempts} wrong PINs"
            ),
        )

    def _cancel(self, step: _Step, message: CancelPrintJob, job: jobs.Job | None) -> str:
        if job is None:
            return self._refuse(step, _unknown(message.jobId))
        result = jobs.cancel(job, force=message.force, now=step.now)
        if isinstance(result, jobs.Refusal):
            return self._refuse(step, result)
        step.tx.put(result)
        step.emit(_event(step, result))
        step.after_commit.append(lambda: self._dispatcher.withdraw(job))
        step.after_commit.append(self._metrics.jobs_in(job.status.value).dec)
        step.after_commit.append(self._metrics.jobs_in(result.status.value).inc)
        log.info("job_canceled", force=message.force, was=job.status.value, **step.ids())
        return "accepted"

    def _update(self, step: _Step, message: UpdatePrintJob, job: jobs.Job | None) -> str:
        if job is None:
            return self._refuse(step, _unknown(message.jobId))
        result = jobs.update(job, message, now=step.now)
        if isinstance(result, jobs.Refusal):
            return self._refuse(step, result)
        updated, fields = result
        step.tx.put(updated)
        step.emit(_event(step, updated, updated=fields))
        step.after_commit.append(lambda: self._dispatcher.reprioritize(updated))
        log.info("job_updated", fields=fields, priority=updated.priority.value, **step.ids())
        return "accepted"

    def _move(self, step: _Step, message: MovePrintJob, job: jobs.Job | None) -> str:
        if job is None:
            return self._refuse(step, _unknown(message.jobId))
        if message.toQueue == job.queue_id:
            # Nothing to change: answered as a status query, so that a move sent twice
            # (or to where the job already is) tells where the job is without a new event.
            return self._status(step, job)
        # The job's state first: a started job is `job_started` whatever the target says.
        result = jobs.move(job, to_queue=message.toQueue, now=step.now)
        if isinstance(result, jobs.Refusal):
            return self._refuse(step, result)
        if refusal := self._queues.check_move(message.toQueue, job):
            return self._refuse(step, refusal)
        step.tx.put(result)
        step.emit(_event(step, result, moved_from=job.queue_id))
        step.after_commit.append(lambda: self._dispatcher.move(result))
        log.info("job_moved", to_queue_id=result.queue_id, **step.ids())
        return "accepted"

    def _status(self, step: _Step, job: jobs.Job | None) -> str:
        if job is None:
            return self._refuse(step, _unknown(step.command.job_id or ""))
        step.emit(_event(step, job, snapshot_at=step.now))
        return "accepted"

    async def _counts(self, step: _Step) -> str:
        command = step.command
        counts = await step.tx.counts(command.queue_id)
        step.emit(
            counts_event(
                command.queue_id,
                counts,
                event_id=step.new_id(),
                correlation_id=command.correlation_id,
                received_at=command.received_at,
                now=step.now,
            )
        )
        return "accepted"

    def _printers(self, step: _Step) -> str:
        """The statuses of the queue's printers as last reported: from memory, so that a
        query never waits on a printer (nor holds the batch while one answers)."""
        command = step.command
        lane = self._queues.lane(command.queue_id) or command.queue_id
        step.emit(
            printer_status_list_event(
                command.queue_id,
                self._printer_statuses(lane),
                event_id=step.new_id(),
                correlation_id=command.correlation_id,
                received_at=command.received_at,
                now=step.now,
            )
        )
        return "accepted"

    async def _list(self, step: _Step, message: ListPrintJobs) -> str:
        """One page of the queue's jobs, read in the batch's transaction like counts: it
        sees the commands before it in the batch, and on PostgreSQL it is a plain SELECT (no
        row lock)."""
        command = step.command
        try:
            query = query_of(command.queue_id, message, page_max=self._list_max)
        except BadCursor as exc:
            rejection = dataclasses.replace(
                _refused(command, RejectionReason.schema_violation, f"cursor: {exc}"),
                errors=(FieldError(path="cursor", message=str(exc)),),
            )
            step.tx.emit(rejection_event(rejection, event_id=step.new_id(), now=step.now))
            _log_rejection(rejection)
            return "rejected"
        # One more than the page: whether another page follows, without a second query.
        found = await step.tx.list_jobs(dataclasses.replace(query, limit=query.limit + 1))
        page = found[: query.limit]
        next_cursor = None
        if len(found) > query.limit:
            last = page[-1]
            next_cursor = encode_cursor(PageKey(last.created_at, last.job_id))
        step.emit(
            job_list_event(
                command.queue_id,
                page,
                query=message.model_copy(update={"limit": query.limit}),
                next_cursor=next_cursor,
                event_id=step.new_id(),
                correlation_id=command.correlation_id,
                received_at=command.received_at,
                now=step.now,
            )
        )
        return "accepted"

    def _refuse(self, step: _Step, refusal: jobs.Refusal) -> str:
        rejection = _refused(step.command, refusal.reason, refusal.message)
        step.tx.emit(rejection_event(rejection, event_id=step.new_id(), now=step.now))
        _log_rejection(rejection)
        return "rejected"

    def _emit_rejection(
        self,
        tx: StoreTransaction,
        rejection: Rejection,
        now: datetime,
        after_commit: list[Callable[[], None]],
    ) -> None:
        tx.emit(rejection_event(rejection, event_id=self._new_id(), now=now))
        _log_rejection(rejection)
        # Only the contract's names: a label made from input would be an attacker's to set.
        label = rejection.message_type if rejection.message_type in MESSAGE_TYPES else "unknown"
        after_commit.append(self._metrics.commands_of(label, "rejected").inc)


def _run_after_commit(effects: list[Callable[[], None]], durable: asyncio.Future[None]) -> None:
    if durable.cancelled() or durable.exception() is not None:
        return  # not committed: the commands are delivered again
    for effect in effects:
        try:
            effect()
        except Exception:
            log.exception("after_commit_failed")


def _log_rejection(rejection: Rejection) -> None:
    (log.error if rejection.cause is not None else log.warning)(
        "command_rejected",
        reason=rejection.reason.value,
        detail=capped(rejection.message, 1024),
        message_type=_echo(rejection.message_type),
        correlation_id=rejection.correlation_id,
        job_id=_echo(rejection.job_id),
        queue_id=_echo(rejection.queue_id),
        exc_info=rejection.cause,
    )


def _echo(text: str | None) -> str | None:
    return None if text is None else capped(text, 255)


def _internal_error(decoded: DecodedCommand | Rejection) -> Rejection:
    if isinstance(decoded, DecodedCommand):
        return _refused(decoded, RejectionReason.internal_error, "the command failed")
    return dataclasses.replace(
        decoded,
        reason=RejectionReason.internal_error,
        message="the command's rejection could not be stored",
        errors=(),
        cause=None,
    )


def _event(
    step: _Step,
    job: jobs.Job,
    *,
    snapshot_at: datetime | None = None,
    updated: Sequence[str] = (),
    moved_from: str | None = None,
) -> Outgoing:
    return job_event(
        job,
        event_id=step.new_id(),
        correlation_id=step.command.correlation_id,
        received_at=step.command.received_at,
        snapshot_at=snapshot_at,
        updated=updated,
        moved_from=moved_from,
    )


def _conflict(job_id: str) -> jobs.Refusal:
    return jobs.Refusal(
        RejectionReason.job_conflict,
        f"job {job_id!r} already exists with a different payload or queue",
    )


def _release_refused(message: str) -> jobs.Refusal:
    return jobs.Refusal(RejectionReason.release_refused, message)


def _unknown(job_id: str) -> jobs.Refusal:
    return jobs.Refusal(RejectionReason.unknown_job, f"no job has id {job_id!r}")


def _refused(command: DecodedCommand, reason: RejectionReason, message: str) -> Rejection:
    return Rejection(
        reason=reason,
        message=message,
        queue_id=command.queue_id,
        correlation_id=command.correlation_id,
        received_at=command.received_at,
        job_id=command.job_id,
        message_type=command.message_type.value,
        trace=command.trace,
    )


def _end_spans(spans: list[Span], durable: asyncio.Future[None]) -> None:
    error = None if durable.cancelled() else durable.exception()
    for span in spans:
        span.end(error=error)


def _span_attributes(
    command: DecodedCommand | Rejection, topic: str | None = None
) -> dict[str, str | int | bool]:
    """OpenTelemetry's messaging attributes of a command; only what decoding has checked
    (or the topic, which the broker caps), none of the payload."""
    attributes: dict[str, str | int | bool] = {
        "messaging.system": "mqtt",
        "messaging.message.conversation_id": command.correlation_id,
        "print.queue_id": _echo(command.queue_id) or "",
    }
    if topic is not None:
        attributes["messaging.destination.name"] = capped(topic, 255)
    if isinstance(command, Rejection):
        attributes["print.rejected"] = command.reason.value
    else:
        attributes["print.message_type"] = command.message_type.value
        if command.job_id is not None:
            attributes["print.job_id"] = command.job_id
    return attributes
