"""The seams between the core and the outside: small Protocols, one per kind of adapter.

Each has a production adapter beside it (`service.store`, `service.printers`,
`service.adapters`) and can be replaced by a fake in unit tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from service.core.events import Outgoing
from service.core.jobs import Job

__all__ = [
    "EventPublisher",
    "JobStore",
    "OutboxRecord",
    "PrintOutcome",
    "Printer",
    "PrinterDirectory",
    "StoreError",
    "StoreTransaction",
]


class StoreError(Exception):
    """The store cannot read or write. Nothing was applied; the command will come again."""


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """An outbox row: `position` orders rows and identifies them for `mark_sent`."""

    position: int
    message: Outgoing
    enqueued_at: float


class StoreTransaction(Protocol):
    """Reads and writes that commit together, or not at all."""

    durable: asyncio.Future[None]
    """Resolved once the commit is durable; holds the StoreError if it failed."""

    async def get(self, job_id: str) -> Job | None: ...

    def put(self, job: Job) -> None: ...

    def emit(self, message: Outgoing) -> None: ...


class JobStore(Protocol):
    """Jobs and the outbox of messages their changes produced."""

    healthy: bool
    """False after a failed write, until the next successful commit."""

    async def open(self) -> None:
        """Create or migrate the schema; recover counters."""
        ...

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every commit (the relay wakes on it)."""
        ...

    @property
    def outbox_depth(self) -> int:
        """Committed messages not yet marked sent."""
        ...

    def transaction(self, *, wait: bool = True) -> AbstractAsyncContextManager[StoreTransaction]:
        """Commits on a normal exit, discards everything on an exception.

        With `wait` (the default) the exit returns once the commit is durable; without it,
        once the writes are applied (later transactions see them), and the transaction's
        `durable` future tells how the commit went. Acknowledging a command needs the first;
        a printer's progress only the second.
        """
        ...

    async def unsent(self, limit: int, *, after: int = 0) -> Sequence[OutboxRecord]:
        """Committed messages not yet marked sent, oldest first.

        `after` is a hint: a store whose positions are assigned in commit order returns only
        rows past it; one that cannot promise that (PostgreSQL) returns from the oldest.
        """
        ...

    async def mark_sent(self, positions: Iterable[int]) -> None: ...

    async def waiting_jobs(self) -> Sequence[Job]:
        """Jobs that are created or started: what a restart must pick up again."""
        ...

    async def close(self) -> None: ...


class PrintOutcome(StrEnum):
    completed = "completed"
    canceled = "canceled"


class Printer(Protocol):
    """One printer: prints one job at a time."""

    name: str

    async def print(self, job: Job) -> PrintOutcome:
        """Returns when the printer says the job is done, or that it stopped it."""
        ...

    async def cancel(self, job_id: str) -> None:
        """Asks the printer to stop `job_id` if it is printing it; no-op otherwise."""
        ...


class PrinterDirectory(Protocol):
    """Which printer serves a queue."""

    def printer_for(self, queue_id: str) -> Printer: ...


class EventPublisher(Protocol):
    """Publishes a message and returns once the broker has confirmed it."""

    async def publish(self, message: Outgoing) -> None: ...
