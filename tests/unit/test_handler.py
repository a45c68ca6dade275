"""The command handler, through the broker-free harness: every command type, and every way
applying one can fail.

Each test runs the real handler, dispatcher and relay (`Harness`) and judges what the
"broker" got, decoded as the contract's models. A printer taken `offline()` keeps jobs
waiting (`created`); a held one keeps its job `started`.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, Final

import pytest
from structlog.testing import capture_logs

from service.models import JobStatus, MessageType, Priority, RejectionReason, UpdatableField
from service.ports import StoreError, StoreRefused
from tests.harness.fakes import EPOCH, Writes
from tests.harness.harness import Harness

QUEUE: Final = "queue-1"
BAD_JOB: Final = "job-bad"
BAD_CORRELATION: Final = "corr-bad"

CREATE: Final = MessageType.createPrintJob
CANCEL: Final = MessageType.cancelPrintJob
UPDATE: Final = MessageType.updatePrintJob
STATUS: Final = MessageType.getPrintJobStatus
COUNTS: Final = MessageType.getPrintCounts


def a_create(job_id: str, **fields: Any) -> dict[str, Any]:
    return {"jobId": job_id, "userId": "alice", "documentName": f"{job_id}.pdf", **fields}


async def send(
    service: Harness, message_type: MessageType, payload: dict[str, Any], correlation_id: str
) -> None:
    await service.send(
        payload, queue_id=QUEUE, message_type=message_type, correlation_id=correlation_id
    )


def commands(service: Harness, message_type: str, outcome: str) -> float:
    return service.metric("print_commands_received_total", type=message_type, outcome=outcome)


def bad_job(writes: Writes) -> bool:
    return any(job.job_id == BAD_JOB for job in writes.jobs)


def about_bad_command(writes: Writes) -> bool:
    """The bad command, and also its answer (which carries its correlation id)."""
    return bad_job(writes) or any(m.correlation_id == BAD_CORRELATION for m in writes.messages)


def three_creates(service: Harness) -> list[Any]:
    return [
        service.inbound(a_create("job-1"), queue_id=QUEUE, message_type=CREATE),
        service.inbound(
            a_create(BAD_JOB), queue_id=QUEUE, message_type=CREATE, correlation_id=BAD_CORRELATION
        ),
        service.inbound(a_create("job-3"), queue_id=QUEUE, message_type=CREATE),
    ]


# --- createPrintJob ----------------------------------------------------------------------------


async def test_a_create_stores_the_job_and_announces_it() -> None:
    async with Harness() as service:
        service.printer(QUEUE).offline()
        await send(service, CREATE, a_create("job-1"), "corr-1")
        await service.drained()

        (event,) = service.events()
        assert event.jobId == "job-1"
        assert event.status is JobStatus.created
        assert event.sequence == 1
        assert event.queueId == QUEUE
        assert event.eventId == uuid.UUID(int=1)  # the first id the handler took
        assert event.timestamp == EPOCH
        assert not event.snapshot
        assert service.publisher.published[0].correlation_id == "corr-1"
        job = service.store.job("job-1")
        assert job is not None
        assert job.status is JobStatus.created
        assert job.correlation_id == "corr-1"
        assert commands(service, "createPrintJob", "accepted") == 1
        assert service.metric("print_jobs", state="created") == 1


async def test_a_repeated_create_changes_nothing() -> None:
    async with Harness() as service:
        service.printer(QUEUE).offline()
        await send(service, CREATE, a_create("job-1"), "corr-1")
        await send(service, CREATE, a_create("job-1"), "corr-1")  # a redelivery
        await service.drained()

        assert [e.status for e in service.events()] == [JobStatus.created]
        assert service.rejections() == []
        assert commands(service, "createPrintJob", "duplicate") == 1
        assert service.metric("print_jobs", state="created") == 1


async def test_a_create_that_conflicts_with_a_job_is_rejected() -> None:
    async with Harness() as service:
        service.printer(QUEUE).offline()
        await send(service, CREATE, a_create("job-1"), "corr-1")
        await send(service, CREATE, a_create("job-1", userId="bob"), "corr-2")
        await service.drained()

        (rejection,) = service.rejections()
        assert rejection.reason is RejectionReason.job_conflict
        assert rejection.correlationId == "corr-2"
        assert rejection.jobId == "job-1"
        assert rejection.messageType == "createPrintJob"
        assert [e.status for e in service.events()] == [JobStatus.created]
        job = service.store.job("job-1")
        assert job is not None
        assert job.user_id == "alice"


# --- cancelPrintJob ----------------------------------------------------------------------------


async def test_a_waiting_job_canceled_is_never_printed() -> None:
    async with Harness() as service:
        printer = service.printer(QUEUE)
        printer.offline()
        await send(service, CREATE, a_create("job-1"), "corr-1")
        await send(service, CANCEL, {"jobId": "job-1"}, "corr-2")
        await send(service, CREATE, a_create("job-2"), "corr-3")
        printer.online()
        await service.until_status("job-2", JobStatus.finished)
        await service.drained()

        first = service.events("job-1")
        assert [(e.status, e.sequence) for e in first] == [
            (JobStatus.created, 1),
            (JobStatus.canceled, 2),
        ]
        assert first[1].reason == "canceled before it started"
        # job-1 was first in line: had it still been waiting, it would have printed first.
        assert [request.job_id for request in printer.requests] == ["job-2"]
        assert service.metric("print_jobs", state="canceled") == 1


async def test_a_printing_job_is_canceled_only_with_force() -> None:
    async with Harness() as service:
        printer = service.printer(QUEUE)
        printer.hold()
        await send(service, CREATE, a_create("job-1"), "corr-1")
        await service.until_printing(printer)

        await send(service, CANCEL, {"jobId": "job-1"}, "corr-2")
        await service.drained()
        (refused,) = service.rejections()
        assert refused.reason is RejectionReason.job_started
        assert refused.correlationId == "corr-2"
        assert printer.canceled == []
        assert printer.printing.is_set()

        await send(service, CANCEL, {"jobId": "job-1", "force": True}, "corr-3")
        await service.until(lambda: not printer.printing.is_set(), "the print to stop")
        await service.drained()
        assert printer.canceled == ["job-1"]
        statuses = [e.status for e in service.events("job-1")]
        assert statuses == [JobStatus.created, JobStatus.started, JobStatus.canceled]
        assert service.events("job-1")[-1].reason == "force-canceled while printing"


@pytest.mark.parametrize(
    ("job_id", "reason"),
    [("job-1", RejectionReason.job_final), ("job-none", RejectionReason.unknown_job)],
    ids=["final", "unknown"],
)
async def test_a_cancel_of_a_final_or_unknown_job_is_rejected(
    job_id: str, reason: RejectionReason
) -> None:
    async with Harness() as service:
        await send(service, CREATE, a_create("job-1"), "corr-1")
        await service.until_status("job-1", JobStatus.finished)
        await send(service, CANCEL, {"jobId": job_id, "force": True}, "corr-2")
        await service.drained()

        (rejection,) = service.rejections()
        assert rejection.reason is reason
        assert rejection.jobId == job_id
        assert service.events("job-1")[-1].status is JobStatus.finished
        assert commands(service, "cancelPrintJob", "rejected") == 1


# --- updatePrintJob ----------------------------------------------------------------------------


async def test_an_update_changes_a_waiting_job_and_its_place_in_line() -> None:
    async with Harness() as service:
        printer = service.printer(QUEUE)
        printer.offline()
        await send(service, CREATE, a_create("job-a", priority="low"), "corr-1")
        await send(service, CREATE, a_create("job-b", priority="low"), "corr-2")
        await send(service, UPDATE, {"jobId": "job-b", "priority": "high"}, "corr-3")
        await service.drained()

        updated = service.events("job-b")[-1]
        assert updated.status is JobStatus.created
        assert updated.sequence == 2
        assert updated.updated == [UpdatableField.priority]
        assert updated.priority is Priority.high

        printer.online()
        await service.until_status("job-a", JobStatus.finished)
        assert [request.job_id for request in printer.requests] == ["job-b", "job-a"]


async def test_an_update_of_a_printing_or_unknown_job_is_rejected() -> None:
    async with Harness() as service:
        printer = service.printer(QUEUE)
        printer.hold()
        await send(service, CREATE, a_create("job-1"), "corr-1")
        await service.until_printing(printer)
        await send(service, UPDATE, {"jobId": "job-1", "priority": "high"}, "corr-2")
        await send(service, UPDATE, {"jobId": "job-none", "priority": "high"}, "corr-3")
        printer.release()
        await service.until_status("job-1", JobStatus.finished)
        await service.drained()

        assert [(r.correlationId, r.reason) for r in service.rejections()] == [
            ("corr-2", RejectionReason.job_started),
            ("corr-3", RejectionReason.unknown_job),
        ]
        assert all(e.updated is None for e in service.events("job-1"))


# --- getPrintJobStatus, getPrintCounts ---------------------------------------------------------


async def test_a_status_query_is_answered_with_a_snapshot_taken_now() -> None:
    async with Harness() as service:
        service.printer(QUEUE).offline()
        await send(service, CREATE, a_create("job-1"), "corr-1")
        service.clock.advance(30)
        await send(service, STATUS, {"jobId": "job-1"}, "corr-2")
        await send(service, STATUS, {"jobId": "job-none"}, "corr-3")
        await service.drained()

        created, snapshot = service.events("job-1")
        assert snapshot.snapshot
        assert snapshot.status is JobStatus.created
        assert snapshot.sequence == created.sequence == 1  # a query changes nothing
        assert snapshot.timestamp == EPOCH + timedelta(seconds=30)
        assert created.timestamp == EPOCH
        assert service.publisher.published[1].correlation_id == "corr-2"
        (rejection,) = service.rejections()
        assert rejection.reason is RejectionReason.unknown_job
        assert rejection.correlationId == "corr-3"


async def test_counts_are_the_queues_jobs_per_status() -> None:
    async with Harness() as service:
        service.printer(QUEUE).offline()
        for n in range(3):
            await send(service, CREATE, a_create(f"job-{n}"), f"corr-{n}")
        await send(service, CANCEL, {"jobId": "job-0"}, "corr-cancel")
        await service.send({}, queue_id="queue-other", message_type=COUNTS)
        await send(service, COUNTS, {}, "corr-counts")
        await service.drained()

        none = {status.value: 0 for status in JobStatus}
        other, counts = service.counts()
        assert other.queueId == "queue-other"
        assert other.counts.model_dump() == none
        assert counts.queueId == QUEUE
        assert counts.timestamp == EPOCH
        assert counts.counts.model_dump() == {**none, "created": 2, "canceled": 1}
        assert service.publisher.published[-1].correlation_id == "corr-counts"


# --- what the decoder rejects ------------------------------------------------------------------


async def test_what_cannot_be_decoded_is_answered_and_counted_by_a_known_label() -> None:
    async with Harness() as service:
        await service.send(b"{not json", queue_id=QUEUE, correlation_id="corr-1")
        await service.send(
            a_create("job-1"), queue_id=QUEUE, message_type="makeCoffee", correlation_id="corr-2"
        )
        await service.send(a_create("job-2"), queue_id=QUEUE, message_type=CREATE, retained=True)
        await service.drained()

        first, second, third = service.rejections()
        assert (first.reason, first.correlationId) == (RejectionReason.invalid_json, "corr-1")
        assert second.reason is RejectionReason.unknown_message_type
        assert third.reason is RejectionReason.retained_command
        assert third.correlationId == str(uuid.UUID(int=3))  # made up by the decoder
        assert third.eventId == uuid.UUID(int=4)
        assert service.events() == []
        # Counted by the contract's names only: "makeCoffee" is input, not a label; the
        # retained command was rejected before its type was read.
        assert commands(service, "unknown", "rejected") == 3
        assert commands(service, "makeCoffee", "rejected") == 0


# --- the store fails ---------------------------------------------------------------------------


async def test_a_store_outage_is_not_answered_and_raises() -> None:
    async with Harness() as service:
        service.store.fault = lambda _: StoreError("connection refused")
        with pytest.raises(StoreError):
            await service.send_batch(three_creates(service))

        assert service.store.outbox() == []
        assert service.store.job("job-1") is None
        assert await service.store.dead_letters(10) == []
        assert service.metric("print_dead_letters_total", source="command") == 0
        assert commands(service, "createPrintJob", "accepted") == 0

        service.store.fault = None  # back: the redelivered batch is applied
        await service.send_batch(three_creates(service))
        await service.drained()
        created = [e.jobId for e in service.events() if e.status is JobStatus.created]
        assert sorted(created) == sorted(["job-1", BAD_JOB, "job-3"])


async def test_a_commit_whose_reply_was_lost_is_printed_all_the_same() -> None:
    """The connection died during the commit: the handler cannot know it committed. It
    raises (nothing is acknowledged) and has the dispatcher catch up with the store, which
    does have the job: it is printed."""
    async with Harness() as service:
        service.store.lost_reply = StoreError("connection lost during the commit")
        with capture_logs() as logs:
            with pytest.raises(StoreError):
                await send(service, CREATE, a_create("job-1"), "corr-1")
            service.store.lost_reply = None
            await service.until_status("job-1", JobStatus.finished)
        await service.drained()
        assert [e.status for e in service.events("job-1")] == [
            JobStatus.created,
            JobStatus.started,
            JobStatus.finished,
        ]
        assert [request.job_id for request in service.printer(QUEUE).requests] == ["job-1"]
        assert any(entry["event"] == "jobs_resynced" for entry in logs)
        assert commands(service, "createPrintJob", "accepted") == 0  # not acknowledged


async def test_a_commit_that_does_not_become_durable_fails_the_future() -> None:
    async with Harness() as service:
        service.printer(QUEUE).offline()
        service.store.durability_error = StoreError("fsync failed")
        inbound = service.inbound(
            a_create("job-1"), queue_id=QUEUE, message_type=CREATE, correlation_id="corr-1"
        )
        committed = await service.handler.handle([inbound])  # applied: returns normally
        with pytest.raises(StoreError, match="fsync failed"):
            await committed
        # Its effects wait for the commit: none ran.
        service.store.durability_error = None
        await send(service, STATUS, {"jobId": "job-none"}, "corr-2")  # one that commits
        assert commands(service, "createPrintJob", "accepted") == 0
        assert service.metric("print_jobs", state="created") == 0
        assert commands(service, "getPrintJobStatus", "rejected") == 1


async def test_a_bug_hit_by_one_command_costs_no_other() -> None:
    async with Harness() as service:
        service.printer(QUEUE).offline()
        service.store.fault = lambda writes: KeyError("a bug") if bad_job(writes) else None
        with capture_logs() as logs:
            await service.send_batch(three_creates(service))
        await service.drained()

        created = [e.jobId for e in service.events()]
        assert sorted(created) == ["job-1", "job-3"]
        (rejection,) = service.rejections()
        assert rejection.reason is RejectionReason.internal_error
        assert rejection.correlationId == BAD_CORRELATION
        assert rejection.jobId == BAD_JOB
        assert service.store.job(BAD_JOB) is None
        assert service.store.failed_commits == 2  # the batch, then the bad command alone
        assert [e["event"] for e in logs].count("command_failed") == 1
        assert service.metric("print_store_refusals_total") == 0
        assert await service.store.dead_letters(10) == []


async def test_a_command_the_store_refuses_is_counted_and_answered() -> None:
    async with Harness() as service:
        service.printer(QUEUE).offline()
        service.store.fault = lambda w: StoreRefused("text it cannot hold") if bad_job(w) else None
        with capture_logs() as logs:
            await service.send_batch(three_creates(service))
        await service.drained()

        assert service.metric("print_store_refusals_total") == 1
        assert any(entry["event"] == "command_refused_by_store" for entry in logs)
        (rejection,) = service.rejections()
        assert rejection.reason is RejectionReason.internal_error
        assert sorted(e.jobId for e in service.events()) == ["job-1", "job-3"]


async def test_a_rejection_that_cannot_be_stored_is_answered_with_internal_error() -> None:
    async with Harness() as service:

        def first_answer(writes: Writes) -> BaseException | None:
            if any(m.label == "invalid_json" for m in writes.messages):
                return StoreRefused("the echo is more than it can hold")
            return None

        service.store.fault = first_answer
        await service.send(b"{not json", queue_id=QUEUE, correlation_id="corr-1")
        await service.drained()

        (rejection,) = service.rejections()
        assert rejection.reason is RejectionReason.internal_error
        assert rejection.correlationId == "corr-1"
        assert rejection.message == "the command's rejection could not be stored"


async def test_a_command_whose_answer_fails_too_is_parked() -> None:
    async with Harness() as service:
        service.printer(QUEUE).offline()
        service.store.fault = lambda w: StoreRefused("no") if about_bad_command(w) else None
        batch = three_creates(service)
        await service.send_batch(batch)  # returns normally: the batch can be acknowledged
        await service.drained()

        (letter,) = await service.store.dead_letters(10)
        bad = batch[1]
        assert letter.source == "command"
        assert letter.address == f"commands/{QUEUE}"
        assert letter.payload == bad.payload
        assert dict(letter.properties) == dict(bad.properties)
        assert letter.attempts == 1
        assert letter.at == EPOCH.timestamp()
        assert "neither applied nor answered" in letter.reason
        assert service.metric("print_dead_letters_total", source="command") == 1
        assert service.rejections() == []
        assert sorted(e.jobId for e in service.events()) == ["job-1", "job-3"]


async def test_a_dead_letter_that_cannot_be_kept_is_logged_not_raised() -> None:
    async with Harness() as service:
        service.printer(QUEUE).offline()
        service.store.fault = lambda w: StoreRefused("no") if about_bad_command(w) else None
        service.store.park_error = RuntimeError("the dead letters table is gone")
        with capture_logs() as logs:
            await service.send_batch(three_creates(service))  # returns normally
        await service.drained()

        assert await service.store.dead_letters(10) == []
        (lost,) = [entry for entry in logs if entry["event"] == "dead_letter_lost"]
        assert lost["topic"] == f"commands/{QUEUE}"
        assert sorted(e.jobId for e in service.events()) == ["job-1", "job-3"]


async def test_a_store_outage_while_parking_propagates() -> None:
    async with Harness() as service:
        service.store.fault = lambda w: StoreRefused("no") if about_bad_command(w) else None
        service.store.park_error = StoreError("gone")
        with pytest.raises(StoreError):
            await service.send_batch(three_creates(service))
        assert await service.store.dead_letters(10) == []
