"""Printing and hold/release through a real CUPS server: the service prints to a CUPS queue
(a private cupsd, tests/integration/cups.py) in front of an ippeveprinter, as an operator
would deploy it. A held job is held by the service: CUPS and the printer see nothing of it
until it is released."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from service.adapters.amqp import REJECTIONS_EXCHANGE
from tests.integration.conftest import (
    Listener,
    Publisher,
    Received,
    ServiceFactory,
    statuses,
    unique,
)
from tests.integration.cups import CupsServer
from tests.integration.ippeve import IppEvePrinter
from tests.integration.test_printing import PDF, inline, is_final
from tests.waits import wait_until

pytestmark = pytest.mark.brokers

QUEUE: Final = "office"
CUPS_QUEUE: Final = "Office_1"
PIN: Final = "4711-secret"
# Each job's bytes differ, so that what the printer spooled says which job it was.
HELD_PDF: Final = PDF.replace(b"%%EOF", b"% held\n%%EOF")
OTHER_PDF: Final = PDF.replace(b"%%EOF", b"% other\n%%EOF")


@pytest.fixture
def printer(tmp_path: Path) -> Iterator[IppEvePrinter]:
    ipp = IppEvePrinter(name="behind-cups", workdir=tmp_path / "ippeve", print_seconds=0.1)
    ipp.start()
    yield ipp
    ipp.kill()


@pytest.fixture
async def cups(tmp_path: Path, printer: IppEvePrinter) -> AsyncIterator[CupsServer]:
    async with CupsServer(workdir=tmp_path / "cups", queue=CUPS_QUEUE, printer=printer) as server:
        yield server


@contextlib.asynccontextmanager
async def service_on(
    start_service: ServiceFactory, amqp: Any, tmp_path: Path, cups: CupsServer
) -> AsyncIterator[Listener]:
    """The service with queue `office` printing to the CUPS queue, and a listener of that
    queue's rejections."""
    queues = tmp_path / f"queues-{unique('cfg')}.toml"
    queues.write_text(
        'unknown_queue = "reject"\n'
        "[printers.cups-office]\n"
        f'uri = "{cups.uri}"\n'
        "timeout = 3\npoll_interval = 0.2\noffline_deadline = 30\n"
        f"[queues.{QUEUE}]\n"
        'printers = ["cups-office"]\n'
    )
    async with start_service(print_queues_file=queues):
        queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(REJECTIONS_EXCHANGE, f"rejections/{QUEUE}")
        yield Listener(amqp, queue)


def ended(job_id: str, status: str) -> Any:
    return lambda r: r.body.get("jobId") == job_id and r.body.get("status") == status


def of_job(received: list[Received], job_id: str) -> list[Received]:
    return [r for r in received if r.kind == "printJobEvent" and r.body["jobId"] == job_id]


async def completed_at_cups(cups: CupsServer, count: int) -> list[int]:
    """CUPS's completed jobs, once it lists `count` of them."""

    def listed() -> list[int] | None:
        done = cups.completed_jobs()
        return done if len(done) >= count else None

    return await wait_until(listed, what=f"CUPS lists {count} completed job(s) of {cups.queue}")


async def test_a_job_prints_through_cups_to_the_printer_behind_it(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    cups: CupsServer,
    printer: IppEvePrinter,
    tmp_path: Path,
):
    async with service_on(start_service, amqp, tmp_path, cups) as listener:
        job_id = unique("cups")
        await listener.bind_job(job_id)
        await publisher.create(
            QUEUE, job_id, title="Via CUPS", userId="alice", document=inline(), correlation_id="c1"
        )

        events = await listener.until(is_final, timeout=30)

    assert statuses(events) == ["created", "started", "finished"]
    # finished because CUPS said completed, which its ipp backend says once the printer did.
    assert await completed_at_cups(cups, 1) == [1]
    (recorded,) = printer.jobs()
    assert recorded.document.read_bytes() == PDF
    assert recorded.env["IPP_JOB_NAME"] == "Via CUPS"


async def test_a_held_job_reaches_cups_only_once_released_with_its_pin(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    cups: CupsServer,
    printer: IppEvePrinter,
    tmp_path: Path,
):
    async with service_on(start_service, amqp, tmp_path, cups) as listener:
        held, other = unique("held"), unique("other")
        for job_id in (held, other):
            await listener.bind_job(job_id)
        await publisher.create(
            QUEUE, held, document=inline(HELD_PDF), hold="indefinite", releasePin=PIN
        )
        await listener.until(ended(held, "held"), timeout=20)
        # A job created after it prints through the same queue to the end: had the held one
        # gone to CUPS, it would have gone first.
        await publisher.create(QUEUE, other, document=inline(OTHER_PDF))
        before = await listener.until(ended(other, "finished"), timeout=30)

        assert cups.jobs("all") == [1], "CUPS got the second job only"
        assert [job.document.read_bytes() for job in printer.jobs()] == [OTHER_PDF]
        assert of_job(before, held) == [], "the held job is still held"

        await publisher.command(
            QUEUE, "releasePrintJob", {"jobId": held, "pin": "0000-wrong"}, correlation_id="c-bad"
        )
        refused = (await listener.until(lambda r: r.kind == "commandRejected", timeout=20))[-1]
        assert refused.body["reason"] == "release_refused"
        assert refused.message.correlation_id == "c-bad"
        assert cups.jobs("all") == [1]

        await publisher.command(
            QUEUE, "releasePrintJob", {"jobId": held, "pin": PIN}, correlation_id="c-ok"
        )
        after = await listener.until(ended(held, "finished"), timeout=30)

    released = of_job(after, held)
    assert [(r.body["status"], r.body.get("reason")) for r in released[:1]] == [
        ("created", "released")
    ]
    assert statuses(released) == ["created", "started", "finished"]
    assert released[0].message.correlation_id == "c-ok"
    assert await completed_at_cups(cups, 2) == [1, 2]
    assert [job.document.read_bytes() for job in printer.jobs()] == [OTHER_PDF, HELD_PDF]


async def test_a_held_job_canceled_while_held_never_reaches_cups(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    cups: CupsServer,
    printer: IppEvePrinter,
    tmp_path: Path,
):
    async with service_on(start_service, amqp, tmp_path, cups) as listener:
        held, other = unique("held"), unique("other")
        for job_id in (held, other):
            await listener.bind_job(job_id)
        await publisher.create(QUEUE, held, document=inline(HELD_PDF), hold="indefinite")
        await listener.until(ended(held, "held"), timeout=20)

        await publisher.command(QUEUE, "cancelPrintJob", {"jobId": held})
        canceled = await listener.until(ended(held, "canceled"), timeout=20)
        # The queue is free: a later job prints through it to the end, and nothing else does.
        await publisher.create(QUEUE, other, document=inline(OTHER_PDF))
        rest = await listener.until(ended(other, "finished"), timeout=30)

    assert canceled[-1].body["reason"] == "canceled while held"
    assert of_job(rest, held) == [], "the canceled job never started"
    assert await completed_at_cups(cups, 1) == [1]
    assert cups.jobs("all") == [1]
    assert [job.document.read_bytes() for job in printer.jobs()] == [OTHER_PDF]
