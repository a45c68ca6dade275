"""What the store says this replica must print: after a restart, when lanes are taken over,
after a write whose outcome is unknown, when another replica changed a job, when a change
was lost. Every read retries (with a backoff) until the store answers or the dispatcher
stops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import structlog

from service.aio import sleep_unless
from service.application.dispatch.spawner import Spawner
from service.core.backoff import Backoff
from service.core.jobs import Job
from service.metrics import Metrics
from service.models import JobStatus
from service.ports import Coordinator, JobStore, StoreError

__all__ = ["JobSink", "Takeover"]

# One logger name for the whole dispatcher (its package).
log = structlog.get_logger("service.application.dispatch")

T = TypeVar("T")


class JobSink(Protocol):
    """Where loaded jobs go: the dispatcher's own API."""

    def knows(self, job_id: str) -> bool:
        """Whether the job waits or is being printed here."""
        ...

    def is_waiting(self, job_id: str) -> bool: ...

    def enqueue(self, job: Job) -> None: ...

    def reprioritize(self, job: Job) -> None: ...

    def withdraw(self, job: Job) -> None: ...


def _retry() -> Backoff:
    return Backoff(first=1.0, cap=10.0, jitter=0.2)


class Takeover:
    def __init__(
        self,
        *,
        store: JobStore,
        coordinator: Coordinator,
        metrics: Metrics,
        lane_of: Callable[[str], str],
        jobs: JobSink,
        spawner: Spawner,
    ) -> None:
        self._store = store
        self._coordinator = coordinator
        self._metrics = metrics
        self._lane_of = lane_of
        self._jobs = jobs
        self._spawner = spawner
        self._claiming: set[str] = set()
        self._resyncing = False

    async def recover(self, stopping: asyncio.Event) -> None:
        """Pick up what the store says is unfinished, after a restart.

        Waiting jobs wait again, in their order. A job that was being printed is printed
        again from the start: the service cannot know how far the printer got, and printing
        again is the only way to a real `finished` (no second `started` is published).
        """
        try:
            unfinished = await self._read(
                self._store.waiting_jobs, "jobs_not_recovered_yet", stopping=stopping
            )
        except _Stopped:
            return
        resumed = waiting = 0
        for job in unfinished:
            self._metrics.jobs_in(job.status.value).inc()
            resumed += job.status is JobStatus.started
            self._jobs.enqueue(job)
            waiting += self._jobs.knows(job.job_id)
        if waiting:
            log.info("jobs_recovered", waiting=waiting, resumed=resumed)

    def claim(self, lane: str) -> None:
        """A job came for a lane not held here: try to take the lane (if another replica
        holds it, that one prints the job)."""
        if lane not in self._claiming and self._spawner.running:
            self._claiming.add(lane)
            self._spawner.spawn(self._claim(lane))

    def lanes_gained(self, lanes: list[str]) -> None:
        self._spawner.spawn(self._load(set(lanes)))

    def resync(self) -> None:
        """Load from the store whatever unfinished job is not known here; one at a time (an
        outage fails many batches)."""
        if not self._resyncing and self._spawner.running:
            self._resyncing = True
            self._spawner.spawn(self._resync())

    def job_changed(self, queue_id: str, job_id: str) -> None:
        """Another replica changed a job of a lane printed here: catch up with the store."""
        del queue_id
        self._spawner.spawn(self._catch_up(job_id))

    def reload(self, job_id: str) -> None:
        """Put a job whose change was lost back where the store says it is."""
        self._spawner.spawn(self._reload(job_id))

    async def _claim(self, lane: str) -> None:
        try:
            await self._coordinator.claim(lane)  # on success, `lanes_gained` loads it
        except StoreError as exc:
            log.warning("lane_claim_failed", lane=lane, error=str(exc))
        finally:
            self._claiming.discard(lane)

    async def _resync(self) -> None:
        try:
            await self._load(None)
        finally:
            self._resyncing = False

    async def _load(self, lanes: set[str] | None) -> None:
        """Take over the unfinished jobs of `lanes` (None: of every lane held here): waiting
        ones wait here now, and ones another replica was printing are printed again from
        the start."""
        try:
            unfinished = await self._read(
                self._store.waiting_jobs, "lanes_not_loaded", lanes=sorted(lanes or ())
            )
        except _Stopped:
            return
        loaded = resumed = 0
        for job in unfinished:
            lane = self._lane_of(job.queue_id)
            if lane not in lanes if lanes is not None else not self._coordinator.owns(lane):
                continue
            if self._jobs.knows(job.job_id):
                continue
            resumed += job.status is JobStatus.started
            loaded += 1
            self._jobs.enqueue(job)
        if lanes is None:
            log.info("jobs_resynced", jobs=loaded, resumed=resumed)
        else:
            log.info("lanes_taken_over", lanes=sorted(lanes), jobs=loaded, resumed=resumed)

    async def _catch_up(self, job_id: str) -> None:
        try:
            job = await self._read(
                lambda: self._store.read_job(job_id), "job_change_not_read", job_id=job_id
            )
        except _Stopped:
            return
        if job is None:
            return
        if job.is_final:
            self._jobs.withdraw(job)  # canceled there: stop it here
        elif job.status is JobStatus.created:
            if self._jobs.is_waiting(job.job_id):
                self._jobs.reprioritize(job)  # updated there
            else:
                self._jobs.enqueue(job)  # created or released there (one printing here stays)
        elif job.status is JobStatus.held:
            self._jobs.enqueue(job)  # created or moved there held: its timer runs here

    async def _reload(self, job_id: str) -> None:
        try:
            job = await self._read(
                lambda: self._store.read_job(job_id), "job_not_reloaded", job_id=job_id
            )
        except _Stopped:
            return
        if job is None or job.is_final:
            return
        if self._coordinator.owns(self._lane_of(job.queue_id)):
            self._jobs.enqueue(job)  # a `started` one resumes
        # else: the lane's holder has it (a lane lost meanwhile is not claimed back)

    async def _read(
        self,
        read: Callable[[], Awaitable[T]],
        event: str,
        *,
        stopping: asyncio.Event | None = None,
        **context: object,
    ) -> T:
        """`read()` once the store answers; raises _Stopped if `stopping` (by default, the
        dispatcher's) is set first. A store that is away is logged, not a bug."""
        stopping = stopping or self._spawner.stopping
        retry = _retry()
        while True:
            try:
                return await read()
            except StoreError as exc:
                if stopping.is_set():
                    raise _Stopped from exc
                pause = retry.delay()
                log.warning(event, error=str(exc), retry_in_s=round(pause, 3), **context)
                if await sleep_unless(stopping, pause):
                    raise _Stopped from exc


class _Stopped(Exception):  # noqa: N818 - a state, not a bug
    """The dispatcher stopped before the store answered."""
