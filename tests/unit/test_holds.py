"""Hold and release through the broker-free harness: a held job reaches no printer until it is
released (by a release, with its PIN when it has one, or by its hold time), and one never
released is canceled at its hold timeout. The PIN is never published nor logged."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Final

from structlog.testing import capture_logs

from service.models import JobStatus, MessageType, RejectionReason, UpdatableField
from tests.harness.fakes import EPOCH
from tests.harness.harness import Harness

QUEUE: Final = "queue-1"
OTHER_QUEUE: Final = "queue-2"
PIN: Final = "4711-secret"

CREATE: Final = MessageType.createPrintJob
RELEASE: Final = MessageType.releasePrintJob


def a_create(job_id: str, **fields: Any) -> dict[str, Any]:
    return {"jobId": job_id, "userId": "alice", "title": f"{job_id}.pdf", **fields}


async def send(
    service: Harness,
    message_type: MessageType,
    payload: dict[str, Any],
    *,
    queue_id: str = QUEUE,
    correlation_id: str = "corr",
) -> None:
    await service.send(
        payload, queue_id=queue_id, message_type=message_type, correlation_id=correlation_id
    )


async def test_a_held_job_prints_only_once_released():
    async with Harness() as service:
        await send(service, CREATE, a_create("job-1", hold="indefinite"))
        await send(service, CREATE, a_create("job-2"))
        await service.until_status("job-2", JobStatus.finished)
        held = service.store.job("job-1")
        assert held is not None
        assert held.status is JobStatus.held
        assert [r.job_id for r in service.printer(QUEUE).requests] == ["job-2"]
        await send(service, MessageType.getPrintCounts, {})

        await send(service, RELEASE, {"jobId": "job-1"}, correlation_id="corr-release")
        await service.until_status("job-1", JobStatus.finished)
        await service.drained()

    events = service.events("job-1")
    assert [(e.status, e.sequence, e.reason) for e in events] == [
        (JobStatus.held, 1, None),
        (JobStatus.created, 2, "released"),
        (JobStatus.started, 3, None),
        (JobStatus.finished, 4, None),
    ]
    assert events[0].holdExpiresAt == EPOCH + timedelta(days=1)
    assert events[0].holdUntil is None
    assert events[1].holdExpiresAt is None
    assert service.publisher.published[-3].correlation_id == "corr-release"
    (counts,) = service.counts()
    assert (counts.counts.held, counts.counts.finished) == (1, 1)
    assert [r.job_id for r in service.printer(QUEUE).requests] == ["job-2", "job-1"]


async def test_a_pin_releases_and_wrong_ones_are_refused_and_counted():
    with capture_logs() as logs:
        async with Harness() as service:
            await pin_release(service)
    check_pin_release(service, logs)


async def pin_release(service: Harness) -> None:
    await send(service, CREATE, a_create("job-1", hold="indefinite", releasePin=PIN))
    await send(service, RELEASE, {"jobId": "job-1"}, correlation_id="corr-none")
    await send(service, RELEASE, {"jobId": "job-1", "pin": "0000"}, correlation_id="corr-bad")
    held = service.store.job("job-1")
    assert held is not None
    assert (held.status, held.pin_attempts, held.sequence) == (JobStatus.held, 1, 1)
    assert held.pin_hash is not None
    assert PIN not in held.pin_hash
    await send(service, RELEASE, {"jobId": "job-1", "pin": PIN})
    await service.until_status("job-1", JobStatus.finished)
    await service.drained()


def check_pin_release(service: Harness, logs: list[Any]) -> None:
    refusals = service.rejections()
    assert [(r.reason, r.correlationId) for r in refusals] == [
        (RejectionReason.release_refused, "corr-none"),
        (RejectionReason.release_refused, "corr-bad"),
    ]
    assert "needs its PIN" in refusals[0].message
    assert "4 attempts left" in refusals[1].message
    assert [e.status for e in service.events("job-1")][:2] == [JobStatus.held, JobStatus.created]
    # The PIN is in no published message and no log line.
    assert all(PIN.encode() not in m.body for m in service.publisher.published)
    assert PIN not in json.dumps(logs, default=str)
    assert service.metric("print_jobs", state="held") == 0


async def test_too_many_wrong_pins_cancel_the_job():
    async with Harness(pin_attempts=3) as service:
        await send(service, CREATE, a_create("job-1", hold="indefinite", releasePin=PIN))
        for attempt in range(3):
            await send(service, RELEASE, {"jobId": "job-1", "pin": f"guess-{attempt}"})
        # Even the right PIN comes too late now.
        await send(service, RELEASE, {"jobId": "job-1", "pin": PIN})
        await service.drained()

    job = service.store.job("job-1")
    assert job is not None
    assert (job.status, job.reason) == (JobStatus.canceled, "pin_attempts_exceeded")
    reasons = [r.reason for r in service.rejections()]
    assert reasons == [RejectionReason.release_refused] * 3 + [RejectionReason.job_final]
    assert "canceled after 3 wrong PINs" in service.rejections()[2].message
    assert service.printer(QUEUE).requests == []


async def test_a_hold_not_released_in_time_is_canceled():
    async with Harness(hold_timeout=timedelta(seconds=0.05)) as service:
        await send(service, CREATE, a_create("job-1", hold="indefinite"))
        service.clock.advance(1)
        await service.until_status("job-1", JobStatus.canceled)
        await service.drained()

    assert [(e.status, e.reason) for e in service.events("job-1")] == [
        (JobStatus.held, None),
        (JobStatus.canceled, "hold_expired"),
    ]
    assert service.printer(QUEUE).requests == []


async def test_a_hold_time_releases_the_job_by_itself():
    until = EPOCH + timedelta(seconds=0.05)
    async with Harness() as service:
        await send(service, CREATE, a_create("job-1", hold=until.isoformat()))
        service.clock.advance(1)
        await service.until_status("job-1", JobStatus.finished)
        await service.drained()

    events = service.events("job-1")
    assert events[0].holdUntil == until
    assert [(e.status, e.reason) for e in events[:2]] == [
        (JobStatus.held, None),
        (JobStatus.created, "hold_ended"),
    ]


async def test_a_hold_time_beyond_the_timeout_ends_in_hold_expired():
    async with Harness(hold_timeout=timedelta(seconds=0.05)) as service:
        later = EPOCH + timedelta(hours=1)
        await send(service, CREATE, a_create("job-1", hold=later.isoformat()))
        service.clock.advance(1)
        job = await service.until_status("job-1", JobStatus.canceled)
    assert job.reason == "hold_expired"


async def test_a_hold_time_that_passed_holds_nothing():
    async with Harness() as service:
        past = EPOCH - timedelta(minutes=1)
        await send(service, CREATE, a_create("job-1", hold=past.isoformat()))
        await service.until_status("job-1", JobStatus.finished)
        await service.drained()
    assert service.events("job-1")[0].status is JobStatus.created


async def test_a_pin_needs_an_indefinite_hold():
    async with Harness() as service:
        await send(service, CREATE, a_create("job-1", releasePin=PIN))
        timed = (EPOCH + timedelta(hours=1)).isoformat()
        await send(service, CREATE, a_create("job-2", hold=timed, releasePin=PIN))
        await service.drained()
    assert [r.reason for r in service.rejections()] == [RejectionReason.schema_violation] * 2
    assert service.store.job("job-1") is None
    assert service.store.job("job-2") is None


async def test_bad_hold_and_pin_values_are_schema_violations():
    bad: list[dict[str, Any]] = [
        {"hold": "tomorrow"},
        {"hold": 42},
        {"hold": "indefinite", "releasePin": "123"},  # too short
        {"hold": "indefinite", "releasePin": "12 34"},  # a space
        {"hold": "indefinite", "releasePin": "x" * 65},
        {"hold": "indefinite", "releasePin": 1234},
    ]
    async with Harness() as service:
        for n, fields in enumerate(bad):
            await send(service, CREATE, a_create(f"job-{n}", **fields))
        await send(service, RELEASE, {"jobId": "job-x", "pin": 1234})
        await send(service, RELEASE, {"jobId": "job-x", "pin": ""})
        await send(service, RELEASE, {"jobId": "job-x", "extra": True})
        await service.drained()
    rejections = service.rejections()
    assert [r.reason for r in rejections] == [RejectionReason.schema_violation] * (len(bad) + 3)
    # A rejected PIN is not echoed either.
    assert all("12 34" not in r.message and "x" * 65 not in r.message for r in rejections)


async def test_held_jobs_can_be_canceled_updated_and_moved():
    async with Harness() as service:
        for job_id in ("job-1", "job-2", "job-3"):
            await send(service, CREATE, a_create(job_id, hold="indefinite"))
        await send(service, MessageType.cancelPrintJob, {"jobId": "job-1"})
        await send(service, MessageType.updatePrintJob, {"jobId": "job-2", "priority": "high"})
        await send(service, MessageType.movePrintJob, {"jobId": "job-3", "toQueue": OTHER_QUEUE})
        # Released through its new queue, it prints there.
        await send(service, RELEASE, {"jobId": "job-3"}, queue_id=OTHER_QUEUE)
        await service.until_status("job-3", JobStatus.finished)
        await service.drained()

    assert [(e.status, e.reason) for e in service.events("job-1")] == [
        (JobStatus.held, None),
        (JobStatus.canceled, "canceled while held"),
    ]
    updated = service.events("job-2")[-1]
    assert (updated.status, updated.updated) == (JobStatus.held, [UpdatableField.priority])
    moved = service.events("job-3")[1]
    assert (moved.status, moved.movedFrom, moved.queueId) == (JobStatus.held, QUEUE, OTHER_QUEUE)
    assert [r.job_id for r in service.printer(OTHER_QUEUE).requests] == ["job-3"]
    assert service.printer(QUEUE).requests == []


async def test_releasing_what_is_not_held():
    async with Harness() as service:
        await send(service, CREATE, a_create("job-1"))
        await service.until_status("job-1", JobStatus.finished)
        await send(service, CREATE, a_create("job-2", hold="indefinite"))
        service.printer(QUEUE).offline()
        await send(service, CREATE, a_create("job-3"))
        await send(service, RELEASE, {"jobId": "job-1"})  # final
        await send(service, RELEASE, {"jobId": "job-3"})  # waiting: its status
        await send(service, RELEASE, {"jobId": "nobody"})
        await send(service, RELEASE, {"jobId": "job-2"}, queue_id=OTHER_QUEUE)
        await service.drained()

    assert [r.reason for r in service.rejections()] == [
        RejectionReason.job_final,
        RejectionReason.unknown_job,
        RejectionReason.unknown_job,
    ]
    snapshot = service.events("job-3")[-1]
    assert (snapshot.status, snapshot.snapshot) == (JobStatus.created, True)
    job = service.store.job("job-2")
    assert job is not None
    assert job.status is JobStatus.held


async def test_a_create_repeated_with_another_pin_is_a_conflict():
    async with Harness() as service:
        create = a_create("job-1", hold="indefinite", releasePin=PIN)
        await send(service, CREATE, create)
        await send(service, CREATE, create)  # a redelivery
        await send(service, CREATE, {**create, "releasePin": "other-pin"})
        await service.drained()
    assert [e.status for e in service.events("job-1")] == [JobStatus.held]
    assert [r.reason for r in service.rejections()] == [RejectionReason.job_conflict]


async def test_a_held_job_survives_a_restart_of_the_dispatcher():
    """Recovery loads held jobs with the others, and their timers run again."""
    service = Harness(hold_timeout=timedelta(seconds=0.05))
    async with service:
        await send(service, CREATE, a_create("job-1", hold="indefinite"))
        await send(service, CREATE, a_create("job-2", hold="indefinite"))
    assert service.store.job("job-1").status is JobStatus.held  # type: ignore[union-attr]

    restarted = Harness(
        hold_timeout=timedelta(seconds=0.05), store=service.store, changes=service.changes
    )
    async with restarted:
        await send(restarted, RELEASE, {"jobId": "job-1"})
        await restarted.until_status("job-1", JobStatus.finished)
        restarted.clock.advance(1)
        job = await restarted.until_status("job-2", JobStatus.canceled)
    assert job.reason == "hold_expired"
