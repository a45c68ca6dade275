"""The dispatcher over fakes: a `MemoryStore`, fake printers, a frozen clock, sequential ids.

No broker and no wall-clock waits: each test runs `PrintDispatcher.run` in a task, drives the
fakes, and waits for conditions by letting the event loop turn (`eventually`). It checks what
the store holds (jobs, and the events in the outbox) and what the printers were asked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from service.adapters.solo import Solo
from service.adapters.store.memory import MemoryStore
from service.application.dispatch import PrintDispatcher
from service.application.dispatch.progress import SERVICE_FAILED
from service.core import jobs
from service.core.events import job_event
from service.core.jobs import DocumentRef, Job
from service.core.queues import QueueMap
from service.metrics import Metrics
from service.models import JobStatus, Priority
from service.ports import (
    Coordinator,
    LaneCallback,
    LaneLost,
    Printer,
    PrinterUnavailable,
    PrintOutcome,
    PrintRequest,
    PrintResult,
    StoreError,
)
from tests.harness.fakes import (
    EPOCH,
    FakeClock,
    FakeDocuments,
    FakePrinter,
    FakePrinters,
    SequentialIds,
)

QUEUE = "q1"

# --- waiting -----------------------------------------------------------------------------------


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], *, turns: int = 2_000, what: str = ""
) -> None:
    """Let the event loop turn until `condition` holds; fail if it never does (a bound in
    loop turns, not in seconds: nothing here waits for a clock)."""
    for _ in range(turns):
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what or condition}")


async def settled(turns: int = 200) -> None:
    """Let the event loop turn a while: for asserting that something does NOT happen."""
    for _ in range(turns):
        await asyncio.sleep(0)


# --- fakes -------------------------------------------------------------------------------------


class FaultyStore(MemoryStore):
    """A memory store whose printer-progress transactions fail as the test says.

    `progress_fault(job)` is asked about each job a `record_progress` writes; what it returns:
    - a StoreError (LaneLost too): raised at the exit, nothing applied;
    - "lose": the exit returns, but the commit then fails: nothing applied, `durable` holds
      a StoreError (what a store that does not wait for the commit reports later).
    """

    def __init__(self) -> None:
        super().__init__()
        self.progress_fault: Callable[[Job], BaseException | str | None] = lambda _: None
        self.lane_lost: set[str] = set()  # fenced writes of these lanes raise LaneLost

    @asynccontextmanager
    async def record_progress(self, lane: str) -> AsyncIterator[Any]:
        lost = False
        async with self.transaction(lane=lane) as tx:
            yield tx
            faults = [self.progress_fault(job) for job in tx.writes.values()]
            for fault in faults:
                if isinstance(fault, BaseException):
                    raise fault  # the memory store discards the transaction
            if "lose" in faults:
                lost = True
                tx.writes.clear()
                tx.messages.clear()
        if lost:
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(StoreError("the commit failed"))
            tx.durable = failed

    @asynccontextmanager
    async def transaction(self, *, lane: str | None = None, **options: Any) -> AsyncIterator[Any]:
        # `options`: whatever else the memory store's transaction takes, passed through.
        if lane is not None and lane in self.lane_lost:
            raise LaneLost(f"lane {lane} is held by another replica")
        async with super().transaction(lane=lane, **options) as tx:
            yield tx


class FakeCoordinator:
    """Holds the lanes in `owned`; the test calls the subscribed callbacks itself."""

    def __init__(self, owned: set[str] | None = None) -> None:
        self.instance = "test"
        self.owned = set(owned or ())
        self.claims: list[str] = []
        self.gained: LaneCallback = lambda _: None
        self.lost: LaneCallback = lambda _: None
        self.job_changed: Callable[[str, str], None] = lambda _q, _j: None

    def owns(self, lane: str) -> bool:
        return lane in self.owned

    def subscribe(
        self, *, gained: LaneCallback, lost: LaneCallback, job_changed: Callable[[str, str], None]
    ) -> None:
        self.gained, self.lost, self.job_changed = gained, lost, job_changed

    async def claim(self, lane: str) -> bool:
        self.claims.append(lane)
        return False  # another replica holds it

    async def replica_died(self, instance: str) -> None:
        del instance

    async def run(self, stopping: asyncio.Event) -> None:
        await stopping.wait()


class Rig:
    """A dispatcher and its fakes; `start` runs it, `stop` stops it cleanly."""

    def __init__(
        self,
        *,
        store: MemoryStore | None = None,
        printers: dict[str, Sequence[Printer]] | None = None,
        coordinator: Coordinator | None = None,
        documents: dict[str, bytes] | None = None,
        max_interruptions: int = 3,
        clock: FakeClock | None = None,
    ) -> None:
        self.store = store or MemoryStore()
        self.printers = FakePrinters(printers)
        self.clock = clock or FakeClock()
        self.metrics = Metrics(CollectorRegistry())
        self.documents = FakeDocuments(documents)
        self.dispatcher = PrintDispatcher(
            store=self.store,
            queues=QueueMap.dynamic(),
            printers=self.printers,
            documents=self.documents,
            coordinator=coordinator or Solo("test"),
            metrics=self.metrics,
            max_interruptions=max_interruptions,
            clock=self.clock,
            new_id=SequentialIds(),
        )
        self.stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def printer(self, lane: str = QUEUE) -> FakePrinter:
        printer = self.printers.printers(lane)[0]
        assert isinstance(printer, FakePrinter)
        return printer

    async def start(self) -> None:
        self._task = asyncio.create_task(self.dispatcher.run(self.stopping))
        await asyncio.sleep(0)

    async def stop(self) -> None:
        assert self._task is not None
        assert not self._task.done(), "the dispatcher ended by itself"
        self.stopping.set()
        await self._task

    async def put(self, *given: Job, documents: dict[str, bytes] | None = None) -> None:
        async with self.store.transaction() as tx:
            for job in given:
                tx.put(job)
            for job_id, data in (documents or {}).items():
                tx.put_document(job_id, data)

    async def job(self, job_id: str) -> Job:
        job = await self.store.read_job(job_id)
        assert job is not None
        return job

    async def status(self, job_id: str) -> JobStatus:
        return (await self.job(job_id)).status

    async def events(self) -> list[tuple[str, str]]:
        """(jobId, status) of every event in the outbox, in order."""
        records = await self.store.unsent(1_000)
        bodies = [json.loads(record.message.body) for record in records]
        return [(body["jobId"], body["status"]) for body in bodies]

    async def until_status(self, job_id: str, status: JobStatus) -> None:
        async def reached() -> bool:
            return await self.status(job_id) is status

        await eventually(reached, what=f"{job_id} {status.value}")

    async def cancel(self, job_id: str) -> Job:
        """What the handler does for a forced cancel: the change, its event, then withdraw."""
        async with self.store.apply_commands() as tx:
            job = await tx.get(job_id)
            assert job is not None
            canceled = jobs.cancel(job, force=True, now=self.clock())
            assert isinstance(canceled, Job)
            tx.put(canceled)
            tx.emit(
                job_event(
                    canceled, event_id=SequentialIds()(), correlation_id="c", received_at=None
                )
            )
        self.dispatcher.withdraw(canceled)
        return canceled


def a_job(
    job_id: str,
    *,
    age: int = 0,
    priority: Priority = Priority.medium,
    status: JobStatus = JobStatus.created,
    queue_id: str = QUEUE,
    **fields: Any,
) -> Job:
    created = EPOCH - timedelta(seconds=1_000 - age)
    return Job(
        job_id=job_id,
        queue_id=queue_id,
        status=status,
        sequence=1 if status is JobStatus.created else 2,
        priority=priority,
        user_id="alice",
        document_name=f"{job_id}.pdf",
        created_at=created,
        updated_at=created,
        correlation_id=f"corr-{job_id}",
        **fields,
    )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    rig = Rig()
    await rig.start()
    yield rig
    await rig.stop()


# --- printing ----------------------------------------------------------------------------------


async def test_a_job_prints_and_finishes(rig: Rig) -> None:
    job = a_job("j1", title="Report", document=DocumentRef(content_type="application/pdf"))
    await rig.put(job, documents={"j1": b"%PDF-1"})
    rig.dispatcher.enqueue(job)

    await rig.until_status("j1", JobStatus.finished)
    assert await rig.events() == [("j1", "started"), ("j1", "finished")]
    [request] = rig.printer().requests
    assert (request.title, request.user_id, request.content_type) == (
        "Report",
        "alice",
        "application/pdf",
    )
    finished = await rig.job("j1")
    assert finished.printer_job == "fake-q1-1"  # recorded when the printer took it
    assert finished.updated_at == rig.clock()
    [started, done] = await rig.store.unsent(10)
    assert [started.message.message_id, done.message.message_id] == [
        "00000000-0000-0000-0000-000000000001",
        "00000000-0000-0000-0000-000000000002",
    ]
    assert rig.metrics.jobs.labels("finished")._value.get() == 1


async def test_jobs_print_by_priority_then_age() -> None:
    rig = Rig()
    await rig.put(
        a_job("low-old", age=0, priority=Priority.low),
        a_job("medium-new", age=3),
        a_job("high-new", age=4, priority=Priority.high),
        a_job("medium-old", age=1),
        a_job("high-old", age=2, priority=Priority.high),
    )
    await rig.start()  # recovery finds them all waiting

    await rig.until_status("low-old", JobStatus.finished)
    assert [r.job_id for r in rig.printer().requests] == [
        "high-old",
        "high-new",
        "medium-old",
        "medium-new",
        "low-old",
    ]
    await rig.stop()


async def test_an_update_moves_a_waiting_job_with_its_new_priority(rig: Rig) -> None:
    printer = rig.printer()
    printer.hold()
    first, old, new = a_job("first"), a_job("old", age=1), a_job("new", age=2)
    await rig.put(first, old, new)
    for job in (first, old, new):
        rig.dispatcher.enqueue(job)
    await eventually(printer.printing.is_set)

    rig.dispatcher.reprioritize(dataclasses.replace(new, priority=Priority.high))
    printer.release()
    await rig.until_status("old", JobStatus.finished)
    assert [r.job_id for r in printer.requests] == ["first", "new", "old"]


async def test_a_pool_hands_each_job_to_the_next_ready_printer() -> None:
    busy, idle = FakePrinter("busy"), FakePrinter("idle")
    rig = Rig(printers={QUEUE: (busy, idle)})
    await rig.start()
    busy.hold()
    await rig.put(a_job("j1"))
    rig.dispatcher.enqueue(await rig.job("j1"))
    await eventually(busy.printing.is_set)

    for job_id in ("j2", "j3"):
        await rig.put(a_job(job_id))
        rig.dispatcher.enqueue(await rig.job(job_id))
    await rig.until_status("j3", JobStatus.finished)
    assert [r.job_id for r in idle.requests] == ["j2", "j3"]
    assert await rig.status("j1") is JobStatus.started

    busy.release()
    await rig.until_status("j1", JobStatus.finished)
    await rig.stop()


async def test_a_printer_past_its_deadline_leaves_the_jobs_to_the_others() -> None:
    away, there = FakePrinter("away"), FakePrinter("there")
    away.ready_error = PrinterUnavailable("offline for 60 s")
    rig = Rig(printers={QUEUE: (away, there)})
    await rig.put(a_job("j1"), a_job("j2", age=1))
    await rig.start()

    await rig.until_status("j2", JobStatus.finished)
    assert await rig.status("j1") is JobStatus.finished
    assert away.requests == []
    await rig.stop()


async def test_when_every_printer_of_the_lane_is_away_the_jobs_fail_with_the_reason() -> None:
    first, second = FakePrinter("a"), FakePrinter("b")
    for printer in (first, second):
        printer.ready_error = PrinterUnavailable("the printer has been offline for 60 s")
    rig = Rig(printers={QUEUE: (first, second)})
    await rig.put(a_job("j1"), a_job("j2", age=1))
    await rig.start()

    await rig.until_status("j2", JobStatus.failed)
    for job_id in ("j1", "j2"):
        job = await rig.job(job_id)
        assert (job.status, job.reason) == (
            JobStatus.failed,
            "the printer has been offline for 60 s",
        )
    assert await rig.events() == [("j1", "failed"), ("j2", "failed")]
    await rig.stop()


async def test_a_printer_whose_ready_raises_something_unexpected_is_treated_as_away() -> None:
    broken, fine = FakePrinter("broken"), FakePrinter("fine")
    broken.ready_error = RuntimeError("the adapter has a bug")
    rig = Rig(printers={QUEUE: (broken, fine)})
    await rig.put(a_job("j1"), a_job("j2", age=1))
    await rig.start()

    await rig.until_status("j2", JobStatus.finished)
    assert await rig.status("j1") is JobStatus.finished
    assert [r.job_id for r in fine.requests] == ["j1", "j2"]
    await rig.stop()  # the broken printer's worker, pausing, does not hold the stop up


async def test_a_print_that_raises_fails_the_job(rig: Rig) -> None:
    rig.printer().print_error = RuntimeError("boom")
    await rig.put(a_job("j1"), a_job("j2", age=1))
    for job_id in ("j1", "j2"):
        rig.dispatcher.enqueue(await rig.job(job_id))

    await rig.until_status("j2", JobStatus.failed)
    assert (
        (await rig.job("j1")).reason
        == SERVICE_FAILED
        == ("the service failed while printing the job")
    )
    assert await rig.events() == [
        ("j1", "started"),
        ("j1", "failed"),
        ("j2", "started"),
        ("j2", "failed"),
    ]


@pytest.mark.parametrize(
    ("result", "status", "reason"),
    [
        (PrintResult(PrintOutcome.failed, "out of toner"), JobStatus.failed, "out of toner"),
        (PrintResult(PrintOutcome.failed), JobStatus.failed, "the printer aborted the job"),
        (
            PrintResult(PrintOutcome.canceled, "paper jam"),
            JobStatus.canceled,
            "canceled at the printer: paper jam",
        ),
        (
            PrintResult(PrintOutcome.canceled),
            JobStatus.canceled,
            "canceled at the printer: no reason given",
        ),
    ],
)
async def test_what_the_printer_reports_is_the_jobs_end(
    rig: Rig, result: PrintResult, status: JobStatus, reason: str
) -> None:
    rig.printer().results.append(result)
    await rig.put(a_job("j1"))
    rig.dispatcher.enqueue(await rig.job("j1"))

    await rig.until_status("j1", status)
    assert (await rig.job("j1")).reason == reason
    assert await rig.events() == [("j1", "started"), ("j1", status.value)]


async def test_a_document_that_cannot_be_fetched_fails_the_job(rig: Rig) -> None:
    url = "https://docs.example/missing.pdf"
    await rig.put(a_job("j1", document=DocumentRef(content_type="application/pdf", url=url)))
    rig.dispatcher.enqueue(await rig.job("j1"))

    await rig.until_status("j1", JobStatus.failed)
    assert (await rig.job("j1")).reason == f"no document at {url}"
    assert rig.printer().requests == []


# --- cancel and expiry -------------------------------------------------------------------------


async def test_a_cancel_while_printing_stops_the_printer_and_ends_the_job_once(rig: Rig) -> None:
    printer = rig.printer()
    printer.hold()
    await rig.put(a_job("j1"))
    rig.dispatcher.enqueue(await rig.job("j1"))
    await eventually(printer.printing.is_set)

    await rig.cancel("j1")
    await eventually(lambda: printer.canceled == ["j1"])
    await eventually(lambda: not printer.printing.is_set())
    await settled()
    assert await rig.events() == [("j1", "started"), ("j1", "canceled")]
    assert (await rig.job("j1")).reason == "force-canceled while printing"


async def test_a_cancel_while_waiting_drops_the_job(rig: Rig) -> None:
    printer = rig.printer()
    printer.hold()
    await rig.put(a_job("j1"), a_job("j2", age=1))
    for job_id in ("j1", "j2"):
        rig.dispatcher.enqueue(await rig.job(job_id))
    await eventually(printer.printing.is_set)

    await rig.cancel("j2")
    printer.release()
    await rig.until_status("j1", JobStatus.finished)
    await settled()
    assert [r.job_id for r in printer.requests] == ["j1"]
    assert printer.canceled == []
    assert await rig.events() == [("j1", "started"), ("j2", "canceled"), ("j1", "finished")]


async def test_a_job_expires_while_it_waits(rig: Rig) -> None:
    printer = rig.printer()
    printer.hold()
    await rig.put(a_job("j1"), a_job("j2", age=1, expire_at=rig.clock()))
    for job_id in ("j1", "j2"):
        rig.dispatcher.enqueue(await rig.job(job_id))

    await rig.until_status("j2", JobStatus.canceled)  # its timer, while j1 prints
    assert (await rig.job("j2")).reason == "expired"
    assert await rig.status("j1") is JobStatus.started
    printer.release()
    await rig.until_status("j1", JobStatus.finished)
    assert [r.job_id for r in printer.requests] == ["j1"]


async def test_a_job_whose_time_came_while_it_waited_expires_when_its_turn_comes(
    rig: Rig,
) -> None:
    printer = rig.printer()
    printer.hold()
    later = rig.clock() + timedelta(hours=1)
    await rig.put(a_job("j1"), a_job("j2", age=1, expire_at=later))
    for job_id in ("j1", "j2"):
        rig.dispatcher.enqueue(await rig.job(job_id))
    await eventually(printer.printing.is_set)
    await settled()
    assert await rig.status("j2") is JobStatus.created  # not yet

    rig.clock.advance(2 * 3600)
    printer.release()
    await rig.until_status("j2", JobStatus.canceled)
    assert (await rig.job("j2")).reason == "expired"
    assert [r.job_id for r in printer.requests] == ["j1"]


# --- interruptions -----------------------------------------------------------------------------


async def test_a_started_job_found_at_start_up_prints_again_and_counts_an_interruption() -> None:
    rig = Rig(max_interruptions=3)
    await rig.put(a_job("j1", status=JobStatus.started, printer_job="fake-q1-7"))
    await rig.start()

    await rig.until_status("j1", JobStatus.finished)
    assert (await rig.job("j1")).interruptions == 1
    assert await rig.events() == [("j1", "finished")]  # no second `started`
    assert rig.printer().requests[0].printer_job == "fake-q1-7"  # followed on the printer
    await rig.stop()


async def test_a_job_interrupted_too_often_fails() -> None:
    rig = Rig(max_interruptions=3)
    await rig.put(a_job("j1", status=JobStatus.started, interruptions=2))
    await rig.start()

    await rig.until_status("j1", JobStatus.failed)
    assert (await rig.job("j1")).reason == "printing was interrupted 3 times (the service stopped)"
    assert rig.printer().requests == []
    await rig.stop()


async def test_a_resumed_job_prints_ahead_of_every_priority() -> None:
    rig = Rig()
    await rig.put(
        a_job("high", priority=Priority.high),
        a_job("resumed", age=5, priority=Priority.low, status=JobStatus.started),
    )
    await rig.start()

    await rig.until_status("high", JobStatus.finished)
    assert [r.job_id for r in rig.printer().requests] == ["resumed", "high"]
    await rig.stop()


async def test_a_clean_stop_hands_the_job_over_without_counting_an_interruption() -> None:
    store = MemoryStore()
    first = Rig(store=store, max_interruptions=1)
    first.printer().hold()
    await first.put(a_job("j1"))
    await first.start()
    await eventually(first.printer().printing.is_set)

    await first.stop()  # SIGTERM mid-print: the job stays `started`, handed over
    left = await first.job("j1")
    assert (left.status, left.handed_over, left.interruptions) == (JobStatus.started, True, 0)

    # With one interruption allowed, a counted one would fail the job now.
    second = Rig(store=store, max_interruptions=1)
    await second.start()
    await second.until_status("j1", JobStatus.finished)
    done = await second.job("j1")
    assert (done.handed_over, done.interruptions) == (False, 0)
    assert second.printer().requests[0].printer_job == "fake-q1-1"
    assert await second.events() == [("j1", "started"), ("j1", "finished")]
    await second.stop()


async def test_after_a_handover_a_crash_counts_again() -> None:
    rig = Rig(max_interruptions=2)
    rig.printer().hold()
    await rig.put(a_job("j1", status=JobStatus.started, handed_over=True, interruptions=1))
    await rig.start()
    await eventually(rig.printer().printing.is_set)

    # The mark is cleared before printing: if this holder now dies, that counts.
    resumed = await rig.job("j1")
    assert (resumed.handed_over, resumed.interruptions) == (False, 1)
    await rig.stop()


# --- the store failing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [StoreError("the connection died"), "lose"],
    ids=["raised at exit", "commit lost later"],
)
async def test_a_transition_the_store_did_not_keep_is_redone_from_the_store(
    fault: BaseException | str,
) -> None:
    store = FaultyStore()
    faults = [fault]

    def finishing_fails_once(job: Job) -> BaseException | str | None:
        return faults.pop() if job.status is JobStatus.finished and faults else None

    store.progress_fault = finishing_fails_once
    rig = Rig(store=store)
    await rig.put(a_job("j1"))
    await rig.start()

    await rig.until_status("j1", JobStatus.finished)
    # Reloaded as `started`, it was printed again (an interruption: the service failed).
    assert [r.job_id for r in rig.printer().requests] == ["j1", "j1"]
    assert (await rig.job("j1")).interruptions == 1
    assert await rig.events() == [("j1", "started"), ("j1", "finished")]
    await rig.stop()


async def test_a_lane_lost_mid_job_changes_nothing() -> None:
    store = FaultyStore()
    store.lane_lost.add(QUEUE)  # the fence: another replica holds the lane now
    rig = Rig(store=store)
    await rig.put(a_job("j1"), a_job("j2", age=1))
    with capture_logs() as logs:
        await rig.start()
        await eventually(
            lambda: [e["job_id"] for e in logs if e["event"] == "lane_lost_mid_job"] == ["j1", "j2"]
        )
        await settled()

    assert [e["event"] for e in logs if e["log_level"] != "debug"] == [
        "jobs_recovered",
        "lane_lost_mid_job",
        "lane_lost_mid_job",  # and nothing retried: the lane's holder prints them
    ]
    assert await rig.status("j1") is JobStatus.created
    assert await rig.events() == []
    assert rig.printer().requests == []
    await rig.stop()


async def test_a_resync_loads_the_unfinished_jobs_not_known_here(rig: Rig) -> None:
    printer = rig.printer()
    printer.hold()
    await rig.put(a_job("printing"))
    rig.dispatcher.enqueue(await rig.job("printing"))
    await eventually(printer.printing.is_set)
    # A batch whose commit was reported failed had in fact committed: nobody enqueued it.
    await rig.put(a_job("committed", age=1))

    rig.dispatcher.resync()
    await eventually(lambda: rig.dispatcher.knows("committed"))
    printer.release()
    await rig.until_status("committed", JobStatus.finished)
    assert [r.job_id for r in printer.requests] == ["printing", "committed"]
    assert await rig.status("printing") is JobStatus.finished


# --- replicas ----------------------------------------------------------------------------------


async def test_a_job_of_a_lane_held_elsewhere_is_left_to_its_holder() -> None:
    coordinator = FakeCoordinator()
    rig = Rig(coordinator=coordinator)
    await rig.start()
    await rig.put(a_job("j1"))
    rig.dispatcher.enqueue(await rig.job("j1"))

    await eventually(lambda: coordinator.claims == [QUEUE])
    await settled()
    assert not rig.dispatcher.knows("j1")
    assert rig.printer().requests == []
    await rig.stop()


async def test_a_lane_gained_is_loaded_from_the_store() -> None:
    coordinator = FakeCoordinator()
    rig = Rig(coordinator=coordinator)
    await rig.put(
        a_job("waiting", age=1),
        a_job("was-printing", status=JobStatus.started),
        a_job("other-lane", queue_id="q2"),
    )
    await rig.start()
    await settled()
    assert rig.printer().requests == []

    coordinator.owned.add(QUEUE)
    coordinator.gained([QUEUE])
    await rig.until_status("waiting", JobStatus.finished)
    assert [r.job_id for r in rig.printer().requests] == ["was-printing", "waiting"]
    assert (await rig.job("was-printing")).interruptions == 1  # its holder stopped
    assert await rig.status("other-lane") is JobStatus.created
    await rig.stop()


async def test_a_lane_lost_stops_its_printing_here() -> None:
    coordinator = FakeCoordinator({QUEUE})
    rig = Rig(coordinator=coordinator)
    printer = rig.printer()
    printer.hold()
    await rig.put(a_job("j1"), a_job("j2", age=1))
    await rig.start()
    await eventually(printer.printing.is_set)

    coordinator.owned.discard(QUEUE)
    coordinator.lost([QUEUE])
    await eventually(lambda: not printer.printing.is_set())
    await settled()
    assert not rig.dispatcher.knows("j1")
    assert not rig.dispatcher.knows("j2")
    assert await rig.status("j1") is JobStatus.started  # for the lane's next holder
    assert await rig.status("j2") is JobStatus.created
    assert [r.job_id for r in printer.requests] == ["j1"]
    assert await rig.events() == [("j1", "started")]
    assert rig.metrics.registry.get_sample_value("print_lease_losses_total") == 1.0
    await rig.stop()


async def test_a_cancel_made_by_another_replica_stops_the_printer_here() -> None:
    coordinator = FakeCoordinator({QUEUE})
    rig = Rig(coordinator=coordinator)
    printer = rig.printer()
    printer.hold()
    await rig.put(a_job("j1"))
    await rig.start()
    await eventually(printer.printing.is_set)

    async with rig.store.transaction() as tx:  # the other replica's cancel
        job = await tx.get("j1")
        assert job is not None
        canceled = jobs.cancel(job, force=True, now=rig.clock())
        assert isinstance(canceled, Job)
        tx.put(canceled)
    coordinator.job_changed(QUEUE, "j1")

    await eventually(lambda: printer.canceled == ["j1"])
    await settled()
    assert await rig.events() == [("j1", "started")]  # its cancel event is the other's
    await rig.stop()


async def test_a_job_created_by_another_replica_is_printed_here() -> None:
    coordinator = FakeCoordinator({QUEUE})
    rig = Rig(coordinator=coordinator)
    await rig.start()
    await rig.put(a_job("j1"))

    coordinator.job_changed(QUEUE, "j1")
    await rig.until_status("j1", JobStatus.finished)
    await rig.stop()


# --- edges of handing over and taking over ------------------------------------------------------


async def test_a_job_started_by_the_lanes_last_holder_resumes_by_the_same_rule() -> None:
    rig = Rig(max_interruptions=3)
    await rig.start()
    # The last holder started both (after this replica's start-up read the store); one it
    # handed over cleanly, the other it crashed on.
    await rig.put(
        a_job("handed", status=JobStatus.started, handed_over=True),
        a_job("crashed", age=1, status=JobStatus.started),
    )
    # This replica heard of them as `created` (their create, before the start).
    rig.dispatcher.enqueue(a_job("handed"))
    rig.dispatcher.enqueue(a_job("crashed", age=1))

    await rig.until_status("crashed", JobStatus.finished)
    handed, crashed = await rig.job("handed"), await rig.job("crashed")
    assert (handed.handed_over, handed.interruptions) == (False, 0)
    assert (crashed.handed_over, crashed.interruptions) == (False, 1)
    await rig.stop()


class GatedStore(MemoryStore):
    """Holds the first fenced transaction at its start until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self._held = 1

    @asynccontextmanager
    async def transaction(self, *, lane: str | None = None) -> AsyncIterator[Any]:
        if lane is not None and self._held:
            self._held -= 1
            self.entered.set()
            await self.gate.wait()
        async with super().transaction(lane=lane) as tx:
            yield tx


