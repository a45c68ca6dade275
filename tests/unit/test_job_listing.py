"""`listPrintJobs` (through the real handler, over the memory store), its cursor, and the
retention loop's purge."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pytest
from prometheus_client import CollectorRegistry

from service.adapters.store.memory import MemoryStore
from service.application.retention import Retention
from service.config import Settings
from service.core import jobs
from service.core.access import AccessControl, KeyTable
from service.core.listing import BadCursor, PageKey, decode_cursor, encode_cursor, query_of
from service.metrics import Metrics
from service.models import CreatePrintJob, JobStatus, ListPrintJobs, MessageType, RejectionReason
from service.ports import StoreError
from tests.harness.fakes import EPOCH, FakeClock
from tests.harness.harness import Harness

QUEUE: Final = "queue-1"
LIST: Final = MessageType.listPrintJobs
CREATE: Final = MessageType.createPrintJob
CANCEL: Final = MessageType.cancelPrintJob


# --- the cursor --------------------------------------------------------------------------------


def test_a_cursor_round_trips_and_is_url_safe() -> None:
    key = PageKey(datetime(2026, 12, 2, 16, 0, 0, 123456, tzinfo=UTC), "tenant.job-1:a")
    cursor = encode_cursor(key)
    assert decode_cursor(cursor) == key
    assert cursor.replace("-", "").replace("_", "").isalnum()
    ListPrintJobs(cursor=cursor)  # the contract's pattern takes it


@pytest.mark.parametrize(
    "cursor",
    [
        "not-base64-at-all!",
        "x",
        encode_cursor(PageKey(EPOCH, "j")).upper(),
        "bm8tc2VwYXJhdG9y",  # "no-separator"
        "MjAyNi0wMS0wMVQwMDowMDowMHxqb2I",  # a naive time: "2026-01-01T00:00:00|job"
        "MjAyNi0wMS0wMVQwMDowMDowMCswMDowMHwtYmFkIGlk",  # "...|-bad id"
        "bm90IGEgZGF0ZXxqb2I",  # "not a date|job"
        "__8",  # not UTF-8
    ],
)
def test_a_cursor_the_service_did_not_issue_is_refused(cursor: str) -> None:
    with pytest.raises(BadCursor):
        decode_cursor(cursor)


def test_a_limit_above_the_page_size_is_lowered_and_none_means_the_page_size() -> None:
    assert query_of(QUEUE, ListPrintJobs(limit=5000), page_max=100).limit == 100
    assert query_of(QUEUE, ListPrintJobs(limit=7), page_max=100).limit == 7
    assert query_of(QUEUE, ListPrintJobs(), page_max=50).limit == 50


def test_the_settings_take_seconds_or_a_duration() -> None:
    assert Settings(job_retention="3600").job_retention == timedelta(hours=1)
    assert Settings(job_retention="P2D").job_retention == timedelta(days=2)
    assert Settings().job_retention == timedelta(days=7)
    assert Settings().job_list_max == 100


# --- through the handler -----------------------------------------------------------------------


async def create(service: Harness, job_id: str, *, user: str = "alice") -> None:
    await service.send({"jobId": job_id, "userId": user}, queue_id=QUEUE, message_type=CREATE)
    service.clock.advance(1)


async def ask(service: Harness, query: dict[str, Any], correlation_id: str) -> None:
    await service.send(query, queue_id=QUEUE, message_type=LIST, correlation_id=correlation_id)
    await service.drained()


async def test_pages_follow_the_cursor_to_the_last_one() -> None:
    async with Harness(list_max=3) as service:
        service.printer(QUEUE).offline()
        for n in range(5):
            await create(service, f"job-{n}")
        await service.send({}, queue_id="queue-other", message_type=LIST)
        await ask(service, {"limit": 50}, "corr-1")
        first = service.job_lists()[-1]
        assert [j.jobId for j in first.jobs] == ["job-4", "job-3", "job-2"]
        assert first.query.limit == 3  # lowered to the page size, and echoed so
        assert first.nextCursor is not None
        assert service.publisher.published[-1].correlation_id == "corr-1"
        assert service.publisher.published[-1].routing_key == f"jobs/{QUEUE}"
        await ask(service, {"limit": 50, "cursor": first.nextCursor}, "corr-2")
        second = service.job_lists()[-1]
        assert [j.jobId for j in second.jobs] == ["job-1", "job-0"]
        assert second.nextCursor is None
        assert second.query.cursor == first.nextCursor
        other = service.job_lists()[0]
        assert (other.queueId, other.jobs, other.nextCursor) == ("queue-other", [], None)
        assert (
            service.metric(
                "print_commands_received_total", type="listPrintJobs", outcome="accepted"
            )
            == 3
        )


async def test_a_full_last_page_has_no_cursor_and_summaries_say_enough() -> None:
    async with Harness() as service:
        service.printer(QUEUE).offline()
        await service.send(
            {"jobId": "job-1", "userId": "bob", "title": "Report", "priority": "high"},
            queue_id=QUEUE,
            message_type=CREATE,
        )
        await ask(service, {"limit": 1}, "corr-1")
        (answer,) = service.job_lists()
        assert answer.nextCursor is None
        (job,) = answer.jobs
        assert (job.jobId, job.status, job.userId, job.title) == (
            "job-1",
            JobStatus.created,
            "bob",
            "Report",
        )
        assert (job.sequence, job.priority.value, job.createdAt) == (1, "high", EPOCH)


async def test_filters_are_applied_and_echoed() -> None:
    async with Harness() as service:
        service.printer(QUEUE).offline()
        await create(service, "job-a1")
        await create(service, "job-b1", user="bob")
        await create(service, "job-a2")
        await service.send({"jobId": "job-a1"}, queue_id=QUEUE, message_type=CANCEL)
        since = (EPOCH + timedelta(seconds=1)).isoformat()
        await ask(service, {"userId": "alice"}, "c1")
        await ask(service, {"status": "canceled"}, "c2")
        await ask(service, {"since": since, "status": "created"}, "c3")
        alice, canceled, recent = service.job_lists()
        assert [j.jobId for j in alice.jobs] == ["job-a2", "job-a1"]
        assert alice.query.userId == "alice"
        assert [j.jobId for j in canceled.jobs] == ["job-a1"]
        assert [j.jobId for j in recent.jobs] == ["job-a2", "job-b1"]


async def test_a_list_in_a_batch_sees_the_creates_before_it() -> None:
    async with Harness() as service:
        service.printer(QUEUE).offline()
        batch = [
            service.inbound({"jobId": "job-1"}, queue_id=QUEUE, message_type=CREATE),
            service.inbound({}, queue_id=QUEUE, message_type=LIST, correlation_id="corr-l"),
        ]
        await service.send_batch(batch)
        await service.drained()
        (answer,) = service.job_lists()
        assert [j.jobId for j in answer.jobs] == ["job-1"]


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ({"cursor": "bm8tc2VwYXJhdG9y"}, "cursor"),  # base64 of no cursor of ours
        ({"cursor": "has spaces"}, "cursor"),
        ({"cursor": ""}, "cursor"),
        ({"cursor": "A" * 513}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "lost"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "since"),  # no offset: ambiguous
        ({"userId": "a\u0000b"}, "userId"),
        ({"jobId": "job-1"}, "jobId"),
    ],
)
async def test_bad_input_is_a_schema_violation_with_the_senders_correlation_id(
    query: dict[str, Any], path: str
) -> None:
    async with Harness() as service:
        await ask(service, query, "corr-bad")
        (rejection,) = service.rejections()
        assert rejection.reason is RejectionReason.schema_violation
        assert rejection.correlationId == "corr-bad"
        assert rejection.messageType == "listPrintJobs"
        assert path in {e.path for e in rejection.errors or []}
        assert service.job_lists() == []


async def test_a_list_needs_read_job() -> None:
    keys = f"""
