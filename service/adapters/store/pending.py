"""What a transaction of an SQL store buffers until it commits, the one rule of what a
commit drops, and the one rule of which lane an outbox row belongs to."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from service.core.events import Kind, Outgoing
from service.core.jobs import Job
from service.ports import DeadLetter

__all__ = ["LaneOf", "PendingWrites", "documents_to_drop", "outbox_lane"]

LaneOf = Callable[[str], str]
"""The lane that prints a queue's jobs (the queue map's lane, or the queue itself)."""


class PendingWrites:
    """The writes of one transaction, applied as a whole at its commit.

    The SQL stores' transactions add their reads (`get`, `counts`) to it; `sent`, `letters`
    and `dropped_letters` are for the store's own transactions (the relay's, the dead
    letters').
    """

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.documents: dict[str, bytes] = {}
        self.messages: list[Outgoing] = []
        self.sent: list[int] = []
        self.letters: list[DeadLetter] = []
        self.dropped_letters: list[int] = []
        self.purged: list[str] = []  # job ids the retention forgets, with history, documents
        self.queue_of: dict[str, str] = {}  # job id: queue id, of the jobs the transaction read
        self.durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def writes(self) -> bool:
        """Whether there is anything to commit."""
        return bool(
            self.jobs
            or self.messages
            or self.sent
            or self.documents
            or self.letters
            or self.dropped_letters
            or self.purged
        )

    def put(self, job: Job) -> None:
        self.jobs[job.job_id] = job

    def put_document(self, job_id: str, data: bytes) -> None:
        self.documents[job_id] = data

    def emit(self, message: Outgoing) -> None:
        self.messages.append(message)

    def message_lanes(self, *, fenced: str | None, lane_of: LaneOf) -> list[str | None]:
        """The lane of each message, in order (see `outbox_lane`)."""
        lanes: list[str | None] = []
        for message in self.messages:
            job = self.jobs.get(message.order_key)
            queue_id = job.queue_id if job is not None else self.queue_of.get(message.order_key)
            lanes.append(outbox_lane(message, fenced=fenced, queue_id=queue_id, lane_of=lane_of))
        return lanes


def outbox_lane(
    message: Outgoing, *, fenced: str | None, queue_id: str | None, lane_of: LaneOf
) -> str | None:
    """The lane whose holder publishes `message`: a job's event goes with the job's lane
    (the fenced transaction's, else that of the queue the transaction wrote or read the job
    in), so replicas share the publishing as they share the printing. Every other message
    (replies to queries, rejections, printer statuses: keyed by a queue or a printer, not a
    job) has none, and the relay lane's holder publishes it."""
    if message.kind is not Kind.job_event:
        return None
    if fenced is not None:
        return fenced
    return None if queue_id is None else lane_of(queue_id)


def documents_to_drop(jobs: Iterable[Job]) -> list[str]:
    """The jobs whose inline document a commit of `jobs` deletes: a document is kept only as
    long as its job may still print it (applied after the commit's own documents, so a job
    made and finished in one commit leaves none)."""
    return [
        job.job_id
        for job in jobs
        if job.is_final and job.document is not None and job.document.url is None
    ]
