"""The durable embedded store: SQLite in WAL mode, with group commit.

A transaction buffers its writes; on exit they are applied to the open database transaction
inside a savepoint, and the transaction then waits for the next commit. One committer task
commits whatever has been applied since the last commit (after a pause of `commit_delay`
that lets concurrent work join it), in a worker thread (an fsync must not stall the event
loop), and wakes every waiter at once: under load, many commands share one fsync, and each
still returns only once its own effect is durable.

The relay only sees outbox rows that are committed (`position <= committed`), so no message
is ever published for a change that could still be rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Final

import structlog

from service.core.events import Outgoing
from service.core.jobs import Job
from service.models import JobStatus
from service.ports import OutboxRecord, StoreError
from service.store.rows import (
    JOB_COLUMNS,
    JOB_UPDATES,
    OUTBOX_COLUMNS,
    OUTBOX_INSERT_COLUMNS,
    Row,
    history_row,
    job_from_row,
    job_row,
    outbox_row,
    outgoing_from_row,
)

__all__ = ["SqliteStore"]

log = structlog.get_logger(__name__)

# Versioned schema: each entry is applied once, in order, and recorded in schema_migrations.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        queue_id TEXT NOT NULL,
        status TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        priority TEXT NOT NULL,
        user_id TEXT,
        document_name TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX jobs_unfinished ON jobs (created_at) WHERE status IN ('created', 'started');
    CREATE TABLE job_history (
        job_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        status TEXT NOT NULL,
        at TEXT NOT NULL,
        reason TEXT,
        PRIMARY KEY (job_id, sequence)
    );
    CREATE TABLE outbox (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        order_key TEXT NOT NULL,
        body BLOB NOT NULL,
        correlation_id TEXT NOT NULL,
        label TEXT NOT NULL,
        received_at REAL,
        enqueued_at REAL NOT NULL
    );
    """,
    """
    ALTER TABLE jobs ADD COLUMN details TEXT;
    CREATE INDEX jobs_by_queue ON jobs (queue_id, status);
    CREATE TABLE documents (
        job_id TEXT PRIMARY KEY,
        data BLOB NOT NULL
    );
    """,
)


class _Transaction:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.jobs: dict[str, Job] = {}
        self.documents: dict[str, bytes] = {}
        self.messages: list[Outgoing] = []
        self.sent: list[int] = []
        self.durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id) or await self._store.get(job_id)

    def put(self, job: Job) -> None:
        self.jobs[job.job_id] = job

    def put_document(self, job_id: str, data: bytes) -> None:
        self.documents[job_id] = data

    async def counts(self, queue_id: str) -> dict[JobStatus, int]:
        return await self._store.counts(queue_id)

    def emit(self, message: Outgoing) -> None:
        self.messages.append(message)


