"""Held jobs of the lanes held here, each with a timer for the end of its hold.

A held job goes to no printer. Its hold ends by itself at its hold time (released) or at
its hold timeout (canceled); the replica that holds its lane keeps that timer, so it is
restored wherever the lane goes: after a restart or a takeover the job is loaded from the
store like any unfinished one, and held here again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from service.core.clock import Clock
from service.core.jobs import Job

__all__ = ["HoldRoom"]

# The loop's timers run on a monotonic clock, the hold's times on the wall clock: a timer a
# little late never finds the hold still running (which would leave it with no timer).
_LATE: Final = 0.05


class HoldRoom:
    """When a job's timer fires it leaves the room, and `on_due(job_id, lane)` ends its hold
    (`jobs.end_hold` decides how, from the store's copy of the job)."""

    def __init__(self, *, clock: Clock, on_due: Callable[[str, str], None]) -> None:
        self._clock = clock
        self._on_due = on_due
        self._lane_of: dict[str, str] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._lane_of

    def hold(self, job: Job, *, lane: str) -> None:
        """Keep `job` (held) here until its hold ends; one already here stays as it is."""
        if job.job_id in self._lane_of:
            return
        self._lane_of[job.job_id] = lane
        if (due := job.hold_due_at) is not None:
            delay = max(0.0, (due - self._clock()).total_seconds()) + _LATE
            self._timers[job.job_id] = asyncio.get_running_loop().call_later(
                delay, self._due, job.job_id
            )

    def remove(self, job_id: str) -> None:
        self._lane_of.pop(job_id, None)
        if (timer := self._timers.pop(job_id, None)) is not None:
            timer.cancel()

    def drop(self, lane: str) -> None:
        """Forget the held jobs of `lane` (another replica holds it now)."""
        for job_id in [j for j, held_in in self._lane_of.items() if held_in == lane]:
            self.remove(job_id)

    def close(self) -> None:
        """Cancel every timer: the dispatcher stops (the jobs are held in the store)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._lane_of.clear()

    def _due(self, job_id: str) -> None:
        self._timers.pop(job_id, None)
        lane = self._lane_of.pop(job_id, None)
        if lane is not None:
            self._on_due(job_id, lane)
