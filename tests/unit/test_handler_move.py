"""`movePrintJob`, through the broker-free harness: a waiting job goes to another queue's
printers with its age kept; what the job's state, the queue configuration or the key do
not allow is refused, and changes nothing."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any, Final

import pytest

from service.core import jobs
from service.core.access import AccessControl, KeyTable
from service.core.queues import QueueMap
from service.models import JobStatus, MessageType, RejectionReason
from tests.harness.harness import Harness

CREATE: Final = MessageType.createPrintJob
MOVE: Final = MessageType.movePrintJob


def a_create(job_id: str, **fields: Any) -> dict[str, Any]:
    return {"jobId": job_id, "userId": "alice", "documentName": f"{job_id}.pdf", **fields}


def a_pdf() -> dict[str, str]:
    return {"contentType": "application/pdf", "data": base64.b64encode(b"%PDF-1.7").decode()}


async def move(
    service: Harness,
    job_id: str,
    to_queue: str,
    *,
    queue: str = "queue-a",
    correlation_id: str = "corr-move",
    key: str | None = None,
) -> None:
    await service.send(
        {"jobId": job_id, "toQueue": to_queue},
        queue_id=queue,
        message_type=MOVE,
        correlation_id=correlation_id,
        properties={"x-api-key": key} if key is not None else {},
    )


async def test_a_moved_job_prints_on_the_new_queue_in_its_place_by_age() -> None:
    async with Harness() as service:
        old, new = service.printer("queue-a"), service.printer("queue-b")
        old.offline()
        new.offline()
        await service.send(a_create("job-old"), queue_id="queue-a", message_type=CREATE)
        service.clock.advance(10)
        await service.send(a_create("job-new"), queue_id="queue-b", message_type=CREATE)
        service.clock.advance(10)
        await move(service, "job-old", "queue-b")
        await service.drained()

        assert service.rejections() == []
        created, moved = service.events("job-old")
        assert moved.status is JobStatus.created
        assert moved.sequence == created.sequence + 1
        assert (moved.queueId, moved.movedFrom) == ("queue-b", "queue-a")
        assert not moved.snapshot
        assert service.publisher.published[-1].correlation_id == "corr-move"
        assert service.publisher.published[-1].routing_key == "events/job-old"

        old.online()
        new.online()
        await service.until_status("job-new", JobStatus.finished)
        await service.until_status("job-old", JobStatus.finished)
        assert old.requests == []
        # Created earlier, it keeps its age: it goes first on its new queue.
        assert [r.job_id for r in new.requests] == ["job-old", "job-new"]
        job = service.store.job("job-old")
        assert job is not None
        assert job.queue_id == "queue-b"


async def test_a_moved_job_is_acted_on_through_its_new_queue_only() -> None:
    async with Harness() as service:
        service.printer("queue-b").offline()
        service.printer("queue-a").offline()
        await service.send(a_create("job-1"), queue_id="queue-a", message_type=CREATE)
        await move(service, "job-1", "queue-b")
        await service.send({"jobId": "job-1"}, queue_id="queue-a", message_type="getPrintJobStatus")
        await service.send({"jobId": "job-1"}, queue_id="queue-b", message_type="getPrintJobStatus")
        await service.drained()

        (rejection,) = service.rejections()
        assert rejection.reason is RejectionReason.unknown_job
        assert service.events("job-1")[-1].queueId == "queue-b"


async def test_a_started_or_final_job_is_not_moved() -> None:
    async with Harness() as service:
        printer = service.printer("queue-a")
        printer.hold()
        await service.send(a_create("job-1"), queue_id="queue-a", message_type=CREATE)
        await service.until_printing(printer)
        await move(service, "job-1", "queue-b", correlation_id="c-started")
        printer.release()
        await service.until_status("job-1", JobStatus.finished)
        await move(service, "job-1", "queue-b", correlation_id="c-final")
        await service.drained()

        assert [(r.correlationId, r.reason) for r in service.rejections()] == [
            ("c-started", RejectionReason.job_started),
            ("c-final", RejectionReason.job_final),
        ]
        assert all(e.movedFrom is None for e in service.events("job-1"))
        assert service.printer("queue-b").requests == []


async def test_a_job_of_another_queue_or_none_is_unknown() -> None:
    async with Harness() as service:
        service.printer("queue-a").offline()
        await service.send(a_create("job-a"), queue_id="queue-a", message_type=CREATE)
        await move(service, "job-a", "queue-c", queue="queue-b", correlation_id="via-b")
        await move(service, "job-none", "queue-c", correlation_id="missing")
        await service.drained()

        via_b, missing = service.rejections()
        assert via_b.reason is missing.reason is RejectionReason.unknown_job
        assert via_b.message == missing.message.replace("job-none", "job-a")
        job = service.store.job("job-a")
        assert job is not None
        assert (job.queue_id, job.sequence) == ("queue-a", 1)


async def test_a_move_to_its_own_queue_changes_nothing_and_says_where_it_is() -> None:
    async with Harness() as service:
        service.printer("queue-a").offline()
        await service.send(a_create("job-1"), queue_id="queue-a", message_type=CREATE)
        await move(service, "job-1", "queue-a")
        await service.drained()

        assert service.rejections() == []
        created, answer = service.events("job-1")
        assert answer.snapshot
        assert answer.movedFrom is None
        assert (answer.queueId, answer.sequence) == ("queue-a", created.sequence)


CONFIGURED: Final = QueueMap.from_mapping(
    {
        "printers": {
            "sim-a": {"backend": "simulated"},
            "sim-b": {"backend": "simulated"},
            "real": {"uri": "ipp://printer.example/ipp/print"},
            "pdf-only": {"backend": "simulated"},
        },
        "queues": {
            "queue-a": {"printers": ["sim-a"]},
            "queue-b": {"printers": ["sim-b"]},
            "queue-ipp": {"printers": ["real"]},
            "queue-pdf": {"printers": ["pdf-only"], "document_formats": ["application/pdf"]},
        },
    }
)


@pytest.mark.parametrize(
    ("create", "to_queue", "reason"),
    [
        (a_create("job-1"), "queue-nowhere", RejectionReason.unknown_queue),
        (a_create("job-1"), "queue-ipp", RejectionReason.document_required),
        (
            a_create("job-1", document={"contentType": "text/plain", "data": "aGk="}),
            "queue-pdf",
            RejectionReason.unsupported_document,
        ),
    ],
    ids=["unknown-queue", "needs-a-document", "content-type"],
)
async def test_a_target_the_queue_configuration_refuses_is_refused(
    create: dict[str, Any], to_queue: str, reason: RejectionReason
) -> None:
    async with Harness(queues=CONFIGURED) as service:
        service.printer("queue-a").offline()
        await service.send(create, queue_id="queue-a", message_type=CREATE)
        await move(service, "job-1", to_queue)
        await service.drained()

        (rejection,) = service.rejections()
        assert (rejection.correlationId, rejection.reason) == ("corr-move", reason)
        job = service.store.job("job-1")
        assert job is not None
        assert (job.queue_id, job.sequence) == ("queue-a", 1)


async def test_a_target_the_queue_configuration_takes_is_moved_to() -> None:
    async with Harness(queues=CONFIGURED) as service:
        service.printer("queue-a").offline()
        await service.send(
            a_create("job-1", document=a_pdf()), queue_id="queue-a", message_type=CREATE
        )
        await move(service, "job-1", "queue-pdf")
        await service.until_status("job-1", JobStatus.finished)

        assert service.rejections() == []
        (request,) = service.printer("queue-pdf").requests
        assert request.content_type == "application/pdf"


async def test_a_job_the_old_printer_takes_after_it_moved_prints_on_the_new_one() -> None:
    """A move the old lane has not heard of (its worker took the job first, or another
    replica wrote the move): the old lane's printer does not start it, and it waits in its
    new lane, put back there from the store."""
    async with Harness() as service:
        old, new = service.printer("queue-a"), service.printer("queue-b")
        old.offline()
        await service.send(a_create("job-1"), queue_id="queue-a", message_type=CREATE)
        job = service.store.job("job-1")
        assert job is not None
        moved = jobs.move(job, to_queue="queue-b", now=service.clock())
        assert isinstance(moved, jobs.Job)
        async with service.store.apply_commands() as tx:
            tx.put(moved)  # in the store only: the dispatcher is not told
        await tx.durable
        assert service.dispatcher.is_waiting("job-1")  # still in queue-a's room

        old.online()
        await service.until_status("job-1", JobStatus.finished)
        assert old.requests == []
        assert [r.job_id for r in new.requests] == ["job-1"]


# --- access ------------------------------------------------------------------------------------

WRITER: Final = secrets.token_urlsafe(24)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def an_access() -> AccessControl:
    keys = f"""
