"""One job through its printer: each step a transition of the store, fenced by the lane.

The state machine stays the judge: a transition the job no longer allows (it was canceled
meanwhile) is skipped, so a cancel racing a printer's "done" cannot produce two final events.
A transition is not waited for (one fsync covers many printers' progress); nothing is
published before its commit, and if the commit fails the job is reloaded from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import structlog

from service.application.dispatch.spawner import Spawner
from service.core import jobs
from service.core.clock import Clock, IdSource
from service.core.events import job_event, with_trace
from service.core.throttle import Throttle
from service.metrics import Metrics
from service.models import JobStatus, PrintOptions, RejectionReason
from service.ports import (
    NO_TRACING,
    Document,
    DocumentSource,
    DocumentUnavailable,
    InlineDocument,
    JobStore,
    LaneLost,
    Printer,
    PrintOutcome,
    PrintRequest,
    StoreError,
    StoreRefused,
    Tracer,
)

__all__ = ["JobProgress", "Transition"]

# One logger name for the whole dispatcher (its package).
log = structlog.get_logger("service.application.dispatch")

Transition = Callable[..., "jobs.Job | jobs.Refusal"]

SERVICE_FAILED = "the service failed while printing the job"


@dataclass(frozen=True, slots=True)
class _Print:
    printer: Printer
    lane: str


@dataclass(slots=True)
class _Counts:
    """What the printer reported last of one print: the totals `finished` carries (also the
    reports the throttle kept from becoming events)."""

    throttle: Throttle
    impressions: int | None = None
    sheets: int | None = None


class JobProgress:
    """Prints jobs and records what their printers report.

    `reload(job_id)` is called for a job whose change may be lost (a commit that failed):
    the store says where it is now.
    """

    def __init__(
        self,
        *,
        store: JobStore,
        documents: DocumentSource,
        metrics: Metrics,
        clock: Clock,
        new_id: IdSource,
        max_interruptions: int,
        spawner: Spawner,
        reload: Callable[[str], None],
        lane_of: Callable[[str], str],
        progress_interval: float = 0.0,
        tracer: Tracer = NO_TRACING,
    ) -> None:
        """`progress_interval`: at most one progress event per job per that many seconds of
        `clock`; 0 records none (the totals still go on `finished`)."""
        self._tracer = tracer
        self._store = store
        self._documents = documents
        self._metrics = metrics
        self._clock = clock
        self._new_id = new_id
        self._max_interruptions = max_interruptions
        self._progress_interval = progress_interval
        self._spawner = spawner
        self._reload = reload
        self._lane_of = lane_of
        self._printing: dict[str, _Print] = {}  # from its turn until its print returns
        # Started (or resumed) durably here, and not yet done: what a clean stop hands over.
        self._underway: set[str] = set()
        self._stop_requested: set[str] = set()

    def is_printing(self, job_id: str) -> bool:
        return job_id in self._printing

    def printing(self) -> dict[str, str]:
        """The jobs being printed now, with their lanes: those whose start (or resumption)
        is recorded. One still being started may have its interruption count rolled back
        by the stop, and must not be marked handed over."""
        return {
            job_id: run.lane for job_id, run in self._printing.items() if job_id in self._underway
        }

    def stop(self, job_id: str) -> None:
        """`job_id` was canceled: if it is being printed, stop its printer (and record
        nothing more for it: the cancel was the final event)."""
        run = self._printing.get(job_id)
        if run is not None and job_id not in self._stop_requested:
            self._stop_requested.add(job_id)
            self._spawner.spawn(self._stop_printer(run.printer, job_id))

    async def print_job(self, printer: Printer, job_id: str, lane: str, *, resume: bool) -> None:
        """Print `job_id` on `printer` and record how it went. A failure of the store has
        the job reloaded; any other failure fails the job (a bug, or an adapter's)."""
        self._printing[job_id] = _Print(printer, lane)
        try:
            await self._print(printer, job_id, lane, resume=resume)
        except asyncio.CancelledError:
            # The lane was lost (a stop closes the spawner first, and this does nothing):
            # if it is regained before this print has ended, the job must not be left
            # `started` with no one to resume it. The store says where it is.
            self._reload(job_id)
            raise
        except StoreError:
            log.exception("print_not_recorded", job_id=job_id, printer=printer.name)
            self._reload(job_id)
        except Exception:
            log.exception("print_failed", job_id=job_id, printer=printer.name)
            with contextlib.suppress(StoreError, StoreRefused):
                await self.fail(job_id, SERVICE_FAILED, lane)
        finally:
            self._printing.pop(job_id, None)
            self._underway.discard(job_id)
            self._stop_requested.discard(job_id)

    async def give_up(self, job_id: str, reason: str, lane: str) -> None:
        """Fail a waiting job whose printers are all away; if that cannot be recorded, the
        store says later where it is."""
        try:
            await self.fail(job_id, reason, lane)
        except StoreError:
            log.exception("failure_not_recorded", job_id=job_id)
            self._reload(job_id)
        except StoreRefused:
            # The reason cannot be stored (a printer's odd text): fail it with ours.
            log.exception("failure_refused_by_store", job_id=job_id)
            with contextlib.suppress(StoreError, StoreRefused):
                await self.fail(job_id, "every printer of the queue is unavailable", lane)

    async def expire(self, job_id: str, lane: str) -> None:
        """Cancel a waiting job whose `expireAfter` has come."""
        try:
            await self.transition(job_id, jobs.expire, lane)
        except StoreError:
            log.exception("expiry_not_recorded", job_id=job_id)
            self._reload(job_id)
        except StoreRefused:
            log.exception("expiry_refused_by_store", job_id=job_id)

    async def fail(self, job_id: str, reason: str, lane: str) -> None:
        await self.transition(job_id, partial(jobs.fail, reason=reason), lane)

    async def transition(self, job_id: str, change: Transition, lane: str) -> jobs.Job | None:
        """Apply `change`; the changed job, or None if it was refused or the lane was lost
        (a replica that lost it, to a takeover, changes nothing)."""
        try:
            return await self._apply(job_id, change, lane)
        except LaneLost:
            log.info("lane_lost_mid_job", job_id=job_id, lane=lane)
            return None

    async def hand_over(self, printing: Mapping[str, str]) -> None:
        """A clean stop: record, for each job that was being printed (with its lane), that it
        was handed over, so that the next holder resumes it without counting an interruption.
        Best effort (the caller bounds it): a job not marked counts one, as after a crash."""
        by_lane: defaultdict[str, list[str]] = defaultdict(list)
        for job_id, lane in printing.items():
            by_lane[lane].append(job_id)
        outcomes = await asyncio.gather(
            *(self._mark_handed_over(lane, ids) for lane, ids in by_lane.items()),
            return_exceptions=True,
        )
        marked = 0
        for lane, outcome in zip(by_lane, outcomes, strict=True):
            if isinstance(outcome, int):
                marked += outcome
            elif isinstance(outcome, StoreError | StoreRefused):
                log.warning("handover_not_recorded", lane=lane, error=str(outcome))
            else:
                # A bug, but the stop is clean all the same: those jobs count one interruption.
                log.error("handover_not_recorded", lane=lane, exc_info=outcome)
        if marked:
            log.info("jobs_handed_over", jobs=marked)

    async def _mark_handed_over(self, lane: str, job_ids: list[str]) -> int:
        marked = 0
        async with self._store.transaction(lane=lane) as tx:
            for job_id in job_ids:
                job = await tx.get(job_id)
                if job is not None and job.status is JobStatus.started and not job.handed_over:
                    tx.put(dataclasses.replace(job, handed_over=True))
                    marked += 1
        return marked

    async def _stop_printer(self, printer: Printer, job_id: str) -> None:
        try:
            await printer.cancel(job_id)
        except Exception:
            log.exception("printer_cancel_failed", job_id=job_id, printer=printer.name)

    async def _print(self, printer: Printer, job_id: str, lane: str, *, resume: bool) -> None:
        job = await (self._resume(job_id, lane) if resume else self._begin(job_id, lane))
        if job is None:
            return
        self._underway.add(job_id)
        # From the document's fetch to the end the printer reports, in the create's trace.
        span = self._tracer.start(
            "print",
            parent=job.trace,
            attributes={"print.job_id": job_id, "print.printer": printer.name, "print.lane": lane},
        )
        try:
            await self._print_started(printer, job, lane)
        except BaseException as exc:
            span.end(error=exc)
            raise
        span.end()

    async def _print_started(self, printer: Printer, job: jobs.Job, lane: str) -> None:
        job_id = job.job_id
        try:
            request = await self._request(job)
        except DocumentUnavailable as exc:
            await self.fail(job_id, str(exc), lane)
            return
        if job_id in self._stop_requested:
            request.document.close()  # the printer would have; it never gets it
            return
        counts = _Counts(Throttle(self._progress_interval, since=self._clock()))
        result = await printer.print(
            request,
            on_submitted=partial(self._record_printer_job, job_id, lane),
            on_progress=partial(self._record_progress, job_id, lane, counts),
        )
        if result.outcome is PrintOutcome.completed:
            # A total of 0 for a completed job says the printer does not count (ippeveprinter
            # whose command reports nothing): not known, rather than nothing printed.
            finish = partial(
                jobs.finish, impressions=counts.impressions or None, sheets=counts.sheets or None
            )
            await self.transition(job_id, finish, lane)
        elif result.outcome is PrintOutcome.failed:
            await self.fail(job_id, result.reason or "the printer aborted the job", lane)
        elif job_id not in self._stop_requested:
            # Canceled at the printer (its panel, its operator), not by a command.
            reason = f"canceled at the printer: {result.reason or 'no reason given'}"
            await self.transition(job_id, partial(jobs.cancel, force=True, reason=reason), lane)

    async def _begin(self, job_id: str, lane: str) -> jobs.Job | None:
        """Start a waiting job (or expire it, if its time came while it waited). The job to
        print, or None."""
        try:
            job = await self._apply(job_id, partial(self._begin_in, lane), lane)
        except LaneLost:
            log.info("lane_lost_mid_job", job_id=job_id, lane=lane)
            return None
        if job is not None:
            return job if job.status is JobStatus.started else None
        # Refused: canceled meanwhile, or started by a replica that has since lost the lane
        # (crashed, or handed it over): resumed as after a restart, so it counts as one.
        job = await self._store.read_job(job_id)
        if job is not None and job.status is JobStatus.created:
            # Moved to another lane after this printer took it: it waits there now (put
            # back by the reload, once this print has let go of it).
            log.info("job_moved_before_start", job_id=job_id, lane=lane)
            self._reload(job_id)
            return None
        if job is None or job.status is not JobStatus.started:
            return None
        log.info("job_resumed", job_id=job_id, why="started by the lane's last holder")
        return await self._resume(job_id, lane)

    def _begin_in(self, lane: str, job: jobs.Job, *, now: datetime) -> jobs.Job | jobs.Refusal:
        """`jobs.begin`, on this lane's printer only: a move may have taken the job away."""
        if self._lane_of(job.queue_id) != lane:
            return jobs.Refusal(
                RejectionReason.unknown_job, f"job {job.job_id!r} was moved off lane {lane!r}"
            )
        return jobs.begin(job, now=now)

    async def _resume(self, job_id: str, lane: str) -> jobs.Job | None:
        """A job that was printing when the service stopped, about to print again: count the
        interruption (durably, before printing), and fail the job once it has been cut short
        `max_interruptions` times: a document that crashes the service must not crash-loop
        it. A job handed over by a clean stop is not counted (its mark is cleared instead).
        The job to print, or None."""
        try:
            async with self._store.transaction(lane=lane) as tx:
                job = await tx.get(job_id)
                if job is None or job.status is not JobStatus.started:
                    return None
                if job.handed_over:
                    resumed = dataclasses.replace(job, handed_over=False)
                    tx.put(resumed)
                    return resumed
                interruptions = job.interruptions + 1
                if interruptions < self._max_interruptions:
                    resumed = dataclasses.replace(job, interruptions=interruptions)
                    tx.put(resumed)
                    return resumed
        except LaneLost:
            log.info("lane_lost_mid_job", job_id=job_id, lane=lane)
            return None
        log.warning("job_failed_interrupted", job_id=job_id, interruptions=interruptions)
        reason = f"printing was interrupted {interruptions} times (the service stopped)"
        await self.fail(job_id, reason, lane)
        return None

    async def _request(self, job: jobs.Job) -> PrintRequest:
        document = job.document
        data: Document
        if document is None:
            data, content_type = InlineDocument(b""), "application/octet-stream"
        elif document.url is not None:
            # Spooled to a file, not memory; the printer closes it when the print ends. The
            # job id is bound for the fetcher's log line (its reason for the job is generic).
            with structlog.contextvars.bound_contextvars(job_id=job.job_id):
                data = await self._documents.fetch(document.url)
            content_type = document.content_type
        else:
            stored = await self._store.document(job.job_id)
            if stored is None:
                raise DocumentUnavailable("the job's document is no longer in the store")
            data, content_type = InlineDocument(stored), document.content_type
        return PrintRequest(
            job_id=job.job_id,
            title=job.display_title,
            user_id=job.user_id,
            copies=job.copies,
            options=job.options or PrintOptions(),
            document=data,
            content_type=content_type,
            printer_job=job.printer_job,
        )

    async def _record_printer_job(self, job_id: str, lane: str, reference: str) -> None:
        """Keep which job of the printer is ours: a restart or a takeover follows it there
        rather than printing the document a second time. Best effort: if the store is away,
        the print goes on (a restart then prints the job again from the start)."""
        try:
            async with self._store.transaction(lane=lane) as tx:
                job = await tx.get(job_id)
                if job is not None and job.status is JobStatus.started:
                    tx.put(dataclasses.replace(job, printer_job=reference))
        except (StoreError, StoreRefused) as exc:
            log.warning("printer_job_not_recorded", job_id=job_id, error=str(exc))

    async def _record_progress(
        self, job_id: str, lane: str, counts: _Counts, impressions: int, sheets: int | None
    ) -> None:
        """What the printer has done so far: kept for `finished`, and recorded as a
        `started` event with a new sequence when the throttle lets it. Best effort, like the
        printer's job: the print goes on if the store is away (the totals still come)."""
        if not _count(impressions) or not (sheets is None or _count(sheets)):
            log.warning("printer_progress_ignored", job_id=job_id, impressions=repr(impressions))
            return  # a printer's odd answer; what it reports next may do
        counts.impressions = impressions
        if sheets is not None:
            counts.sheets = sheets
        now = self._clock()
        if job_id in self._stop_requested or not counts.throttle.due(now):
            return
        counts.throttle.passed(now)
        change = partial(jobs.progress, impressions=impressions, sheets=sheets)
        try:
            await self.transition(job_id, change, lane)
        except (StoreError, StoreRefused) as exc:
            log.warning("progress_not_recorded", job_id=job_id, error=str(exc))

    async def _apply(self, job_id: str, change: Transition, lane: str) -> jobs.Job | None:
        async with self._store.record_progress(lane) as tx:
            job = await tx.get(job_id)
            if job is None:
                return None
            result = change(job, now=self._clock())
            if isinstance(result, jobs.Refusal):
                log.debug("transition_skipped", job_id=job_id, why=result.message)
                return None
            tx.put(result)
            event = job_event(
                result,
                event_id=self._new_id(),
                correlation_id=job.correlation_id,
                received_at=None,
            )
            tx.emit(with_trace(event, job.trace))
        tx.durable.add_done_callback(partial(self._check_commit, job_id))
        self._metrics.jobs_in(job.status.value).dec()
        self._metrics.jobs_in(result.status.value).inc()
        log.info(
            "job_status_changed",
            status=result.status.value,
            sequence=result.sequence,
            reason=result.reason,
            correlation_id=job.correlation_id,
            job_id=job_id,
            queue_id=job.queue_id,
        )
        return result

    def _check_commit(self, job_id: str, durable: asyncio.Future[None]) -> None:
        if durable.cancelled() or (error := durable.exception()) is None:
            return
        log.error("transition_not_committed", job_id=job_id, error=str(error))
        self._reload(job_id)


def _count(value: object) -> bool:
    """A count a printer may report: a non-negative int that fits the store (not a bool)."""
    return type(value) is int and 0 <= value < 2**31
