"""updatePrintJob, expireAfter and getPrintCounts, on real brokers with the simulated printer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.conftest import Listener, Publisher, ServiceFactory, unique

pytestmark = pytest.mark.brokers


async def a_listener(amqp: Any, queue_id: str) -> Listener:
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind("print.rejections", f"rejections/{queue_id}")
    await queue.bind("print.events", f"counts/{queue_id}")
    return Listener(amqp, queue)


async def test_an_update_moves_a_waiting_job_ahead_and_is_answered(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, queue_id: str
):
    async with start_service(print_duration=1.0):
        listener = await a_listener(amqp, queue_id)
        busy, first, second = unique("busy"), unique("first"), unique("second")
        for job_id in (busy, first, second):
            await listener.bind_job(job_id)
        await publisher.create(queue_id, busy)
        await listener.until(lambda r: r.body.get("status") == "started")
        await publisher.create(queue_id, first, priority="low")
        await publisher.create(queue_id, second, priority="low")
        await listener.collect(2)  # both created

        await publisher.command(
            queue_id,
            "updatePrintJob",
            {"jobId": second, "priority": "high", "options": {"sides": "one-sided"}},
            correlation_id="corr-upd",
        )

        answer = await listener.next()
        assert answer.message.correlation_id == "corr-upd"
        assert answer.body["jobId"] == second
        assert (answer.body["status"], answer.body["sequence"]) == ("created", 2)
        assert answer.body["updated"] == ["priority", "options"]
        assert answer.body["priority"] == "high"
        events = await listener.until(
            lambda r: r.body.get("jobId") == first and r.body.get("status") == "started", timeout=15
        )
        order = [e.body["jobId"] for e in events if e.body.get("status") == "started"]
        assert order == [second, first], "the updated job prints first"


async def test_an_update_of_a_started_job_is_refused(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, queue_id: str
):
    async with start_service(print_duration=5.0):
        listener = await a_listener(amqp, queue_id)
        job_id = unique("started")
        await listener.bind_job(job_id)
        await publisher.create(queue_id, job_id)
        await listener.until(lambda r: r.body.get("status") == "started")

        await publisher.command(
            queue_id, "updatePrintJob", {"jobId": job_id, "priority": "high"}, correlation_id="u2"
        )

        refused = await listener.next()
        assert refused.kind == "commandRejected"
        assert (refused.body["reason"], refused.body["correlationId"]) == ("job_started", "u2")


async def test_a_job_not_started_by_its_expiry_is_canceled(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, queue_id: str
):
    async with start_service(print_duration=3.0):
        listener = await a_listener(amqp, queue_id)
        busy, expiring = unique("busy"), unique("expiring")
        await listener.bind_job(busy)
        await listener.bind_job(expiring)
        await publisher.create(queue_id, busy)
        await listener.until(lambda r: r.body.get("status") == "started")
        deadline = datetime.now(UTC) + timedelta(seconds=1)

        await publisher.create(queue_id, expiring, expireAfter=deadline.isoformat())

        events = await listener.until(
            lambda r: r.body.get("jobId") == expiring and r.body.get("status") == "canceled"
        )
        assert events[-1].body["reason"] == "expired"
        assert datetime.fromisoformat(events[-1].body["timestamp"]) >= deadline
        assert "finished" not in [
            e.body.get("status") for e in events if e.body.get("jobId") == expiring
        ]
        rest = await listener.until(lambda r: r.body.get("status") == "finished", timeout=10)
        assert [r.body["jobId"] for r in rest] == [busy], "the expired job never starts"


async def test_counts_query_answers_jobs_per_status(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, queue_id: str
):
    async with start_service(print_duration=30.0):
        listener = await a_listener(amqp, queue_id)
        printing, waiting, canceled = unique("p"), unique("w"), unique("c")
        for job_id in (printing, waiting, canceled):
            await listener.bind_job(job_id)
            await publisher.create(queue_id, job_id)
        await publisher.command(queue_id, "cancelPrintJob", {"jobId": canceled})
        await listener.until(lambda r: r.body.get("status") == "canceled")

        await publisher.command(queue_id, "getPrintCounts", {}, correlation_id="corr-counts")

        answer = await listener.until(lambda r: r.kind == "printCounts")
        counts = answer[-1]
        assert counts.message.correlation_id == "corr-counts"
        assert counts.body["queueId"] == queue_id
        assert counts.body["counts"] == {
            "created": 1,
            "started": 1,
            "finished": 0,
            "canceled": 1,
            "failed": 0,
            "held": 0,
        }
