"""A job's life on real brokers: create, print, finish; cancel; status; duplicates.

Where a job must still be printing when the test acts on it, it prints on a `FakePrinter`
the test holds (and releases): no print duration is a race window.
"""

from __future__ import annotations

import pytest

from service.app import Service
from tests.harness.fakes import FakePrinter, FakePrinters
from tests.integration.conftest import (
    Listener,
    Publisher,
    Received,
    ServiceFactory,
    statuses,
    unique,
)
from tests.waits import wait_until

pytestmark = pytest.mark.brokers


def is_final(received) -> bool:
    return received.body.get("status") in ("finished", "canceled") or received.kind == (
        "commandRejected"
    )


async def test_create_goes_created_started_finished_with_one_correlation_id(
    service: Service, listener: Listener, publisher: Publisher, queue_id: str
):
    job_id = unique("job")
    await listener.bind_job(job_id)
    await publisher.create(queue_id, job_id, userId="alice", correlation_id="corr-lifecycle-1")

    events = await listener.until(is_final)

    assert statuses(events) == ["created", "started", "finished"]
    assert [e.body["sequence"] for e in events] == [1, 2, 3]
    assert {e.message.correlation_id for e in events} == {"corr-lifecycle-1"}
    assert {e.message.headers["x-correlation-id"] for e in events} == {"corr-lifecycle-1"}
    assert {e.body["queueId"] for e in events} == {queue_id}
    assert len({e.body["eventId"] for e in events}) == 3


def held_printer(queue_id: str) -> tuple[FakePrinter, FakePrinters]:
    """The one printer of `queue_id`, held: what it prints waits for `release`."""
    printer = FakePrinter(f"held-{queue_id}")
    printer.hold()
    return printer, FakePrinters({queue_id: (printer,)})


async def test_cancel_before_start(
    start_service: ServiceFactory, amqp, publisher: Publisher, queue_id: str
):
    printer, printers = held_printer(queue_id)
    async with start_service(printers=printers):
        listener = await _listener(amqp, queue_id)
        printing, waiting = unique("busy"), unique("waiting")
        await listener.bind_job(printing)
        await listener.bind_job(waiting)
        await publisher.create(queue_id, printing)
        await listener.until(lambda r: r.body.get("status") == "started")
        await publisher.create(queue_id, waiting)
        await publisher.command(queue_id, "cancelPrintJob", {"jobId": waiting}, correlation_id="c1")

        events = await listener.until(
            lambda r: r.body.get("jobId") == waiting and r.body.get("status") == "canceled"
        )
        canceled = events[-1]
        assert canceled.message.correlation_id == "c1"
        assert canceled.body["sequence"] == 2
        printer.release()
        await listener.until(lambda r: r.body.get("status") == "finished")
        # Printed once the printer was free: had the canceled job been taken up, it would
        # have been printed before this one.
        after = unique("after")
        await listener.bind_job(after)
        await publisher.create(queue_id, after)
        await listener.until(lambda r: r.body.get("jobId") == after and is_final(r))
        assert [r.job_id for r in printer.requests] == [printing, after], (
            "the canceled job never starts"
        )


async def test_force_cancel_stops_the_printer(
    start_service: ServiceFactory, amqp, publisher: Publisher, queue_id: str
):
    async with start_service(print_duration=30.0):
        listener = await _listener(amqp, queue_id)
        job_id = unique("job")
        await listener.bind_job(job_id)
        await publisher.create(queue_id, job_id)
        await listener.until(lambda r: r.body.get("status") == "started")

        await publisher.command(queue_id, "cancelPrintJob", {"jobId": job_id, "force": True})

        canceled = await listener.next()
        assert canceled.body["status"] == "canceled"
        assert canceled.body["reason"] == "force-canceled while printing"
        # The printer is free again: the next job prints at once.
        after = unique("after")
        await listener.bind_job(after)
        await publisher.create(queue_id, after)
        assert statuses(await listener.collect(2)) == ["created", "started"]
        # The service is past the end of the canceled print; a `finished` for it would
        # come before its status (one job's messages keep their order).
        await publisher.command(queue_id, "getPrintJobStatus", {"jobId": job_id})
        status = await listener.next()
        assert (status.body["jobId"], status.body["status"]) == (job_id, "canceled"), (
            "no finished after a forced cancel"
        )
        assert status.body["snapshot"] is True


async def test_cancel_without_force_is_refused_while_printing(
    start_service: ServiceFactory, amqp, publisher: Publisher, queue_id: str
):
    printer, printers = held_printer(queue_id)
    async with start_service(printers=printers):
        listener = await _listener(amqp, queue_id)
        job_id = unique("job")
        await listener.bind_job(job_id)
        await publisher.create(queue_id, job_id)
        await listener.until(lambda r: r.body.get("status") == "started")

        await publisher.command(queue_id, "cancelPrintJob", {"jobId": job_id}, correlation_id="c2")

        refused = await listener.next()
        assert refused.kind == "commandRejected"
        assert refused.body["reason"] == "job_started"
        assert refused.body["jobId"] == job_id
        assert refused.body["correlationId"] == "c2"
        printer.release()
        assert statuses([await listener.next()]) == ["finished"]


