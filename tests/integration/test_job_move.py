"""movePrintJob on real brokers with the simulated printers: a job waiting behind a busy
printer is moved to an idle queue and printed there; a started one is not moved."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import Listener, Publisher, ServiceFactory, unique

pytestmark = pytest.mark.brokers


async def a_listener(amqp: Any, queue_id: str) -> Listener:
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind("print.rejections", f"rejections/{queue_id}")
    return Listener(amqp, queue)


async def test_a_waiting_job_moved_to_an_idle_queue_prints_there(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, queue_id: str
):
    async with start_service(print_duration=6.0):
        listener = await a_listener(amqp, queue_id)
        busy, waiting = unique("busy"), unique("waiting")
        idle_queue = unique("idle")
        for job_id in (busy, waiting):
            await listener.bind_job(job_id)
        await publisher.create(queue_id, busy)
        await listener.until(lambda r: r.body.get("status") == "started")
        await publisher.create(queue_id, waiting)
        await listener.until(lambda r: r.body.get("jobId") == waiting)

        await publisher.command(
            queue_id,
            "movePrintJob",
            {"jobId": waiting, "toQueue": idle_queue},
            correlation_id="corr-move",
        )

        answer = await listener.next()
        assert answer.message.correlation_id == "corr-move"
        assert answer.body["jobId"] == waiting
        assert (answer.body["status"], answer.body["sequence"]) == ("created", 2)
        assert (answer.body["queueId"], answer.body["movedFrom"]) == (idle_queue, queue_id)
        # Its new queue's printer is idle: it starts while the old one is still busy.
        events = await listener.until(
            lambda r: r.body.get("jobId") == waiting and r.body.get("status") == "started"
        )
        assert not any(
            e.body.get("jobId") == busy and e.body["status"] == "finished" for e in events
        )
        started = events[-1]
        assert started.body["queueId"] == idle_queue


async def test_a_started_job_is_not_moved(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, queue_id: str
):
    async with start_service(print_duration=5.0):
        listener = await a_listener(amqp, queue_id)
        job_id = unique("started")
        await listener.bind_job(job_id)
        await publisher.create(queue_id, job_id)
        await listener.until(lambda r: r.body.get("status") == "started")

        await publisher.command(
            queue_id,
            "movePrintJob",
            {"jobId": job_id, "toQueue": unique("elsewhere")},
            correlation_id="m2",
        )

        refused = await listener.next()
        assert refused.kind == "commandRejected"
        assert (refused.body["reason"], refused.body["correlationId"]) == ("job_started", "m2")
