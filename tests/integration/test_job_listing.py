"""Listing a queue's jobs and purging old final ones, held by every store: in memory, SQLite
and PostgreSQL (on a fresh schema of the test server: tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.adapters.store.memory import MemoryStore
from service.adapters.store.postgres import PostgresStore
from service.adapters.store.schema import SQLITE, migrations
from service.adapters.store.sqlite import SqliteStore
from service.core import jobs
from service.core.listing import JobQuery, PageKey
from service.models import CreatePrintJob, JobStatus
from service.ports import JobStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
QUEUE = "list-q"

StoreFactory = Callable[[], JobStore]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if backend == "memory":
        only = MemoryStore()
        return lambda: only
    if backend == "sqlite":
        return lambda: SqliteStore(tmp_path / "jobs.db", commit_delay=0.001)
    url = request.getfixturevalue("postgres_url")
    return lambda: PostgresStore(url, pool_size=4)


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[JobStore]:
    opened = make_store()
    await opened.open()
    yield opened
    await opened.close()


def a_job(job_id: str, *, minutes: float, queue_id: str = QUEUE, user: str = "alice") -> jobs.Job:
    created = jobs.create(
        None,
        CreatePrintJob.model_validate(
            {
                "jobId": job_id,
                "userId": user,
                "document": {"contentType": "text/plain", "data": "aGk="},
            }
        ),
        queue_id=queue_id,
        correlation_id="c",
        now=T0 + timedelta(minutes=minutes),
    )
    assert isinstance(created, jobs.Job)
    return created


def canceled(job: jobs.Job, *, minutes: float) -> jobs.Job:
    done = jobs.cancel(job, force=False, now=T0 + timedelta(minutes=minutes))
    assert isinstance(done, jobs.Job)
    return done


async def page(store: JobStore, **query: object) -> list[str]:
    async with store.apply_commands() as tx:
        found = await tx.list_jobs(JobQuery(queue_id=QUEUE, **query))  # type: ignore[arg-type]
    return [job.job_id for job in found]


async def put(store: JobStore, *batch: jobs.Job) -> None:
    async with store.transaction() as tx:
        for job in batch:
            tx.put(job)
            tx.put_document(job.job_id, b"hi")


async def test_pages_are_newest_first_and_resume_after_the_cursor(store: JobStore):
    # Two jobs created at the same moment: the jobId breaks the tie, so no page repeats or
    # skips one.
    made = [a_job(f"j-{n}", minutes=n // 2) for n in range(7)]
    await put(store, *made, a_job("j-other", minutes=9, queue_id="another-q"))
    order = sorted(made, key=lambda j: (j.created_at, j.job_id), reverse=True)
    seen: list[str] = []
    after: PageKey | None = None
    while True:
        ids = await page(store, limit=3, after=after)
        seen += ids
        if len(ids) < 3:
            break
        last = next(j for j in made if j.job_id == ids[-1])
        after = PageKey(last.created_at, last.job_id)
    assert seen == [j.job_id for j in order]
    assert "j-other" not in seen


async def test_filters_combine(store: JobStore):
    first, second = a_job("a-1", minutes=1), a_job("a-2", minutes=2)
    bobs = a_job("b-1", minutes=3, user="bob")
    await put(store, first, second, bobs, canceled(a_job("a-3", minutes=4), minutes=5))
    assert await page(store, limit=10, status=JobStatus.created) == ["b-1", "a-2", "a-1"]
    assert await page(store, limit=10, user_id="alice") == ["a-3", "a-2", "a-1"]
    assert await page(store, limit=10, user_id="alice", status=JobStatus.canceled) == ["a-3"]
    since = T0 + timedelta(minutes=2)
    assert await page(store, limit=10, since=since, user_id="alice") == ["a-3", "a-2"]
    assert await page(store, limit=10, user_id="nobody") == []


async def test_a_page_sees_what_is_written_and_not_yet_committed(store: JobStore):
    first = a_job("p-1", minutes=1)
    await put(store, first)
    async with store.apply_commands() as tx:
        tx.put(canceled(first, minutes=2))
        tx.put(a_job("p-2", minutes=3))
    # No suspension since: in SQLite this batch is not committed yet.
    assert await page(store, limit=10, status=JobStatus.created) == ["p-2"]
    assert await page(store, limit=1) == ["p-2"]


async def test_old_final_jobs_are_purged_in_batches_with_their_history(
    store: JobStore, backend: str, tmp_path: Path
):
    old = [canceled(a_job(f"old-{n}", minutes=n), minutes=10) for n in range(5)]
    recent = canceled(a_job("recent", minutes=1), minutes=100)
    waiting = a_job("waiting", minutes=0)
    await put(store, *old, recent, waiting)
    before = T0 + timedelta(minutes=50)
    assert await store.purge_jobs(before, 2) == 2
    assert await store.purge_jobs(before, 2) == 2
    assert await store.purge_jobs(before, 2) == 1
    assert await store.purge_jobs(before, 2) == 0
    assert sorted(await page(store, limit=10)) == ["recent", "waiting"]
    assert await store.read_job("old-1") is None
    assert await store.document("waiting") == b"hi"
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "jobs.db") as conn:
            rows = conn.execute("SELECT DISTINCT job_id FROM job_history").fetchall()
        assert sorted(rows) == [("recent",), ("waiting",)]


async def test_a_purged_job_id_can_be_used_again(store: JobStore):
    done = canceled(a_job("again", minutes=0), minutes=1)
    await put(store, done)
    assert await store.purge_jobs(T0 + timedelta(days=1), 10) == 1
    fresh = dataclasses.replace(a_job("again", minutes=2000), correlation_id=str(uuid.uuid4()))
    await put(store, fresh)
    assert await page(store, limit=10) == ["again"]
    assert (await store.read_job("again")) == fresh


def test_the_listing_is_served_by_the_index(tmp_path: Path):
    """SQLite's plan for a page: a walk of (queue_id, created_at, job_id), no scan, no sort."""
    conn = sqlite3.connect(tmp_path / "plan.db")
    for _, statements in migrations(SQLITE):
        for statement in statements:
            conn.execute(statement)
    plan = " ".join(
        str(row[-1])
        for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT job_id FROM jobs WHERE queue_id = ? AND "
            "(created_at, job_id) < (?, ?) ORDER BY created_at DESC, job_id DESC LIMIT 3",
            ("q", "2026", "j"),
        )
    )
    assert "jobs_listing" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
