"""The service end to end without brokers: commands in, printers driven, events out.

Each test runs the real handler, dispatcher and relay (`Harness`) over fakes, and judges
what reached the "broker", decoded as the contract's models.
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any, Final

from service.models import JobStatus, MessageType
from service.ports import InlineDocument
from tests.harness.fakes import EPOCH, Changes, FakePrinter
from tests.harness.harness import Harness

QUEUE: Final = "queue-1"
CREATE: Final = MessageType.createPrintJob


def a_create(job_id: str, **fields: Any) -> dict[str, Any]:
    return {"jobId": job_id, "userId": "alice", "documentName": f"{job_id}.pdf", **fields}


async def print_one_job_in_steps(service: Harness) -> None:
    """Create at EPOCH, start 10 s later, finish 20 s after that."""
    printer = service.printer(QUEUE)
    printer.offline()
    printer.hold()
    await service.send(a_create("job-1"), queue_id=QUEUE, message_type=CREATE, correlation_id="c")
    service.clock.advance(10)
    printer.online()
    await service.until_printing(printer)
    service.clock.advance(20)
    printer.release()
    await service.until_status("job-1", JobStatus.finished)
    await service.drained()


async def test_a_job_is_created_started_and_finished_in_order() -> None:
    async with Harness() as service:
        await print_one_job_in_steps(service)

        events = service.events()
        assert [(e.jobId, e.status, e.sequence) for e in events] == [
            ("job-1", JobStatus.created, 1),
            ("job-1", JobStatus.started, 2),
            ("job-1", JobStatus.finished, 3),
        ]
        assert all(e.queueId == QUEUE and not e.snapshot for e in events)
        created = events[0]
        assert created.eventId == uuid.UUID(int=1)
        assert created.timestamp == EPOCH
        assert [m.correlation_id for m in service.publisher.published] == ["c", "c", "c"]
        assert len({e.eventId for e in events}) == 3
        assert service.metric("print_jobs", state="finished") == 1
        assert service.metric("print_jobs", state="created") == 0
        assert service.metric("print_events_published_total", status="finished") == 1


async def test_the_printers_events_have_the_harness_ids_and_times() -> None:
    async with Harness() as service:
        await print_one_job_in_steps(service)

        assert [(e.eventId, e.timestamp) for e in service.events()] == [
            (uuid.UUID(int=1), EPOCH),
            (uuid.UUID(int=2), EPOCH + timedelta(seconds=10)),
            (uuid.UUID(int=3), EPOCH + timedelta(seconds=30)),
        ]


async def test_the_inline_document_reaches_the_printer() -> None:
    document = b"%PDF-1.7 a very small document"
    inline = {"contentType": "application/pdf", "data": base64.b64encode(document).decode()}
    async with Harness() as service:
        await service.send(
            a_create("job-1", document=inline, copies=2), queue_id=QUEUE, message_type=CREATE
        )
        await service.until_status("job-1", JobStatus.finished)

        (request,) = service.printer(QUEUE).requests
        assert request.job_id == "job-1"
        assert request.copies == 2
        assert request.content_type == "application/pdf"
        assert request.document == InlineDocument(document)
        assert await service.store.document("job-1") is None  # dropped once final


async def test_cancel_of_a_job_being_printed_stops_the_printer_with_one_final_event() -> None:
    async with Harness() as service:
        printer = service.printer(QUEUE)
        printer.hold()
        await service.send(a_create("job-1"), queue_id=QUEUE, message_type=CREATE)
        await service.until_printing(printer)

        await service.send(
            {"jobId": "job-1", "force": True},
            queue_id=QUEUE,
            message_type=MessageType.cancelPrintJob,
        )
        await service.until(lambda: printer.canceled == ["job-1"], "the printer told to stop")
        # The next job prints once the canceled one is done with: its outcome was handled.
        printer.release()
        await service.send(a_create("job-2"), queue_id=QUEUE, message_type=CREATE)
        await service.until_status("job-2", JobStatus.finished)
        await service.drained()

        assert [e.status for e in service.events("job-1")] == [
            JobStatus.created,
            JobStatus.started,
            JobStatus.canceled,
        ]
        job = service.store.job("job-1")
        assert job is not None
        assert job.status is JobStatus.canceled
        assert job.reason == "force-canceled while printing"
        assert [r.job_id for r in printer.requests] == ["job-1", "job-2"]


async def test_many_jobs_on_two_queues_each_publish_their_events_in_order() -> None:
    jobs = {f"job-{n}": f"queue-{n % 2}" for n in range(20)}
    async with Harness() as service:
        await service.send_batch(
            [
                service.inbound(a_create(job_id), queue_id=queue_id, message_type=CREATE)
                for job_id, queue_id in jobs.items()
            ]
        )
        for job_id in jobs:
            await service.until_status(job_id, JobStatus.finished)
        await service.drained()

        for job_id, queue_id in jobs.items():
            events = service.events(job_id)
            assert [(e.status, e.sequence) for e in events] == [
                (JobStatus.created, 1),
                (JobStatus.started, 2),
                (JobStatus.finished, 3),
            ], job_id
            assert {e.queueId for e in events} == {queue_id}
        assert len(service.printer("queue-0").requests) == 10
        assert len(service.printer("queue-1").requests) == 10


async def test_the_relay_publishes_everything_once_the_broker_is_back() -> None:
    async with Harness() as service:
        service.publisher.error = ConnectionError("broker away")
        await service.send(a_create("job-1"), queue_id=QUEUE, message_type=CREATE)
        await service.until_status("job-1", JobStatus.finished)  # printing goes on meanwhile
        await service.until(lambda: service.publisher.attempts >= 3, "three failed publishes")
        assert service.publisher.published == []
        assert service.store.outbox_depth == 3  # nothing lost, nothing marked sent

        service.publisher.error = None
        await service.drained()

        events = service.events()
        assert [e.status for e in events] == [
            JobStatus.created,
            JobStatus.started,
            JobStatus.finished,
        ]
        ids = [m.message_id for m in service.publisher.published]
        assert len(set(ids)) == 3  # each once
        assert ids == [str(e.eventId) for e in events]
        failures = service.metric("print_publish_failures_total")
        assert failures == service.publisher.attempts - 3
        assert 1 <= service.metric("print_outbox_redeliveries_total") <= 3


async def test_a_lost_confirm_publishes_again_with_the_same_message_id() -> None:
    """The broker got the message but its confirm was lost: the relay cannot know, publishes
    it again, and the duplicate has the same id (consumers dedupe by it)."""
    async with Harness() as service:
        service.publisher.unconfirmed = 2
        await service.send(a_create("job-1"), queue_id=QUEUE, message_type=CREATE)
        await service.until_status("job-1", JobStatus.finished)
        await service.drained()

        ids = [m.message_id for m in service.publisher.published]
        duplicates = {i: n for i, n in Counter(ids).items() if n > 1}
        assert sum(duplicates.values()) - len(duplicates) == 2  # the two lost confirms
        first_seen = list(dict.fromkeys(ids))
        statuses = [service.events()[ids.index(message_id)].status for message_id in first_seen]
        assert statuses == [JobStatus.created, JobStatus.started, JobStatus.finished]
        assert service.store.outbox_depth == 0


async def test_on_exit_the_relay_drains_the_outbox() -> None:
    service = Harness()
    async with service:
        service.printer(QUEUE).offline()
        await service.send(a_create("job-1"), queue_id=QUEUE, message_type=CREATE)
    # Left without waiting: the exit published what was committed.
    assert [e.status for e in service.events()] == [JobStatus.created]
    assert service.store.outbox_depth == 0


async def test_a_pool_hands_its_jobs_to_the_printer_that_is_online() -> None:
    changes = Changes()
    away, there = FakePrinter("away", changes), FakePrinter("there", changes)
    away.offline()
    async with Harness(lanes={QUEUE: [away, there]}, changes=changes) as service:
        for n in range(3):
            await service.send(a_create(f"job-{n}"), queue_id=QUEUE, message_type=CREATE)
        for n in range(3):
            await service.until_status(f"job-{n}", JobStatus.finished)

        assert away.requests == []
        assert [r.job_id for r in there.requests] == ["job-0", "job-1", "job-2"]
