"""Fakes of the ports for unit tests: deterministic, in memory, driven by the test.

The store fake is the real `MemoryStore` (it keeps the store's contract exactly), or
`WatchedStore`, the same with faults a test can inject; these are the rest: a clock, an id
source, a publisher that collects, printers a test can hold, fail or stop, a directory of
them, and a document source. Each can report its changes to a `Changes`, which a test waits
on for a condition (never a sleep).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from service.adapters.store.memory import MemoryStore
from service.core.events import Outgoing
from service.core.jobs import Job
from service.core.printers import PrinterSnapshot
from service.models import PrinterState
from service.ports import (
    DeadLetter,
    Document,
    DocumentUnavailable,
    InlineDocument,
    OnProgress,
    OnSubmitted,
    Printer,
    PrintOutcome,
    PrintRequest,
    PrintResult,
)

__all__ = [
    "EPOCH",
    "Changes",
    "CollectingPublisher",
    "FakeClock",
    "FakeDocuments",
    "FakePrinter",
    "FakePrinters",
    "SequentialIds",
    "WatchedStore",
    "Writes",
]

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class Changes:
    """Something a test may be waiting for may have happened: the fakes `notify`, a test
    waits `until` its condition holds. The timeout only turns a hang into a failure."""

    def __init__(self, *, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                while not condition():
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(f"still waiting after {self.timeout} s for {what}") from None

    async def wait_for(self, awaitable: Awaitable[object], what: str) -> None:
        """Await something that is sure to come (a commit): with the same guard."""
        try:
            async with asyncio.timeout(self.timeout):
                await awaitable
        except TimeoutError:
            raise AssertionError(f"still waiting after {self.timeout} s for {what}") from None


def _quiet() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Writes:
    """What a batch of commands was about to commit, for a fault to judge."""

    jobs: list[Job]
    messages: list[Outgoing]


class WatchedStore(MemoryStore):
    """The memory store, reporting every change (commit, rows marked sent, a dead letter) to
    `changes`, with faults a test injects into the commands' transactions:

    - `fault`: given a batch's writes, an exception to raise instead of committing (so
      nothing is applied), or None;
    - `lost_reply`: raised after the batch committed (a connection that died during the
      commit: the caller cannot know it did);
    - `durability_error`: the batch is applied, but its `durable` future fails with it;
    - `park_error`: raised by `park` instead of keeping the letter.
    """

    def __init__(self, changes: Changes | None = None) -> None:
        super().__init__()
        self._notify = changes.notify if changes is not None else _quiet
        self.on_commit(self._notify)
        self.fault: Callable[[Writes], BaseException | None] | None = None
        self.lost_reply: BaseException | None = None
        self.durability_error: BaseException | None = None
        self.park_error: BaseException | None = None
        self.failed_commits = 0

    @asynccontextmanager
    async def apply_commands(self) -> AsyncIterator[Any]:
        async with super().apply_commands() as tx:
            yield tx
            if self.fault is not None:
                exc = self.fault(Writes(list(tx.writes.values()), list(tx.messages)))
                if exc is not None:
                    self.failed_commits += 1
                    raise exc  # the memory store then discards the whole transaction
        if self.lost_reply is not None:
            raise self.lost_reply
        if self.durability_error is not None:
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(self.durability_error)
            tx.durable = failed

    async def mark_sent(self, positions: Iterable[int]) -> None:
        await super().mark_sent(positions)
        self._notify()

    async def park(self, letter: DeadLetter, *, position: int | None = None) -> None:
        if self.park_error is not None:
            raise self.park_error
        await super().park(letter, position=position)
        self._notify()

    def job(self, job_id: str) -> Job | None:
        """The job as last committed (for a test's condition, which cannot await)."""
        return self._jobs.get(job_id)

    def outbox(self) -> list[Outgoing]:
        """Committed messages not yet marked sent, in order."""
        return [message for message, _, _ in self._outbox.values()]


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class SequentialIds:
    """UUIDs 00000000-…-000000000001, …-000000000002, …: ids a test can predict."""

    def __init__(self) -> None:
        self._numbers = itertools.count(1)

    def __call__(self) -> uuid.UUID:
        return uuid.UUID(int=next(self._numbers))


class CollectingPublisher:
    """Confirms every publish at once (or fails it, while `error` is set) and keeps what it
    published, in order. With `unconfirmed` at n, the next n publishes reach the "broker"
    (they are kept) but fail as if their confirms were lost: published again, they are
    duplicates."""

    def __init__(self, changes: Changes | None = None) -> None:
        self.published: list[Outgoing] = []
        self.error: BaseException | None = None
        self.unconfirmed = 0
        self.attempts = 0
        self.changed = asyncio.Event()
        self._notify = changes.notify if changes is not None else _quiet

    async def publish(self, message: Outgoing) -> None:
        self.attempts += 1
        self._notify()
        if self.error is not None:
            raise self.error
        self.published.append(message)
        self.changed.set()
        if self.unconfirmed > 0:
            self.unconfirmed -= 1
            raise ConnectionError("the connection closed before the confirm")

    def of_kind(self, label: str) -> list[Outgoing]:
        return [m for m in self.published if m.label == label]


class FakePrinter:
    """A printer a test drives. By default it is ready and prints each job at once.

    - `results`: outcomes to return, one per print (then `completed`);
    - `offline()`: `ready` waits (the printer takes no job) until `online()`;
    - `hold()`: prints wait until `release()` (or a cancel of that job);
    - `ready_error` / `print_error`: raised by `ready` / `print` while set;
    - `progress`: counts (impressions, sheets) it reports while printing, in order, each
      after `before_report()` if set (a test moves its clock there);
    - `requests`, `canceled`, `submitted`: what the dispatcher asked of it;
    - `snapshot`: what `status()` says (None: idle, or processing while it prints);
      `status_error`: raised by `status()` while set (a printer adapter's bug).
    """

    def __init__(self, name: str, changes: Changes | None = None) -> None:
        self.name = name
        self._notify = changes.notify if changes is not None else _quiet
        self.requests: list[PrintRequest] = []
        self.canceled: list[str] = []
        self.submitted: list[str] = []
        self.results: deque[PrintResult] = deque()
        self.ready_error: BaseException | None = None
        self.print_error: BaseException | None = None
        self.progress: list[tuple[int, int | None]] = []
        self.before_report: Callable[[], None] | None = None
        self.printing = asyncio.Event()  # set while a print is under way
        self._gate: asyncio.Event | None = None
        self._online = asyncio.Event()
        self._online.set()
        self._stopped: set[str] = set()
        self.snapshot: PrinterSnapshot | None = None
        self.status_error: BaseException | None = None

    def offline(self) -> None:
        self._online.clear()

    def online(self) -> None:
        self._online.set()

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
        self._gate = None

    async def ready(self) -> None:
        if self.ready_error is not None:
            raise self.ready_error
        await self._online.wait()

    async def print(
        self,
        request: PrintRequest,
        *,
        on_submitted: OnSubmitted | None = None,
        on_progress: OnProgress | None = None,
    ) -> PrintResult:
        self.requests.append(request)
        try:
            if self.print_error is not None:
                raise self.print_error
            reference = f"{self.name}-{len(self.requests)}"
            if on_submitted is not None:
                await on_submitted(reference)
            self.submitted.append(reference)
            for impressions, sheets in self.progress:
                if self.before_report is not None:
                    self.before_report()
                if on_progress is not None:
                    await on_progress(impressions, sheets)
            self.printing.set()
            self._notify()
            if (gate := self._gate) is not None:
                await gate.wait()
            if request.job_id in self._stopped:
                return PrintResult(PrintOutcome.canceled, "stopped by the service")
            return self.results.popleft() if self.results else PrintResult(PrintOutcome.completed)
        finally:
            self.printing.clear()
            request.document.close()
            self._notify()

    async def status(self) -> PrinterSnapshot:
        if self.status_error is not None:
            raise self.status_error
        if self.snapshot is not None:
            return self.snapshot
        busy = self.printing.is_set()
        return PrinterSnapshot(PrinterState.processing if busy else PrinterState.idle)

    async def cancel(self, job_id: str) -> None:
        self.canceled.append(job_id)
        self._stopped.add(job_id)
        if self._gate is not None:
            self._gate.set()
        self._notify()


class FakePrinters:
    """A printer directory: the given printers per lane, else one FakePrinter per lane."""

    def __init__(
        self, lanes: dict[str, Sequence[Printer]] | None = None, changes: Changes | None = None
    ) -> None:
        self._lanes: dict[str, Sequence[Printer]] = dict(lanes or {})
        self.made: dict[str, FakePrinter] = {}
        self._changes = changes

    def printers(self, lane: str) -> Sequence[Printer]:
        if lane not in self._lanes:
            printer = self.made[lane] = FakePrinter(f"fake-{lane}", self._changes)
            self._lanes[lane] = (printer,)
        return self._lanes[lane]

    def lanes(self) -> Sequence[str]:
        return list(self._lanes)


class FakeDocuments:
    """Documents by URL from a dictionary; a URL it does not have is unavailable."""

    def __init__(self, documents: dict[str, bytes] | None = None) -> None:
        self.documents = dict(documents or {})
        self.fetched: list[str] = []

    async def fetch(self, url: str) -> Document:
        self.fetched.append(url)
        if url not in self.documents:
            raise DocumentUnavailable(f"no document at {url}")
        return InlineDocument(self.documents[url])
