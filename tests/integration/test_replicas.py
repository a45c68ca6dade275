"""Two replicas on one PostgreSQL store, in-process: what one hears reaches the other."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import Listener, Publisher, ServiceFactory, statuses, unique

pytestmark = pytest.mark.brokers


async def test_a_force_cancel_received_by_one_replica_stops_the_job_printing_on_the_other(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    postgres_url: str,
    queue_id: str,
):
    # A reads commands/+ and so holds the queue's lane; B reads only other/+, where the
    # cancel is sent: it reaches B alone, which stores it, and A must stop its printer.
    async with (
        start_service(database_url=postgres_url, print_duration=30.0) as printing,
        start_service(
            database_url=postgres_url, print_duration=30.0, mqtt_commands_topic="other/+"
        ) as elsewhere,
    ):
        queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
        listener = Listener(amqp, queue)
        job_id, after = unique("long"), unique("after")
        await listener.bind_job(job_id)
        await listener.bind_job(after)
        await publisher.create(queue_id, job_id)
        assert statuses(await listener.collect(2)) == ["created", "started"]

        await publisher.raw(
            f"other/{queue_id}",
            b'{"jobId": "%s", "force": true}' % job_id.encode(),
            user_properties={"x-message-type": "cancelPrintJob", "x-correlation-id": "c-x"},
        )

        canceled = await listener.next()
        assert (canceled.body["status"], canceled.message.correlation_id) == ("canceled", "c-x")
        # The printer on A is free again at once, not after its 30 s.
        await publisher.create(queue_id, after)
        assert statuses(await listener.collect(2, timeout=5)) == ["created", "started"]
        assert printing.coordinator.owns(queue_id)
        assert not elsewhere.coordinator.owns(queue_id)


async def test_a_job_held_on_one_replica_is_released_through_the_other(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    postgres_url: str,
    queue_id: str,
):
    # A holds the lane (and so the hold's timer); the release reaches B alone, which stores
    # it, and A prints the job. Another held job expires on A's timer.
    async with (
        start_service(database_url=postgres_url, hold_timeout=4) as printing,
        start_service(
            database_url=postgres_url, hold_timeout=4, mqtt_commands_topic="other/+"
        ) as elsewhere,
    ):
        queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
        listener = Listener(amqp, queue)
        released, expiring = unique("released"), unique("expiring")
        for job_id in (released, expiring):
            await listener.bind_job(job_id)
        await publisher.create(queue_id, released, hold="indefinite", releasePin="8642")
        await publisher.create(queue_id, expiring, hold="indefinite")
        assert statuses(await listener.collect(2)) == ["held", "held"]

        await publisher.raw(
            f"other/{queue_id}",
            b'{"jobId": "%s", "pin": "8642"}' % released.encode(),
            user_properties={"x-message-type": "releasePrintJob", "x-correlation-id": "c-r"},
        )
        events = await listener.collect(4, timeout=15)
        by_job = {
            job_id: [
                (e.body["status"], e.body.get("reason"))
                for e in events
                if e.body["jobId"] == job_id
            ]
            for job_id in (released, expiring)
        }
        assert by_job[released] == [("created", "released"), ("started", None), ("finished", None)]
        assert by_job[expiring] == [("canceled", "hold_expired")]
        assert printing.coordinator.owns(queue_id)
        assert not elsewhere.coordinator.owns(queue_id)
