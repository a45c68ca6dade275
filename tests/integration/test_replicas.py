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
