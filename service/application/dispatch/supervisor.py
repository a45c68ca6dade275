"""The dispatcher: owns the tasks of printing, and is told of jobs to print or to stop.

Jobs wait per lane (the queue whose printers print them). With several replicas, a lane is
printed by the one replica that holds it (the `Coordinator`); the others store the jobs they
receive and leave them to it.
"""

from __future__ import annotations

import asyncio
from typing import Final

import structlog

from service.application.dispatch.holds import HoldRoom
from service.application.dispatch.progress import JobProgress
from service.application.dispatch.spawner import Spawner
from service.application.dispatch.takeover import Takeover
from service.application.dispatch.waiting import WaitingRoom
from service.application.dispatch.workers import LaneWorkers
from service.core import jobs
from service.core.clock import Clock, IdSource, new_id, utc_now
from service.core.queues import QueueMap
from service.metrics import Metrics
from service.models import JobStatus
from service.ports import (
    NO_TRACING,
    Coordinator,
    DocumentSource,
    JobStore,
    PrinterDirectory,
    StoreError,
    StoreRefused,
    Tracer,
)

__all__ = ["HANDOVER_TIMEOUT", "PrintDispatcher"]

# One logger name for the whole dispatcher (its package).
log = structlog.get_logger("service.application.dispatch")

HANDOVER_TIMEOUT: Final = 2.0
"""Seconds a clean stop may spend recording which jobs it leaves `started` (one write per
lane): more would hold up the shutdown; a job it misses counts an interruption."""


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
        progress_interval: float = 0.0,
        clock: Clock = utc_now,
        new_id: IdSource = new_id,
        tracer: Tracer = NO_TRACING,
    ) -> None:
        self._queues = queues
        self._coordinator = coordinator
        self._lease_losses = metrics.lease_losses
        self._spawner = Spawner()
        self._takeover = Takeover(
            store=store,
            coordinator=coordinator,
            metrics=metrics,
            lane_of=self._lane,
            jobs=self,
            spawner=self._spawner,
        )
        self._progress = JobProgress(
            store=store,
            documents=documents,
            metrics=metrics,
            clock=clock,
            new_id=new_id,
            max_interruptions=max_interruptions,
            spawner=self._spawner,
            reload=self._takeover.reload,
            lane_of=self._lane,
            progress_interval=progress_interval,
            tracer=tracer,
        )
        self._waiting = WaitingRoom(clock=clock, on_expired=self._expired)
        self._holds = HoldRoom(clock=clock, on_due=self._hold_due)
        self._workers = LaneWorkers(
            waiting=self._waiting,
            printers=printers,
            coordinator=coordinator,
            progress=self._progress,
            spawner=self._spawner,
        )
        coordinator.subscribe(
            gained=self._takeover.lanes_gained,
            lost=self._lanes_lost,
            job_changed=self._takeover.job_changed,
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Own the workers until `stopping` is set. Jobs being printed then stay `started`,
        marked as handed over: whoever prints them next does not count an interruption."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._spawner.open(tasks)
                await self._takeover.recover(stopping)
                for lane in self._waiting.lanes():  # also the jobs enqueued before `run`
                    self._workers.start(lane)
                await stopping.wait()
                self._close()
                printing = self._progress.printing()
                await self._workers.stop_all()
                try:
                    async with asyncio.timeout(HANDOVER_TIMEOUT):
                        await self._progress.hand_over(printing)
                except TimeoutError:
                    log.warning("handover_not_recorded", jobs=len(printing), error="timed out")
        finally:
            # Also when cancelled or failed: a late callback (a commit, a lane change, an
            # expiry) must not start a task in a group that is going away.
            self._close()

    def _close(self) -> None:
        self._spawner.close()
        self._waiting.close()
        self._holds.close()

    def enqueue(self, job: jobs.Job) -> None:
        """A created job waits for its lane's printers (a started one, to print again, ahead
        of the rest; a held one, for its release). A job already waiting or printing here
        stays as it is."""
        if job.status is not JobStatus.held:
            self._holds.remove(job.job_id)  # released, or its hold ended, elsewhere
        if self.knows(job.job_id):
            return
        lane = self._lane(job.queue_id)
        if not self._coordinator.owns(lane):
            self._takeover.claim(lane)  # if another replica holds the lane, it prints the job
            return
        if job.status is JobStatus.held:
            self._holds.hold(job, lane=lane)
            return
        self._waiting.push(job, lane=lane)
        self._workers.start(lane)

    def reprioritize(self, job: jobs.Job) -> None:
        """`job` was updated: it waits again, with its new priority and its old age."""
        if job.job_id in self._waiting:
            self._waiting.remove(job.job_id)
            self.enqueue(job)

    def move(self, job: jobs.Job) -> None:
        """`job` was moved to another queue: it leaves its old lane's waiting room and waits
        in its new lane's, with its old age (a lane held by another replica: that one is
        told through the store, and prints it). One the old lane's printer took meanwhile
        is not started there (`JobProgress` checks the lane) and is put back from the store."""
        self._waiting.remove(job.job_id)
        self._holds.remove(job.job_id)
        self.enqueue(job)

    def release(self, job: jobs.Job) -> None:
        """`job` was released: it waits for its lane's printers now."""
        self._holds.remove(job.job_id)
        self.enqueue(job)

    def withdraw(self, job: jobs.Job) -> None:
        """`job` was canceled: drop it from its lane, or stop the printer printing it."""
        self._waiting.remove(job.job_id)
        self._holds.remove(job.job_id)
        self._progress.stop(job.job_id)

    def resync(self) -> None:
        """A store write failed with its outcome unknown (the connection died during the
        commit): it may have committed, and the commands come again as duplicates, which
        change nothing. Load from the store whatever unfinished job is not known here."""
        self._takeover.resync()

    def knows(self, job_id: str) -> bool:
        return (
            job_id in self._waiting or job_id in self._holds or self._progress.is_printing(job_id)
        )

    def is_waiting(self, job_id: str) -> bool:
        return job_id in self._waiting

    def _lane(self, queue_id: str) -> str:
        # A queue removed from the configuration since its jobs were made: its own lane.
        return self._queues.lane(queue_id) or queue_id

    def _lanes_lost(self, lanes: list[str]) -> None:
        """Another replica may hold these lanes now: stop printing them here."""
        self._lease_losses.inc()  # the coordinator takes lanes away only with the lease
        for lane in set(lanes):
            self._waiting.drop(lane)
            self._holds.drop(lane)
            self._workers.stop(lane)

    def _expired(self, job_id: str, lane: str) -> None:
        self._spawner.spawn(self._progress.expire(job_id, lane))

    def _hold_due(self, job_id: str, lane: str) -> None:
        self._spawner.spawn(self._end_hold(job_id, lane))

    async def _end_hold(self, job_id: str, lane: str) -> None:
        """Release or cancel a held job whose time came, as the store's copy says."""
        try:
            ended = await self._progress.transition(job_id, jobs.end_hold, lane)
        except (StoreError, StoreRefused) as exc:
            log.warning("hold_end_not_recorded", job_id=job_id, error=str(exc))
            ended = None
        if ended is None:
            # Not recorded, or not due by the store's copy (changed meanwhile): put the job
            # back where the store says it is, with a new timer if it is still held.
            self._takeover.reload(job_id)
        elif ended.status is JobStatus.created:
            self.enqueue(ended)
