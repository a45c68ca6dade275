"""The store contract, held by every store: in memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from service import aio
from service.adapters.store import leases
from service.adapters.store.memory import MemoryStore
from service.adapters.store.pending import documents_to_drop
from service.adapters.store.postgres import PostgresStore
from service.adapters.store.postgres import _Transaction as PostgresTransaction
from service.adapters.store.sqlite import SqliteStore
from service.core import jobs
from service.core.backoff import Backoff
from service.core.events import counts_event, job_event
from service.models import CreatePrintJob, JobStatus, UpdatePrintJob
from service.ports import JobStore, LaneLost, OutboxLanes, StoreError, StoreTransaction

T0 = datetime(2026, 1, 1, tzinfo=UTC)

StoreFactory = Callable[[], JobStore]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes stores on the same data (a second one is the first after a restart)."""
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
    committed = asyncio.Event()
    store.on_commit(committed.set)
    await store.mark_sent([unsent[0].position])
    if store.outbox_depth == 2:  # not committed yet: mark_sent need not wait for it (SQLite)
        await committed.wait()
    assert [r.message.label for r in await store.unsent(10)] == ["started"]
    assert store.outbox_depth == 1


async def test_a_later_transaction_sees_an_earlier_one_that_did_not_wait(store: JobStore):
    job = a_job()
    async with store.apply_commands() as tx:
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


async def test_progress_and_totals_are_stored_and_survive_a_restart(make_store: StoreFactory):
    store = make_store()
    await store.open()
    started = jobs.start(a_job("progress-1"), now=T0)
    assert isinstance(started, jobs.Job)
    changes = [started]
    for impressions in (2, 5):
        grown = jobs.progress(changes[-1], impressions=impressions, sheets=impressions, now=T0)
        assert isinstance(grown, jobs.Job)
        changes.append(grown)
    finished = jobs.finish(changes[-1], now=T0, impressions=6, sheets=3)
    assert isinstance(finished, jobs.Job)
    for change in [*changes, finished]:  # each a row of the history, by its sequence
        async with store.record_progress("q1") as tx:
            tx.put(change)
            tx.emit(event_of(change))
        await tx.durable
    await store.close()

    reopened = make_store()
    await reopened.open()
    try:
        stored = await reopened.read_job("progress-1")
        assert stored == finished
        assert stored is not None
        assert (stored.sequence, stored.impressions, stored.sheets) == (5, 6, 3)
    finally:
        await reopened.close()


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
    async with store.apply_commands() as tx:
        tx.put(started)
        tx.put(a_print_job("p-2", queue))
    # No suspension since: in SQLite this batch is not committed yet.
    async with store.apply_commands() as tx:
        counts = await tx.counts(queue)
    assert counts == {JobStatus.created: 1, JobStatus.started: 1}
    await tx.durable


async def test_sqlite_a_failed_commit_fails_what_was_built_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Work that read a batch's uncommitted writes must not commit when that batch fails."""
    store = SqliteStore(tmp_path / "jobs.db", commit_delay=0.001)
    await store.open()
    writing = asyncio.Event()
    loop = asyncio.get_running_loop()
    write = store._write

    def announced_write(batch):  # in the committer's thread
        loop.call_soon_threadsafe(writing.set)
        return write(batch)

    monkeypatch.setattr(store, "_write", announced_write)
    assert store._writer is not None
    store._writer.execute("PRAGMA busy_timeout=100")  # the lock below is not let go
    blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # the committer's BEGIN times out (busy_timeout)
        job = a_job()
        async with store.apply_commands() as first:
            first.put(job)
            first.emit(event_of(job))
        await writing.wait()  # the committer has taken `first` and waits for the lock
        async with store.apply_commands() as second:
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


async def test_postgres_only_progress_skips_the_wal_flush(postgres_url: str):
    """Commands are acknowledged once `durable` resolves: their commit must be synchronous.
    Only what the service can redo (a printer's progress) is relaxed."""
    store = PostgresStore(postgres_url, pool_size=2)
    await store.open()
    kinds: dict[str, Callable[[], AbstractAsyncContextManager[PostgresTransaction]]] = {
        "transaction": store.transaction,
        "fenced transaction": lambda: store.transaction(lane="q1"),
        "apply_commands": store.apply_commands,
        "record_progress": lambda: store.record_progress("q1"),
    }
    seen: dict[str, str] = {}
    try:
        for name, kind in kinds.items():
            async with kind() as tx:
                cursor = await tx._conn.execute("SHOW synchronous_commit")
                row = await cursor.fetchone()
            assert row is not None
            seen[name] = row[0]
    finally:
        await store.close()
    assert seen == {
        "transaction": "on",
        "fenced transaction": "on",
        "apply_commands": "on",
        "record_progress": "off",
    }


