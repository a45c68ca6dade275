"""The command handler under store faults (issue 10): one command's failure costs no other.

A batch that the store refuses is applied again one command at a time; the command that the
store refuses is answered with `internal_error`; one whose answer is refused too is parked as
a dead letter with its raw bytes; a `StoreError` (the store is away) propagates, so nothing
is acknowledged. The store is a `MemoryStore` whose transactions a test can make fail.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import pytest
from prometheus_client import CollectorRegistry

from service.adapters.solo import Solo
from service.adapters.store.memory import MemoryStore
from service.application.dispatch import PrintDispatcher
from service.application.handler import CommandHandler
from service.core.codec import CommandDecoder, Inbound
from service.core.events import Kind, Outgoing
from service.core.jobs import Job
from service.core.queues import QueueMap
from service.metrics import Metrics
from service.models import MessageType
from service.ports import Document, Printer, StoreError, StoreRefused

QUEUE: Final = "queue-1"
TOPIC: Final = f"commands/{QUEUE}"
BAD_JOB: Final = "job-bad"
BAD_CORRELATION: Final = "corr-bad"


# --- fakes -------------------------------------------------------------------------------------


class Writes:
    """What a transaction was about to commit, for a test to judge."""

    def __init__(self, jobs: list[Job], messages: list[Outgoing]) -> None:
        self.jobs = jobs
        self.messages = messages


class FaultyStore(MemoryStore):
    """A memory store whose commands' commits fail with what `fault` returns for their
    writes (other transactions, such as a test's reads, commit as usual)."""

    def __init__(self, fault: Callable[[Writes], BaseException | None]) -> None:
        super().__init__()
        self.fault = fault
        self.failed_commits = 0

    @asynccontextmanager
    async def apply_commands(self) -> AsyncIterator[Any]:
        async with super().apply_commands() as tx:
            yield tx
            exc = self.fault(Writes(list(tx.writes.values()), list(tx.messages)))
            if exc is not None:
                self.failed_commits += 1
                raise exc  # the memory store then discards the whole transaction

    def outbox(self) -> list[Outgoing]:
        return [message for message, _, _ in self._outbox.values()]


class NoPrinters:
    def printers(self, lane: str) -> list[Printer]:
        del lane
        return []


class NoDocuments:
    async def fetch(self, url: str) -> Document:
        raise AssertionError(f"no document is fetched here: {url}")


# --- helpers -----------------------------------------------------------------------------------


def a_handler(store: MemoryStore) -> tuple[CommandHandler, Metrics]:
    metrics = Metrics(CollectorRegistry())
    queues = QueueMap.dynamic()
    dispatcher = PrintDispatcher(
        store=store,
        queues=queues,
        printers=NoPrinters(),
        documents=NoDocuments(),
        coordinator=Solo("test"),
        metrics=metrics,
    )
    handler = CommandHandler(
        decoder=CommandDecoder(
            max_bytes=64 * 1024,
            max_decompressed_bytes=256 * 1024,
            access=None,
            new_id=lambda: "generated-correlation-id",
        ),
        store=store,
        queues=queues,
        dispatcher=dispatcher,
        metrics=metrics,
    )
    return handler, metrics


def a_create(job_id: str, correlation_id: str | None = None) -> Inbound:
    payload = {"jobId": job_id, "userId": "alice", "documentName": f"{job_id}.pdf"}
    return Inbound(
        topic=TOPIC,
        payload=json.dumps(payload).encode(),
        properties={
            "x-message-type": MessageType.createPrintJob.value,
            "x-correlation-id": correlation_id or f"corr-{job_id}",
        },
        received_at=1_700_000_000.0,
    )


def puts_bad_job(writes: Writes) -> BaseException | None:
    if any(job.job_id == BAD_JOB for job in writes.jobs):
        return StoreRefused("text the store cannot hold")
    return None


def about_bad_command(writes: Writes) -> BaseException | None:
    """Refuses the bad command and also its answer (which carries its correlation id)."""
    if puts_bad_job(writes) or any(m.correlation_id == BAD_CORRELATION for m in writes.messages):
        return StoreRefused("text the store cannot hold")
    return None


def bodies(store: FaultyStore, kind: Kind) -> list[dict[str, Any]]:
    return [json.loads(m.body) for m in store.outbox() if m.kind is kind]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def handled(handler: CommandHandler, inbounds: list[Inbound]) -> None:
    """Handle a batch as the ingress does: apply, then wait for the commit."""
    await asyncio.wait_for(await handler.handle(inbounds), 2.0)


# --- tests -------------------------------------------------------------------------------------


async def test_a_command_the_store_refuses_is_answered_and_the_others_are_applied() -> None:
    store = FaultyStore(puts_bad_job)
    handler, metrics = a_handler(store)
    batch = [a_create("job-1"), a_create(BAD_JOB, BAD_CORRELATION), a_create("job-3")]

    await handled(handler, batch)

    events = bodies(store, Kind.job_event)
    assert sorted((e["jobId"], e["status"]) for e in events) == [
        ("job-1", "created"),
        ("job-3", "created"),
    ]
    async with store.transaction() as tx:
        assert await tx.get("job-1") is not None
        assert await tx.get("job-3") is not None
        assert await tx.get(BAD_JOB) is None
    (rejection,) = bodies(store, Kind.rejection)
    assert rejection["reason"] == "internal_error"
    assert rejection["correlationId"] == BAD_CORRELATION
    assert rejection["jobId"] == BAD_JOB
    assert await store.dead_letters(10) == []
    assert sample(metrics, "print_dead_letters_total", source="command") == 0
    assert sample(metrics, "print_store_refusals_total") == 1
    assert store.failed_commits == 2  # the batch, then the bad command alone


async def test_a_bug_for_one_command_is_answered_with_internal_error() -> None:
    """Not only StoreRefused: anything unexpected for one command is that command's fault."""

    def bug(writes: Writes) -> BaseException | None:
        if any(job.job_id == BAD_JOB for job in writes.jobs):
            return KeyError("a bug")
        return None

    store = FaultyStore(bug)
    handler, _ = a_handler(store)

    await handled(handler, [a_create(BAD_JOB, BAD_CORRELATION), a_create("job-2")])

    assert [e["jobId"] for e in bodies(store, Kind.job_event)] == ["job-2"]
    (rejection,) = bodies(store, Kind.rejection)
    assert rejection["reason"] == "internal_error"
    assert rejection["correlationId"] == BAD_CORRELATION
    assert await store.dead_letters(10) == []


async def test_a_command_whose_answer_is_refused_too_is_parked() -> None:
    store = FaultyStore(about_bad_command)
    handler, metrics = a_handler(store)
    bad = a_create(BAD_JOB, BAD_CORRELATION)

    await handled(handler, [a_create("job-1"), bad, a_create("job-3")])  # returns normally

    letters = await store.dead_letters(10)
    assert len(letters) == 1
    (letter,) = letters
    assert letter.source == "command"
    assert letter.address == TOPIC
    assert letter.payload == bad.payload
    assert dict(letter.properties) == dict(bad.properties)
    assert letter.reason
    assert sample(metrics, "print_dead_letters_total", source="command") == 1
    assert bodies(store, Kind.rejection) == []
    assert sorted(e["jobId"] for e in bodies(store, Kind.job_event)) == ["job-1", "job-3"]


async def test_a_store_outage_propagates_and_nothing_is_applied() -> None:
    store = FaultyStore(lambda _: StoreError("connection refused"))
    handler, metrics = a_handler(store)

    with pytest.raises(StoreError):
        await handled(handler, [a_create("job-1"), a_create("job-2")])

    assert store.outbox() == []
    assert await store.dead_letters(10) == []
    assert sample(metrics, "print_dead_letters_total", source="command") == 0


async def test_a_store_outage_while_applying_one_by_one_propagates() -> None:
    """The batch fails for one command's sake, then the store goes away: not answered, not
    parked (the broker delivers again), the error reaches the ingress."""
    calls = [0]

    def fault(writes: Writes) -> BaseException | None:
        del writes
        calls[0] += 1
        if calls[0] == 1:
            return StoreRefused("one bad command")  # the batch: applied one by one now
        if calls[0] == 2:
            return StoreError("gone")  # the first command alone: the store went away
        return None  # back: an answer or a later command would commit

    store = FaultyStore(fault)
    handler, metrics = a_handler(store)

    with pytest.raises(StoreError):
        await handled(handler, [a_create("job-1"), a_create(BAD_JOB, BAD_CORRELATION)])

    assert store.outbox() == []
    assert await store.dead_letters(10) == []
    assert sample(metrics, "print_dead_letters_total", source="command") == 0
