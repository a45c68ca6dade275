"""Printing progress on real brokers: a job's `started` event repeats with the impressions
its printer reports (the simulated printer; a real ippeveprinter), each with a new sequence,
and `finished` carries the totals."""

from __future__ import annotations

import base64
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Listener, Publisher, Received, ServiceFactory, unique
from tests.integration.ippeve import IppEvePrinter, IppEveUnavailableError
from tests.integration.test_ipp_printer import a_pdf
from tests.integration.test_printing import printing_service

pytestmark = pytest.mark.brokers


def inline_pdf(pages: int) -> dict[str, str]:
    return {"contentType": "application/pdf", "data": base64.b64encode(a_pdf(pages)).decode()}


def is_final(received: Received) -> bool:
    return received.kind == "commandRejected" or received.body.get("status") in (
        "finished",
        "canceled",
        "failed",
    )


def check_progress(events: list[Received], total: int, sheets: int | None) -> list[int]:
    """Events in order: created, started, started with growing counts, finished with the
    totals; each with the next sequence. The impressions the progress events carried."""
    bodies = [e.body for e in events if e.kind == "printJobEvent"]
    assert [b["sequence"] for b in bodies] == list(range(1, len(bodies) + 1))
    assert [b["status"] for b in bodies[:2]] == ["created", "started"]
    assert "impressionsCompleted" not in bodies[0]
    assert "impressionsCompleted" not in bodies[1]
    progress, finished = bodies[2:-1], bodies[-1]
    assert all(b["status"] == "started" for b in progress)
    impressions = [b["impressionsCompleted"] for b in progress]
    assert impressions == sorted(set(impressions)), "they only grow"
    assert all(0 < count <= total for count in impressions)
    assert finished["status"] == "finished"
    assert finished["impressionsCompleted"] == total
    assert finished.get("sheetsCompleted") == sheets
    assert len({e.body["eventId"] for e in events}) == len(events)
    return impressions


async def listening(amqp: Any, queue_id: str, job_id: str) -> Listener:
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind("print.rejections", f"rejections/{queue_id}")
    listener = Listener(amqp, queue)
    await listener.bind_job(job_id)
    return listener


async def test_the_simulated_printer_reports_the_pdfs_pages_times_copies(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, queue_id: str
):
    async with start_service(print_duration=1.0, progress_interval=0.1):
        job_id = unique("progress")
        listener = await listening(amqp, queue_id, job_id)
        await publisher.create(queue_id, job_id, document=inline_pdf(pages=5), copies=2)

        events = await listener.until(is_final, timeout=20)

    # Ten impressions over 1 s, at most one event per 0.1 s: some, not necessarily all.
    assert len(check_progress(events, total=10, sheets=10)) >= 2


async def test_a_short_print_sends_only_its_totals(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, queue_id: str
):
    async with start_service(print_duration=0.2, progress_interval=5):
        job_id = unique("short")
        listener = await listening(amqp, queue_id, job_id)
        await publisher.create(queue_id, job_id, document=inline_pdf(pages=3))

        events = await listener.until(is_final, timeout=20)

    assert check_progress(events, total=3, sheets=3) == []


@pytest.fixture
def ippeve(tmp_path: Path):
    printer = IppEvePrinter(name="ipp-progress", workdir=tmp_path / "ippeve", print_seconds=0)
    try:
        printer.start()
    except IppEveUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield printer
    printer.kill()


async def test_ippeveprinter_reports_impressions_and_finished_has_the_total(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    ippeve: IppEvePrinter,
    tmp_path: Path,
):
    """ippeveprinter counts impressions (as its command reports them), not sheets."""
    ippeve.report_impressions(every=0.3)
    pools = {"office": [ippeve]}
    with_progress = partial(start_service, progress_interval=0.1)
    async with printing_service(with_progress, amqp, tmp_path, pools, poll_interval=0.1) as (
        _,
        listener,
    ):
        job_id = unique("ipp-progress")
        await listener.bind_job(job_id)
        await publisher.create("office", job_id, document=inline_pdf(pages=4))

        events = await listener.until(is_final, timeout=30)

    assert len(check_progress(events, total=4, sheets=None)) >= 2