# --- what each kind of transaction promises, on each store ---------------------------------------


async def test_read_job_locks_nothing_and_sees_only_what_is_applied(store: JobStore):
    job = a_job()
    assert await store.read_job(job.job_id) is None
    async with store.transaction() as tx:
        tx.put(job)
    started = jobs.start(job, now=T0)
    assert isinstance(started, jobs.Job)
    async with store.transaction() as tx:
        assert await tx.get(job.job_id) == job  # PostgreSQL: the row is locked FOR UPDATE now
        tx.put(started)
        # Neither waits for this transaction (a lock would never be let go: it waits on us)
        # nor sees its writes.
        assert await store.read_job(job.job_id) == job
    assert await store.read_job(job.job_id) == started


async def test_apply_commands_returns_once_applied_then_becomes_durable(
    store: JobStore, backend: str
):
    job = a_job()
    async with store.apply_commands() as tx:
        tx.put(job)
        tx.emit(event_of(job))
    # SQLite returns before its group commit; PostgreSQL must commit for others to see it.
    assert tx.durable.done() is (backend != "sqlite")
    assert await store.read_job(job.job_id) == job
    async with store.apply_commands() as later:
        assert await later.get(job.job_id) == job
    await tx.durable
    assert [r.message.order_key for r in await store.unsent(10)] == [job.job_id]


async def test_record_progress_applies_in_a_lane_every_single_replica_holds(
    store: JobStore, backend: str
):
    job = a_job()
    async with store.transaction() as tx:
        tx.put(job)
    started = jobs.start(job, now=T0)
    assert isinstance(started, jobs.Job)
    async with store.record_progress("q1") as tx:
        assert await tx.get(job.job_id) == job
        tx.put(started)
        tx.emit(event_of(started))
    assert tx.durable.done() is (backend != "sqlite")  # SQLite: not waited for
    assert await store.read_job(job.job_id) == started
    await tx.durable
    assert [r.message.label for r in await store.unsent(10)] == ["started"]


async def test_a_transaction_returns_once_durable_fenced_or_not(store: JobStore):
    job = a_job()
    async with store.transaction() as tx:
        tx.put(job)
    assert tx.durable.done()
    assert tx.durable.exception() is None
    started = jobs.start(job, now=T0)
    assert isinstance(started, jobs.Job)
    async with store.transaction(lane="q1") as fenced:  # one replica: it holds every lane
        fenced.put(started)
    assert fenced.durable.done()
    assert await store.read_job(job.job_id) == started


async def test_postgres_fences_progress_and_transactions_by_lane(postgres_url: str):
    """With replicas (an instance id), a fenced transaction commits only in a lane this
    replica holds under a live lease; commands are not fenced."""
    store = PostgresStore(postgres_url, pool_size=2, notify_as="replica-a")
    await store.open()
    admin = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
    try:
        job = a_job()
        async with store.apply_commands() as tx:
            tx.put(job)
        started = jobs.start(job, now=T0)
        assert isinstance(started, jobs.Job)

        async def start_in(kind: Callable[[], AbstractAsyncContextManager[StoreTransaction]]):
            async with kind() as tx:
                assert await tx.get(job.job_id) == job
                tx.put(started)
                tx.emit(event_of(started))

        async def lane_lost(kind: Callable[[], AbstractAsyncContextManager[StoreTransaction]]):
            with pytest.raises(LaneLost):
                await start_in(kind)
            assert await store.read_job(job.job_id) == job, "nothing applied"
            assert await store.unsent(10) == []

        def progress() -> AbstractAsyncContextManager[StoreTransaction]:
            return store.record_progress("q1")

        def fenced() -> AbstractAsyncContextManager[StoreTransaction]:
            return store.transaction(lane="q1")

        for kind in (progress, fenced):  # nobody holds q1
            await lane_lost(kind)
        await admin.execute(
            "INSERT INTO replicas VALUES ('replica-a', now() - interval '1 second'), "
            "('replica-b', now() + interval '1 hour')"
        )
        await admin.execute("INSERT INTO lanes VALUES ('q1', 'replica-b')")
        for kind in (progress, fenced):  # another live replica holds it
            await lane_lost(kind)
        await admin.execute("UPDATE lanes SET owner = 'replica-a'")
        for kind in (progress, fenced):  # this replica holds it, but its lease ran out
            await lane_lost(kind)

        await admin.execute("UPDATE replicas SET lease_until = now() + interval '1 hour'")
        async with store.record_progress("q1") as tx:
            tx.put(started)
        assert await store.read_job(job.job_id) == started
        done = jobs.finish(started, now=T0)
        assert isinstance(done, jobs.Job)
        async with store.transaction(lane="q1") as tx:
            tx.put(done)
        assert await store.read_job(job.job_id) == done
    finally:
        await admin.close()
        await store.close()


