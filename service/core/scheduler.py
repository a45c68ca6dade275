"""Which job prints next: per lane (the queue whose printers print it), by priority (high,
medium, low), then by age."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict
from typing import Final

from service.core.jobs import PRIORITY_RANK, Job

__all__ = ["RESUME_RANK", "WaitingJobs"]

# A job that was being printed when the service stopped goes back to its printer first.
RESUME_RANK: Final = -1


class WaitingJobs:
    """Jobs waiting for a printer of their lane. Pure bookkeeping; no clocks, no I/O.

    Removal is lazy: a removed job stays in its heap until it surfaces, and is skipped then,
    so `remove` is O(1) and `pop` amortised O(log n). Each entry carries its arrival number,
    so a job removed and pushed again (with a new priority) is not popped by its old entry.
    """

    def __init__(self) -> None:
        self._heaps: defaultdict[str, list[tuple[int, float, int, str]]] = defaultdict(list)
        self._entry_of: dict[str, tuple[str, int]] = {}
        self._count: Counter[str] = Counter()
        self._arrival = itertools.count()

    def __len__(self) -> int:
        return len(self._entry_of)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entry_of

    def push(self, job: Job, *, lane: str | None = None, resume: bool = False) -> None:
        """Queue `job` in `lane` (default: its queue); with `resume`, ahead of every
        priority: it had the printer already."""
        if job.job_id in self._entry_of:
            return
        lane = job.queue_id if lane is None else lane
        arrival = next(self._arrival)
        key = (
            RESUME_RANK if resume else PRIORITY_RANK[job.priority],
            job.created_at.timestamp(),
            arrival,
            job.job_id,
        )
        heapq.heappush(self._heaps[lane], key)
        self._entry_of[job.job_id] = (lane, arrival)
        self._count[lane] += 1

    def remove(self, job_id: str) -> None:
        entry = self._entry_of.pop(job_id, None)
        if entry is not None:
            self._uncount(entry[0])

    def _uncount(self, lane: str) -> None:
        self._count[lane] -= 1
        if not self._count[lane]:
            del self._count[lane]

    def pop(self, lane: str) -> str | None:
        """The id of the next job of `lane`, or None when nothing waits there."""
        heap = self._heaps.get(lane)
        while heap:
            _, _, arrival, job_id = heapq.heappop(heap)
            if self._entry_of.get(job_id) == (lane, arrival):
                del self._entry_of[job_id]
                self._uncount(lane)
                if not heap:
                    del self._heaps[lane]
                return job_id
        self._heaps.pop(lane, None)
        return None

    def drop(self, lane: str) -> list[str]:
        """Remove every job of `lane`; returns their ids."""
        dropped = [job_id for job_id, entry in self._entry_of.items() if entry[0] == lane]
        for job_id in dropped:
            self.remove(job_id)
        self._heaps.pop(lane, None)
        return dropped

    def waiting_in(self, lane: str) -> int:
        return self._count.get(lane, 0)
