"""The shared store for several replicas: PostgreSQL through psycopg 3 with a connection pool.

Each transaction is a database transaction on one pooled connection: the job row is read
`FOR UPDATE`, so two transactions on the same job (a cancel and a printer's progress, from
any replica) take turns, and per-job outbox positions increase in commit order. PostgreSQL
commits concurrent transactions together by itself, so every transaction's exit waits for
its commit; a printer's progress, which the service can redo, commits with
`synchronous_commit = off` (no WAL flush to wait for). `read_job` and the other reads use
plain SELECTs on a pooled connection: they lock nothing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Final

import psycopg
import structlog
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from service.adapters.store.leases import notify_payloads
from service.adapters.store.pending import LaneOf, PendingWrites, documents_to_drop
from service.adapters.store.rows import (
    DEAD_LETTER_COLUMNS,
    JOB_COLUMNS,
    JOB_UPDATES,
    OUTBOX_COLUMNS,
    OUTBOX_INSERT_COLUMNS,
    checked,
    dead_letter_from_row,
    dead_letter_row,
    history_row,
    job_from_row,
    job_row,
    outbox_row,
    record_from_row,
)
from service.adapters.store.schema import POSTGRES, migrations
from service.core.jobs import Job
from service.core.listing import JobQuery
from service.models import JobStatus
from service.ports import (
    DeadLetter,
    LaneLost,
    OutboxLanes,
    OutboxRecord,
    StoreError,
    StoreRefused,
)

__all__ = ["PostgresStore"]

log = structlog.get_logger(__name__)

# Any constant: replicas starting together take turns migrating.
_MIGRATION_LOCK: Final = 0x5052_494E_54

# Constant column names; the values are parameters.
_UPSERT_JOB: Final = (
    f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({', '.join(['%s'] * 12)}) "  # noqa: S608
    f"ON CONFLICT (job_id) DO UPDATE SET {JOB_UPDATES}"
)


_PURGE: Final = (
    "WITH doomed AS (SELECT job_id FROM jobs "
    "WHERE status IN ('finished', 'canceled', 'failed') AND updated_at < %s "
    "ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED), "
    "history AS (DELETE FROM job_history WHERE job_id IN (SELECT job_id FROM doomed)), "
    "documents AS (DELETE FROM documents WHERE job_id IN (SELECT job_id FROM doomed)) "
    "DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM doomed) RETURNING job_id"
)

# A relay's rows: those of its lanes (`inside`), unless an earlier row of the same order key
# is another replica's to publish (`outside`: a job moved between lanes), which goes first.
_UNSENT: Final = (
    f"SELECT {OUTBOX_COLUMNS} FROM outbox o WHERE {{inside}} AND NOT EXISTS ("  # noqa: S608
    "SELECT 1 FROM outbox e WHERE e.order_key = o.order_key AND e.position < o.position "
    "AND ({outside})) ORDER BY o.position LIMIT %(limit)s"
)
_UNSENT_OF_LANES: Final = {
    # The rows of no lane too (this replica holds the relay's lane).
    True: _UNSENT.format(
        inside="(o.lane IS NULL OR o.lane = ANY(%(lanes)s::text[]))",
        outside="e.lane IS NOT NULL AND e.lane <> ALL(%(lanes)s::text[])",
    ),
    False: _UNSENT.format(
        inside="o.lane = ANY(%(lanes)s::text[])",
        outside="e.lane IS NULL OR e.lane <> ALL(%(lanes)s::text[])",
    ),
}

_FENCE: Final = (
    "SELECT 1 FROM lanes l JOIN replicas r ON r.instance = l.owner "
    "WHERE l.lane = %(lane)s AND l.owner = %(me)s AND r.lease_until > now()"
)


# Errors in what a transaction sent (its data, a statement), as opposed to the server or
# the connection failing: the same transaction would fail the same way again.
_REFUSALS: Final = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.ProgrammingError,
    psycopg.NotSupportedError,
)


def _same(moment: datetime) -> datetime:
    return moment


class _Transaction(PendingWrites):
    def __init__(self, conn: psycopg.AsyncConnection[TupleRow], instance: str | None) -> None:
        super().__init__()
        self._conn = conn
        self._instance = instance

    async def get(self, job_id: str) -> Job | None:
        if job_id in self.jobs:
            return self.jobs[job_id]
        # Locked until the commit: two transactions on one job, from any replica, take turns.
        cursor = await self._conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = %s FOR UPDATE",  # noqa: S608
            (job_id,),
        )
        row = await cursor.fetchone()
        if row is None:
            return None
        job = job_from_row(row)
        self.queue_of[job_id] = job.queue_id  # the lane of an event of it (a status reply)
        return job

    async def counts(self, queue_id: str) -> dict[JobStatus, int]:
        cursor = await self._conn.execute(
            "SELECT status, COUNT(*) FROM jobs WHERE queue_id = %s GROUP BY status", (queue_id,)
        )
        return {JobStatus(status): int(count) for status, count in await cursor.fetchall()}

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        # A plain SELECT (no row lock): the page is read, never written back.
        where: list[str] = ["queue_id = %s"]
        params: list[object] = [query.queue_id]
        if query.status is not None:
            where.append("status = %s")
            params.append(query.status.value)
        if query.user_id is not None:
            where.append("user_id = %s")
            params.append(query.user_id)
        if query.since is not None:
            where.append("created_at >= %s")
            params.append(query.since)
        if query.after is not None:
            where.append("(created_at, job_id) < (%s, %s)")
            params.extend((query.after.created_at, query.after.job_id))
        cursor = await self._conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} "  # noqa: S608
            "ORDER BY created_at DESC, job_id DESC LIMIT %s",
            (*params, query.limit),
        )
        return [job_from_row(row) for row in await cursor.fetchall()]

    async def purge(self, before: datetime, limit: int) -> int:
        # SKIP LOCKED: replicas purging at once take different rows, and a job a command
        # holds is left for the next round.
        cursor = await self._conn.execute(_PURGE, (before, limit))
        return len(await cursor.fetchall())

    async def apply(self, *, lane: str | None, lane_of: LaneOf) -> None:
        conn = self._conn
        now = time.time()
        # Checked before anything is sent: a refusal is this transaction's, at once.
        job_rows = checked([job_row(job, _same) for job in self.jobs.values()], nul_in_text=False)
        history_rows = checked(
            [history_row(job, _same) for job in self.jobs.values()], nul_in_text=False
        )
        lanes = self.message_lanes(fenced=lane, lane_of=lane_of)
        outbox_rows = checked(
            [outbox_row(m, now, lane) for m, lane in zip(self.messages, lanes, strict=True)],
            nul_in_text=False,
        )
        letter_rows = checked([dead_letter_row(x) for x in self.letters], nul_in_text=False)
        async with conn.cursor() as cursor:
            if self.documents:
                await cursor.executemany(
                    "INSERT INTO documents VALUES (%s, %s) "
                    "ON CONFLICT (job_id) DO UPDATE SET data = EXCLUDED.data",
                    list(self.documents.items()),
                )
            if done := documents_to_drop(self.jobs.values()):
                await cursor.execute("DELETE FROM documents WHERE job_id = ANY(%s)", (done,))
            if self.jobs:
                await cursor.executemany(_UPSERT_JOB, job_rows)
                await cursor.executemany(
                    "INSERT INTO job_history VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    history_rows,
                )
                if self._instance is not None:
                    # Delivered on commit: the replica printing the job's lane hears of it.
                    await cursor.executemany(
                        "SELECT pg_notify(%s, %s)",
                        notify_payloads(
                            self._instance, ((j.queue_id, j.job_id) for j in self.jobs.values())
                        ),
                    )
            if outbox_rows:
                await cursor.executemany(
                    f"INSERT INTO outbox ({OUTBOX_INSERT_COLUMNS}) "  # noqa: S608
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    outbox_rows,
                )
            if self.sent:
                await cursor.execute(
                    "DELETE FROM outbox WHERE position = ANY(%s)", (list(self.sent),)
                )
            if letter_rows:
                await cursor.executemany(
                    f"INSERT INTO dead_letters ({DEAD_LETTER_COLUMNS}) "  # noqa: S608
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    letter_rows,
                )
            if self.dropped_letters:
                await cursor.execute(
                    "DELETE FROM dead_letters WHERE id = ANY(%s)", (list(self.dropped_letters),)
                )


class PostgresStore:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        open_timeout: float = 30.0,
        notify_as: str | None = None,
        idle_limit: float = 30.0,
        lane_of: LaneOf = lambda queue_id: queue_id,
    ) -> None:
        self._url = url
        # The lane of a job's outbox rows, from its queue: the relays share them by lane.
        self._lane_of = lane_of
        # The replica's instance id, sent with a NOTIFY for every job written.
        self._notify_as = notify_as
        limit_ms = int(idle_limit * 1000)
        # A replica frozen mid-transaction must not hold its locks (its jobs' rows) for long,
        # nor wait long for another's: the server ends the transaction. Set once per
        # connection, not per transaction: no round trip on the hot path.
        self._limits = (
            f"SET idle_in_transaction_session_timeout = {limit_ms}; SET lock_timeout = {limit_ms}"
        ).encode()
        self._open_timeout = open_timeout
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=10.0,
            configure=self._configure,
        )
        self._listeners: list[Callable[[], None]] = []
        self._depth = 0
        self._write_failed = False
        self._read_failed = False

    @property
    def outbox_depth(self) -> int:
        return self._depth

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    async def open(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=self._open_timeout)
            async with self._pool.connection() as conn:
                await self._migrate(conn)
                cursor = await conn.execute("SELECT COUNT(*) FROM outbox")
                row = await cursor.fetchone()
                self._depth = int(row[0]) if row else 0
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"cannot open the PostgreSQL store: {exc}") from exc
        log.info("store_opened", backend="postgresql", outbox_depth=self._depth)

    async def _migrate(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            cursor = await conn.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cursor.fetchall()}
            for version, statements in migrations(POSTGRES):
                if version in done:
                    continue
                for statement in statements:
                    await conn.execute(statement.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version) VALUES (%s)", (version,)
                )
                log.info("store_migrated", version=version)

    async def close(self) -> None:
        await self._pool.close()

    def transaction(self, *, lane: str | None = None) -> AbstractAsyncContextManager[_Transaction]:
        return self._transaction(relaxed=False, lane=lane)

    def apply_commands(self) -> AbstractAsyncContextManager[_Transaction]:
        # Waits for the commit, and a durable one: until PostgreSQL commits, no other
        # connection sees the writes, and a later transaction (the next batch, on another
        # pooled connection or replica) must see a job that a command just created.
        return self._transaction(relaxed=False, lane=None)

    def record_progress(self, lane: str) -> AbstractAsyncContextManager[_Transaction]:
        return self._transaction(relaxed=True, lane=lane)

    @asynccontextmanager
    async def _transaction(self, *, relaxed: bool, lane: str | None) -> AsyncIterator[_Transaction]:
        """One database transaction; the exit returns once it is committed, and `durable` is
        resolved then. With `relaxed`, the commit does not wait for the WAL flush: still
        atomic and ordered, but a crash of PostgreSQL could lose it (for what can be redone).
        With `lane`, fenced: LaneLost unless this replica holds it (if it is one of several:
        `notify_as`)."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                if relaxed:
                    await conn.execute("SET LOCAL synchronous_commit TO off")
                tx = _Transaction(conn, self._notify_as)
                yield tx
                await tx.apply(lane=lane, lane_of=self._lane_of)
                if lane is not None and self._notify_as is not None:
                    await self._fence(conn, lane)
        except (LaneLost, StoreRefused):
            raise
        except _REFUSALS as exc:
            # The server refused this transaction's data or statement: not an outage.
            raise StoreRefused(f"the store refused the transaction: {exc}") from exc
        except PoolTimeout as exc:
            self._write_failed = True
            raise StoreError(f"no store connection: {exc}") from exc
        except psycopg.Error as exc:
            self._write_failed = True
            raise StoreError(f"store transaction failed: {exc}") from exc
        self._write_failed = self._read_failed = False
        tx.durable.set_result(None)
        if tx.messages or tx.sent:
            self._depth += len(tx.messages) - len(tx.sent)
        if tx.writes():
            for listener in self._listeners:
                listener()

    @property
    def healthy(self) -> bool:
        """False after a failed commit until one succeeds, and after a failed read (the
        server is away) until a read or a commit succeeds: a read that works says nothing
        of writes (a full disk), so it does not clear a failed commit."""
        return not (self._write_failed or self._read_failed)

    async def _configure(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        await conn.execute(self._limits)
        await conn.commit()

    async def _fence(self, conn: psycopg.AsyncConnection[TupleRow], lane: str) -> None:
        # The last statement before COMMIT, and without a lock (a replica frozen here must
        # not hold up a takeover): a commit that slips past it is caught by the job's row
        # lock and state (the new holder resumes a job this one started).
        cursor = await conn.execute(_FENCE, {"lane": lane, "me": self._notify_as})
        if await cursor.fetchone() is None:
            raise LaneLost(f"lane {lane!r} is no longer held by {self._notify_as}")

    async def refresh_depth(self) -> None:
        """Count the outbox again: other replicas add to it, and one of them empties it."""
        async with self._read() as conn:
            cursor = await conn.execute("SELECT COUNT(*) FROM outbox")
            row = await cursor.fetchone()
        self._depth = int(row[0]) if row else 0

    async def document(self, job_id: str) -> bytes | None:
        async with self._read() as conn:
            cursor = await conn.execute("SELECT data FROM documents WHERE job_id = %s", (job_id,))
            row = await cursor.fetchone()
        return bytes(row[0]) if row else None

    async def unsent(
        self, limit: int, *, after: int = 0, lanes: OutboxLanes | None = None
    ) -> Sequence[OutboxRecord]:
        # Concurrent transactions commit out of position order: a row below `after` may
        # become visible later, so the hint is not used.
        del after
        async with self._read() as conn:
            if lanes is None:
                cursor = await conn.execute(
                    f"SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY position LIMIT %s",  # noqa: S608
                    (limit,),
                )
            else:
                cursor = await conn.execute(
                    _UNSENT_OF_LANES[lanes.unlaned].encode(),
                    {"lanes": sorted(lanes.held), "limit": limit},
                )
            rows = await cursor.fetchall()
        return [record_from_row(row) for row in rows]

    async def mark_sent(self, positions: Iterable[int]) -> None:
        # If this is lost, the messages go out again with the same ids: consumers dedupe.
        # Not fenced by the rows' lanes: a row is marked only once the broker confirmed it,
        # so it is published whoever holds its lane now, and deleting it spares the new
        # holder a duplicate (it cannot reorder: the new holder publishes a job's rows from
        # its oldest unsent one).
        async with self._transaction(relaxed=True, lane=None) as tx:
            tx.sent.extend(positions)

    async def park(self, letter: DeadLetter, *, position: int | None = None) -> None:
        async with self.transaction() as tx:
            tx.letters.append(letter)
            if position is not None:
                tx.sent.append(position)

    async def dead_letters(self, limit: int) -> Sequence[DeadLetter]:
        async with self._read() as conn:
            cursor = await conn.execute(
                f"SELECT id, {DEAD_LETTER_COLUMNS} FROM dead_letters "  # noqa: S608
                "ORDER BY id LIMIT %s",
                (limit,),
            )
            rows = await cursor.fetchall()
        return [dead_letter_from_row(row) for row in rows]

    async def drop_dead_letters(self, ids: Iterable[int]) -> None:
        async with self.transaction() as tx:
            tx.dropped_letters.extend(ids)

    async def purge_jobs(self, before: datetime, limit: int) -> int:
        # Relaxed: a purge lost with the server is done again by the next round.
        async with self._transaction(relaxed=True, lane=None) as tx:
            return await tx.purge(before, limit)

    async def waiting_jobs(self) -> Sequence[Job]:
        async with self._read() as conn:
            cursor = await conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs "  # noqa: S608
                "WHERE status IN ('created', 'started', 'held') ORDER BY created_at"
            )
            rows = await cursor.fetchall()
        return [job_from_row(row) for row in rows]

    async def read_job(self, job_id: str) -> Job | None:
        async with self._read() as conn:
            cursor = await conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = %s",  # noqa: S608 - constant columns
                (job_id,),
            )
            row = await cursor.fetchone()
        return None if row is None else job_from_row(row)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
        """A pooled connection for reads: plain SELECTs, committed data, no row locks (they
        take none, and the pool commits the read's transaction when it takes the connection
        back)."""
        try:
            async with self._pool.connection() as conn:
                yield conn
        except _REFUSALS as exc:
            # A read the server cannot take (a bug, or a parameter it cannot hold): it says
            # nothing of the server's health.
            raise StoreError(f"store read refused: {exc}") from exc
        except psycopg.Error as exc:  # PoolTimeout too: no connection to be had
            self._read_failed = True
            raise StoreError(f"store read failed: {exc}") from exc
        self._read_failed = False