async def test_postgres_health_follows_failed_reads_and_commits(postgres_url: str):
    """A failed read marks the store unhealthy until a read works; a failed commit, until a
    commit works (a read that works says nothing of writes)."""
    store = PostgresStore(postgres_url, pool_size=1)
    await store.open()
    admin = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)

    async def cut_the_connection() -> None:
        async with store._read() as conn:
            pid = conn.info.backend_pid
        await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        while await (
            await admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
        ).fetchone():
            pass  # each query yields: until the server has ended that backend

    try:
        await cut_the_connection()
        with pytest.raises(StoreError):
            await store.read_job("x")
        assert not store.healthy
        assert await store.read_job("x") is None  # the pool connects again
        assert store.healthy

        await cut_the_connection()
        with pytest.raises(StoreError):
            async with store.transaction() as tx:
                tx.put(a_job())
        assert not store.healthy
        assert await store.read_job("x") is None
        assert not store.healthy, "a read says nothing of writes"
        async with store.transaction() as tx:
            tx.put(a_job())
        assert store.healthy
    finally:
        await admin.close()
        await store.close()


def test_a_final_job_drops_its_inline_document_only():
    inline = a_print_job("d-1")
    by_url = jobs.create(
        None,
        CreatePrintJob.model_validate(
            {
                "jobId": "d-2",
                "document": {"contentType": "application/pdf", "url": "https://example.org/d"},
            }
        ),
        queue_id="q1",
        correlation_id="c",
        now=T0,
    )
    assert isinstance(by_url, jobs.Job)
    finals = [jobs.cancel(job, force=False, now=T0) for job in (inline, by_url, a_job("d-3"))]
    assert all(isinstance(job, jobs.Job) for job in finals)
    assert documents_to_drop([inline, by_url]) == []
    assert documents_to_drop(job for job in finals if isinstance(job, jobs.Job)) == ["d-1"]


async def test_leases_retry_with_growing_pauses_and_give_up_once_stopping(
    monkeypatch: pytest.MonkeyPatch,
):
    """PostgreSQL cannot be reached: the coordinator retries after the Backoff's pauses and
    returns, holding nothing, once the service stops."""
    stopping = asyncio.Event()
    pauses: list[float] = []

    async def pause(event: asyncio.Event, seconds: float) -> bool:
        pauses.append(seconds)
        if len(pauses) == 3:
            stopping.set()
        return await aio.sleep_unless(event, seconds)

    monkeypatch.setattr(leases, "sleep_unless", pause)
    monkeypatch.setattr(leases, "_retry_pause", lambda: Backoff(first=0.001, cap=0.004))
    coordinator = leases.PostgresLeases(
        "postgresql://nobody@127.0.0.1:1/none", instance="a", lease_seconds=3, lane_of=str
    )
    await coordinator.run(stopping)
    assert pauses == [0.001, 0.002, 0.004]
    assert not coordinator.owns(leases.RELAY_LANE)
    assert coordinator.outbox_lanes().empty  # and it publishes nothing


async def test_leases_publish_the_lanes_held_and_the_rows_of_none_with_the_relay_lane(
    postgres_url: str,
):
    store = PostgresStore(postgres_url, pool_size=1)
    await store.open()  # the schema
    await store.close()
    stopping = asyncio.Event()
    coordinator = leases.PostgresLeases(
        postgres_url, instance="replica-a", lease_seconds=3, lane_of=str
    )
    assert coordinator.outbox_lanes().empty  # no lease yet
    running = asyncio.create_task(coordinator.run(stopping))
    try:
        async with asyncio.timeout(5):
            while not coordinator.owns(leases.RELAY_LANE):
                await asyncio.sleep(0.01)
        assert coordinator.outbox_lanes() == lanes(unlaned=True)
        assert await coordinator.claim("q1")
        assert coordinator.outbox_lanes() == lanes("q1", unlaned=True)
    finally:
        stopping.set()
        await running
    assert coordinator.outbox_lanes().empty  # given back