async def test_cancel_of_unknown_and_of_finished_jobs(
    service: Service, listener: Listener, publisher: Publisher, queue_id: str
):
    await publisher.command(queue_id, "cancelPrintJob", {"jobId": "no-such-job"})
    unknown = await listener.next()
    assert (unknown.kind, unknown.body["reason"]) == ("commandRejected", "unknown_job")

    job_id = unique("job")
    await listener.bind_job(job_id)
    await publisher.create(queue_id, job_id)
    await listener.until(lambda r: r.body.get("status") == "finished")
    await publisher.command(queue_id, "cancelPrintJob", {"jobId": job_id, "force": True})
    final = await listener.next()
    assert final.body["reason"] == "job_final"
    assert "finished" in final.body["message"]


async def test_status_query_answers_on_the_job_route(
    service: Service, listener: Listener, publisher: Publisher, queue_id: str
):
    job_id = unique("job")
    await listener.bind_job(job_id)
    await publisher.create(queue_id, job_id)
    await listener.until(lambda r: r.body.get("status") == "finished")

    await publisher.command(
        queue_id, "getPrintJobStatus", {"jobId": job_id}, correlation_id="status-1"
    )

    answer = await listener.next()
    assert answer.body["status"] == "finished"
    assert answer.body["snapshot"] is True
    assert answer.body["sequence"] == 3
    assert answer.message.correlation_id == "status-1"
    assert answer.message.routing_key == f"events/{job_id}"

    await publisher.command(queue_id, "getPrintJobStatus", {"jobId": "never-created"})
    assert (await listener.next()).body["reason"] == "unknown_job"


async def test_duplicate_create_makes_no_second_job(
    service: Service, listener: Listener, publisher: Publisher, queue_id: str
):
    job_id = unique("job")
    await listener.bind_job(job_id)
    for _ in range(3):
        await publisher.create(queue_id, job_id, userId="bob", priority="low")

    events = await listener.until(lambda r: r.body.get("status") == "finished")
    assert statuses(events) == ["created", "started", "finished"]
    duplicates = service.metrics.commands.labels("createPrintJob", "duplicate")
    await wait_until(lambda: duplicates._value.get() == 2, what="both duplicates handled")
    # Anything the duplicates made would come before the job's status.
    await publisher.command(queue_id, "getPrintJobStatus", {"jobId": job_id})
    status = await listener.next()
    assert (status.body["status"], status.body["snapshot"]) == ("finished", True)


async def test_same_job_id_with_other_payload_is_a_conflict(
    service: Service, listener: Listener, publisher: Publisher, queue_id: str
):
    job_id = unique("job")
    await listener.bind_job(job_id)
    await publisher.create(queue_id, job_id, userId="bob")
    await publisher.create(queue_id, job_id, userId="mallory")

    events = await listener.until(lambda r: r.kind == "commandRejected")
    assert events[-1].body["reason"] == "job_conflict"
    assert statuses(events).count("created") == 1


async def test_waiting_jobs_print_by_priority_then_age(
    start_service: ServiceFactory, amqp, publisher: Publisher, queue_id: str
):
    printer, printers = held_printer(queue_id)
    async with start_service(printers=printers):
        listener = await _listener(amqp, queue_id)
        blocker = unique("blocker")
        jobs = {p: unique(p) for p in ("low1", "high", "medium", "low2")}
        for job_id in (blocker, *jobs.values()):
            await listener.bind_job(job_id)
        await publisher.create(queue_id, blocker)
        await listener.until(lambda r: r.body.get("status") == "started")
        for name, job_id in jobs.items():
            await publisher.create(queue_id, job_id, priority=name.rstrip("12"))
        created: set[str] = set()

        def all_created(received: Received) -> bool:
            if received.body.get("status") == "created":
                created.add(received.body["jobId"])
            return created == set(jobs.values())

        await listener.until(all_created)  # all four wait, in the store
        printer.release()

        events = await listener.until(
            lambda r: r.body.get("jobId") == jobs["low2"] and r.body.get("status") == "finished",
            timeout=15,
        )
        started = [e.body["jobId"] for e in events if e.body.get("status") == "started"]
        assert started == [jobs["high"], jobs["medium"], jobs["low1"], jobs["low2"]]


async def _listener(amqp, queue_id: str) -> Listener:
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind("print.rejections", f"rejections/{queue_id}")
    return Listener(amqp, queue)


async def test_a_restart_resumes_waiting_and_printing_jobs(
    start_service: ServiceFactory, amqp, publisher: Publisher, queue_id: str
):
    listener = await _listener(amqp, queue_id)
    printing, low, high = unique("printing"), unique("low"), unique("high")
    for job_id in (printing, low, high):
        await listener.bind_job(job_id)
    _, printers = held_printer(queue_id)
    async with start_service(printers=printers):
        await publisher.create(queue_id, printing)
        await listener.until(lambda r: r.body.get("status") == "started")
        await publisher.create(queue_id, low, priority="low")
        await publisher.create(queue_id, high, priority="high")
        await listener.collect(2)  # both created
    # Stopped mid-print; the same store is opened again.
    async with start_service(print_duration=0.1):
        events = await listener.until(
            lambda r: r.body["jobId"] == low and r.body.get("status") == "finished", timeout=15
        )
    changes = [(e.body["jobId"], e.body["status"]) for e in events]
    assert changes == [
        (printing, "finished"),  # printed again from the start, without a second `started`
        (high, "started"),
        (high, "finished"),
        (low, "started"),
        (low, "finished"),
    ]
    assert [e.body["sequence"] for e in events][:1] == [3]
