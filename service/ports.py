"""The seams between the core and the outside: small Protocols, one per kind of adapter.

Each has a production adapter beside it (`service.adapters.store`, `service.adapters.printers`,
`service.adapters`) and can be replaced by a fake in unit tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final, Literal, Protocol

from service.core.events import Outgoing
from service.core.jobs import Job
from service.core.listing import JobQuery
from service.core.printers import PrinterSnapshot
from service.core.tracecontext import TraceContext
from service.models import JobStatus, PrintOptions

__all__ = [
    "NO_TRACING",
    "Coordinator",
    "DeadLetter",
    "Document",
    "DocumentSource",
    "DocumentUnavailable",
    "EventPublisher",
    "InlineDocument",
    "JobStore",
    "LaneCallback",
    "LaneLost",
    "NoTracing",
    "OnProgress",
    "OnSubmitted",
    "OutboxLanes",
    "OutboxRecord",
    "PrintOutcome",
    "PrintRequest",
    "PrintResult",
    "Printer",
    "PrinterDirectory",
    "PrinterRoster",
    "PrinterSnapshot",
    "PrinterUnavailable",
    "PublishRefused",
    "Span",
    "SpanAttributes",
    "SpanKind",
    "StoreError",
    "StoreRefused",
    "StoreTransaction",
    "Tracer",
    "Unpublishable",
]


class StoreError(Exception):
    """The store cannot read or write. Nothing was applied; the command will come again."""


class StoreRefused(Exception):  # noqa: N818 - a verdict on the data, not a bug
    """The store cannot write this data as it is (text it cannot hold, a value out of
    range): nothing was applied, and trying again would fail the same way."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A message the service gave up on, kept with its raw bytes for people to inspect.

    `source` is `command` (an MQTT command that could not be handled, not even answered)
    or `event` (an outbox message the AMQP broker refused for good).
    """

    source: str
    reason: str
    address: str  # the command's MQTT topic, or the event's routing key
    payload: bytes
    properties: Mapping[str, str]
    attempts: int
    at: float
    id: int | None = None  # assigned by the store


class LaneLost(StoreError):  # noqa: N818 - a state, not a bug
    """A fenced transaction found its lane held by another replica: nothing was applied."""


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """An outbox row: `position` orders rows and identifies them for `mark_sent`; `lane` is
    the lane of the job whose event it is (None: no lane, a reply or a printer's status)."""

    position: int
    message: Outgoing
    enqueued_at: float
    lane: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxLanes:
    """The outbox rows a replica publishes: those of the lanes it holds, and with `unlaned`
    (it holds the relay's lane) the rows of no lane. A replica alone publishes every row,
    and says so with None instead."""

    held: frozenset[str]
    unlaned: bool

    def admits(self, lane: str | None) -> bool:
        return self.unlaned if lane is None else lane in self.held

    @property
    def empty(self) -> bool:
        return not (self.unlaned or self.held)


class StoreTransaction(Protocol):
    """Reads and writes that commit together, or not at all."""

    durable: asyncio.Future[None]
    """Resolved once the commit is done (as durable as the method that opened it promises:
    see `JobStore`); holds the StoreError of a commit that failed after the exit returned."""

    async def get(self, job_id: str) -> Job | None: ...

    def put(self, job: Job) -> None: ...

    def put_document(self, job_id: str, data: bytes) -> None:
        """Keep a job's inline document until the job is final."""
        ...

    async def counts(self, queue_id: str) -> dict[JobStatus, int]:
        """The queue's jobs per status (statuses with none may be missing)."""
        ...

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        """At most `query.limit` of the queue's jobs that match it, newest first (by
        created_at, then job_id, descending), below `query.after`: served by the index
        (queue_id, created_at, job_id), and seeing what the transaction wrote."""
        ...

    def emit(self, message: Outgoing) -> None: ...


class JobStore(Protocol):
    """Jobs and the outbox of messages their changes produced.

    Three kinds of transaction, named for what their callers mean: `transaction` (waited
    for, durable, optionally fenced), `apply_commands` and `record_progress`. Each commits
    its writes together on a normal exit, or discards them all on an exception. Its
    `durable` future resolves once the commit is durable (`record_progress` on PostgreSQL:
    once committed), or holds the StoreError of a commit that failed after the exit had
    returned (SQLite's unwaited batches); an exit that raises leaves it unresolved.

    Fencing (`lane`) matters where replicas share the store (PostgreSQL with an instance
    id): the transaction raises LaneLost, applying nothing, unless this replica holds `lane`
    until it commits. The single-replica stores (memory, SQLite, and PostgreSQL without an
    instance id) hold every lane: they never raise it.
    """

    @property
    def healthy(self) -> bool:
        """False after a failed commit, until one succeeds (PostgreSQL: also after a failed
        read, until a read succeeds)."""
        ...

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

    async def read_job(self, job_id: str) -> Job | None:
        """The job as the last applied transaction left it, for a reader that will not write
        it back: it locks nothing and waits for no transaction (PostgreSQL: a plain SELECT of
        committed data, on a pooled connection; SQLite: the overlay of applied batches, then
        the database; memory: the committed jobs, not those of an open transaction)."""
        ...

    def apply_commands(self) -> AbstractAsyncContextManager[StoreTransaction]:
        """A transaction for a batch of commands, not fenced.

        Its exit returns once the writes are applied (later transactions and `read_job` see
        them); `durable` resolves once they are durable, and only then may the commands be
        acknowledged. SQLite: the exit returns at once, the batch joining the next group
        commit (one fsync serves many batches). PostgreSQL: the exit waits for a durable
        commit, since until it commits no other connection sees the writes, and the next
        transaction must see the job a command just created; concurrent commits share WAL
        flushes in the server. Memory: it commits at the exit.
        """
        ...

    def record_progress(self, lane: str) -> AbstractAsyncContextManager[StoreTransaction]:
        """A transaction for what a printer of `lane` reported about its job: fenced by
        `lane`, and relaxed, since the service can redo it (the job is reloaded and printed
        again).

        PostgreSQL commits it with `synchronous_commit off` (the exit returns once it is
        committed, maybe before the WAL is on disk: a crash of the server could lose it, not
        reorder it). SQLite: the exit returns at once, the writes applied, and the batch
        joins the next group commit like any other. Memory: it commits at the exit. In each,
        `durable` says how the commit went.
        """
        ...

    def transaction(
        self, *, lane: str | None = None
    ) -> AbstractAsyncContextManager[StoreTransaction]:
        """A transaction whose exit returns once its commit is durable (`durable` is then
        resolved), or raises the StoreError if it failed. With `lane`, it is fenced.
        PostgreSQL commits it with `synchronous_commit on`; SQLite waits for the group commit
        it joins."""
        ...

    async def unsent(
        self, limit: int, *, after: int = 0, lanes: OutboxLanes | None = None
    ) -> Sequence[OutboxRecord]:
        """Committed messages not yet marked sent, oldest first.

        `after` is a hint: a store whose positions are assigned in commit order returns only
        rows past it; one that cannot promise that (PostgreSQL) returns from the oldest.

        With `lanes`, only the rows those admit, and of those only the ones with no earlier
        unsent row of the same order key outside `lanes` (a job moved between lanes: its
        later events wait until its earlier ones, another replica's, are sent). A row held
        back so is older than rows returned before it: with `lanes`, `after` is not used.
        """
        ...

    async def mark_sent(self, positions: Iterable[int]) -> None: ...

    async def park(self, letter: DeadLetter, *, position: int | None = None) -> None:
        """Keep `letter` among the dead letters; with `position`, that outbox row goes in
        the same commit (it will not be published)."""
        ...

    async def dead_letters(self, limit: int) -> Sequence[DeadLetter]:
        """The oldest dead letters first."""
        ...

    async def drop_dead_letters(self, ids: Iterable[int]) -> None:
        """Forget dead letters (once replayed, or judged)."""
        ...

    async def document(self, job_id: str) -> bytes | None:
        """The inline document of a job that is not final."""
        ...

    async def waiting_jobs(self) -> Sequence[Job]:
        """Jobs that are created or started: what a restart must pick up again."""
        ...

    async def purge_jobs(self, before: datetime, limit: int) -> int:
        """Forget at most `limit` final jobs last changed before `before`, with their
        history and documents, in one transaction; returns how many. Idempotent, and safe
        from several replicas at once (PostgreSQL skips rows another one is deleting)."""
        ...

    async def close(self) -> None: ...


class PrintOutcome(StrEnum):
    completed = "completed"
    canceled = "canceled"
    failed = "failed"


@dataclass(frozen=True, slots=True)
class PrintResult:
    """How a print ended; `reason` says why, for `failed` and `canceled`, in words for people."""

    outcome: PrintOutcome
    reason: str | None = None


class Document(Protocol):
    """A job's document, read in chunks: a large one (fetched by URL) waits in a spool file
    and is never held whole in memory; an inline one is bytes (capped at the command size)."""

    @property
    def size(self) -> int: ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The document from its first byte; each call starts again (a printer may resubmit)."""
        ...

    def close(self) -> None:
        """Releases what holds the document (its spool file); idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class InlineDocument:
    """A document already in memory: an inline one from the store."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.data:
            yield self.data

    def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class PrintRequest:
    """Everything a printer needs for one job: the document and what to do with it.

    The printer owns `document` once `print` is called and closes it when `print` returns.
    """

    job_id: str
    title: str
    user_id: str | None
    copies: int
    options: PrintOptions
    document: Document
    content_type: str
    # The printer's own job for it, as an earlier `on_submitted` reported it: a printer that
    # still has that job follows it rather than printing the document again.
    printer_job: str | None = None


OnSubmitted = Callable[[str], Awaitable[None]]

OnProgress = Callable[[int, int | None], Awaitable[None]]
"""`on_progress(impressions, sheets)`: what the printer says it has done of the job so far
(sheets None when it does not count them). Called whenever the counts change, the last time
with the totals before `print` returns; the caller decides how often that becomes an event."""


class PrinterUnavailable(Exception):  # noqa: N818 - a state, not a bug
    """The printer has been unreachable or stopped for longer than its deadline."""


class Printer(Protocol):
    """One printer: prints one job at a time."""

    name: str

    async def ready(self) -> None:
        """Returns once the printer can take a job; waits while it is offline or stopped.

        Raises PrinterUnavailable once it has been so for longer than its deadline.
        """
        ...

    async def print(
        self,
        request: PrintRequest,
        *,
        on_submitted: OnSubmitted | None = None,
        on_progress: OnProgress | None = None,
    ) -> PrintResult:
        """Returns when the printer says the job is done, failed, or was stopped.

        `on_submitted` is given a reference to the printer's job once it has one, for
        `PrintRequest.printer_job` if the job must be taken up again (a restart, a takeover).
        `on_progress` is told the impressions (and sheets) completed as they change, if the
        printer reports them; an exception it raises does not stop the print.
        """
        ...

    async def cancel(self, job_id: str) -> None:
        """Asks the printer to stop `job_id` if it is printing it; no-op otherwise."""
        ...

    async def status(self) -> PrinterSnapshot:
        """What the printer says of itself now (`unreachable` if it does not answer within
        its timeout); never raises for what the printer does."""
        ...


class PrinterDirectory(Protocol):
    """The printers of each lane (a configured queue, or a queueId without configuration)."""

    def printers(self, lane: str) -> Sequence[Printer]: ...


class PrinterRoster(PrinterDirectory, Protocol):
    """A directory that can also list its lanes, for whoever watches every printer."""

    def lanes(self) -> Sequence[str]:
        """The lanes that have printers now (configured ones, and queueIds used so far)."""
        ...


class DocumentUnavailable(Exception):  # noqa: N818 - a state, not a bug
    """A job's document could not be had; the message says why, for the job's `reason`."""


class DocumentSource(Protocol):
    """Fetches documents given by URL."""

    async def fetch(self, url: str) -> Document:
        """The document (the caller closes it); raises DocumentUnavailable."""
        ...


LaneCallback = Callable[[list[str]], None]


class Coordinator(Protocol):
    """Which replica prints which lane, so that each job and each printer has one driver."""

    instance: str

    def owns(self, lane: str) -> bool:
        """Whether this replica may print jobs of `lane` now."""
        ...

    def subscribe(
        self,
        *,
        gained: LaneCallback,
        lost: LaneCallback,
        job_changed: Callable[[str, str], None],
    ) -> None:
        """Be told of lanes taken over or given up, and of jobs (queueId, jobId) that another
        replica changed in a lane this one prints."""
        ...

    async def claim(self, lane: str) -> bool:
        """Take `lane` unless a live replica has it; whether it is this replica's now."""
        ...

    async def replica_died(self, instance: str) -> None:
        """Another replica's MQTT last will came: take over its lanes."""
        ...

    async def run(self, stopping: asyncio.Event) -> None:
        """Hold the lease until `stopping`, then give the lanes back."""
        ...


class Unpublishable(Exception):  # noqa: N818 - a verdict on the message, not a bug
    """The message cannot be encoded for the broker (a header or property it cannot carry):
    it never reached the wire, and never will."""


class PublishRefused(Exception):  # noqa: N818 - a verdict, not a bug
    """The broker refused a message (over its size limit, a user id it rejects). The
    refusal may be another message's: a broker that closes the channel on one fails every
    publish in flight with it; only a message published alone is refused for itself."""


class EventPublisher(Protocol):
    """Publishes a message and returns once the broker has confirmed it.

    Raises Unpublishable or PublishRefused for the message itself; any other exception is
    a failure of the moment (the connection, the broker), and the publish can be tried again.
    """

    async def publish(self, message: Outgoing) -> None: ...


SpanKind = Literal["internal", "consumer", "producer"]
SpanAttributes = Mapping[str, str | int | bool]


class Span(Protocol):
    """One timed step of a command's trace."""

    @property
    def context(self) -> TraceContext | None:
        """This span's own context (a parent for what it causes); None if not recorded."""
        ...

    def end(self, *, error: BaseException | None = None) -> None:
        """Ends the span, failed if `error` is given."""
        ...


class Tracer(Protocol):
    """Makes spans (OpenTelemetry in production). Callers on a hot path check `enabled`
    first, and skip the work of tracing when it is off."""

    @property
    def enabled(self) -> bool: ...

    def start(
        self,
        name: str,
        *,
        parent: TraceContext | None,
        kind: SpanKind = "internal",
        start_ns: int | None = None,
        attributes: SpanAttributes | None = None,
    ) -> Span:
        """A span begun now (or at `start_ns`, wall-clock nanoseconds), child of `parent`,
        or the root of a new trace without one."""
        ...


class _NoSpan:
    context: Final = None

    def end(self, *, error: BaseException | None = None) -> None:  # noqa: ARG002
        return None


class NoTracing:
    """Tracing off: no span, no context, nothing carried."""

    enabled: Final = False
    _span: Final = _NoSpan()

    def start(
        self,
        name: str,  # noqa: ARG002 - nothing is recorded
        *,
        parent: TraceContext | None,  # noqa: ARG002
        kind: SpanKind = "internal",  # noqa: ARG002
        start_ns: int | None = None,  # noqa: ARG002
        attributes: SpanAttributes | None = None,  # noqa: ARG002
    ) -> Span:
        return self._span


NO_TRACING: Final[Tracer] = NoTracing()
