"""The SQLite store's caches of what it committed: its reads answer from memory exactly
what the database would (committed jobs; the outbox rows the relay reads next)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.adapters.store.rows import (
    JOB_COLUMNS,
    OUTBOX_COLUMNS,
    job_as_stored,
    job_from_row,
    job_row,
    outbox_row,
    outgoing_as_stored,
    outgoing_from_row,
    record_from_row,
)
from service.adapters.store.sqlite import SqliteStore
from service.core import jobs
from service.core.events import Kind, Outgoing, job_event
from service.core.jobs import DocumentRef, Job
from service.core.tracecontext import TraceContext
from service.models import (
    ColorMode,
    CreatePrintJob,
    HoldIndefinite,
    JobStatus,
    PrintOptions,
    Priority,
    Sides,
)
from service.ports import OutboxRecord, StoreError

T0: Final = datetime(2026, 1, 1, tzinfo=UTC)
TRACE: Final = TraceContext("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "k=v")
BOUNDED: Final = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def a_job(job_id: str | None = None, *, hold: bool = False) -> Job:
    command = CreatePrintJob(
        jobId=job_id or f"j-{uuid.uuid4().hex[:8]}",
        userId="u",
        hold=HoldIndefinite.indefinite if hold else None,
    )
    made = jobs.create(None, command, queue_id="q1", correlation_id="c", now=T0, pin_hash="h")
    assert isinstance(made, Job)
    return made


def changed(job: Job | jobs.Refusal) -> Job:
    assert isinstance(job, Job)
    return job


def event_of(job: Job) -> Outgoing:
    return job_event(job, event_id=uuid.uuid4(), correlation_id="c", received_at=1.5)


def a_reply(n: int) -> Outgoing:
    """A message of no job (no lane), with a trace that is not valid (the row forgets it)."""
    return Outgoing(
        message_id=f"m-{n}",
        kind=Kind.counts,
        routing_key="replies",
        order_key=f"q-{n}",
        body=b"{}",
        correlation_id="c",
        label="ok",
        received_at=None,
        trace=TraceContext("not-a-traceparent"),
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "jobs.db", commit_delay=0.001, cached_records=64)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection of the test's own to the store's database, to read what it holds."""
    conn = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    yield conn
    conn.close()


def selected_unsent(
    db: sqlite3.Connection, committed: int, limit: int, after: int
) -> list[OutboxRecord]:
    """What `unsent` returns from the database: the SELECT it makes."""
    rows = db.execute(
        f"SELECT {OUTBOX_COLUMNS} FROM outbox "  # noqa: S608 - constant columns
        "WHERE position > ? AND position <= ? ORDER BY position LIMIT ?",
        (after, committed, limit),
    ).fetchall()
    return [record_from_row(row) for row in rows]


def selected_job(db: sqlite3.Connection, job_id: str) -> Job | None:
    rows = db.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?",  # noqa: S608 - constant columns
        (job_id,),
    ).fetchall()
    return job_from_row(rows[0]) if rows else None


def in_memory(store: SqliteStore, limit: int, after: int) -> list[OutboxRecord] | None:
    """`unsent(limit, after=after)` from memory; None where it reads the database instead."""
    return store._unsent_in_memory(limit, after)


# --- jobs ----------------------------------------------------------------------------------------


async def test_a_committed_job_is_read_as_a_fresh_store_reads_it(tmp_path: Path):
    path = tmp_path / "jobs.db"
    store = SqliteStore(path, commit_delay=0.001)
    await store.open()
    plain = a_job()
    started = changed(jobs.start(a_job(), now=T0))
    # Canceled while held: the row forgets its hold (and PIN); memory must forget it too.
    canceled = changed(jobs.cancel(a_job(hold=True), force=False, now=T0))
    assert canceled.pin_hash is not None
    traced = dataclasses.replace(a_job(), trace=TRACE)
    badly_traced = dataclasses.replace(a_job(), trace=TraceContext("nope"))
    written = [plain, started, canceled, traced, badly_traced]
    async with store.transaction() as tx:
        for job in written:
            tx.put(job)
    fresh = SqliteStore(path)
    await fresh.open()
    try:
        for job in written:
            assert job.job_id in store._jobs
            assert job.job_id not in store._unsaved_jobs
            async with store.apply_commands() as tx:
                seen = await tx.get(job.job_id)
            assert seen == await store.read_job(job.job_id) == await fresh.read_job(job.job_id)
        assert await store.read_job(canceled.job_id) == dataclasses.replace(
            canceled, hold_expires_at=None, pin_hash=None
        )
        assert await store.read_job(badly_traced.job_id) == dataclasses.replace(
            badly_traced, trace=None
        )
    finally:
        await fresh.close()
        await store.close()


