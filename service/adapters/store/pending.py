"""What a transaction of an SQL store buffers until it commits, and the one rule of what a
commit drops."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from service.core.events import Outgoing
from service.core.jobs import Job
from service.ports import DeadLetter

__all__ = ["PendingWrites", "documents_to_drop"]


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


def documents_to_drop(jobs: Iterable[Job]) -> list[str]:
    """The jobs whose inline document a commit of `jobs` deletes: a document is kept only as
    long as its job may still print it (applied after the commit's own documents, so a job
    made and finished in one commit leaves none)."""
    return [
        job.job_id
        for job in jobs
        if job.is_final and job.document is not None and job.document.url is None
    ]
