"""Hold and release on real brokers with the simulated printer: a held job waits for its
release (with its PIN, over MQTT 5 or in a 3.1.1 envelope), wrong PINs are refused with the
command's correlation id, and a hold and its timeout survive a restart of the service."""

from __future__ import annotations

import json
from typing import Any, Final

import pytest

from tests.integration.conftest import Listener, Publisher, ServiceFactory, statuses, unique

pytestmark = pytest.mark.brokers

PIN: Final = "2468"


async def a_listener(amqp: Any, queue_id: str) -> Listener:
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind("print.rejections", f"rejections/{queue_id}")
    await queue.bind("print.events", f"counts/{queue_id}")
    return Listener(amqp, queue)


def ended(received: Any) -> bool:
    return received.body.get("status") in ("finished", "canceled", "failed")


async def test_a_held_job_is_released_with_its_pin(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, queue_id: str
):
    async with start_service():
        listener = await a_listener(amqp, queue_id)
        job_id = unique("held")
        await listener.bind_job(job_id)
        await publisher.create(
            queue_id, job_id, hold="indefinite", releasePin=PIN, correlation_id="c-create"
        )
        held = await listener.next()
        assert (held.body["status"], held.body["sequence"]) == ("held", 1)
        assert "holdExpiresAt" in held.body
        await publisher.command(queue_id, "getPrintCounts", {}, correlation_id="c-counts")
        counts = await listener.next()
        assert counts.body["counts"]["held"] == 1

        await publisher.command(
            queue_id, "releasePrintJob", {"jobId": job_id, "pin": "1357"}, correlation_id="c-bad"
        )
        refused = await listener.next()
        assert refused.kind == "commandRejected"
        assert (refused.body["reason"], refused.body["correlationId"]) == (
            "release_refused",
            "c-bad",
        )
        assert refused.message.correlation_id == "c-bad"
        assert "1357" not in json.dumps(refused.body)

        await publisher.command(
            queue_id, "releasePrintJob", {"jobId": job_id, "pin": PIN}, correlation_id="c-ok"
        )
        events = await listener.until(ended, timeout=10)
        assert statuses(events) == ["created", "started", "finished"]
        assert (events[0].body["reason"], events[0].message.correlation_id) == ("released", "c-ok")


async def test_a_release_in_a_311_envelope(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, queue_id: str
):
    async with start_service():
        listener = await a_listener(amqp, queue_id)
        job_id = unique("held311")
        await listener.bind_job(job_id)
        # A bare create with `hold` is a create: the field says so.
        await publisher.raw(
            f"commands/{queue_id}",
            json.dumps({"jobId": job_id, "hold": "indefinite"}).encode(),
            v5=False,
        )
        assert (await listener.next()).body["status"] == "held"
        envelope = {
            "headers": {"x-message-type": "releasePrintJob", "x-correlation-id": "c-311"},
            "payload": {"jobId": job_id},
        }
        await publisher.raw(f"commands/{queue_id}", json.dumps(envelope).encode(), v5=False)
        events = await listener.until(ended, timeout=10)
        assert statuses(events) == ["created", "started", "finished"]
        assert events[0].message.correlation_id == "c-311"


async def test_a_hold_and_its_timeout_survive_a_restart(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, queue_id: str
):
    listener = await a_listener(amqp, queue_id)
    kept, expiring = unique("kept"), unique("expiring")
    for job_id in (kept, expiring):
        await listener.bind_job(job_id)
    async with start_service(hold_timeout=3):
        await publisher.create(queue_id, kept, hold="indefinite", releasePin=PIN)
        await publisher.create(queue_id, expiring, hold="indefinite")
        assert statuses(await listener.collect(2)) == ["held", "held"]

    # Restarted on the same database, within the timeout: both are still held, the PIN
    # still guards one, and the other's timer was set again (it expires while running).
    async with start_service(hold_timeout=3) as service:
        job = await service.store.read_job(kept)
        assert job is not None
        assert job.status.value == "held"
        await publisher.command(
            queue_id, "releasePrintJob", {"jobId": kept, "pin": PIN}, correlation_id="c-after"
        )
        done: set[str] = set()

        def both_ended(received: Any) -> bool:
            if ended(received):
                done.add(received.body["jobId"])
            return done == {kept, expiring}

        events = await listener.until(both_ended, timeout=15)
        of = {job_id: [e.body for e in events if e.body.get("jobId") == job_id] for job_id in done}
        assert [(b["status"], b.get("reason")) for b in of[expiring]] == [
            ("canceled", "hold_expired")
        ]
        assert [b["status"] for b in of[kept]] == ["created", "started", "finished"]