async def test_a_later_write_replaces_the_committed_job(store: SqliteStore, db: sqlite3.Connection):
    job = a_job()
    async with store.transaction() as tx:
        tx.put(job)
    started = changed(jobs.start(job, now=T0))
    async with store.apply_commands() as tx:
        tx.put(started)
    assert await store.read_job(job.job_id) == started  # the overlay, before its commit
    await tx.durable
    assert store._jobs[job.job_id] == started
    assert await store.read_job(job.job_id) == started == selected_job(db, job.job_id)


async def test_a_purged_job_is_read_until_the_purge_commits_then_never(
    store: SqliteStore, db: sqlite3.Connection
):
    job = changed(jobs.cancel(a_job(), force=False, now=T0))
    async with store.transaction() as tx:
        tx.put(job)
    async with store.apply_commands() as purging:
        purging.purged.append(job.job_id)
    assert await store.read_job(job.job_id) == job, "the database still has it"
    await purging.durable
    assert await store.read_job(job.job_id) is None
    assert selected_job(db, job.job_id) is None
    # Written and purged in one batch: `_write` purges last, and so does the cache.
    again = a_job()
    async with store.apply_commands() as writing:
        writing.put(again)
    async with store.apply_commands() as purging:
        purging.purged.append(again.job_id)
    await asyncio.gather(writing.durable, purging.durable)
    assert await store.read_job(again.job_id) is None
    assert selected_job(db, again.job_id) is None


async def test_the_committed_jobs_kept_are_bounded(tmp_path: Path):
    store = SqliteStore(tmp_path / "jobs.db", commit_delay=0.001, cached_jobs=3)
    await store.open()
    try:
        written = [a_job(f"j-{n}") for n in range(10)]
        for job in written:
            async with store.transaction() as tx:
                tx.put(job)
        assert list(store._jobs) == ["j-7", "j-8", "j-9"]
        assert await store.read_job("j-8") == written[8]  # used: the last to be dropped now
        assert list(store._jobs) == ["j-7", "j-9", "j-8"]
        read = [await store.read_job(job.job_id) for job in written]  # the others: SELECT
        assert read == written
    finally:
        await store.close()


# --- the outbox --------------------------------------------------------------------------------


async def emit(store: SqliteStore, count: int) -> None:
    """Commit `count` outbox rows: job events, and every third a reply."""
    async with store.transaction() as tx:
        for n in range(count):
            tx.emit(event_of(a_job()) if n % 3 else a_reply(n))


async def test_unsent_from_memory_is_what_the_select_returns(
    store: SqliteStore, db: sqlite3.Connection
):
    await emit(store, 5)
    await emit(store, 7)
    await emit(store, 1)

    def agrees(limit: int, after: int) -> list[OutboxRecord]:
        memory = in_memory(store, limit, after)
        assert memory is not None, "memory has every row"
        assert memory == selected_unsent(db, store._committed_position, limit, after)
        return memory

    assert [r.position for r in agrees(100, 0)] == list(range(1, 14))
    assert [r.message.trace for r in agrees(100, 0)[:1]] == [None]  # the reply's bad trace
    assert agrees(100, 0)[1].message.trace == event_of(a_job()).trace
    assert [r.position for r in agrees(3, 0)] == [1, 2, 3]  # a limit smaller than what is there
    marked = await mark(store, [2, 4])
    assert [r.position for r in agrees(3, 0)] == [1, 2, 3], "not committed: still unsent"
    await marked
    assert [r.position for r in agrees(3, 0)] == [1, 3, 5]
    assert [r.position for r in agrees(4, 6)] == [7, 8, 9, 10]  # a cursor in the middle
    assert in_memory(store, 4, 5) is None, "a read from before the cursor: the database's"
    assert [r.position for r in await store.unsent(4, after=5)] == [6, 7, 8, 9]
    assert agrees(100, 13) == []
    assert agrees(0, 13) == []


