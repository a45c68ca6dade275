"""Who may do what, through the broker-free harness: the real decoder and handler with keys
that have scopes, queues and rates, and jobs that belong to their queue."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, Final

import pytest

from service.core.access import AccessControl, KeyTable
from service.models import JobStatus, MessageType, RejectionReason
from tests.harness.harness import Harness

WRITER: Final = secrets.token_urlsafe(24)
READER: Final = secrets.token_urlsafe(24)
OTHER: Final = secrets.token_urlsafe(24)

CREATE: Final = MessageType.createPrintJob
CANCEL: Final = MessageType.cancelPrintJob
UPDATE: Final = MessageType.updatePrintJob
STATUS: Final = MessageType.getPrintJobStatus
COUNTS: Final = MessageType.getPrintCounts


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


KEYS: Final = f"""
[keys.writer]
sha256 = "{digest(WRITER)}"
queues = ["acme-*"]
scopes = ["write:job"]
rate = 1
burst = 2

[keys.reader]
sha256 = "{digest(READER)}"
queues = ["acme-*"]
scopes = ["read:job"]

[keys.other]
sha256 = "{digest(OTHER)}"
queues = ["globex"]
scopes = ["write:job", "read:job"]
"""


def an_access() -> AccessControl:
    return AccessControl(KeyTable.from_toml(KEYS, source="keys"), rate=1000.0, burst=1000)


def a_create(job_id: str) -> dict[str, Any]:
    return {"jobId": job_id, "userId": "alice", "documentName": f"{job_id}.pdf"}


async def send(
    service: Harness,
    message_type: MessageType,
    payload: dict[str, Any],
    *,
    key: str | None,
    queue: str = "acme-1",
    correlation_id: str | None = None,
) -> None:
    await service.send(
        payload,
        queue_id=queue,
        message_type=message_type,
        correlation_id=correlation_id,
        properties={"x-api-key": key} if key is not None else {},
    )


@pytest.mark.parametrize(
    ("key", "queue", "message_type", "payload", "reason"),
    [
        (READER, "acme-1", CREATE, a_create("job-2"), RejectionReason.forbidden),
        (READER, "acme-1", CANCEL, {"jobId": "job-1", "force": True}, RejectionReason.forbidden),
        (
            READER,
            "acme-1",
            UPDATE,
            {"jobId": "job-1", "priority": "high"},
            RejectionReason.forbidden,
        ),
        (WRITER, "acme-1", STATUS, {"jobId": "job-1"}, RejectionReason.forbidden),
        (WRITER, "acme-1", COUNTS, {}, RejectionReason.forbidden),
        (WRITER, "globex", CREATE, a_create("job-2"), RejectionReason.forbidden),
        (OTHER, "acme-1", STATUS, {"jobId": "job-1"}, RejectionReason.forbidden),
        ("not-a-key", "acme-1", STATUS, {"jobId": "job-1"}, RejectionReason.unauthorized),
        (None, "acme-1", STATUS, {"jobId": "job-1"}, RejectionReason.unauthorized),
    ],
    ids=[
        "reader-create",
        "reader-cancel",
        "reader-update",
        "writer-status",
        "writer-counts",
        "writer-other-queue",
        "other-key-acme",
        "unknown-key",
        "no-key",
    ],
)
async def test_a_command_the_key_may_not_send_changes_nothing(
    key: str | None,
    queue: str,
    message_type: MessageType,
    payload: dict[str, Any],
    reason: RejectionReason,
) -> None:
    async with Harness(access=an_access()) as service:
        service.printer("acme-1").offline()
        await send(service, CREATE, a_create("job-1"), key=WRITER)
        await send(service, message_type, payload, key=key, queue=queue, correlation_id="c-2")
        await service.drained()

        (rejection,) = service.rejections()
        assert (rejection.correlationId, rejection.reason) == ("c-2", reason)
        assert [e.status for e in service.events("job-1")] == [JobStatus.created]
        assert service.store.job("job-2") is None
        assert service.metric(
            "print_commands_received_total", type=message_type.value, outcome="rejected"
        ) == (0 if reason is RejectionReason.unauthorized else 1)


async def test_each_scope_on_its_queues_is_applied() -> None:
    async with Harness(access=an_access()) as service:
        service.printer("acme-1").offline()
        await send(service, CREATE, a_create("job-1"), key=WRITER)
        await send(service, UPDATE, {"jobId": "job-1", "priority": "high"}, key=WRITER)
        await send(service, STATUS, {"jobId": "job-1"}, key=READER, correlation_id="c-status")
        await send(service, COUNTS, {}, key=READER)
        service.clock.advance(seconds=1)  # the writer's burst is 2, then one a second
        await send(service, CANCEL, {"jobId": "job-1", "force": True}, key=WRITER)
        await service.drained()

        assert service.rejections() == []
        assert [e.status for e in service.events("job-1")] == [
            JobStatus.created,
            JobStatus.created,  # updated
            JobStatus.created,  # the status snapshot
            JobStatus.canceled,
        ]
        assert len(service.counts()) == 1


@pytest.mark.parametrize(
    ("message_type", "payload"),
    [
        (CANCEL, {"force": True}),
        (UPDATE, {"priority": "high"}),
        (STATUS, {}),
    ],
    ids=["cancel", "update", "status"],
)
async def test_a_job_of_another_queue_is_unknown_exactly_as_a_missing_one(
    message_type: MessageType, payload: dict[str, Any]
) -> None:
    # Auth off: the rule is the handler's, whatever the keys.
    async with Harness() as service:
        service.printer("queue-a").offline()
        await service.send(a_create("job-a"), queue_id="queue-a", message_type=CREATE)
        for job_id, correlation_id in (("job-a", "via-b"), ("job-none", "missing")):
            await service.send(
                {"jobId": job_id, **payload},
                queue_id="queue-b",
                message_type=message_type,
                correlation_id=correlation_id,
            )
        await service.drained()

        via_b, missing = service.rejections()
        assert via_b.reason is missing.reason is RejectionReason.unknown_job
        # The same text, but for the id the sender chose: no oracle.
        assert via_b.message == missing.message.replace("job-none", "job-a")
        assert via_b.model_dump(include={"errors", "retryAfter"}) == missing.model_dump(
            include={"errors", "retryAfter"}
        )
        job = service.store.job("job-a")
        assert job is not None
        assert (job.status, job.priority.value, job.sequence) == (JobStatus.created, "medium", 1)
        assert [e.status for e in service.events("job-a")] == [JobStatus.created]


async def test_a_job_is_acted_on_through_its_own_queue() -> None:
    async with Harness() as service:
        service.printer("queue-a").offline()
        await service.send(a_create("job-a"), queue_id="queue-a", message_type=CREATE)
        await service.send(
            {"jobId": "job-a", "force": True}, queue_id="queue-a", message_type=CANCEL
        )
        await service.drained()

        assert service.rejections() == []
        assert service.events("job-a")[-1].status is JobStatus.canceled


async def test_a_key_over_its_rate_is_refused_at_once_and_others_are_applied() -> None:
    async with Harness(access=an_access()) as service:
        service.printer("acme-1").offline()
        service.printer("globex").offline()
        # One batch, as the ingress hands them over: the writer's burst is 2.
        batch = [
            service.inbound(
                a_create(f"w-{n}"),
                queue_id="acme-1",
                message_type=CREATE,
                correlation_id=f"w-{n}",
                properties={"x-api-key": WRITER},
            )
            for n in range(4)
        ] + [
            service.inbound(
                a_create(f"o-{n}"),
                queue_id="globex",
                message_type=CREATE,
                properties={"x-api-key": OTHER},
            )
            for n in range(4)
        ]
        await service.send_batch(batch)
        await service.drained()

        rejections = service.rejections()
        assert [(r.correlationId, r.reason) for r in rejections] == [
            ("w-2", RejectionReason.rate_limited),
            ("w-3", RejectionReason.rate_limited),
        ]
        assert all(r.retryAfter is not None and 0 < r.retryAfter <= 1.0 for r in rejections)
        created = {e.jobId for e in service.events() if e.status is JobStatus.created}
        assert created == {"w-0", "w-1", "o-0", "o-1", "o-2", "o-3"}

        # A second later (by the clock the commands are received with), one more token.
        service.clock.advance(seconds=1)
        await send(service, CREATE, a_create("w-late"), key=WRITER, correlation_id="late")
        await service.drained()
        assert service.store.job("w-late") is not None


async def test_a_command_with_two_different_keys_is_unauthorized() -> None:
    async with Harness(access=an_access()) as service:
        body = {"headers": {"x-api-key": READER}, "payload": {"jobId": "job-1"}}
        await service.send(
            body, queue_id="acme-1", message_type=STATUS, properties={"x-api-key": WRITER}
        )
        await service.drained()

        (rejection,) = service.rejections()
        assert rejection.reason is RejectionReason.unauthorized
        assert "two different" in rejection.message


TENANT_KEYS: Final = f"""
[keys.acme]
sha256 = "{digest(WRITER)}"
queues = ["acme.*"]
scopes = ["write:job", "read:job"]
job_ids = ["acme.*"]
"""


async def test_a_tenants_key_creates_only_jobs_named_as_its_own() -> None:
    # The AMQP routing key of a job event carries only the job id: a tenant whose creates
    # could take any id could name its jobs into another tenant's events.
    access = AccessControl(KeyTable.from_toml(TENANT_KEYS, source="keys"), rate=1e3, burst=1000)
    async with Harness(access=access) as service:
        service.printer("acme.office").offline()
        await send(service, CREATE, a_create("globex.7"), key=WRITER, queue="acme.office")
        await send(service, CREATE, a_create("acme.7"), key=WRITER, queue="acme.office")
        await service.drained()

        (rejection,) = service.rejections()
        assert rejection.reason is RejectionReason.forbidden
        assert "acme.*" in rejection.message
        assert service.store.job("globex.7") is None
        assert [e.status for e in service.events("acme.7")] == [JobStatus.created]
