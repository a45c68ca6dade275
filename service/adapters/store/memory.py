"""The in-memory job store: `DATABASE_URL=memory://`, and the fake for unit tests.

It keeps the store's contract exactly (transactions commit or discard as a whole, the
outbox is ordered), so the service above it behaves as with the durable store, but a
restart loses everything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime

from service.adapters.store.pending import LaneOf, documents_to_drop, outbox_lane
from service.core.events import Outgoing
from service.core.jobs import Job
from service.core.listing import JobQuery, PageKey
from service.models import JobStatus
from service.ports import DeadLetter, OutboxLanes, OutboxRecord

__all__ = ["MemoryStore", "page_of"]


class _Transaction:
    def __init__(self, jobs: dict[str, Job]) -> None:
        self._jobs = jobs
        self.writes: dict[str, Job] = {}
        self.documents: dict[str, bytes] = {}
        self.messages: list[Outgoing] = []
        self.queue_of: dict[str, str] = {}  # job id: queue id, of the jobs it read
        self.durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def get(self, job_id: str) -> Job | None:
        job = self.writes.get(job_id) or self._jobs.get(job_id)
        if job is not None:
            self.queue_of[job_id] = job.queue_id
        return job

    def lane(self, message: Outgoing, *, fenced: str | None, lane_of: LaneOf) -> str | None:
        job = self.writes.get(message.order_key)
        queue_id = job.queue_id if job is not None else self.queue_of.get(message.order_key)
        return outbox_lane(message, fenced=fenced, queue_id=queue_id, lane_of=lane_of)

    def put(self, job: Job) -> None:
        self.writes[job.job_id] = job

    def put_document(self, job_id: str, data: bytes) -> None:
        self.documents[job_id] = data

    async def counts(self, queue_id: str) -> dict[JobStatus, int]:
        jobs = {**self._jobs, **self.writes}.values()
        return dict(Counter(job.status for job in jobs if job.queue_id == queue_id))

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        # A scan: this store is for tests and trials, where the other stores use an index.
        jobs = {**self._jobs, **self.writes}.values()
        return page_of(jobs, query)

    def emit(self, message: Outgoing) -> None:
        self.messages.append(message)


def _of_lanes(rows: Iterable[OutboxRecord], lanes: OutboxLanes) -> Iterator[OutboxRecord]:
    """The rows `lanes` admits, but none after an earlier row of its order key that `lanes`
    does not admit (another replica's to publish first)."""
    elsewhere: set[str] = set()  # order keys with an earlier row outside `lanes`
    for row in rows:
        key = row.message.order_key
        if not lanes.admits(row.lane):
            elsewhere.add(key)
        elif key not in elsewhere:
            yield row


def page_of(jobs: Iterable[Job], query: JobQuery) -> list[Job]:
    """The page `query` asks for, among `jobs` (of any queue)."""
    found = [
        job
        for job in jobs
        if job.queue_id == query.queue_id
        and query.matches(PageKey(job.created_at, job.job_id), job.status, job.user_id)
    ]
    found.sort(key=lambda job: PageKey(job.created_at, job.job_id), reverse=True)
    return found[: query.limit]


class MemoryStore:
    """Jobs and outbox in dictionaries; one transaction at a time."""

    def __init__(self, *, lane_of: LaneOf = lambda queue_id: queue_id) -> None:
        self.healthy = True
        self._lane_of = lane_of
        self._listeners: list[Callable[[], None]] = []
        self._jobs: dict[str, Job] = {}
        self._documents: dict[str, bytes] = {}
        self._outbox: dict[int, tuple[Outgoing, float, str | None]] = {}
        self._positions = itertools.count(1)
        self._letters: dict[int, DeadLetter] = {}
        self._letter_ids = itertools.count(1)
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self, *, lane: str | None = None) -> AsyncIterator[_Transaction]:
        """Every transaction of this store: it commits at its exit, as durable as it gets.
        `apply_commands` and `record_progress` are this too (so a test's subclass that
        overrides it sees them all)."""
        # One replica holds every lane: `lane` fences nothing, and names the rows' lane.
        async with self._lock:
            tx = _Transaction(self._jobs)
            yield tx
            self._jobs.update(tx.writes)
            self._documents.update(tx.documents)
            for job_id in documents_to_drop(tx.writes.values()):
                self._documents.pop(job_id, None)
            now = time.time()
            for message in tx.messages:
                row_lane = tx.lane(message, fenced=lane, lane_of=self._lane_of)
                self._outbox[next(self._positions)] = (message, now, row_lane)
            tx.durable.set_result(None)
        for listener in self._listeners:
            listener()

    async def read_job(self, job_id: str) -> Job | None:
        # Committed jobs only, without the lock: an open transaction's writes are its own.
        return self._jobs.get(job_id)

    def apply_commands(self) -> AbstractAsyncContextManager[_Transaction]:
        return self.transaction()

    def record_progress(self, lane: str) -> AbstractAsyncContextManager[_Transaction]:
        return self.transaction(lane=lane)

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    async def document(self, job_id: str) -> bytes | None:
        return self._documents.get(job_id)

    async def unsent(
        self, limit: int, *, after: int = 0, lanes: OutboxLanes | None = None
    ) -> Sequence[OutboxRecord]:
        rows: Iterator[OutboxRecord] = (OutboxRecord(p, *row) for p, row in self._outbox.items())
        if lanes is not None:
            rows = _of_lanes(rows, lanes)
            after = 0  # a row held back for another lane's is older than those taken
        return list(itertools.islice((r for r in rows if r.position > after), limit))

    async def mark_sent(self, positions: Iterable[int]) -> None:
        for position in positions:
            self._outbox.pop(position, None)

    async def park(self, letter: DeadLetter, *, position: int | None = None) -> None:
        async with self._lock:
            id_ = next(self._letter_ids)
            self._letters[id_] = dataclasses.replace(letter, id=id_)
            if position is not None:
                self._outbox.pop(position, None)

    async def dead_letters(self, limit: int) -> Sequence[DeadLetter]:
        return list(itertools.islice(self._letters.values(), limit))

    async def drop_dead_letters(self, ids: Iterable[int]) -> None:
        for id_ in ids:
            self._letters.pop(id_, None)

    async def waiting_jobs(self) -> Sequence[Job]:
        unfinished = (job for job in self._jobs.values() if not job.is_final)
        return sorted(unfinished, key=lambda job: job.created_at)

    async def purge_jobs(self, before: datetime, limit: int) -> int:
        async with self._lock:
            doomed = [j.job_id for j in self._jobs.values() if j.is_final and j.updated_at < before]
            for job_id in doomed[:limit]:
                del self._jobs[job_id]
                self._documents.pop(job_id, None)
            return min(len(doomed), limit)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox)