async def test_rows_are_read_from_memory_once_the_outbox_was_empty_at_open(
    tmp_path: Path, db: sqlite3.Connection
):
    path = tmp_path / "jobs.db"
    first = SqliteStore(path, commit_delay=0.001)
    await first.open()
    await emit(first, 3)
    await first.close()
    second = SqliteStore(path, commit_delay=0.001)
    await second.open()
    try:
        assert in_memory(second, 10, 0) is None, "rows from before: only in the database"
        assert [r.position for r in await second.unsent(10)] == [1, 2, 3]
        await mark(second, [1, 2, 3])
        await emit(second, 2)
        assert in_memory(second, 10, 3) == selected_unsent(db, 5, 10, 3)
        await (await mark(second, [4, 5]))
    finally:
        await second.close()
    third = SqliteStore(path, commit_delay=0.001)
    await third.open()  # an empty outbox: memory is complete from the start
    try:
        await emit(third, 2)
        memory = in_memory(third, 10, 0)
        assert memory is not None
        assert [r.position for r in memory] == [6, 7]
        assert memory == selected_unsent(db, 7, 10, 0)
    finally:
        await third.close()


async def test_an_outbox_deeper_than_memory_is_read_from_the_database(
    tmp_path: Path, db: sqlite3.Connection
):
    path = tmp_path / "jobs.db"
    store = SqliteStore(path, commit_delay=0.001, cached_records=4)
    await store.open()
    try:
        await emit(store, 3)
        await emit(store, 3)
        assert [r.position for r in store._records.values()] == [3, 4, 5, 6]
        assert in_memory(store, 10, 1) is None
        assert [r.position for r in await store.unsent(10, after=1)] == [2, 3, 4, 5, 6]
        assert in_memory(store, 10, 2) == selected_unsent(db, 6, 10, 2)
    finally:
        await store.close()


