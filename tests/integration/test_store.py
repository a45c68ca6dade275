"""The store contract, held by every store: in memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.adapters.store.memory import MemoryStore
from service.adapters.store.postgres import PostgresStore
from service.adapters.store.sqlite import SqliteStore
from service.core import jobs
from service.core.events import job_event
from service.models import CreatePrintJob, JobStatus, UpdatePrintJob
from service.ports import JobStore, StoreError

T0 = datetime(2026, 1, 1, tzinfo=UTC)

StoreFactory = Callable[[], JobStore]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes stores on the same data (a second one is the first after a restart)."""
    if request.param == "memory":
        only = MemoryStore()
        return lambda: only
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "jobs.db", commit_delay=0.001)
    url = request.getfixturevalue("postgres_url")
    return lambda: PostgresStore(url, pool_size=4)


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[JobStore]:
    opened = make_store()
    await opened.open()
    yield opened
    await opened.close()


def a_job(job_id: str | None = None, minutes: int = 0) -> jobs.Job:
    created = jobs.create(
        None,
        CreatePrintJob(jobId=job_id or f"j-{uuid.uuid4().hex[:8]}", userId="u"),
        queue_id="q1",
        correlation_id="c",
        now=T0 + timedelta(minutes=minutes),
    )
    assert isinstance(created, jobs.Job)
    return created


def event_of(job: jobs.Job):
    return job_event(job, event_id=uuid.uuid4(), correlation_id="c", received_at=None)


async def test_a_transaction_commits_jobs_and_messages_together(store: JobStore):
    job = a_job()
    commits: list[int] = []
    store.on_commit(lambda: commits.append(1))
    async with store.transaction() as tx:
        assert await tx.get(job.job_id) is None
        tx.put(job)
        tx.emit(event_of(job))
    assert tx.durable.done()
    assert commits
    async with store.transaction() as tx:
        assert await tx.get(job.job_id) == job
    unsent = await store.unsent(10)
    assert [r.message.order_key for r in unsent] == [job.job_id]
    assert store.outbox_depth == 1


async def test_an_exception_discards_the_whole_transaction(store: JobStore):
    job = a_job()

    async def failing_transaction() -> None:
        async with store.transaction() as tx:
            tx.put(job)
            tx.emit(event_of(job))
            raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await failing_transaction()
    async with store.transaction() as tx:
        assert await tx.get(job.job_id) is None
    assert await store.unsent(10) == []


async def test_outbox_keeps_order_and_forgets_what_is_sent(store: JobStore):
    job = a_job()
    started = jobs.start(job, now=T0)
    assert isinstance(started, jobs.Job)
    async with store.transaction() as tx:
        tx.put(job)
        tx.emit(event_of(job))
    async with store.transaction() as tx:
        tx.put(started)
        tx.emit(event_of(started))
    unsent = await store.unsent(10)
    assert [r.message.label for r in unsent] == ["created", "started"]
    assert unsent[0].position < unsent[1].position
    await store.mark_sent([unsent[0].position])
    await asyncio.sleep(0.05)  # mark_sent need not wait for its commit
    assert [r.message.label for r in await store.unsent(10)] == ["started"]
    assert store.outbox_depth == 1


async def test_a_later_transaction_sees_an_earlier_one_that_did_not_wait(store: JobStore):
    job = a_job()
    async with store.transaction(wait=False) as tx:
        tx.put(job)
    async with store.transaction() as tx2:
        assert await tx2.get(job.job_id) == job
    await tx.durable


async def test_waiting_jobs_are_the_unfinished_ones_oldest_first(store: JobStore):
    newer, older, done = a_job(minutes=5), a_job(minutes=1), a_job(minutes=0)
    started = jobs.start(older, now=T0)
    canceled = jobs.cancel(done, force=False, now=T0)
    assert isinstance(started, jobs.Job)
    assert isinstance(canceled, jobs.Job)
    async with store.transaction() as tx:
        for job in (newer, started, canceled):
            tx.put(job)
    waiting = await store.waiting_jobs()
    assert [(j.job_id, j.status) for j in waiting] == [
        (older.job_id, JobStatus.started),
        (newer.job_id, JobStatus.created),
    ]


async def test_everything_survives_a_restart(make_store: StoreFactory):
    first = make_store()
    await first.open()
    job = a_job()
    event = event_of(job)
    async with first.transaction() as tx:
        tx.put(job)
        tx.emit(event)
    await first.close()

    second = make_store()
    await second.open()  # migrations run again: a no-op
    try:
        async with second.transaction() as tx:
            assert await tx.get(job.job_id) == job
        assert [r.message for r in await second.unsent(10)] == [event]
        assert second.outbox_depth == 1
    finally:
        await second.close()


def a_print_job(job_id: str, queue_id: str = "q1") -> jobs.Job:
    created = jobs.create(
        None,
        CreatePrintJob.model_validate(
            {
                "jobId": job_id,
                "title": "Report",
                "copies": 2,
                "document": {"contentType": "application/pdf", "data": "JVBERi0xLjQK"},
                "options": {"sides": "two-sided-long-edge", "pageRanges": [{"start": 1, "end": 3}]},
                "expireAfter": "2030-01-01T00:00:00Z",
            }
        ),
        queue_id=queue_id,
        correlation_id="c",
        now=T0,
    )
    assert isinstance(created, jobs.Job)
    return created


