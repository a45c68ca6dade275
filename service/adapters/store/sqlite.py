"""The durable embedded store: SQLite in WAL mode, with group commit off the event loop.

A transaction buffers its writes and, on exit, joins the batch waiting for the committer; it
never waits for a lock. The committer takes the whole batch after a pause of `commit_delay`
(which lets concurrent work join it), then writes and commits it in a worker thread: under
load, many commands share one fsync, the loop never waits for the disk, and a transaction
that is waited for (`transaction`) returns only once its own effect is durable, the others
(`apply_commands`, `record_progress`) once it is applied.

Reads use a second connection, which sees only committed data, under an overlay of the jobs
and documents written by batches not yet committed, so a transaction reads the latest
writes at once. Every read returns without suspending: with one event loop, a transaction
that reads and then writes is atomic.

What a batch wrote stays in memory once it is committed, in two bounded caches: the jobs
(the dispatcher reads each job right after its create, and again after its start, commits)
and the outbox rows not yet sent (the relay reads them right after they commit). This
process is the only writer, so committed data cannot change behind them: they are kept
exact by each commit, and a read they cannot answer exactly goes to the database.

The relay only sees outbox rows that are committed, so no message is ever published for a
change that could still be rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, Final

import structlog

from service.adapters.store.memory import page_of
from service.adapters.store.pending import LaneOf, PendingWrites, documents_to_drop
from service.adapters.store.rows import (
    DEAD_LETTER_COLUMNS,
    JOB_COLUMNS,
    JOB_UPDATED,
    JOB_UPDATES,
    OUTBOX_COLUMNS,
    OUTBOX_INSERT_COLUMNS,
    Row,
    checked,
    dead_letter_from_row,
    dead_letter_row,
    history_row,
    job_as_stored,
    job_from_row,
    job_row,
    outbox_row,
    outgoing_as_stored,
    record_from_row,
)
from service.adapters.store.schema import SQLITE, migrations
from service.core.events import Outgoing
from service.core.jobs import Job
from service.core.listing import JobQuery
from service.models import JobStatus
from service.ports import DeadLetter, OutboxLanes, OutboxRecord, StoreError

__all__ = ["SqliteStore"]

log = structlog.get_logger(__name__)

# Committed jobs kept for reads: a job is read again soon after each commit of it (started
# once its create commits, finished once its start does), so this need only outlast the jobs
# between two of their own commits under a flood (a few batches' worth, a few thousand), at
# a few MB. A job it no longer holds is read from the database.
COMMITTED_JOBS: Final = 4096
# Committed outbox rows kept for the relay: twice the jobs (a job's events, and the replies),
# so that a relay keeping up reads from memory; behind by more (a deep outbox under a flood,
# a broker away), it reads the database, and memory does not grow with the outbox.
COMMITTED_RECORDS: Final = 8192


class _Transaction(PendingWrites):
    def __init__(self, store: SqliteStore) -> None:
        super().__init__()
        self._store = store

    async def get(self, job_id: str) -> Job | None:
        job = self.jobs.get(job_id) or self._store._job(job_id)  # noqa: SLF001 - its own store
        if job is not None:
            self.queue_of[job_id] = job.queue_id  # the lane of an event of it (a status reply)
        return job

    async def counts(self, queue_id: str) -> dict[JobStatus, int]:
        return self._store.read_counts(queue_id, pending=self.jobs)

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        return self._store.read_page(query, pending=self.jobs)


@dataclass(slots=True)
class _Batch:
    """Transactions to be written and committed together, as rows ready for the database."""

    jobs: list[Job] = field(default_factory=list)
    job_rows: list[Row] = field(default_factory=list)
    history_rows: list[Row] = field(default_factory=list)
    documents: list[tuple[str, bytes]] = field(default_factory=list)
    dropped_documents: list[tuple[str]] = field(default_factory=list)
    outbox_rows: list[Row] = field(default_factory=list)
    # What each outbox row is made of (message, enqueued_at, lane): the records, once committed.
    messages: list[tuple[Outgoing, float, str | None]] = field(default_factory=list)
    sent: list[tuple[int]] = field(default_factory=list)
    letters: list[Row] = field(default_factory=list)
    dropped_letters: list[tuple[int]] = field(default_factory=list)
    purged: list[tuple[str]] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def add(self, tx: _Transaction, *, lane: str | None, lane_of: LaneOf) -> None:
        """Add `tx` whole or, if a row cannot be built or written, not at all (StoreRefused:
        one command's bad data must not fail the commit of the others)."""
        now = time.time()
        lanes = tx.message_lanes(fenced=lane, lane_of=lane_of)
        jobs = list(tx.jobs.values())
        job_rows = checked([job_row(job, _iso) for job in jobs], nul_in_text=True)
        history_rows = checked([history_row(job, _iso) for job in jobs], nul_in_text=True)
        messages = [(m, now, row_lane) for m, row_lane in zip(tx.messages, lanes, strict=True)]
        outbox_rows = checked([outbox_row(*message) for message in messages], nul_in_text=True)
        letters = checked([dead_letter_row(letter) for letter in tx.letters], nul_in_text=True)
        self.letters.extend(letters)
        self.dropped_letters.extend((id_,) for id_ in tx.dropped_letters)
        self.purged.extend((job_id,) for job_id in tx.purged)
        self.jobs.extend(jobs)
        self.job_rows.extend(job_rows)
        self.history_rows.extend(history_rows)
        self.dropped_documents.extend((job_id,) for job_id in documents_to_drop(jobs))
        self.documents.extend(tx.documents.items())
        self.outbox_rows.extend(outbox_rows)
        self.messages.extend(messages)
        self.sent.extend((position,) for position in tx.sent)
        self.waiters.append(tx.durable)


class SqliteStore:
    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        commit_delay: float = 0.001,
        lane_of: LaneOf = lambda queue_id: queue_id,
        cached_jobs: int = COMMITTED_JOBS,
        cached_records: int = COMMITTED_RECORDS,
    ) -> None:
        self._path = path
        # The lane of a job's outbox rows, from its queue (one replica publishes them all).
        self._lane_of = lane_of
        self._synchronous = synchronous
        self._commit_delay = commit_delay
        self._writer: sqlite3.Connection | None = None  # the committer's, in its thread
        self._reader: sqlite3.Connection | None = None  # the event loop's
        self._batch = _Batch()
        # What batches not yet committed wrote: reads see it before the database.
        self._unsaved_jobs: dict[str, Job] = {}
        self._unsaved_documents: dict[str, bytes] = {}
        # Committed jobs, as the database holds them, the least recently used first.
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._jobs_bound = cached_jobs
        # Committed outbox rows not sent, by position: every one past `_records_after`.
        self._records: OrderedDict[int, OutboxRecord] = OrderedDict()
        self._records_bound = cached_records
        self._records_after = 0
        self._assigned_position = 0  # the last outbox position a commit of this store used
        self._committed_position = 0
        self._depth = 0
        self._dirty = asyncio.Event()
        self._closing = False
        self._committer: asyncio.Task[None] | None = None
        self.healthy = True
        self.commits = 0
        self._listeners: list[Callable[[], None]] = []

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    async def open(self) -> None:
        """Open (creating if needed), apply pending migrations, start the committer."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        writer = self._connect()
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute(f"PRAGMA synchronous={self._synchronous}")
        self._migrate(writer)
        self._writer, self._reader = writer, self._connect()
        self._committed_position = writer.execute(
            "SELECT COALESCE(MAX(position), 0) FROM outbox"
        ).fetchone()[0]
        self._depth = writer.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self._assigned_position = writer.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'"
        ).fetchone()[0]
        # The rows already there are not in memory (none at all: memory has every row).
        self._records_after = self._committed_position if self._depth else 0
        self._committer = asyncio.create_task(self._commit_loop(), name="store-committer")
        log.info("store_opened", path=str(self._path), outbox_depth=self._depth)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, statements in migrations(SQLITE):
            if version in done:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, datetime('now'))", (version,)
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("store_migrated", version=version)

    async def close(self) -> None:
        if self._committer is not None:
            # Not cancelled: a commit running in the worker thread must finish before the
            # connections are closed. What is still batched is committed first, not lost.
            self._closing = True
            self._dirty.set()
            await self._committer
            self._committer = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None

    @property
    def outbox_depth(self) -> int:
        return self._depth

    def transaction(self, *, lane: str | None = None) -> AbstractAsyncContextManager[_Transaction]:
        # One replica holds every lane: `lane` fences nothing, and names the rows' lane.
        return self._batched(wait=True, lane=lane)

    def apply_commands(self) -> AbstractAsyncContextManager[_Transaction]:
        return self._batched(wait=False)

    def record_progress(self, lane: str) -> AbstractAsyncContextManager[_Transaction]:
        # Committed like any batch (with STORE_SYNCHRONOUS): a group commit costs nothing more.
        return self._batched(wait=False, lane=lane)

    @asynccontextmanager
    async def _batched(self, *, wait: bool, lane: str | None = None) -> AsyncIterator[_Transaction]:
        """A transaction that joins the next group commit at its exit; with `wait`, the exit
        returns once that commit is durable, else at once (the writes are applied: reads and
        later transactions see them through the overlay)."""
        tx = _Transaction(self)
        yield tx
        if not tx.writes():
            tx.durable.set_result(None)
            return
        if self._writer is None or self._closing:
            raise StoreError("the store is not open")
        self._batch.add(tx, lane=lane, lane_of=self._lane_of)
        self._unsaved_jobs.update(tx.jobs)
        self._unsaved_documents.update(tx.documents)
        self._dirty.set()
        if wait:
            await tx.durable

    def _job(self, job_id: str) -> Job | None:
        if (job := self._unsaved_jobs.get(job_id)) is not None:
            return job
        if (job := self._jobs.get(job_id)) is not None:
            self._jobs.move_to_end(job_id)
            return job
        row = self._read(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?",  # noqa: S608 - constant columns
            (job_id,),
        )
        return job_from_row(row[0]) if row else None

    def read_counts(
        self, queue_id: str, *, pending: Mapping[str, Job] | None = None
    ) -> dict[JobStatus, int]:
        """The queue's jobs by status, counting what is written and not yet committed (and
        `pending`, a transaction's own writes) as it will be."""
        rows = self._read(
            "SELECT status, COUNT(*) FROM jobs WHERE queue_id = ? GROUP BY status", (queue_id,)
        )
        counts = Counter({JobStatus(status): count for status, count in rows})
        unsaved = {**self._unsaved_jobs, **(pending or {})}
        changed = {job_id: job for job_id, job in unsaved.items() if job.queue_id == queue_id}
        if changed:
            marks = ", ".join("?" * len(changed))
            for (status,) in self._read(
                f"SELECT status FROM jobs WHERE job_id IN ({marks})",  # noqa: S608
                tuple(changed),
            ):
                counts[JobStatus(status)] -= 1
            for job in changed.values():
                counts[job.status] += 1
        return {status: count for status, count in counts.items() if count > 0}

    def read_page(self, query: JobQuery, *, pending: Mapping[str, Job]) -> list[Job]:
        """One page of the queue's jobs from the index (queue_id, created_at, job_id), with
        what is written and not yet committed (and `pending`) as it will be."""
        unsaved = {
            job_id: job
            for job_id, job in {**self._unsaved_jobs, **pending}.items()
            if job.queue_id == query.queue_id
        }
        where, params = ["queue_id = ?"], [query.queue_id]
        if query.status is not None:
            where.append("status = ?")
            params.append(query.status.value)
        if query.user_id is not None:
            where.append("user_id = ?")
            params.append(query.user_id)
        if query.since is not None:
            where.append("created_at >= ?")
            params.append(_iso(query.since))
        if query.after is not None:
            where.append("(created_at, job_id) < (?, ?)")
            params.extend((_iso(query.after.created_at), query.after.job_id))
        # Enough rows that, once those the overlay replaces are set aside, a page remains.
        rows = self._read(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} "  # noqa: S608
            "ORDER BY created_at DESC, job_id DESC LIMIT ?",
            (*params, query.limit + len(unsaved)),
        )
        stored = (job for job in map(job_from_row, rows) if job.job_id not in unsaved)
        return page_of([*stored, *unsaved.values()], query)

    async def read_job(self, job_id: str) -> Job | None:
        return self._job(job_id)

    async def document(self, job_id: str) -> bytes | None:
        if (data := self._unsaved_documents.get(job_id)) is not None:
            return data
        rows = self._read("SELECT data FROM documents WHERE job_id = ?", (job_id,))
        return bytes(rows[0][0]) if rows else None

    async def unsent(
        self, limit: int, *, after: int = 0, lanes: OutboxLanes | None = None
    ) -> Sequence[OutboxRecord]:
        # One writer: positions are assigned in commit order, so `after` is safe here.
        if lanes is None:
            if (records := self._unsent_in_memory(limit, after)) is not None:
                return records
            rows = self._read(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox "  # noqa: S608
                "WHERE position > ? AND position <= ? ORDER BY position LIMIT ?",
                (after, self._committed_position, limit),
            )
        else:
            # Not past `after`: a row held back for another lane's is older than those taken.
            sql, held = _unsent_of_lanes(lanes)
            rows = self._read(sql, (*held, *held, self._committed_position, limit))
        return [record_from_row(row) for row in rows]

    def _unsent_in_memory(self, limit: int, after: int) -> list[OutboxRecord] | None:
        """What the SELECT of `unsent` returns, if memory has every row it would: None if
        some may be only in the database (before `_records_after`)."""
        if after < self._records_after:
            return None
        # The reader (the relay) reads on from `after`: the rows up to it are forgotten, and
        # a read from before it (a retry, after a failed publish) goes to the database.
        self._cover_from(min(after, self._committed_position))
        return list(islice(self._records.values(), limit if limit >= 0 else None))

    def _cover_from(self, position: int) -> None:
        """Keep the outbox rows past `position` only: reads from before it go to the database."""
        self._records_after = max(self._records_after, position)
        records = self._records
        while records and next(iter(records)) <= self._records_after:
            records.popitem(last=False)

    async def mark_sent(self, positions: Iterable[int]) -> None:
        # Not waited for: if this commit fails, the messages are published again, with the
        # same message ids, which consumers already deduplicate.
        async with self._batched(wait=False) as tx:
            tx.sent.extend(positions)

    async def park(self, letter: DeadLetter, *, position: int | None = None) -> None:
        async with self.transaction() as tx:
            tx.letters.append(letter)
            if position is not None:
                tx.sent.append(position)

    async def dead_letters(self, limit: int) -> Sequence[DeadLetter]:
        rows = self._read(
            f"SELECT id, {DEAD_LETTER_COLUMNS} FROM dead_letters ORDER BY id LIMIT ?",  # noqa: S608
            (limit,),
        )
        return [dead_letter_from_row(row) for row in rows]

    async def drop_dead_letters(self, ids: Iterable[int]) -> None:
        async with self.transaction() as tx:
            tx.dropped_letters.extend(ids)

    async def purge_jobs(self, before: datetime, limit: int) -> int:
        rows = self._read(
            "SELECT job_id FROM jobs WHERE status IN ('finished', 'canceled', 'failed') "
            "AND updated_at < ? ORDER BY updated_at LIMIT ?",
            (_iso(before), limit),
        )
        if not rows:
            return 0
        # Through the committer like every write (one writer); waited for, so that the next
        # batch is not chosen from rows this one is still deleting.
        async with self.transaction() as tx:
            tx.purged.extend(job_id for (job_id,) in rows)
        return len(rows)

    async def waiting_jobs(self) -> Sequence[Job]:
        rows = self._read(
            f"SELECT {JOB_COLUMNS} FROM jobs "  # noqa: S608
            "WHERE status IN ('created', 'started', 'held') ORDER BY created_at",
            (),
        )
        found = {job.job_id: job for job in map(job_from_row, rows)}
        for job_id, job in self._unsaved_jobs.items():
            found.pop(job_id, None)
            if not job.is_final:
                found[job_id] = job
        return sorted(found.values(), key=lambda job: job.created_at)

    def _read(self, sql: str, params: Row) -> list[Row]:
        if self._reader is None:
            raise StoreError("the store is not open")
        try:
            return self._reader.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {exc}") from exc

    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            # A short pause before committing lets the work of this moment join the commit,
            # so one fsync serves many changes.
            await asyncio.sleep(self._commit_delay)
            self._dirty.clear()
            batch, self._batch = self._batch, _Batch()
            if batch.waiters:
                await self._commit(batch)
            if self._closing and not self._batch.waiters:
                return

    async def _commit(self, batch: _Batch) -> None:
        try:
            last_position = await asyncio.to_thread(self._write, batch)
        except Exception as exc:  # any failure fails the batch, never the committer
            self.healthy = False
            # The batch being formed was built on what just failed (through the overlay):
            # it fails with it, and reads go to the database again.
            later, self._batch = self._batch, _Batch()
            self._unsaved_jobs.clear()
            self._unsaved_documents.clear()
            self._distrust_memory()
            log.exception(
                "store_commit_failed", waiting=len(batch.waiters), failed_with_it=len(later.waiters)
            )
            _resolve(batch.waiters + later.waiters, StoreError(f"store commit failed: {exc}"))
            return
        self.commits += 1
        self.healthy = True
        self._committed_position = max(self._committed_position, last_position)
        self._depth += len(batch.outbox_rows) - len(batch.sent)
        self._remember(batch, last_position)
        self._forget(batch)
        # The relay is told first: its wake-up is then the first thing the next loop
        # iteration runs, before the work the waiters' callbacks start (the printers').
        try:
            for listener in self._listeners:
                try:
                    listener()
                except Exception:
                    log.exception("commit_listener_failed")
        finally:  # the batch is committed, whatever a listener does
            _resolve(batch.waiters, None)

    def _distrust_memory(self) -> None:
        """After a failed commit: it may have committed all the same (an I/O error at its
        COMMIT), so memory no longer knows what the database holds. It learns again from
        the next commits (see `_remember_records` for the rows such a commit may have added)."""
        self._jobs.clear()
        self._cover_from(self._assigned_position)

    def _remember(self, batch: _Batch, last_position: int) -> None:
        """Keep what the committed `batch` wrote, as `_write` applied it (its writes, then
        its deletions), as the database now holds it."""
        jobs = self._jobs
        for job in batch.jobs:  # in order: the last write of a job is the one stored
            jobs[job.job_id] = job_as_stored(job)
            jobs.move_to_end(job.job_id)
        for (job_id,) in batch.purged:
            jobs.pop(job_id, None)
        while len(jobs) > self._jobs_bound:
            jobs.popitem(last=False)
        self._remember_records(batch, last_position)

    def _remember_records(self, batch: _Batch, last_position: int) -> None:
        records = self._records
        if batch.messages:
            # One writer, and AUTOINCREMENT: the batch's rows took the positions that follow
            # the last one used, in order, up to `last_position`.
            first = last_position - len(batch.messages) + 1
            if first - 1 != self._assigned_position:
                # Positions this store did not see committed (a commit reported failed that
                # did commit): their rows, if any, are only in the database.
                self._cover_from(first - 1)
            self._assigned_position = last_position
            for position, (message, enqueued_at, lane) in enumerate(batch.messages, first):
                records[position] = OutboxRecord(
                    position, outgoing_as_stored(message), enqueued_at, lane
                )
        for (position,) in batch.sent:
            records.pop(position, None)
        if (excess := len(records) - self._records_bound) > 0:
            self._cover_from(next(islice(records, excess - 1, None)))  # the oldest `excess`

    def _forget(self, batch: _Batch) -> None:
        """Reads go to the database again for what `batch` wrote (unless written since)."""
        for job in batch.jobs:
            if self._unsaved_jobs.get(job.job_id) is job:
                del self._unsaved_jobs[job.job_id]
        for job_id, data in batch.documents:
            if self._unsaved_documents.get(job_id) is data:
                del self._unsaved_documents[job_id]

    def _write(self, batch: _Batch) -> int:
        """Write and commit `batch` (in the committer's thread); returns the last outbox
        position it used."""
        conn = self._writer
        if conn is None:
            raise sqlite3.OperationalError("the store is closed")
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Documents first: a job made and finished within one batch drops its own.
            conn.executemany("INSERT OR REPLACE INTO documents VALUES (?, ?)", batch.documents)
            _insert(conn, _JOB_UPSERT, _last_of_each_job(batch.job_rows))
            _delete(conn, "documents", "job_id", batch.dropped_documents)
            _insert(conn, _HISTORY_INSERT, batch.history_rows)
            last_position = 0
            if batch.outbox_rows:
                _insert(conn, _OUTBOX_INSERT, batch.outbox_rows)
                # One writer and AUTOINCREMENT: the batch's rows are the last positions (a
                # statement of several rows inserts them in order).
                last_position = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            _delete(conn, "outbox", "position", batch.sent)
            conn.executemany(
                f"INSERT INTO dead_letters ({DEAD_LETTER_COLUMNS}) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                batch.letters,
            )
            conn.executemany("DELETE FROM dead_letters WHERE id = ?", batch.dropped_letters)
            for table in ("job_history", "documents", "jobs"):
                conn.executemany(
                    f"DELETE FROM {table} WHERE job_id = ?",  # noqa: S608 - constant names
                    batch.purged,
                )
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (SQLITE_FULL does).
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return int(last_position)