[keys.writer]
sha256 = "{hashlib.sha256(b"w-key").hexdigest()}"
queues = ["*"]
scopes = ["write:job"]
"""
    access = AccessControl(KeyTable.from_toml(keys, source="keys"), rate=1000.0, burst=1000)
    async with Harness(access=access) as service:
        await service.send(
            {},
            queue_id=QUEUE,
            message_type=LIST,
            correlation_id="corr-w",
            properties={"x-api-key": "w-key"},
        )
        await service.drained()
        (rejection,) = service.rejections()
        assert (rejection.reason, rejection.correlationId) == (
            RejectionReason.forbidden,
            "corr-w",
        )


# --- retention ---------------------------------------------------------------------------------


def a_job(job_id: str, at: datetime) -> jobs.Job:
    made = jobs.create(
        None, CreatePrintJob(jobId=job_id), queue_id=QUEUE, correlation_id="c", now=at
    )
    assert isinstance(made, jobs.Job)
    return made


async def test_retention_purges_old_final_jobs_in_batches_and_counts_them() -> None:
    store = MemoryStore()
    clock = FakeClock(EPOCH)
    async with store.transaction() as tx:
        for n in range(5):
            done = jobs.cancel(a_job(f"old-{n}", EPOCH), force=False, now=EPOCH)
            assert isinstance(done, jobs.Job)
            tx.put(done)
        tx.put(a_job("waiting", EPOCH))
    metrics = Metrics(CollectorRegistry())
    retention = Retention(
        store, retention=timedelta(hours=1), metrics=metrics, batch=2, pause=0, clock=clock
    )
    assert await retention.purge_once() == 0  # not old enough yet
    clock.advance(3601)
    stopping = asyncio.Event()
    loop = asyncio.create_task(retention.run(stopping))
    async with asyncio.timeout(5):
        while await store.read_job("old-4") is not None or await store.read_job("old-0"):
            await asyncio.sleep(0)  # its own pauses are 0: yield to it until it has caught up
    stopping.set()
    await loop
    assert await store.read_job("waiting") is not None
    assert metrics.registry.get_sample_value("print_jobs_purged_total") == 5


async def test_retention_waits_out_a_store_outage() -> None:
    class Failing(MemoryStore):
        calls = 0

        async def purge_jobs(self, before: datetime, limit: int) -> int:
            del before, limit
            self.calls += 1
            raise StoreError("away")

    store = Failing()
    stopping = asyncio.Event()
    retention = Retention(store, retention=timedelta(1), metrics=Metrics(CollectorRegistry()))
    loop = asyncio.create_task(retention.run(stopping))
    async with asyncio.timeout(5):
        while store.calls == 0:
            await asyncio.sleep(0)
    stopping.set()
    await asyncio.wait_for(loop, 5)  # sleeping on the backoff, it still stops at once