async def test_a_stop_before_a_resume_is_recorded_does_not_mark_the_job_handed_over() -> None:
    store = GatedStore()
    rig = Rig(store=store)
    await rig.put(a_job("j1", status=JobStatus.started))  # found at start: a crash before
    await rig.start()
    await eventually(store.entered.is_set, what="the resume being recorded")

    await rig.stop()  # its interruption count was never written: the next start counts it
    left = await rig.job("j1")
    assert (left.status, left.handed_over, left.interruptions) == (JobStatus.started, False, 0)
    assert rig.printer().requests == []


class SlowToStop(FakePrinter):
    """A printer whose print takes a while to end once stopped (an IPP cancel on the way)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.stopped = asyncio.Event()

    async def print(
        self, request: PrintRequest, *, on_submitted: Any = None, on_progress: Any = None
    ) -> PrintResult:
        try:
            return await super().print(request, on_submitted=on_submitted, on_progress=on_progress)
        except asyncio.CancelledError:
            await self.stopped.wait()
            raise


async def test_a_lane_lost_and_regained_while_its_print_ends_prints_everything() -> None:
    coordinator = FakeCoordinator({QUEUE})
    printer = SlowToStop("slow")
    rig = Rig(coordinator=coordinator, printers={QUEUE: [printer]})
    printer.hold()
    await rig.put(a_job("j1"), a_job("j2", age=1))
    await rig.start()
    await eventually(printer.printing.is_set)

    coordinator.owned.discard(QUEUE)
    coordinator.lost([QUEUE])
    coordinator.owned.add(QUEUE)
    coordinator.gained([QUEUE])  # back before the print of j1 has ended
    await settled()
    printer.release()
    printer.stopped.set()

    await rig.until_status("j1", JobStatus.finished)  # resumed: not left `started`
    await rig.until_status("j2", JobStatus.finished)  # its lane has a worker again
    await rig.stop()