# Statements of several rows: the committer's thread gives up the GIL for every statement it
# steps, and takes it back after, so a batch written a row at a time hands the GIL to and
# from the event loop's thread hundreds of times per commit (each a context switch on both
# sides). Runs of these sizes, the largest first, keep that to a few statements per table,
# of few distinct texts (they stay in the connection's statement cache); 256 rows of 13
# columns stay far below SQLite's 32,766 parameters.
_RUNS: Final = (256, 64, 16, 4, 1)
_JOB_NAMES: Final = tuple(JOB_COLUMNS.split(", "))
# The columns of a job that only its first upsert writes.
_JOB_KEPT: Final = frozenset(i for i, name in enumerate(_JOB_NAMES) if name not in JOB_UPDATED)
_JOB_UPSERT: Final = (
    f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES {{}} "  # noqa: S608 - constant columns
    f"ON CONFLICT (job_id) DO UPDATE SET {JOB_UPDATES}"
)
_HISTORY_INSERT: Final = "INSERT OR IGNORE INTO job_history VALUES {}"
_OUTBOX_INSERT: Final = f"INSERT INTO outbox ({OUTBOX_INSERT_COLUMNS}) VALUES {{}}"  # noqa: S608


def _runs(rows: Sequence[Row]) -> Iterator[Sequence[Row]]:
    start = 0
    for size in _RUNS:
        while len(rows) - start >= size:
            yield rows[start : start + size]
            start += size


