"""Feeds each printer one job at a time, and records what the printer reports.

Jobs wait per lane (the queue whose printers print them), by priority then age. A lane's
idle printers each get a worker task while jobs wait there; a worker exits when its lane is
empty. A worker first waits for its printer to be ready, then takes the next job, so a pool
hands each job to the next printer that is idle and reachable, and a printer that is offline
takes none. With several replicas, a lane is printed by the one replica that holds it (the
`Coordinator`); the others store the jobs they receive and leave them to it.

The state machine stays the judge: a transition the job no longer allows (it was canceled
meanwhile) is skipped, so a cancel racing a printer's "done" cannot produce two final events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

import structlog

from service.aio import first_of
from service.core import jobs
from service.core.events import job_event
from service.core.queues import QueueMap
from service.core.scheduler import WaitingJobs
from service.metrics import Metrics
from service.models import JobStatus, PrintOptions
from service.ports import (
    Coordinator,
    Document,
    DocumentSource,
    DocumentUnavailable,
    InlineDocument,
    JobStore,
    LaneLost,
    Printer,
    PrinterDirectory,
    PrinterUnavailable,
    PrintOutcome,
    PrintRequest,
    StoreError,
    StoreRefused,
)

__all__ = ["PrintDispatcher"]

log = structlog.get_logger(__name__)

Transition = Callable[..., "jobs.Job | jobs.Refusal"]


class PrintDispatcher:
    def __init__(
        self,
        *,
        store: JobStore,
        queues: QueueMap,
        printers: PrinterDirectory,
        documents: DocumentSource,
        coordinator: Coordinator,
        metrics: Metrics,
        max_interruptions: int = 3,
    ) -> None:
        self._store = store
        self._max_interruptions = max_interruptions
        self._coordinator = coordinator
        self._queues = queues
        self._printers = printers
        self._documents = documents
        self._metrics = metrics
        self._waiting = WaitingJobs()
        self._workers: dict[str, asyncio.Task[None]] = {}  # by printer name
        self._printing: dict[str, Printer] = {}  # from just before `started` until it returns
        self._stop_requested: set[str] = set()
        self._resume: set[str] = set()  # started before a restart: print again
        self._unavailable: set[str] = set()  # printers past their offline deadline
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._claiming: set[str] = set()
        self._resyncing = False
        self._tasks: asyncio.TaskGroup | None = None
        coordinator.subscribe(
            gained=self._lanes_gained, lost=self._lanes_lost, job_changed=self._job_changed
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Own the workers until `stopping` is set; jobs being printed then stay `started`."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            await self._recover(stopping)
            await stopping.wait()
            self._tasks = None
            for worker in self._workers.values():
                worker.cancel()
            for timer in self._expiry.values():
                timer.cancel()

    def _lane(self, queue_id: str) -> str:
        # A queue removed from the configuration since its jobs were made: its own lane.
        return self._queues.lane(queue_id) or queue_id

    def enqueue(self, job: jobs.Job) -> None:
        """A created job waits for its lane's printers (one to resume, ahead of the rest).
        A job already waiting or printing here stays as it is."""
        if job.job_id in self._waiting or job.job_id in self._printing:
            return
        lane = self._lane(job.queue_id)
        if not self._coordinator.owns(lane):
            self._claim(lane)  # if another replica holds the lane, it prints the job
            return
        self._waiting.push(job, lane=lane, resume=job.job_id in self._resume)
        if job.expire_at is not None and job.status is JobStatus.created:
            self._schedule_expiry(job, job.expire_at, lane)
        self._start_workers(lane)

    def reprioritize(self, job: jobs.Job) -> None:
        """`job` was updated: it waits again, with its new priority and its old age."""
        if job.job_id in self._waiting:
            self._waiting.remove(job.job_id)
            self.enqueue(job)

    def withdraw(self, job: jobs.Job) -> None:
        """`job` was canceled: drop it from its lane, or stop the printer printing it."""
        self._waiting.remove(job.job_id)
        if (timer := self._expiry.pop(job.job_id, None)) is not None:
            timer.cancel()
        printer = self._printing.get(job.job_id)
        if printer is not None and self._tasks is not None:
            self._stop_requested.add(job.job_id)
            self._tasks.create_task(self._stop_printer(printer, job.job_id))

    def _claim(self, lane: str) -> None:
        if lane in self._claiming or self._tasks is None:
            return
        self._claiming.add(lane)
        self._tasks.create_task(self._try_claim(lane))

    async def _try_claim(self, lane: str) -> None:
        try:
            await self._coordinator.claim(lane)  # on success, `_lanes_gained` loads it
        except StoreError as exc:
            log.warning("lane_claim_failed", lane=lane, error=str(exc))
        finally:
            self._claiming.discard(lane)

    def resync(self) -> None:
        """A store write failed with its outcome unknown (the connection died during the
        commit): it may have committed, and the commands come again as duplicates, which
        change nothing. Load from the store whatever unfinished job is not known here."""
        if self._tasks is not None and not self._resyncing:
            self._resyncing = True  # one at a time: an outage fails many batches
            task = self._tasks.create_task(self._load(None))
            task.add_done_callback(lambda _: setattr(self, "_resyncing", False))

    def _lanes_gained(self, lanes: list[str]) -> None:
        if self._tasks is not None:
            self._tasks.create_task(self._load(set(lanes)))

    async def _load(self, lanes: set[str] | None) -> None:
        """Take over the unfinished jobs of `lanes` (None: of every lane held here): waiting
        ones wait here now, and ones another replica was printing are printed again from
        the start."""
        loaded = resumed = 0
        try:
            unfinished = await self._store.waiting_jobs()
        except StoreError:
            log.exception("lanes_not_loaded", lanes=sorted(lanes or ()))
            await asyncio.sleep(1.0)
            if self._tasks is not None:
                self._tasks.create_task(self._load(lanes))
            return
        for job in unfinished:
            lane = self._lane(job.queue_id)
            if lane not in lanes if lanes is not None else not self._coordinator.owns(lane):
                continue
            if job.job_id in self._waiting or job.job_id in self._printing:
                continue
            if job.status is JobStatus.started:
                self._resume.add(job.job_id)
                resumed += 1
            loaded += 1
            self.enqueue(job)
        if lanes is None:
            log.info("jobs_resynced", jobs=loaded, resumed=resumed)
        else:
            log.info("lanes_taken_over", lanes=sorted(lanes), jobs=loaded, resumed=resumed)

    def _lanes_lost(self, lanes: list[str]) -> None:
        """Another replica may hold these lanes now: stop printing them here."""
        lost = set(lanes)
        for lane in lost:
            for job_id in self._waiting.drop(lane):
                self._resume.discard(job_id)
            for printer in self._printers.printers(lane):
                if (worker := self._workers.get(printer.name)) is not None:
                    worker.cancel()

    def _job_changed(self, queue_id: str, job_id: str) -> None:
        """Another replica changed a job of a lane printed here: catch up with the store."""
        del queue_id
        if self._tasks is not None:
            self._tasks.create_task(self._catch_up(job_id))

    async def _catch_up(self, job_id: str) -> None:
        try:
            async with self._store.transaction() as tx:
                job = await tx.get(job_id)
        except StoreError:
            log.exception("job_change_not_read", job_id=job_id)
            self._reload_later(job_id)
            return
        if job is None:
            return
        if job.is_final:
            self.withdraw(job)  # canceled there: stop it here
        elif job.status is JobStatus.created:
            if job.job_id in self._waiting:
                self.reprioritize(job)  # updated there
            elif job.job_id not in self._printing:
                self.enqueue(job)  # created there

    def _start_workers(self, lane: str) -> None:
        if self._tasks is None:
            return
        for printer in self._printers.printers(lane):
            if printer.name not in self._workers:
                self._workers[printer.name] = self._tasks.create_task(
                    self._work(lane, printer), name=f"printer:{printer.name}"
                )

    def _schedule_expiry(self, job: jobs.Job, expire_at: datetime, lane: str) -> None:
        delay = max(0.0, (expire_at - datetime.now(UTC)).total_seconds())
        loop = asyncio.get_running_loop()
        self._expiry[job.job_id] = loop.call_later(delay, self._expire, job.job_id, lane)

    def _expire(self, job_id: str, lane: str) -> None:
        self._expiry.pop(job_id, None)
        if job_id in self._waiting and self._tasks is not None:
            self._waiting.remove(job_id)
            self._tasks.create_task(self._expire_now(job_id, lane))

    async def _expire_now(self, job_id: str, lane: str) -> None:
        try:
            await self._transition(job_id, jobs.expire, lane)
        except StoreError:
            log.exception("expiry_not_recorded", job_id=job_id)
            self._reload_later(job_id)

    async def _recover(self, stopping: asyncio.Event) -> None:
        """Pick up what the store says is unfinished, after a restart.

        Waiting jobs wait again, in their order. A job that was being printed is printed
        again from the start: the service cannot know how far the printer got, and printing
        again is the only way to a real `finished` (no second `started` is published).
        """
        resumed = 0
        pause = 0.5
        while True:
            try:
                unfinished = await self._store.waiting_jobs()
                break
            except StoreError as exc:
                if stopping.is_set():
                    return
                log.warning("jobs_not_recovered_yet", error=str(exc), retry_in_s=pause)
                await first_of(asyncio.sleep(pause), stopping.wait())
                pause = min(pause * 2, 10.0)
        for job in unfinished:
            self._metrics.jobs.labels(job.status.value).inc()
            if job.status is JobStatus.started:
                self._resume.add(job.job_id)
                resumed += 1
            self.enqueue(job)
        if self._waiting:
            log.info("jobs_recovered", waiting=len(self._waiting), resumed=resumed)

    def _check_commit(self, durable: asyncio.Future[None], job_id: str) -> None:
        if durable.cancelled() or durable.exception() is None:
            return
        log.error("transition_not_committed", job_id=job_id, error=str(durable.exception()))
        if self._tasks is not None:
            self._tasks.create_task(self._reload(job_id))

    async def _reload(self, job_id: str) -> None:
        """Put a job whose change was lost back where the store says it is."""
        while True:
            try:
                async with self._store.transaction() as tx:
                    job = await tx.get(job_id)
                break
            except StoreError:
                await asyncio.sleep(1.0)
        if job is None or job.is_final:
            return
        if job.status is JobStatus.started:
            self._resume.add(job_id)
        self.enqueue(job)

    async def _stop_printer(self, printer: Printer, job_id: str) -> None:
        try:
            await printer.cancel(job_id)
        except Exception:
            log.exception("printer_cancel_failed", job_id=job_id, printer=printer.name)

    async def _work(self, lane: str, printer: Printer) -> None:
        try:
            while self._waiting.waiting_in(lane) and self._coordinator.owns(lane):
                try:
                    await printer.ready()
                except PrinterUnavailable as exc:
                    if not self._all_unavailable(lane, printer):
                        return  # the pool's other printers take the jobs meanwhile
                    # Every printer of the lane has been away past its deadline: the jobs
                    # fail one by one, each with the reason, rather than wait forever.
                    if (job_id := self._waiting.pop(lane)) is not None:
                        try:
                            await self._fail(job_id, str(exc), lane)
                        except StoreError:
                            log.exception("failure_not_recorded", job_id=job_id)
                            self._reload_later(job_id)
                    continue
                except Exception:
                    # A printer's adapter must not take the others down: treat it as away.
                    log.exception("printer_ready_failed", printer=printer.name)
                    await asyncio.sleep(1.0)
                    continue
                self._unavailable.discard(printer.name)
                if (job_id := self._waiting.pop(lane)) is None:
                    return
                # An instant printer never suspends: yield, so that a long queue does not
                # starve the other loops.
                await asyncio.sleep(0)
                try:
                    await self._print(printer, job_id, lane)
                except StoreError:
                    log.exception("print_not_recorded", job_id=job_id, printer=printer.name)
                    self._reload_later(job_id)
                except Exception:
                    log.exception("print_failed", job_id=job_id, printer=printer.name)
                    with contextlib.suppress(StoreError, StoreRefused):
                        await self._fail(job_id, "the service failed while printing the job", lane)
                finally:
                    self._printing.pop(job_id, None)
                    self._stop_requested.discard(job_id)
        finally:
            del self._workers[printer.name]

    def _all_unavailable(self, lane: str, printer: Printer) -> bool:
        self._unavailable.add(printer.name)
        return all(p.name in self._unavailable for p in self._printers.printers(lane))

    def _reload_later(self, job_id: str) -> None:
        if self._tasks is not None:
            self._tasks.create_task(self._reload(job_id))

    async def _print(self, printer: Printer, job_id: str, lane: str) -> None:
        if job_id in self._resume:
            self._resume.discard(job_id)
            job: jobs.Job | None = await self._interrupted(job_id, lane)
            if job is None:
                return
        else:
            self._printing[job_id] = printer
            if (timer := self._expiry.pop(job_id, None)) is not None:
                timer.cancel()
            job = await self._transition(job_id, jobs.begin, lane)
            if job is None:
                # Started meanwhile by a replica that has since lost the lane: resume it.
                async with self._store.transaction() as tx:
                    job = await tx.get(job_id)
                if job is None or job.status is not JobStatus.started:
                    return
                log.info("job_resumed", job_id=job_id, why="started by the lane's last holder")
            elif job.status is not JobStatus.started:
                return
        self._printing[job_id] = printer
        try:
            request = await self._request(job)
        except DocumentUnavailable as exc:
            await self._fail(job_id, str(exc), lane)
            return
        if job_id in self._stop_requested:
            return
        result = await printer.print(
            request, on_submitted=partial(self._record_printer_job, job_id, lane)
        )
        if result.outcome is PrintOutcome.completed:
            await self._transition(job_id, jobs.finish, lane)
        elif result.outcome is PrintOutcome.failed:
            await self._fail(job_id, result.reason or "the printer aborted the job", lane)
        elif job_id not in self._stop_requested:
            # Canceled at the printer (its panel, its operator), not by a command.
            reason = f"canceled at the printer: {result.reason or 'no reason given'}"
            await self._transition(job_id, partial(jobs.cancel, force=True, reason=reason), lane)

    async def _request(self, job: jobs.Job) -> PrintRequest:
        document = job.document
        data: Document
        if document is None:
            data, content_type = InlineDocument(b""), "application/octet-stream"
        elif document.url is not None:
            # Spooled to a file, not memory; the printer closes it when the print ends.
            data, content_type = await self._documents.fetch(document.url), document.content_type
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

    async def _interrupted(self, job_id: str, lane: str) -> jobs.Job | None:
        """A job that was printing when the service stopped, about to print again: count the
        interruption (durably, before printing), and fail the job once it has been cut short
        `max_interruptions` times: a document that crashes the service must not crash-loop
        it. The job to print, or None."""
        async with self._store.transaction(lane=lane) as tx:
            job = await tx.get(job_id)
            if job is None or job.status is not JobStatus.started:
                return None
            interruptions = job.interruptions + 1
            if interruptions < self._max_interruptions:
                resumed = dataclasses.replace(job, interruptions=interruptions)
                tx.put(resumed)
                return resumed
        log.warning("job_failed_interrupted", job_id=job_id, interruptions=interruptions)
        reason = f"printing was interrupted {interruptions} times (the service stopped)"
        await self._fail(job_id, reason, lane)
        return None

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

    async def _fail(self, job_id: str, reason: str, lane: str) -> None:
        await self._transition(job_id, partial(jobs.fail, reason=reason), lane)

    async def _transition(self, job_id: str, change: Transition, lane: str) -> jobs.Job | None:
        # Not waiting for the commit lets one fsync cover many printers' progress. Nothing
        # is published before the commit; if it fails, the job is reloaded from the store.
        # Fenced by the lane: a replica that lost it (to a takeover) changes nothing.
        try:
            return await self._apply(job_id, change, lane)
        except LaneLost:
            log.info("lane_lost_mid_job", job_id=job_id, lane=lane)
            return None

    async def _apply(self, job_id: str, change: Transition, lane: str) -> jobs.Job | None:
        async with self._store.transaction(wait=False, relaxed=True, lane=lane) as tx:
            job = await tx.get(job_id)
            if job is None:
                return None
            result = change(job, now=datetime.now(UTC))
            if isinstance(result, jobs.Refusal):
                log.debug("transition_skipped", job_id=job_id, why=result.message)
                return None
            tx.put(result)
            tx.emit(
                job_event(
                    result,
                    event_id=uuid.uuid4(),
                    correlation_id=job.correlation_id,
                    received_at=None,
                )
            )
        tx.durable.add_done_callback(lambda done: self._check_commit(done, job_id))
        self._metrics.jobs.labels(job.status.value).dec()
        self._metrics.jobs.labels(result.status.value).inc()
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
