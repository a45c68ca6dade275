"""Two replicas on one PostgreSQL store, in-process: what one hears reaches the other."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from service.app import Service
from tests.integration.conftest import (
    Listener,
    Publisher,
    ServiceFactory,
    counter,
    eventually,
    statuses,
    unique,
)
from tests.waits import wait_until_async

pytestmark = pytest.mark.brokers


async def claim(service: Service, lane: str) -> None:
    """Have `service` take `lane`. A replica claims nothing until its lease is registered,
    which may come just after it reports ready."""
    await wait_until_async(
        lambda: service.coordinator.claim(lane),
        what=f"{service.settings.mqtt_client_id} claimed {lane}",
    )


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


def published(service: Service) -> float:
    """The job events `service` published, whatever their status."""
    return sum(
        counter(service, "print_events_published_total", status)
        for status in ("created", "started", "finished")
    )


async def test_each_replica_publishes_the_events_of_the_lanes_it_holds(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    postgres_url: str,
):
    # A reads commands/+ and holds one queue's lane, B reads other/+ and holds the other's:
    # each prints its own queue's jobs, and publishes their events itself.
    jobs_each = 5
    async with (
        start_service(database_url=postgres_url, print_duration=0.05) as a,
        start_service(
            database_url=postgres_url, print_duration=0.05, mqtt_commands_topic="other/+"
        ) as b,
    ):
        queue_a, queue_b = unique("qa"), unique("qb")
        await claim(a, queue_a)
        await claim(b, queue_b)
        queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
        listener = Listener(amqp, queue)
        job_ids: dict[str, list[str]] = {queue_a: [], queue_b: []}
        for queue_id in (queue_a, queue_b):
            for _ in range(jobs_each):
                job_id = unique("job")
                job_ids[queue_id].append(job_id)
                await listener.bind_job(job_id)
        for job_id in job_ids[queue_a]:
            await publisher.create(queue_a, job_id)
        for job_id in job_ids[queue_b]:
            await publisher.raw(
                f"other/{queue_b}",
                json.dumps({"jobId": job_id}).encode(),
                user_properties={"x-message-type": "createPrintJob"},
            )
        events = await listener.collect(2 * jobs_each * 3, timeout=20)

        # Zero lost, and each job's events in its sequence order.
        for job_id in job_ids[queue_a] + job_ids[queue_b]:
            mine = [e.body for e in events if e.body["jobId"] == job_id]
            assert [e["status"] for e in mine] == ["created", "started", "finished"], job_id
            assert [e["sequence"] for e in mine] == sorted(e["sequence"] for e in mine)
        # Each queue's events went out through its lane's holder, not through one replica.
        assert await eventually(lambda: published(a) == published(b) == jobs_each * 3), (
            published(a),
            published(b),
        )
        assert a.coordinator.owns(queue_a)
        assert not a.coordinator.owns(queue_b)
        assert b.coordinator.owns(queue_b)
        assert not b.coordinator.owns(queue_a)
        assert await listener.quiet(0.5) == []  # nothing twice


async def test_a_lane_left_with_unsent_events_and_no_work_is_taken_over_and_published(
    start_service: ServiceFactory, amqp: Any, postgres_url: str
):
    # A replica that died after its lane's jobs were final, before their events went out,
    # leaves rows nobody prints: the lane is taken over for them all the same.
    async with start_service(database_url=postgres_url, replica_lease_seconds=3) as service:
        lane, job_id = unique("orphan"), unique("job")
        queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
        listener = Listener(amqp, queue)
        await listener.bind_job(job_id)
        body = json.dumps({"jobId": job_id, "status": "finished", "sequence": 3}).encode()
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO outbox (message_id, kind, routing_key, order_key, body, "
                "correlation_id, label, received_at, enqueued_at, lane) VALUES "
                "(%s, 'printJobEvent', %s, %s, %s, 'c', 'finished', NULL, 1.0, %s)",
                (str(uuid.uuid4()), f"events/{job_id}", job_id, body, lane),
            )
        received = await listener.next(timeout=10)
        assert received.body["jobId"] == job_id
        assert service.coordinator.owns(lane)
        assert await eventually(lambda: published(service) == 1)


async def test_publishing_moves_with_a_lane_when_its_holder_stops(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    postgres_url: str,
):
    async with start_service(database_url=postgres_url, print_duration=0.05) as a:
        queue_id = unique("q")
        queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
        listener = Listener(amqp, queue)
        before, after = unique("before"), unique("after")
        for job_id in (before, after):
            await listener.bind_job(job_id)
        async with start_service(
            database_url=postgres_url, print_duration=0.05, mqtt_commands_topic="other/+"
        ) as b:
            await claim(b, queue_id)
            await publisher.raw(
                f"other/{queue_id}",
                json.dumps({"jobId": before}).encode(),
                user_properties={"x-message-type": "createPrintJob"},
            )
            assert statuses(await listener.collect(3)) == ["created", "started", "finished"]
            assert await eventually(lambda: published(b) == 3)
        # B gave the lane back on its way out; A takes it with the next job, and publishes.
        await publisher.create(queue_id, after)
        events = await listener.collect(3)
        assert statuses(events) == ["created", "started", "finished"]
        assert {e.body["jobId"] for e in events} == {after}
        assert await eventually(lambda: published(a) == 3)
        assert a.coordinator.owns(queue_id)