class Gate:
    """Holds each batch the committer takes until the test lets it go, to commit or to fail
    (before writing, or after committing): reads between see a database that does not
    change under them, and memory as the last commit left it."""

    def __init__(self, store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self._store = store
        self._commit = store._commit
        self._write = store._write
        self._holding = asyncio.Event()
        self._go = asyncio.Event()
        self._done = asyncio.Event()
        self._fate = "commit"
        self._open = False
        monkeypatch.setattr(store, "_commit", self._gated_commit)
        monkeypatch.setattr(store, "_write", self._fated_write)

    async def _gated_commit(self, batch: Any) -> None:
        if not self._open:
            self._holding.set()
            await self._go.wait()
            self._go.clear()
            self._holding.clear()
        try:
            await self._commit(batch)
        finally:
            self._done.set()

    def _fated_write(self, batch: Any) -> int:  # in the committer's thread
        if self._fate == "refuse":
            raise sqlite3.OperationalError("refused before writing")
        position = self._write(batch)
        if self._fate == "lie":
            raise sqlite3.OperationalError("committed, and reported failed")
        return position

    async def taken(self) -> None:
        """Once the committer holds the batch that waits."""
        await self._holding.wait()

    async def let_one(self, fate: str = "commit") -> None:
        """Let the batch held, or next to be, go as `fate` says; returns once it is done."""
        if not self._holding.is_set():
            if not self._store._batch.waiters:
                return
            await self._holding.wait()
        self._fate = fate
        self._done.clear()
        self._go.set()
        await self._done.wait()
        self._fate = "commit"

    def release(self) -> None:
        self._open = True
        self._go.set()


async def mark(store: SqliteStore, positions: list[int]) -> asyncio.Future[None]:
    """`mark_sent`, with its commit to wait for."""
    async with store.apply_commands() as tx:
        tx.sent.extend(positions)
    return tx.durable


async def test_a_failed_commit_leaves_memory_as_the_database_is(
    tmp_path: Path, db: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
):
    path = tmp_path / "jobs.db"
    store = SqliteStore(path, commit_delay=0.001)
    await store.open()
    gate = Gate(store, monkeypatch)
    job = a_job()
    started = changed(jobs.start(job, now=T0))
    try:
        async with store.apply_commands() as tx:
            tx.put(job)
            tx.emit(event_of(job))
        await gate.let_one()
        async with store.apply_commands() as failing:
            failing.put(started)
            failing.emit(a_reply(1))
        await gate.taken()
        async with store.apply_commands() as later:  # built on `failing`: fails with it
            later.emit(a_reply(2))
            later.sent.append(1)
        await gate.let_one("refuse")
        for waiter in (failing.durable, later.durable):
            with pytest.raises(StoreError):
                await waiter
        assert await store.read_job(job.job_id) == job == selected_job(db, job.job_id)
        assert [r.position for r in await store.unsent(10)] == [1]
        # A commit that did commit, and said it failed: memory does not trust itself since.
        async with store.apply_commands() as lying:
            lying.put(started)
            lying.emit(a_reply(3))  # position 2: the refused batch wrote nothing
            lying.sent.append(1)
        await gate.let_one("lie")
        with pytest.raises(StoreError):
            await lying.durable
        assert await store.read_job(job.job_id) == started == selected_job(db, job.job_id)
        assert await store.unsent(10) == [] == selected_unsent(db, 1, 10, 0)
        await emit_unwaited(store, 2)
        await gate.let_one()
        assert store._committed_position == 4
        assert in_memory(store, 10, 1) is None, "row 2 is only in the database"
        for after in range(5):
            assert await store.unsent(10, after=after) == selected_unsent(db, 4, 10, after)
        assert [r.position for r in selected_unsent(db, 4, 10, 0)] == [2, 3, 4]
    finally:
        gate.release()
        await store.close()


async def emit_unwaited(store: SqliteStore, count: int) -> None:
    async with store.apply_commands() as tx:
        for n in range(count):
            tx.emit(a_reply(n))


# --- random sequences ----------------------------------------------------------------------------

Op = tuple[Any, ...]
OP_ARGUMENTS: Final[dict[str, st.SearchStrategy[tuple[Any, ...]]]] = {
    "add": st.tuples(st.integers(1, 5)),
    "job": st.tuples(st.integers(0, 3), st.booleans()),  # a new one held, or not
    "commit": st.tuples(st.just("commit")),
    "fail": st.tuples(st.sampled_from(["refuse", "lie"])),
    # A read from where memory begins, a little before or after it; or from anywhere.
    "read": st.tuples(st.integers(-1, 2), st.integers(0, 8)),
    "read_at": st.tuples(st.integers(-1, 40), st.integers(-1, 8)),
    "relay": st.tuples(st.integers(1, 4)),
    # Rows of the outbox (by their rank among those unsent), marked sent.
    "sent": st.tuples(st.lists(st.integers(0, 99), min_size=1, max_size=3)),
    "purge": st.tuples(st.integers(0, 3)),
}
# Mostly writes, commits and reads near where memory begins: the reads memory answers.
OP_WEIGHTS: Final = {"add": 3, "job": 2, "commit": 4, "read": 3, "sent": 2}
ops: st.SearchStrategy[Op] = st.sampled_from(
    [name for name in OP_ARGUMENTS for _ in range(OP_WEIGHTS.get(name, 1))]
).flatmap(lambda name: OP_ARGUMENTS[name].map(lambda arguments: (name, *arguments)))


@BOUNDED
@given(st.lists(ops, min_size=20, max_size=60), st.integers(0, 12), st.integers(1, 4))
def test_memory_answers_as_the_database_in_any_sequence(
    sequence: list[Op], cached_records: int, cached_jobs: int
):
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as monkeypatch:
        asyncio.run(
            replay(Path(tmp) / "jobs.db", sequence, cached_records, cached_jobs, monkeypatch)
        )


async def replay(
    path: Path,
    sequence: list[Op],
    cached_records: int,
    cached_jobs: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = SqliteStore(
        path,
        synchronous="OFF",
        commit_delay=0.0005,
        cached_records=cached_records,
        cached_jobs=cached_jobs,
    )
    await store.open()
    db = sqlite3.connect(path, isolation_level=None)
    replaying = Replay(store, Gate(store, monkeypatch), db)
    try:
        for op in sequence:
            await replaying.step(op)
            for job_id in replaying.ids:
                if job_id not in store._unsaved_jobs:
                    assert await store.read_job(job_id) == selected_job(db, job_id)
        assert len(store._records) <= cached_records
        assert len(store._jobs) <= cached_jobs
    finally:
        replaying.gate.release()
        db.close()
        await store.close()
        await asyncio.gather(*replaying.waiters, return_exceptions=True)


class Replay:
    """One sequence of writes, commits and reads, each read checked against the database."""

    def __init__(self, store: SqliteStore, gate: Gate, db: sqlite3.Connection) -> None:
        self.store = store
        self.gate = gate
        self.db = db
        self.waiters: list[asyncio.Future[None]] = []
        self.ids = [f"j-{n}" for n in range(4)]
        self.cursor = 0  # as the relay's

    async def step(self, op: Op) -> None:
        store, name = self.store, op[0]
        if name == "add":
            async with store.apply_commands() as tx:
                for n in range(op[1]):
                    tx.emit(a_reply(n) if n % 2 else event_of(a_job(self.ids[n % len(self.ids)])))
            self.waiters.append(tx.durable)
        elif name == "sent":
            unsent = selected_unsent(self.db, store._committed_position, -1, 0)
            if unsent:
                chosen = [unsent[rank % len(unsent)].position for rank in op[1]]
                self.waiters.append(await mark(store, chosen))
        elif name == "read":
            self.read(store._records_after + op[1], op[2])
        elif name == "read_at":
            self.read(op[1], op[2])
        elif name == "relay":
            if taken := self.read(self.cursor, op[1]):
                self.cursor = taken[-1].position
                self.waiters.append(await mark(store, [r.position for r in taken[::2]]))
        elif name == "job":
            job_id = self.ids[op[1]]
            async with store.apply_commands() as tx:
                current = await tx.get(job_id)
                job = a_job(job_id, hold=op[2]) if current is None else _next(current)
                tx.put(job)
                tx.emit(event_of(job))  # in the job's lane
            self.waiters.append(tx.durable)
        elif name == "purge":
            async with store.apply_commands() as tx:
                tx.purged.append(self.ids[op[1]])
            self.waiters.append(tx.durable)
        else:  # commit, fail
            await self.gate.let_one(op[1])

    def read(self, after: int, limit: int) -> list[OutboxRecord]:
        store = self.store
        memory = in_memory(store, limit, after)
        selected = selected_unsent(self.db, store._committed_position, limit, after)
        assert memory is None or memory == selected
        return selected


def _next(job: Job) -> Job:
    """The job one change on (a held one canceled: its hold forgotten by the row)."""
    now = job.updated_at + timedelta(seconds=1)
    if job.status is JobStatus.created:
        return changed(jobs.start(job, now=now))
    if job.status is JobStatus.started:
        return changed(jobs.finish(job, now=now))
    if job.status is JobStatus.held:
        return changed(jobs.cancel(job, force=False, now=now))
    return a_job(job.job_id, hold=True)


# --- what a row reads back as --------------------------------------------------------------------

texts = st.text(max_size=8)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis takes naive bounds
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2))]),
)
traces = st.one_of(
    st.none(),
    st.just(TRACE),
    st.just(TraceContext(TRACE.traceparent)),
    st.just(TraceContext(TRACE.traceparent, "bad state ,")),
    st.builds(TraceContext, texts, st.none() | texts),
)
JOB_FIELDS: Final[dict[str, st.SearchStrategy[Any]]] = {
    "job_id": texts,
    "queue_id": texts,
    "status": st.sampled_from(JobStatus),
    "sequence": st.integers(0, 2**63 - 1),
    "priority": st.sampled_from(Priority),
    "user_id": st.none() | texts,
    "document_name": st.none() | texts,
    "created_at": moments,
    "updated_at": moments,
    "correlation_id": texts,
    "reason": st.none() | texts,
    "title": st.none() | texts,
    "copies": st.integers(1, 999),
    "options": st.none()
    | st.just(PrintOptions(sides=Sides.two_sided_long_edge, colorMode=ColorMode.monochrome)),
    "document": st.none()
    | st.builds(
        DocumentRef, content_type=texts, url=st.none() | texts, size=st.none() | st.integers(0)
    ),
    "expire_at": st.none() | moments,
    "request_digest": texts,
    "printer_job": st.none() | texts,
    "interruptions": st.integers(0, 9),
    "handed_over": st.booleans(),
    "impressions": st.none() | st.integers(0, 10**6),
    "sheets": st.none() | st.integers(0, 10**6),
    "hold_until": st.none() | moments,
    "hold_expires_at": st.none() | moments,
    "pin_hash": st.none() | texts,
    "pin_attempts": st.integers(0, 9),
    "trace": traces,
}


def test_the_job_strategy_sets_every_field():
    assert set(JOB_FIELDS) == {field.name for field in dataclasses.fields(Job)}


@settings(max_examples=300, deadline=None, database=None)
@given(st.builds(Job, **JOB_FIELDS))
def test_a_job_as_stored_is_what_its_row_reads_back_as(job: Job):
    assert job_as_stored(job) == job_from_row(job_row(job, datetime.isoformat))


@settings(max_examples=100, deadline=None, database=None)
@given(traces, st.none() | st.floats(allow_nan=False))
def test_a_message_as_stored_is_what_its_row_reads_back_as(trace: TraceContext | None, at: Any):
    message = dataclasses.replace(a_reply(1), trace=trace, received_at=at)
    assert outgoing_as_stored(message) == outgoing_from_row((0, *outbox_row(message, 2.5, None)))