@functools.cache
def _statement(template: str, item: str, count: int) -> str:
    """`template` with `count` times `item` (a row's placeholders) where it has `{}`."""
    return template.format(", ".join([item] * count))


def _insert(conn: sqlite3.Connection, template: str, rows: Sequence[Row]) -> None:
    """Insert `rows` in order, a run of them per statement."""
    if not rows:
        return
    item = "(" + ", ".join("?" * len(rows[0])) + ")"
    for run in _runs(rows):
        conn.execute(_statement(template, item, len(run)), [value for row in run for value in row])


def _delete(conn: sqlite3.Connection, table: str, key: str, keys: Sequence[tuple[Any]]) -> None:
    """Delete the rows of `table` whose `key` is one of `keys`, a run of them per statement."""
    template = f"DELETE FROM {table} WHERE {key} IN ({{}})"  # noqa: S608 - constant names
    for run in _runs(keys):
        conn.execute(_statement(template, "?", len(run)), [value for (value,) in run])


def _last_of_each_job(rows: Sequence[Row]) -> Sequence[Row]:
    """One upsert per job, storing what its upserts one after the other would: its last row,
    with the columns only the first writes taken from its first."""
    first: dict[str, Row] = {}
    last: dict[str, Row] = {}
    for row in rows:
        first.setdefault(row[0], row)
        last[row[0]] = row
    if len(last) == len(rows):
        return rows
    return [
        tuple(first[job_id][i] if i in _JOB_KEPT else value for i, value in enumerate(row))
        for job_id, row in last.items()
    ]


def _unsent_of_lanes(lanes: OutboxLanes) -> tuple[str, tuple[str, ...]]:
    """The query of the rows `lanes` admits (PostgreSQL's, in SQLite), and its lanes: one
    replica holds every lane, so this serves the store's tests, and keeps the contract."""
    held = tuple(sorted(lanes.held))
    among = ", ".join("?" * len(held))
    if lanes.unlaned:
        inside = f"(o.lane IS NULL OR o.lane IN ({among}))"
        outside = f"e.lane IS NOT NULL AND e.lane NOT IN ({among})"
    else:
        inside = f"o.lane IN ({among})"
        outside = f"e.lane IS NULL OR e.lane NOT IN ({among})"
    sql = (
        f"SELECT {OUTBOX_COLUMNS} FROM outbox o WHERE {inside} AND NOT EXISTS ("  # noqa: S608
        "SELECT 1 FROM outbox e WHERE e.order_key = o.order_key AND e.position < o.position "
        f"AND ({outside})) AND o.position <= ? ORDER BY o.position LIMIT ?"
    )
    return sql, held


def _resolve(waiters: list[asyncio.Future[None]], error: Exception | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


def _iso(moment: datetime) -> str:
    return moment.isoformat()