class SqliteStore:
    def __init__(
        self, path: Path, *, synchronous: str = "FULL", commit_delay: float = 0.002
    ) -> None:
        self._path = path
        self._synchronous = synchronous
        self._commit_delay = commit_delay
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._in_transaction = False
        self._waiters: list[asyncio.Future[None]] = []
        self._applied_position = 0
        self._committed_position = 0
        self._depth_applied = 0
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
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        self._conn = conn
        self._migrate(conn)
        self._committed_position = self._applied_position = conn.execute(
            "SELECT COALESCE(MAX(position), 0) FROM outbox"
        ).fetchone()[0]
        self._depth = self._depth_applied = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[
            0
        ]
        self._committer = asyncio.create_task(self._commit_loop(), name="store-committer")
        log.info("store_opened", path=str(self._path), outbox_depth=self._depth)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, script in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, script.split(";")):
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
            # connection is touched again. The loop ends after its current round.
            self._closing = True
            self._dirty.set()
            await self._committer
            self._committer = None
        if self._conn is not None:
            async with self._lock:
                # What was applied but not yet committed is committed now, not lost.
                waiters, self._waiters = self._waiters, []
                if self._in_transaction:
                    self._conn.execute("COMMIT")
                    self._in_transaction = False
                    self._committed_position = self._applied_position
                    self._depth = self._depth_applied
                _resolve(waiters, None)
                self._conn.close()
                self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is not open")
        return self._conn

    @property
    def outbox_depth(self) -> int:
        return self._depth

    @asynccontextmanager
    async def transaction(
        self, *, wait: bool = True, lane: str | None = None
    ) -> AsyncIterator[_Transaction]:
        del lane  # one replica: it holds every lane
        tx = _Transaction(self)
        yield tx
        if not (tx.jobs or tx.messages or tx.sent or tx.documents):
            tx.durable.set_result(None)
            return
        async with self._lock:
            self._apply(tx)
            self._waiters.append(tx.durable)
            self._dirty.set()
        if wait:
            await tx.durable

    async def get(self, job_id: str) -> Job | None:
        async with self._lock:
            row = self._read(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?",  # noqa: S608 - constant columns
                (job_id,),
            )
        return job_from_row(row[0]) if row else None

    async def counts(self, queue_id: str) -> dict[JobStatus, int]:
        async with self._lock:
            rows = self._read(
                "SELECT status, COUNT(*) FROM jobs WHERE queue_id = ? GROUP BY status",
                (queue_id,),
            )
        return {JobStatus(status): count for status, count in rows}

    async def document(self, job_id: str) -> bytes | None:
        async with self._lock:
            rows = self._read("SELECT data FROM documents WHERE job_id = ?", (job_id,))
        return bytes(rows[0][0]) if rows else None

    async def unsent(self, limit: int, *, after: int = 0) -> Sequence[OutboxRecord]:
        # One writer: positions are assigned in commit order, so `after` is safe here.
        async with self._lock:
            rows = self._read(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox "  # noqa: S608
                "WHERE position > ? AND position <= ? ORDER BY position LIMIT ?",
                (after, self._committed_position, limit),
            )
        return [OutboxRecord(row[0], outgoing_from_row(row), row[-1]) for row in rows]

    async def mark_sent(self, positions: Iterable[int]) -> None:
        # Not waited for: if this commit fails, the messages are published again, with the
        # same message ids, which consumers already deduplicate.
        async with self.transaction(wait=False) as tx:
            tx.sent.extend(positions)

    async def waiting_jobs(self) -> Sequence[Job]:
        async with self._lock:
            rows = self._read(
                f"SELECT {JOB_COLUMNS} FROM jobs "  # noqa: S608
                "WHERE status IN ('created', 'started') ORDER BY created_at",
                (),
            )
        return [job_from_row(row) for row in rows]

    def _read(self, sql: str, params: Row) -> list[Row]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {exc}") from exc

    def _apply(self, tx: _Transaction) -> None:
        conn = self.conn
        try:
            if not self._in_transaction:
                conn.execute("BEGIN IMMEDIATE")
                self._in_transaction = True
            conn.execute("SAVEPOINT tx")
        except sqlite3.Error as exc:
            self.healthy = False
            raise StoreError(f"store cannot begin a write: {exc}") from exc
        try:
            now = time.time()
            for job in tx.jobs.values():
                conn.execute(
                    f"INSERT INTO jobs ({JOB_COLUMNS}) "  # noqa: S608
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    f"ON CONFLICT (job_id) DO UPDATE SET {JOB_UPDATES}",
                    job_row(job, _iso),
                )
                if job.is_final and job.document is not None and job.document.url is None:
                    # A document is kept only as long as its job may still print it.
                    conn.execute("DELETE FROM documents WHERE job_id = ?", (job.job_id,))
                conn.execute(
                    "INSERT OR IGNORE INTO job_history VALUES (?, ?, ?, ?, ?)",
                    history_row(job, _iso),
                )
            if tx.documents:
                conn.executemany(
                    "INSERT OR REPLACE INTO documents VALUES (?, ?)", list(tx.documents.items())
                )
            position = self._applied_position
            for message in tx.messages:
                cursor = conn.execute(
                    f"INSERT INTO outbox ({OUTBOX_INSERT_COLUMNS}) "  # noqa: S608
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    outbox_row(message, now),
                )
                position = max(position, cursor.lastrowid or 0)
            if tx.sent:
                conn.executemany("DELETE FROM outbox WHERE position = ?", [(p,) for p in tx.sent])
            conn.execute("RELEASE tx")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK TO tx")
            conn.execute("RELEASE tx")
            self.healthy = False
            raise StoreError(f"store write failed: {exc}") from exc
        self._applied_position = position
        self._depth_applied += len(tx.messages) - len(tx.sent)

    async def _commit_loop(self) -> None:
        while not self._closing:
            await self._dirty.wait()
            # SQLite has one writer, and a commit holds it through the fsync: nothing can be
            # applied meanwhile. A short pause before committing lets the work of this
            # moment join the commit, so one fsync serves many changes.
            await asyncio.sleep(self._commit_delay)
            async with self._lock:
                self._dirty.clear()
                waiters, self._waiters = self._waiters, []
                if not self._in_transaction:
                    _resolve(waiters, None)
                    continue
                try:
                    await asyncio.to_thread(self.conn.execute, "COMMIT")
                except sqlite3.Error as exc:
                    error = StoreError(f"store commit failed: {exc}")
                    self._rollback()
                    self.healthy = False
                    log.exception("store_commit_failed", waiting=len(waiters))
                    _resolve(waiters, error)
                    continue
                finally:
                    self._in_transaction = False
                self.commits += 1
                self.healthy = True
                self._committed_position = self._applied_position
                self._depth = self._depth_applied
                _resolve(waiters, None)
                for listener in self._listeners:
                    listener()

    def _rollback(self) -> None:
        # SQLite may have rolled back already (SQLITE_FULL does).
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        self._applied_position = self._committed_position
        self._depth_applied = self._depth


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
