"""The in-memory job store: the embedded default until the durable store lands.

It keeps the store's contract exactly (transactions commit or discard as a whole, the
outbox is ordered), so the service above it behaves the same with a durable store.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager

from service.core.events import Outgoing
from service.core.jobs import Job
from service.ports import OutboxRecord

__all__ = ["MemoryStore"]


class _Transaction:
    def __init__(self, jobs: dict[str, Job]) -> None:
        self._jobs = jobs
        self.writes: dict[str, Job] = {}
        self.messages: list[Outgoing] = []

    async def get(self, job_id: str) -> Job | None:
        return self.writes.get(job_id) or self._jobs.get(job_id)

    def put(self, job: Job) -> None:
        self.writes[job.job_id] = job

    def emit(self, message: Outgoing) -> None:
        self.messages.append(message)


class MemoryStore:
    """Jobs and outbox in dictionaries; one transaction at a time."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._outbox: dict[int, Outgoing] = {}
        self._positions = itertools.count(1)
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Transaction]:
        async with self._lock:
            tx = _Transaction(self._jobs)
            yield tx
            self._jobs.update(tx.writes)
            for message in tx.messages:
                self._outbox[next(self._positions)] = message

    async def unsent(self, limit: int) -> Sequence[OutboxRecord]:
        return [
            OutboxRecord(position, message)
            for position, message in itertools.islice(self._outbox.items(), limit)
        ]

    async def mark_sent(self, positions: Iterable[int]) -> None:
        for position in positions:
            self._outbox.pop(position, None)

    async def waiting_jobs(self) -> Sequence[Job]:
        return [job for job in self._jobs.values() if not job.is_final]

    async def close(self) -> None:
        return None

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox)