[keys.writer]
sha256 = "{_digest(WRITER)}"
queues = ["acme-*", "globex"]
scopes = ["write:job"]

[keys.globex-reader]
sha256 = "{_digest(WRITER + "-r")}"
queues = ["globex"]
scopes = ["read:job"]
"""
    table = KeyTable.from_toml(keys, source="keys")
    return AccessControl(table, rate=1000.0, burst=1000)


LIMITED: Final = secrets.token_urlsafe(24)


def a_limited_access() -> AccessControl:
    """A key that writes acme-* only, and another that writes everywhere."""
    keys = f"""
[keys.acme]
sha256 = "{_digest(LIMITED)}"
queues = ["acme-*"]
scopes = ["write:job", "read:job"]

[keys.all]
sha256 = "{_digest(WRITER)}"
queues = ["*"]
scopes = ["write:job"]
"""
    return AccessControl(KeyTable.from_toml(keys, source="keys"), rate=1000.0, burst=1000)


async def test_a_key_without_write_on_the_target_queue_is_forbidden() -> None:
    async with Harness(access=a_limited_access()) as service:
        service.printer("acme-1").offline()
        await service.send(
            a_create("job-1"),
            queue_id="acme-1",
            message_type=CREATE,
            properties={"x-api-key": LIMITED},
        )
        await move(service, "job-1", "globex", queue="acme-1", key=LIMITED, correlation_id="c-1")
        await service.drained()

        (rejection,) = service.rejections()
        assert (rejection.correlationId, rejection.reason) == ("c-1", RejectionReason.forbidden)
        assert "globex" in rejection.message
        job = service.store.job("job-1")
        assert job is not None
        assert job.queue_id == "acme-1"


async def test_a_key_with_write_on_both_queues_moves_the_job() -> None:
    async with Harness(access=a_limited_access()) as service:
        service.printer("acme-1").offline()
        service.printer("acme-2").offline()
        await service.send(
            a_create("job-1"),
            queue_id="acme-1",
            message_type=CREATE,
            properties={"x-api-key": LIMITED},
        )
        await move(service, "job-1", "acme-2", queue="acme-1", key=LIMITED)
        service.printer("acme-3").offline()
        await move(service, "job-1", "acme-3", queue="acme-2", key=WRITER, correlation_id="c-3")
        await service.drained()

        assert service.rejections() == []
        assert [e.queueId for e in service.events("job-1")] == ["acme-1", "acme-2", "acme-3"]


async def test_a_key_without_write_on_the_current_queue_is_forbidden() -> None:
    async with Harness(access=an_access()) as service:
        service.printer("globex").offline()
        await service.send(
            a_create("job-1"),
            queue_id="globex",
            message_type=CREATE,
            properties={"x-api-key": WRITER},
        )
        await move(
            service, "job-1", "globex", queue="globex", key=WRITER + "-r", correlation_id="c-r"
        )
        await service.drained()

        (rejection,) = service.rejections()
        assert rejection.reason is RejectionReason.forbidden


# --- hostile input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"jobId": "job-1"},
        {"toQueue": "queue-b"},
        {"jobId": "job-1", "toQueue": ""},
        {"jobId": "job-1", "toQueue": "_invalid"},
        {"jobId": "job-1", "toQueue": "a/b"},
        {"jobId": "job-1", "toQueue": "q" * 129},
        {"jobId": "job-1", "toQueue": 7},
        {"jobId": "job-1", "toQueue": ["queue-b"]},
        {"jobId": "job-1", "toQueue": "queue-b", "force": True},
        {"jobId": "job 1", "toQueue": "queue-b"},
    ],
    ids=[
        "no-target",
        "no-job",
        "empty-target",
        "underscore",
        "slash",
        "too-long",
        "number",
        "array",
        "extra-field",
        "bad-job-id",
    ],
)
async def test_a_bad_move_is_a_schema_violation_with_the_senders_correlation_id(
    payload: dict[str, Any],
) -> None:
    async with Harness() as service:
        service.printer("queue-a").offline()
        await service.send(a_create("job-1"), queue_id="queue-a", message_type=CREATE)
        await service.send(payload, queue_id="queue-a", message_type=MOVE, correlation_id="c-bad")
        await service.drained()

        (rejection,) = service.rejections()
        assert (rejection.correlationId, rejection.reason) == (
            "c-bad",
            RejectionReason.schema_violation,
        )
        assert rejection.messageType == "movePrintJob"
        assert rejection.errors
        job = service.store.job("job-1")
        assert job is not None
        assert job.queue_id == "queue-a"


async def test_a_bare_move_payload_is_ambiguous() -> None:
    async with Harness() as service:
        await service.send({"jobId": "job-1", "toQueue": "queue-b"}, queue_id="queue-a")
        await service.drained()

        (rejection,) = service.rejections()
        assert rejection.reason is RejectionReason.ambiguous_command
