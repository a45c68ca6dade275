"""Which job prints next: per queue, by priority (high, medium, low), then by age."""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from typing import Final

from service.core.jobs import PRIORITY_RANK, Job

__all__ = ["RESUME_RANK", "WaitingJobs"]

# A job that was being printed when the service stopped goes back to its printer first.
RESUME_RANK: Final = -1


class WaitingJobs:
    """Jobs waiting for their queue's printer. Pure bookkeeping; no clocks, no I/O.

    Removal is lazy: a removed job stays in its heap until it surfaces, and is skipped then,
    so `remove` is O(1) and `pop` amortised O(log n).
    """

    def __init__(self) -> None:
        self._heaps: defaultdict[str, list[tuple[int, float, int, str]]] = defaultdict(list)
        self._queue_of: dict[str, str] = {}
        self._arrival = itertools.count()

    def __len__(self) -> int:
        return len(self._queue_of)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._queue_of

    def push(self, job: Job, *, resume: bool = False) -> None:
        """Queue `job`; with `resume`, ahead of every priority: it had the printer already."""
        if job.job_id in self._queue_of:
            return
        key = (
            RESUME_RANK if resume else PRIORITY_RANK[job.priority],
            job.created_at.timestamp(),
            next(self._arrival),
            job.job_id,
        )
        heapq.heappush(self._heaps[job.queue_id], key)
        self._queue_of[job.job_id] = job.queue_id

    def remove(self, job_id: str) -> None:
        self._queue_of.pop(job_id, None)

    def pop(self, queue_id: str) -> str | None:
        """The id of the next job of `queue_id`, or None when nothing waits there."""
        heap = self._heaps.get(queue_id)
        while heap:
            job_id = heapq.heappop(heap)[3]
            if self._queue_of.get(job_id) == queue_id:
                del self._queue_of[job_id]
                if not heap:
                    del self._heaps[queue_id]
                return job_id
        self._heaps.pop(queue_id, None)
        return None

    def waiting_in(self, queue_id: str) -> int:
        return sum(1 for q in self._queue_of.values() if q == queue_id)
