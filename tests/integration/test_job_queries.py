"""listPrintJobs and retention through the service, on real brokers (MQTT in, AMQP out)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest

from service.app import Service
from tests.conftest import Brokers
from tests.integration.conftest import Listener, Publisher, Received, ServiceFactory, unique
from tests.integration.test_cli import cli

pytestmark = pytest.mark.brokers


async def a_listener(amqp: Any, queue_id: str) -> Listener:
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind("print.rejections", f"rejections/{queue_id}")
    await queue.bind("print.events", f"jobs/{queue_id}")
    return Listener(amqp, queue)


async def ask(
    listener: Listener, publisher: Publisher, queue_id: str, query: dict[str, Any], tag: str
) -> Received:
    await publisher.command(queue_id, "listPrintJobs", query, correlation_id=tag)
    seen = await listener.until(lambda r: r.message.correlation_id == tag)
    return seen[-1]


async def test_pages_of_a_queue_through_the_service(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, queue_id: str
):
    async with start_service(print_duration=30.0, job_list_max=2):
        listener = await a_listener(amqp, queue_id)
        made = [unique(f"j{n}") for n in range(3)]
        for job_id in made:
            await listener.bind_job(job_id)
            await publisher.create(queue_id, job_id, userId="alice")

            # One at a time: each is created after the one before (the order is by creation).
            def created(received: Received, job: str = job_id) -> bool:
                return bool(received.body.get("jobId") == job)

            await listener.until(created)

        first = await ask(listener, publisher, queue_id, {"limit": 10}, "page-1")
        assert first.kind == "printJobList"
        assert first.message.routing_key == f"jobs/{queue_id}"
        assert [j["jobId"] for j in first.body["jobs"]] == [made[2], made[1]]
        assert first.body["query"] == {"limit": 2}
        cursor = first.body["nextCursor"]
        second = await ask(listener, publisher, queue_id, {"cursor": cursor}, "page-2")
        assert [j["jobId"] for j in second.body["jobs"]] == [made[0]]
        assert "nextCursor" not in second.body
        nobody = await ask(listener, publisher, queue_id, {"userId": "bob"}, "bob")
        assert nobody.body["jobs"] == []

        bad = await ask(listener, publisher, queue_id, {"cursor": "bm8tc2VwYXJhdG9y"}, "bad")
        assert bad.kind == "commandRejected"
        assert bad.body["reason"] == "schema_violation"
        assert bad.body["errors"][0]["path"] == "cursor"


async def test_a_final_job_is_purged_after_the_retention(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, queue_id: str
):
    async with start_service(
        print_duration=0.1, job_retention=timedelta(seconds=0.5), job_purge_interval=0.1
    ) as service:
        listener = await a_listener(amqp, queue_id)
        job_id = unique("short-lived")
        await listener.bind_job(job_id)
        await publisher.create(queue_id, job_id)
        await listener.until(lambda r: r.body.get("status") == "finished")
        # Asked again until the page is empty: each answer is a round trip, no sleep.
        async with asyncio.timeout(15):
            attempt = 0
            while (await ask(listener, publisher, queue_id, {}, f"poll-{attempt}")).body["jobs"]:
                attempt += 1
        assert await service.store.read_job(job_id) is None
        assert service.metrics.jobs_purged._value.get() >= 1


async def test_the_cli_lists_every_page(service: Service, brokers: Brokers):
    queue = unique("q")
    made = [unique(f"cli{n}") for n in range(3)]
    for job_id in made:
        code, lines = await cli(brokers, "submit", "--queue", queue, "--job-id", job_id)
        assert code == 0, lines
    code, lines = await cli(brokers, "jobs", "--queue", queue, "--limit", "2", "--all")
    assert code == 0, "\n".join(lines)
    assert [line.split()[1] for line in lines] == [f"job={j}" for j in reversed(made)]
    assert all(line.split()[2] == "finished" for line in lines)

    code, lines = await cli(brokers, "jobs", "--queue", queue, "--limit", "1", "--json")
    assert code == 0, lines
    assert json.loads(lines[0])["jobId"] == made[2]
    assert len(lines) == 1  # --json prints jobs only; the cursor is in the page

    code, lines = await cli(brokers, "jobs", "--queue", queue, "--limit", "1")
    assert lines[-1].startswith("more: --cursor ")
    code, lines = await cli(brokers, "jobs", "--queue", queue, "--cursor", "bm8tc2VwYXJhdG9y")
    assert code == 1
    assert lines[-1].startswith("REJECTED schema_violation:")