async def test_a_held_job_keeps_its_hold_across_a_restart_and_forgets_it_once_released(
    make_store: StoreFactory,
):
    command = CreatePrintJob.model_validate(
        {"jobId": "held-1", "hold": (T0 + timedelta(hours=1)).isoformat()}
    )
    held = jobs.create(
        None, command, queue_id="q1", correlation_id="c", now=T0, hold_timeout=timedelta(hours=2)
    )
    assert isinstance(held, jobs.Job)
    held = dataclasses.replace(held, pin_hash="scrypt$16384$8$1$c2FsdA$aGFzaA", pin_attempts=2)
    store = make_store()
    await store.open()
    async with store.transaction() as tx:
        tx.put(held)
    async with store.transaction() as tx:
        assert await tx.counts("q1") == {JobStatus.held: 1}
    await store.close()

    reopened = make_store()
    await reopened.open()
    try:
        assert await reopened.read_job("held-1") == held
        assert [j.job_id for j in await reopened.waiting_jobs()] == ["held-1"]  # unfinished
        released = jobs.release(held, now=T0)
        assert isinstance(released, jobs.Job)
        async with reopened.transaction() as tx:
            tx.put(released)
        stored = await reopened.read_job("held-1")
        assert stored == released
        assert stored is not None
        assert (stored.hold_until, stored.hold_expires_at, stored.pin_hash) == (None, None, None)
    finally:
        await reopened.close()


# --- the outbox shared by lane (issue 15) ------------------------------------------------------


def lanes(*held: str, unlaned: bool = False) -> OutboxLanes:
    return OutboxLanes(held=frozenset(held), unlaned=unlaned)


async def marked_sent(store: JobStore, positions: list[int]) -> None:
    """Mark `positions` sent and wait until it is committed (SQLite does not wait)."""
    depth = store.outbox_depth
    await store.mark_sent(positions)
    await aio.first_of(asyncio.sleep(2.0), _depth_below(store, depth - len(positions) + 1))
    assert store.outbox_depth == depth - len(positions)


async def _depth_below(store: JobStore, limit: int) -> None:
    while store.outbox_depth >= limit:
        await asyncio.sleep(0.005)


async def test_unsent_of_lanes_returns_their_rows_and_with_the_relay_lane_those_of_none(
    store: JobStore,
):
    in_q1, in_q2 = a_job(), dataclasses.replace(a_job(), queue_id="q2")
    async with store.apply_commands() as tx:
        tx.put(in_q1)
        tx.emit(event_of(in_q1))  # a command's: the lane of the job's queue
        tx.emit(
            counts_event(
                "q1", {}, event_id=uuid.uuid4(), correlation_id="c", received_at=None, now=T0
            )
        )  # a reply: no lane
    await tx.durable
    async with store.transaction(lane="q2") as tx:  # a dispatcher's: its lane
        tx.put(in_q2)
        tx.emit(event_of(in_q2))
    everything = await store.unsent(10)
    assert [(r.lane, r.message.kind.value) for r in everything] == [
        ("q1", "printJobEvent"),
        (None, "printCounts"),
        ("q2", "printJobEvent"),
    ]

    def keys(records) -> list[str]:
        return [r.message.order_key for r in records]

    assert keys(await store.unsent(10, lanes=lanes("q1"))) == [in_q1.job_id]
    assert keys(await store.unsent(10, lanes=lanes("q2", unlaned=True))) == [
        "counts/q1",
        in_q2.job_id,
    ]
    assert keys(await store.unsent(10, lanes=lanes(unlaned=True))) == ["counts/q1"]
    assert await store.unsent(10, lanes=lanes()) == []
    assert keys(await store.unsent(1, lanes=lanes("q1", "q2"))) == [in_q1.job_id]
    # A status reply: the job read, not written, and its event in the job's lane.
    async with store.apply_commands() as tx:
        seen = await tx.get(in_q2.job_id)
        assert seen is not None
        tx.emit(event_of(seen))
    await tx.durable  # SQLite: published once committed
    assert [r.lane for r in await store.unsent(10, lanes=lanes("q2"))] == ["q2", "q2"]


async def test_a_moved_jobs_rows_wait_for_its_earlier_ones_in_the_old_lane(store: JobStore):
    job = a_job()
    other = dataclasses.replace(a_job(), queue_id="q2")
    async with store.apply_commands() as tx:
        tx.put(job)
        tx.emit(event_of(job))
    moved = jobs.move(job, to_queue="q2", now=T0)
    assert isinstance(moved, jobs.Job)
    async with store.apply_commands() as tx:
        tx.put(moved)
        tx.emit(event_of(moved))
        tx.put(other)
        tx.emit(event_of(other))
    await tx.durable
    # q2's holder: the moved job's event waits for its created one, q1's holder's.
    assert [r.message.order_key for r in await store.unsent(10, lanes=lanes("q2"))] == [
        other.job_id
    ]
    # Holding both, all of it, in order (the relay chains them).
    both = await store.unsent(10, lanes=lanes("q1", "q2"))
    assert [(r.lane, r.message.order_key) for r in both] == [
        ("q1", job.job_id),
        ("q2", job.job_id),
        ("q2", other.job_id),
    ]
    await marked_sent(store, [both[0].position])  # q1's holder published it
    after = await store.unsent(10, lanes=lanes("q2"))
    assert [r.position for r in after] == [both[1].position, both[2].position]
