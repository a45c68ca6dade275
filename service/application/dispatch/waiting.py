"""The jobs waiting here for a printer of their lane, and what each needs when its turn comes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from service.core.clock import Clock
from service.core.jobs import Job
from service.core.scheduler import WaitingJobs
from service.models import JobStatus

__all__ = ["Turn", "WaitingRoom"]


@dataclass(frozen=True, slots=True)
class Turn:
    """A job whose turn has come; `resume`: it was `started` when it came (a print cut short
    by a restart, a takeover or a lost write), so it prints again from the start."""

    job_id: str
    resume: bool


class WaitingRoom:
    """Waiting jobs per lane, by priority then age (`WaitingJobs`), a resumed job first.

    A job's expiry timer lives as long as it waits: taking the job, removing it or dropping
    its lane cancels the timer. When a timer fires, the job leaves the room and
    `on_expired(job_id, lane)` records the expiry (a worker that takes it first expires it
    itself: `jobs.begin` does).
    """

    def __init__(self, *, clock: Clock, on_expired: Callable[[str, str], None]) -> None:
        self._clock = clock
        self._on_expired = on_expired
        self._order = WaitingJobs()
        self._lane_of: dict[str, str] = {}
        self._resuming: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._lane_of

    def lanes(self) -> set[str]:
        """The lanes where jobs wait."""
        return set(self._lane_of.values())

    def waiting_in(self, lane: str) -> int:
        return self._order.waiting_in(lane)

    def push(self, job: Job, *, lane: str) -> None:
        """`job` waits in `lane`; one already waiting stays as it is."""
        if job.job_id in self._lane_of:
            return
        resume = job.status is JobStatus.started
        self._order.push(job, lane=lane, resume=resume)
        self._lane_of[job.job_id] = lane
        if resume:
            self._resuming.add(job.job_id)
        elif job.expire_at is not None:
            delay = max(0.0, (job.expire_at - self._clock()).total_seconds())
            self._timers[job.job_id] = asyncio.get_running_loop().call_later(
                delay, self._expired, job.job_id
            )

    def pop(self, lane: str) -> Turn | None:
        """The next job of `lane`, or None when nothing waits there."""
        job_id = self._order.pop(lane)
        if job_id is None:
            return None
        resume = job_id in self._resuming
        self._forget(job_id)
        return Turn(job_id, resume)

    def remove(self, job_id: str) -> None:
        self._order.remove(job_id)
        self._forget(job_id)

    def drop(self, lane: str) -> list[str]:
        """Remove every job of `lane`; returns their ids."""
        dropped = self._order.drop(lane)
        for job_id in dropped:
            self._forget(job_id)
        return dropped

    def close(self) -> None:
        """Cancel every timer: the dispatcher stops (the jobs wait in the store)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _forget(self, job_id: str) -> None:
        self._lane_of.pop(job_id, None)
        self._resuming.discard(job_id)
        if (timer := self._timers.pop(job_id, None)) is not None:
            timer.cancel()

    def _expired(self, job_id: str) -> None:
        self._timers.pop(job_id, None)
        lane = self._lane_of.get(job_id)
        if lane is not None:
            self.remove(job_id)
            self._on_expired(job_id, lane)
