"""Printing progress: the throttle, the `progress` transition, the totals on `finished`, and
the dispatcher turning a printer's reports into `started` events (through the harness)."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

import pytest

from service.adapters.ipp.encoding import Attribute, Group, GroupTag, ValueTag
from service.adapters.printers import ipp
from service.adapters.printers.simulated import SimulatedPrinter, page_count
from service.adapters.store.rows import job_from_row, job_row
from service.core import jobs
from service.core.events import job_event
from service.core.jobs import Job, Refusal
from service.core.throttle import Throttle
from service.models import JobStatus, MessageType, PrintJobEvent, PrintOptions, Priority, Sides
from service.ports import InlineDocument, PrintOutcome, PrintRequest
from tests.harness.harness import Harness

T0: Final = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
QUEUE: Final = "queue-1"
CREATE: Final = MessageType.createPrintJob


def a_job(status: JobStatus = JobStatus.started, **overrides: Any) -> Job:
    job = Job(
        job_id="job-1",
        queue_id=QUEUE,
        status=status,
        sequence=2,
        priority=Priority.medium,
        user_id=None,
        document_name=None,
        created_at=T0,
        updated_at=T0,
        correlation_id="c",
    )
    return dataclasses.replace(job, **overrides)


# --- the throttle ---------------------------------------------------------------------------


def test_the_throttle_lets_one_report_through_per_interval_from_the_start() -> None:
    throttle = Throttle(5, since=T0 - timedelta(seconds=5))
    assert not Throttle(5, since=T0).due(T0 + timedelta(seconds=4.9))
    assert throttle.due(T0)
    throttle.passed(T0)
    assert not throttle.due(T0 + timedelta(seconds=4.9))
    assert throttle.due(T0 + timedelta(seconds=5))
    throttle.passed(T0 + timedelta(seconds=6))
    assert not throttle.due(T0 + timedelta(seconds=10))
    assert throttle.due(T0 + timedelta(seconds=11))


def test_an_interval_of_zero_lets_nothing_through() -> None:
    throttle = Throttle(0, since=T0)
    assert not throttle.enabled
    assert not throttle.due(T0 + timedelta(days=1))


# --- the transition -------------------------------------------------------------------------


def test_progress_keeps_the_job_started_with_a_new_sequence() -> None:
    later = T0 + timedelta(seconds=3)
    result = jobs.progress(a_job(), impressions=3, sheets=2, now=later)
    assert isinstance(result, Job)
    assert (result.status, result.sequence, result.updated_at) == (JobStatus.started, 3, later)
    assert (result.impressions, result.sheets) == (3, 2)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ((3, 2), (3, 2)),  # nothing new
        ((3, 2), (2, 2)),  # fell: the printer began again
        ((3, 2), (4, 1)),
        ((None, None), (0, None)),
        ((3, None), (3, None)),
    ],
)
def test_progress_is_refused_unless_the_numbers_grew(
    before: tuple[int | None, int | None], after: tuple[int, int | None]
) -> None:
    job = a_job(impressions=before[0], sheets=before[1])
    result = jobs.progress(job, impressions=after[0], sheets=after[1], now=T0)
    assert isinstance(result, Refusal)


def test_sheets_alone_growing_is_progress_and_missing_sheets_keep_the_last() -> None:
    job = a_job(impressions=4, sheets=2)
    grown = jobs.progress(job, impressions=4, sheets=3, now=T0)
    assert isinstance(grown, Job)
    assert grown.sheets == 3
    kept = jobs.progress(grown, impressions=5, sheets=None, now=T0)
    assert isinstance(kept, Job)
    assert (kept.impressions, kept.sheets) == (5, 3)


@pytest.mark.parametrize("status", [s for s in JobStatus if s is not JobStatus.started])
def test_progress_is_refused_unless_the_job_is_started(status: JobStatus) -> None:
    assert isinstance(jobs.progress(a_job(status), impressions=1, sheets=1, now=T0), Refusal)


def test_finish_carries_the_totals_given_else_the_progress_recorded() -> None:
    given = jobs.finish(a_job(impressions=2), now=T0, impressions=6, sheets=3)
    assert isinstance(given, Job)
    assert (given.impressions, given.sheets) == (6, 3)
    kept = jobs.finish(a_job(impressions=2, sheets=1), now=T0)
    assert isinstance(kept, Job)
    assert (kept.impressions, kept.sheets) == (2, 1)


def test_the_counts_survive_the_store_rows_and_reach_the_event() -> None:
    job = a_job(impressions=7, sheets=4)
    assert job_from_row(job_row(job, datetime.isoformat)) == job
    assert job_from_row(job_row(a_job(), datetime.isoformat)).impressions is None
    event = PrintJobEvent.model_validate_json(
        job_event(job, event_id=UUID(int=1), correlation_id="c", received_at=None).body
    )
    assert (event.impressionsCompleted, event.sheetsCompleted) == (7, 4)
    bare = job_event(a_job(), event_id=UUID(int=2), correlation_id="c", received_at=None)
    assert b"Completed" not in bare.body


# --- the dispatcher, through the harness ----------------------------------------------------


async def print_with_progress(
    service: Harness, reports: list[tuple[int, int | None]], *, step: float
) -> list[PrintJobEvent]:
    printer = service.printer(QUEUE)
    printer.progress = reports
    printer.before_report = lambda: service.clock.advance(step)
    await service.send({"jobId": "job-1"}, queue_id=QUEUE, message_type=CREATE)
    await service.until_status("job-1", JobStatus.finished)
    await service.drained()
    return service.events("job-1")


def summary(events: list[PrintJobEvent]) -> list[tuple[Any, ...]]:
    return [(e.status, e.sequence, e.impressionsCompleted, e.sheetsCompleted) for e in events]


async def test_progress_becomes_started_events_with_new_sequences_and_totals_on_finished():
    async with Harness(progress_interval=5) as service:
        events = await print_with_progress(service, [(1, 1), (2, 1), (4, 2)], step=5)

    assert summary(events) == [
        (JobStatus.created, 1, None, None),
        (JobStatus.started, 2, None, None),
        (JobStatus.started, 3, 1, 1),
        (JobStatus.started, 4, 2, 1),
        (JobStatus.started, 5, 4, 2),
        (JobStatus.finished, 6, 4, 2),
    ]
    assert len({e.eventId for e in events}) == len(events)


async def test_reports_within_the_interval_are_throttled_but_counted_in_the_totals():
    async with Harness(progress_interval=5) as service:
        events = await print_with_progress(service, [(1, 1), (2, 1), (3, 2), (4, 2)], step=3)

    # At 6 s and 12 s; 3 s and 9 s fall within the interval of the start, of the last one.
    assert summary(events)[2:] == [
        (JobStatus.started, 3, 2, 1),
        (JobStatus.started, 4, 4, 2),
        (JobStatus.finished, 5, 4, 2),
    ]


async def test_a_print_shorter_than_the_interval_sends_only_its_totals():
    async with Harness(progress_interval=5) as service:
        events = await print_with_progress(service, [(1, 1), (2, 2)], step=2)

    assert summary(events)[1:] == [
        (JobStatus.started, 2, None, None),
        (JobStatus.finished, 3, 2, 2),
    ]


async def test_an_interval_of_zero_sends_no_progress_but_finished_has_the_totals():
    async with Harness(progress_interval=0) as service:
        events = await print_with_progress(service, [(1, 1), (5, 3)], step=10)

    assert summary(events) == [
        (JobStatus.created, 1, None, None),
        (JobStatus.started, 2, None, None),
        (JobStatus.finished, 3, 5, 3),
    ]


async def test_a_printers_odd_counts_are_ignored():
    reports: list[Any] = [(-1, None), (True, None), (2**40, None), (2, "x"), (3, None)]
    async with Harness(progress_interval=1) as service:
        events = await print_with_progress(service, reports, step=1)

    assert summary(events)[2:] == [
        (JobStatus.started, 3, 3, None),
        (JobStatus.finished, 4, 3, None),
    ]


async def test_a_count_that_falls_sends_no_event_and_finished_has_the_last():
    async with Harness(progress_interval=1) as service:
        events = await print_with_progress(service, [(4, None), (1, None), (2, None)], step=1)

    assert summary(events)[2:] == [
        (JobStatus.started, 3, 4, None),
        (JobStatus.finished, 4, 2, None),
    ]


async def test_a_snapshot_of_a_printing_job_carries_its_progress():
    async with Harness(progress_interval=1) as service:
        printer = service.printer(QUEUE)
        printer.progress = [(2, 1)]
        printer.before_report = lambda: service.clock.advance(1)
        printer.hold()
        await service.send({"jobId": "job-1"}, queue_id=QUEUE, message_type=CREATE)
        await service.until_printing(printer)
        await service.until(lambda: (service.store.job("job-1") or a_job()).sequence == 3, "p")
        await service.send(
            {"jobId": "job-1"}, queue_id=QUEUE, message_type=MessageType.getPrintJobStatus
        )
        await service.drained()
        snapshot = service.events("job-1")[-1]
        printer.release()
        await service.until_status("job-1", JobStatus.finished)

    assert snapshot.snapshot
    assert (snapshot.sequence, snapshot.impressionsCompleted, snapshot.sheetsCompleted) == (3, 2, 1)


# --- the simulated printer ------------------------------------------------------------------


def a_pdf(pages: int) -> bytes:
    kids = " ".join(f"{n + 3} 0 R" for n in range(pages))
    objects = [
        b"1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj",
        f"2 0 obj << /Type /Pages /Kids [{kids}] /Count {pages} >> endobj".encode(),
        *(f"{n + 3} 0 obj << /Type /Page /Parent 2 0 R >> endobj".encode() for n in range(pages)),
    ]
    return b"%PDF-1.7\n" + b"\n".join(objects) + b"\n%%EOF\n"


def a_request(data: bytes, *, copies: int = 1, sides: Sides | None = None) -> PrintRequest:
    return PrintRequest(
        job_id="job-1",
        title="t",
        user_id=None,
        copies=copies,
        options=PrintOptions(sides=sides),
        document=InlineDocument(data),
        content_type="application/pdf",
    )


async def test_pages_are_counted_in_a_pdf_else_one() -> None:
    assert await page_count(InlineDocument(a_pdf(5)), "application/pdf") == 5
    assert await page_count(InlineDocument(b"%PDF-1.4 no pages"), "application/pdf") == 1
    assert await page_count(InlineDocument(b"/Type /Page " * 3), "text/plain") == 1


async def test_the_simulated_printer_reports_pages_times_copies_up_to_the_totals() -> None:
    reports: list[tuple[int, int | None]] = []

    async def on_progress(impressions: int, sheets: int | None) -> None:
        reports.append((impressions, sheets))

    printer = SimulatedPrinter(name="sim", duration=0)
    result = await printer.print(a_request(a_pdf(3), copies=2), on_progress=on_progress)
    assert result.outcome is PrintOutcome.completed
    assert reports == [(n, n) for n in range(1, 7)]

    reports.clear()
    duplex = a_request(a_pdf(3), copies=2, sides=Sides.two_sided_long_edge)
    await printer.print(duplex, on_progress=on_progress)
    assert reports[-1] == (6, 4)  # two sheets per copy of three pages
    assert [sheets for _, sheets in reports] == [1, 1, 2, 3, 3, 4]  # a back is no new sheet


async def test_the_simulated_printer_reports_at_most_a_few_times() -> None:
    reports: list[int] = []

    async def on_progress(impressions: int, sheets: int | None) -> None:
        reports.append(impressions)

    await SimulatedPrinter(name="sim", duration=0).print(
        a_request(a_pdf(100)), on_progress=on_progress
    )
    assert len(reports) == 20
    assert reports[-1] == 100


async def test_a_failing_progress_callback_does_not_stop_the_simulated_print() -> None:
    async def on_progress(impressions: int, sheets: int | None) -> None:
        raise RuntimeError("the store is away")

    inline = base64.b64decode(base64.b64encode(a_pdf(2)))
    result = await SimulatedPrinter(name="sim", duration=0).print(
        a_request(inline), on_progress=on_progress
    )
    assert result.outcome is PrintOutcome.completed


async def test_a_printer_that_counts_nothing_leaves_the_totals_unknown():
    async with Harness(progress_interval=1) as service:
        events = await print_with_progress(service, [(0, None)], step=1)

    assert summary(events)[1:] == [
        (JobStatus.started, 2, None, None),
        (JobStatus.finished, 3, None, None),
    ]


# --- the IPP printer's counters -------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((ValueTag.integer, 3), 3),
        ((ValueTag.integer, 0), 0),
        ((ValueTag.integer, -2), None),  # a hostile printer's
        ((ValueTag.boolean, True), None),
        ((ValueTag.keyword, "five"), None),
        ((ValueTag.no_value,), None),
    ],
)
def test_an_ipp_counter_is_read_only_as_a_count(values: tuple[Any, ...], expected: int | None):
    tag, *data = values
    job = Group(GroupTag.job, (Attribute.of("job-impressions-completed", tag, *data),))
    assert ipp._count(job, "job-impressions-completed") == expected
    assert ipp._count(job, "job-media-sheets-completed") is None