async def test_a_job_keeps_its_print_request_and_document_until_it_is_final(
    make_store: StoreFactory,
):
    store = make_store()
    await store.open()
    job = a_print_job("doc-1")
    async with store.transaction() as tx:
        tx.put(job)
        tx.put_document(job.job_id, b"%PDF-1.4\n")
    await store.close()

    store = make_store()  # after a restart
    await store.open()
    try:
        async with store.transaction() as tx:
            assert await tx.get(job.job_id) == job
        assert await store.document(job.job_id) == b"%PDF-1.4\n"
        failed = jobs.fail(job, reason="printer refused it", now=T0)
        assert isinstance(failed, jobs.Job)
        async with store.transaction() as tx:
            tx.put(failed)
        assert await store.document(job.job_id) is None
        async with store.transaction() as tx:
            assert await tx.get(job.job_id) == failed
    finally:
        await store.close()


async def test_an_update_is_stored(store: JobStore):
    job = a_print_job("upd-1")
    async with store.transaction() as tx:
        tx.put(job)
    command = UpdatePrintJob.model_validate(
        {"jobId": job.job_id, "priority": "high", "options": {"quality": "draft"}}
    )
    result = jobs.update(job, command, now=T0)
    assert not isinstance(result, jobs.Refusal)
    async with store.transaction() as tx:
        tx.put(result[0])
    async with store.transaction() as tx:
        stored = await tx.get(job.job_id)
    assert stored == result[0]
    assert stored is not None
    assert stored.options == command.options


async def test_counts_are_per_queue_and_status(store: JobStore):
    queue = f"counts-{uuid.uuid4().hex[:6]}"
    first, second, other = a_print_job("c-1", queue), a_print_job("c-2", queue), a_print_job("c-3")
    started = jobs.start(second, now=T0)
    assert isinstance(started, jobs.Job)
    async with store.transaction() as tx:
        for job in (first, started, other):
            tx.put(job)
    async with store.transaction() as tx:
        counts = await tx.counts(queue)
        assert await tx.counts("nobody-uses-this") == {}
    assert counts == {JobStatus.created: 1, JobStatus.started: 1}


async def test_counts_include_what_is_written_and_not_yet_committed(store: JobStore):
    """A counts query answered after a create (the create's batch may still be committing)
    counts the job as it will be."""
    queue = f"counts-{uuid.uuid4().hex[:6]}"
    first = a_print_job("p-1", queue)
    async with store.transaction() as tx:
        tx.put(first)
    started = jobs.start(first, now=T0)
    assert isinstance(started, jobs.Job)
    async with store.transaction(wait=False) as tx:
        tx.put(started)
        tx.put(a_print_job("p-2", queue))
    # No suspension since: in SQLite this batch is not committed yet.
    async with store.transaction(wait=False) as tx:
        counts = await tx.counts(queue)
    assert counts == {JobStatus.created: 1, JobStatus.started: 1}
    await tx.durable


async def test_sqlite_a_failed_commit_fails_what_was_built_on_it(tmp_path: Path):
    """Work that read a batch's uncommitted writes must not commit when that batch fails."""
    store = SqliteStore(tmp_path / "jobs.db", commit_delay=0.001)
    await store.open()
    blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # the committer's BEGIN times out (busy_timeout)
        job = a_job()
        async with store.transaction(wait=False) as first:
            first.put(job)
            first.emit(event_of(job))
        await asyncio.sleep(0.1)  # the committer has taken `first` and waits for the lock
        async with store.transaction(wait=False) as second:
            seen = await second.get(job.job_id)
            assert seen == job, "a later transaction reads what is being committed"
            started = jobs.start(job, now=T0)
            assert isinstance(started, jobs.Job)
            second.put(started)
            second.emit(event_of(started))
        with pytest.raises(StoreError):
            await first.durable
        blocker.execute("ROLLBACK")  # `second` could commit now, if it had survived
        with pytest.raises(StoreError):
            await second.durable
        assert not store.healthy
        async with store.transaction() as third:
            assert await third.get(job.job_id) is None, "neither change was committed"
            third.put(job)
        assert store.healthy
        assert [r.message.order_key for r in await store.unsent(10)] == []
    finally:
        blocker.close()
        await store.close()


async def test_postgres_only_relaxed_transactions_skip_the_wal_flush(postgres_url: str):
    """Commands are acknowledged after a transaction that did not wait at its exit: its
    commit must still be synchronous. Only what the service can redo is relaxed."""
    store = PostgresStore(postgres_url, pool_size=2)
    await store.open()
    try:
        for relaxed, expected in ((False, "on"), (True, "off")):
            async with store.transaction(wait=False, relaxed=relaxed) as tx:
                cursor = await tx._conn.execute("SHOW synchronous_commit")
                row = await cursor.fetchone()
            assert row is not None
            assert row[0] == expected, f"relaxed={relaxed}"
    finally:
        await store.close()
