"""Feeds each queue's printer one job at a time, and records what the printer reports.

One worker task per queue with waiting jobs; it exits when its queue is empty. The state
machine stays the judge: a transition the job no longer allows (it was canceled meanwhile)
is skipped, so a cancel racing a printer's "done" cannot produce two final events.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from service.core import jobs
from service.core.events import job_event
from service.core.scheduler import WaitingJobs
from service.metrics import Metrics
from service.models import JobStatus
from service.ports import JobStore, Printer, PrinterDirectory, PrintOutcome, StoreError

__all__ = ["PrintDispatcher"]

log = structlog.get_logger(__name__)

Transition = Callable[..., "jobs.Job | jobs.Refusal"]


class PrintDispatcher:
    def __init__(
        self,
        *,
        store: JobStore,
        printers: PrinterDirectory,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._printers = printers
        self._metrics = metrics
        self._waiting = WaitingJobs()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._printing: set[str] = set()  # from just before `started` until the printer returns
        self._stop_requested: set[str] = set()
        self._resume: set[str] = set()  # started before a restart: print again
        self._tasks: asyncio.TaskGroup | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Own the workers until `stopping` is set; jobs being printed then stay `started`."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            await self._recover()
            await stopping.wait()
            self._tasks = None
            for worker in self._workers.values():
                worker.cancel()

    def enqueue(self, job: jobs.Job) -> None:
        """A created job waits for its queue's printer (one to resume, ahead of the rest)."""
        self._waiting.push(job, resume=job.job_id in self._resume)
        if self._tasks is not None and job.queue_id not in self._workers:
            worker = self._tasks.create_task(self._work(job.queue_id), name=f"queue:{job.queue_id}")
            self._workers[job.queue_id] = worker

    def withdraw(self, job: jobs.Job) -> None:
        """`job` was canceled: drop it from its queue, or stop the printer printing it."""
        self._waiting.remove(job.job_id)
        if job.job_id in self._printing and self._tasks is not None:
            self._stop_requested.add(job.job_id)
            self._tasks.create_task(self._stop_printer(job))

    async def _recover(self) -> None:
        """Pick up what the store says is unfinished, after a restart.

        Waiting jobs wait again, in their order. A job that was being printed is printed
        again from the start: the simulated printer keeps nothing across a restart, so
        resuming is the only way to a real `finished` (no second `started` is published).
        """
        resumed = 0
        for job in await self._store.waiting_jobs():
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

    async def _stop_printer(self, job: jobs.Job) -> None:
        try:
            await self._printers.printer_for(job.queue_id).cancel(job.job_id)
        except Exception:
            log.exception("printer_cancel_failed", job_id=job.job_id)

    async def _work(self, queue_id: str) -> None:
        printer = self._printers.printer_for(queue_id)
        try:
            while (job_id := self._waiting.pop(queue_id)) is not None:
                self._printing.add(job_id)
                # An instant printer never suspends: yield, so that a long queue does not
                # starve the other loops.
                await asyncio.sleep(0)
                try:
                    await self._print(printer, job_id)
                except Exception:
                    # The `failed` status arrives with the IPP backend; until then the job stays
                    # as it is and the queue moves on.
                    log.exception("print_failed", job_id=job_id, printer=printer.name)
                finally:
                    self._printing.discard(job_id)
                    self._stop_requested.discard(job_id)
        finally:
            del self._workers[queue_id]

    async def _print(self, printer: Printer, job_id: str) -> None:
        if job_id in self._resume:
            self._resume.discard(job_id)
            async with self._store.transaction() as tx:
                job = await tx.get(job_id)
            if job is None or job.status is not JobStatus.started:
                return
        else:
            job = await self._transition(job_id, jobs.start)
        if job is None or job_id in self._stop_requested:
            return
        outcome = await printer.print(job)
        if outcome is PrintOutcome.completed:
            await self._transition(job_id, jobs.finish)

    async def _transition(self, job_id: str, change: Transition) -> jobs.Job | None:
        # Not waiting for the commit lets one fsync cover many printers' progress. Nothing
        # is published before the commit; if it fails, the job is reloaded from the store.
        async with self._store.transaction(wait=False) as tx:
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
        with structlog.contextvars.bound_contextvars(
            correlation_id=job.correlation_id, job_id=job_id, queue_id=job.queue_id
        ):
            log.info("job_status_changed", status=result.status.value, sequence=result.sequence)
        return result
