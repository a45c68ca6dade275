"""Fakes of the ports for unit tests: deterministic, in memory, driven by the test.

The store fake is the real `MemoryStore` (it keeps the store's contract exactly); these are
the rest: a clock, an id source, a publisher that collects, printers a test can hold,
fail or stop, a directory of them, and a document source.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from service.core.events import Outgoing
from service.ports import (
    Document,
    DocumentUnavailable,
    InlineDocument,
    OnSubmitted,
    Printer,
    PrintOutcome,
    PrintRequest,
    PrintResult,
)

__all__ = [
    "CollectingPublisher",
    "FakeClock",
    "FakeDocuments",
    "FakePrinter",
    "FakePrinters",
    "SequentialIds",
]

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


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
    published, in order."""

    def __init__(self) -> None:
        self.published: list[Outgoing] = []
        self.error: BaseException | None = None
        self.attempts = 0
        self.changed = asyncio.Event()

    async def publish(self, message: Outgoing) -> None:
        self.attempts += 1
        if self.error is not None:
            raise self.error
        self.published.append(message)
        self.changed.set()

    def of_kind(self, label: str) -> list[Outgoing]:
        return [m for m in self.published if m.label == label]


class FakePrinter:
    """A printer a test drives. By default it is ready and prints each job at once.

    - `results`: outcomes to return, one per print (then `completed`);
    - `hold()`: prints wait until `release()` (or a cancel of that job);
    - `ready_error` / `print_error`: raised by `ready` / `print` while set;
    - `requests`, `canceled`, `submitted`: what the dispatcher asked of it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[PrintRequest] = []
        self.canceled: list[str] = []
        self.submitted: list[str] = []
        self.results: deque[PrintResult] = deque()
        self.ready_error: BaseException | None = None
        self.print_error: BaseException | None = None
        self.printing = asyncio.Event()  # set while a print is under way
        self._gate: asyncio.Event | None = None
        self._stopped: set[str] = set()

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
        self._gate = None

    async def ready(self) -> None:
        if self.ready_error is not None:
            raise self.ready_error

    async def print(
        self, request: PrintRequest, *, on_submitted: OnSubmitted | None = None
    ) -> PrintResult:
        self.requests.append(request)
        try:
            if self.print_error is not None:
                raise self.print_error
            reference = f"{self.name}-{len(self.requests)}"
            if on_submitted is not None:
                await on_submitted(reference)
            self.submitted.append(reference)
            self.printing.set()
            if (gate := self._gate) is not None:
                await gate.wait()
            if request.job_id in self._stopped:
                return PrintResult(PrintOutcome.canceled, "stopped by the service")
            return self.results.popleft() if self.results else PrintResult(PrintOutcome.completed)
        finally:
            self.printing.clear()
            request.document.close()

    async def cancel(self, job_id: str) -> None:
        self.canceled.append(job_id)
        self._stopped.add(job_id)
        if self._gate is not None:
            self._gate.set()


class FakePrinters:
    """A printer directory: the given printers per lane, else one FakePrinter per lane."""

    def __init__(self, lanes: dict[str, Sequence[Printer]] | None = None) -> None:
        self._lanes: dict[str, Sequence[Printer]] = dict(lanes or {})
        self.made: dict[str, FakePrinter] = {}

    def printers(self, lane: str) -> Sequence[Printer]:
        if lane not in self._lanes:
            printer = self.made[lane] = FakePrinter(f"fake-{lane}")
            self._lanes[lane] = (printer,)
        return self._lanes[lane]


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
