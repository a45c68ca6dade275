"""IppPrinter against real ippeveprinter processes: options, refusals, cancel, a printer that
dies or restarts mid-job, and waiting for one that is offline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from service.adapters.ipp.attributes import PrinterState
from service.adapters.ipp.client import http_url
from service.adapters.printers import ipp
from service.adapters.printers.ipp import IppPrinter, PrinterStatus
from service.models import ColorMode, Orientation, PageRange, PrintOptions, PrintQuality, Sides
from service.ports import InlineDocument, PrinterUnavailable, PrintOutcome, PrintRequest
from tests.integration.ippeve import IppEvePrinter, IppEveUnavailableError
from tests.waits import wait_until

PrinterFactory = Callable[..., IppPrinter]


def a_pdf(pages: int = 1) -> bytes:
    """A small valid PDF of `pages` pages, with a correct cross-reference table."""
    kids = " ".join(f"{3 + 2 * page} 0 R" for page in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
    ]
    for page in range(pages):
        content = f"BT /F1 24 Tf 72 720 Td (page {page + 1}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents {4 + 2 * page} 0 R"
            " /Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica"
            " >> >> >> >>".encode()
        )
        objects.append(
            f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream"
        )
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%EOF\n".encode()
    )
    return bytes(out)


def a_request(
    *,
    job_id: str = "job-1",
    title: str = "Report",
    copies: int = 1,
    content_type: str = "application/pdf",
    **options: Any,
) -> PrintRequest:
    return PrintRequest(
        job_id=job_id,
        title=title,
        user_id="alice",
        copies=copies,
        options=PrintOptions(**options),
        document=InlineDocument(a_pdf(pages=5)),
        content_type=content_type,
    )


def _events(logs: list[MutableMapping[str, Any]]) -> list[str]:
    return [entry["event"] for entry in logs if entry["event"].startswith("ipp_printer_")]


@pytest.fixture
def ippeve(tmp_path) -> Iterator[IppEvePrinter]:
    printer = IppEvePrinter(name="test-printer", workdir=tmp_path / "ippeve", print_seconds=1)
    try:
        printer.start()
    except IppEveUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield printer
    printer.kill()


@pytest.fixture
async def make_printer(ippeve) -> AsyncIterator[PrinterFactory]:
    made: list[IppPrinter] = []

    def make(**overrides: Any) -> IppPrinter:
        settings: dict[str, Any] = {
            "name": "office-1",
            "uri": ippeve.uri,
            "timeout": 2.0,
            "poll_interval": 0.1,
            "offline_deadline": 3.0,
        }
        settings.update(overrides)
        printer = IppPrinter(**settings)
        made.append(printer)
        return printer

    yield make
    for printer in made:
        await printer.close()


async def test_a_pdf_prints_and_lands_in_the_spool(ippeve, make_printer):
    printer = make_printer()
    request = a_request(title="Quarterly Report")
    await printer.ready()

    result = await printer.print(request)

    assert result.outcome == PrintOutcome.completed
    assert result.reason is None
    [document] = ippeve.documents()
    assert document.name == "1-quarterly_report.pdf"
    assert document.read_bytes() == a_pdf(pages=5)
    [job] = ippeve.jobs()
    assert job.env["CONTENT_TYPE"] == "application/pdf"
    assert job.env["IPP_JOB_NAME"] == "Quarterly Report"
    assert job.env["IPP_JOB_ORIGINATING_USER_NAME"] == "alice"
    assert "IPP_COPIES" not in job.env  # one copy is the default; it is not sent


async def test_the_impressions_the_printer_counts_are_reported_as_they_grow(ippeve, make_printer):
    """ippeveprinter reports `job-impressions-completed` as its command says them (ATTR
    lines, as ippeveps writes); it has no `job-media-sheets-completed`, so sheets stay None."""
    ippeve.report_impressions(every=0.15)
    ippeve.print_seconds = 0
    reports: list[tuple[int, int | None]] = []

    async def on_progress(impressions: int, sheets: int | None) -> None:
        reports.append((impressions, sheets))

    result = await make_printer().print(a_request(copies=2), on_progress=on_progress)

    assert result.outcome == PrintOutcome.completed
    impressions = [count for count, _ in reports]
    assert impressions == sorted(set(impressions)), "only changes, never backwards"
    assert impressions[-1] == 10  # five pages, two copies: the totals, before it returns
    assert len([count for count in impressions if 0 < count < 10]) >= 2, reports
    assert {sheets for _, sheets in reports} == {None}


async def test_a_printer_whose_command_counts_nothing_reports_zero_once(ippeve, make_printer):
    reports: list[tuple[int, int | None]] = []

    async def on_progress(impressions: int, sheets: int | None) -> None:
        reports.append((impressions, sheets))

    result = await make_printer().print(a_request(), on_progress=on_progress)

    assert result.outcome == PrintOutcome.completed
    assert reports == [(0, None)]


async def test_every_option_reaches_the_printer(ippeve, make_printer):
    printer = make_printer()
    request = a_request(
        copies=2,
        sides=Sides.two_sided_long_edge,
        media="iso_a4_210x297mm",
        colorMode=ColorMode.monochrome,
        pageRanges=[PageRange(start=1, end=2), PageRange(start=4, end=5)],
        orientation=Orientation.landscape,
        quality=PrintQuality.high,
    )

    result = await printer.print(request)

    assert result.outcome == PrintOutcome.completed, result.reason
    env = ippeve.jobs()[0].env
    assert env["IPP_COPIES"] == "2"
    assert env["IPP_SIDES"] == "two-sided-long-edge"
    assert env["IPP_MEDIA"] == "iso_a4_210x297mm"
    assert env["IPP_PRINT_COLOR_MODE"] == "monochrome"
    assert env["IPP_PAGE_RANGES"] == "1-2,4-5"
    assert env["IPP_ORIENTATION_REQUESTED"] == "landscape"
    assert env["IPP_PRINT_QUALITY"] == "high"


@pytest.mark.parametrize(
    ("sides", "orientation", "quality"),
    [
        (Sides.one_sided, Orientation.portrait, PrintQuality.draft),
        (Sides.two_sided_short_edge, Orientation.reverse_landscape, PrintQuality.normal),
        (Sides.two_sided_long_edge, Orientation.reverse_portrait, PrintQuality.high),
    ],
)
async def test_enum_and_keyword_values_reach_the_printer_as_sent(
    ippeve, make_printer, sides, orientation, quality
):
    ippeve.print_seconds = 0
    printer = make_printer()

    result = await printer.print(a_request(sides=sides, orientation=orientation, quality=quality))

    assert result.outcome == PrintOutcome.completed, result.reason
    env = ippeve.jobs()[0].env
    assert env["IPP_SIDES"] == sides.value
    assert env["IPP_ORIENTATION_REQUESTED"] == orientation.value
    assert env["IPP_PRINT_QUALITY"] == quality.value


async def test_a_refused_option_fails_the_job_naming_it(ippeve, make_printer):
    printer = make_printer()

    result = await printer.print(a_request(media="iso_a3_297x420mm", sides=Sides.one_sided))

    assert result.outcome == PrintOutcome.failed
    assert result.reason == (
        "printer refused media=iso_a3_297x420mm (client-error-attributes-or-values-not-supported)"
    )
    assert ippeve.documents() == []


async def test_a_refused_document_format_fails_the_job_naming_it(ippeve, make_printer):
    printer = make_printer()

    result = await printer.print(a_request(content_type="text/html"))

    assert result.outcome == PrintOutcome.failed
    assert result.reason is not None
    assert "document-format=text/html" in result.reason
    assert ippeve.documents() == []


async def test_ippeveprinter_takes_color_though_it_supports_only_monochrome(ippeve, make_printer):
    # Found by this test: ippeveprinter does not check print-color-mode against
    # print-color-mode-supported, even with fidelity; the value still reaches it, not dropped.
    ippeve.print_seconds = 0
    printer = make_printer()

    result = await printer.print(a_request(colorMode=ColorMode.color))

    assert result.outcome == PrintOutcome.completed
    assert ippeve.jobs()[0].env["IPP_PRINT_COLOR_MODE"] == "color"


async def test_cancel_of_the_job_being_printed(ippeve, make_printer):
    ippeve.print_seconds = 0
    ippeve.hold()
    printer = make_printer()
    printing = asyncio.create_task(printer.print(a_request(job_id="job-1")))
    await ippeve.wait_for_job()

    await printer.cancel("another-job")  # not the one printing: nothing happens
    ippeve.release()
    result = await asyncio.wait_for(printing, timeout=10)
    assert result.outcome == PrintOutcome.completed, "printed to the end"

    ippeve.hold()
    printing = asyncio.create_task(printer.print(a_request(job_id="job-2")))
    await ippeve.wait_for_job(count=2)
    await printer.cancel("job-2")  # returns once the printer was asked
    ippeve.release()  # ippeveprinter ends a canceled job once its command exits
    result = await asyncio.wait_for(printing, timeout=10)

    assert result.outcome == PrintOutcome.canceled
    assert result.reason == "canceled on request"


async def test_cancel_before_the_printer_gave_a_job_id(ippeve, make_printer):
    printer = make_printer()
    printing = asyncio.create_task(printer.print(a_request(job_id="job-1")))
    # Not a pause: one step of the task, which takes print() to its first wait, for the
    # printer's answer to Print-Job (no answer can have come within that step).
    await asyncio.sleep(0)

    await printer.cancel("job-1")
    result = await asyncio.wait_for(printing, timeout=10)

    assert result.outcome == PrintOutcome.canceled
    # The printer was asked to cancel right after it took the job: a second job can start.
    ippeve.print_seconds = 0
    assert (await printer.print(a_request(job_id="job-2"))).outcome == PrintOutcome.completed


async def test_a_printer_killed_mid_job_fails_it_after_the_deadline(ippeve, make_printer):
    ippeve.hold()
    printer = make_printer(offline_deadline=2.0)
    printing = asyncio.create_task(printer.print(a_request()))
    await ippeve.wait_for_job()

    ippeve.kill()
    result = await asyncio.wait_for(printing, timeout=10)

    assert result.outcome == PrintOutcome.failed
    # The seconds are the printer's own count: it waited out the deadline, not more.
    assert result.reason == "printer unreachable for 2 s while printing"


async def test_a_restarted_printer_lost_the_job_and_it_is_submitted_again(ippeve, make_printer):
    ippeve.hold()
    printer = make_printer(on_lost_job="retry", offline_deadline=10.0)
    printing = asyncio.create_task(printer.print(a_request()))
    first = await ippeve.wait_for_job()

    ippeve.kill()
    ippeve.print_seconds = 0
    ippeve.release()
    ippeve.restart()
    result = await asyncio.wait_for(printing, timeout=15)

    assert result.outcome == PrintOutcome.completed, result.reason
    [again] = ippeve.jobs()  # the restarted printer numbers from 1 again: same spool name
    assert again.env["IPP_JOB_UUID"] != first.env["IPP_JOB_UUID"]
    assert again.env["IPP_JOB_NAME"] == "Report"


async def test_a_restarted_printer_lost_the_job_and_it_fails(ippeve, make_printer):
    ippeve.hold()
    printer = make_printer(on_lost_job="fail", offline_deadline=10.0)
    printing = asyncio.create_task(printer.print(a_request()))
    await ippeve.wait_for_job()

    ippeve.restart()
    result = await asyncio.wait_for(printing, timeout=15)

    assert result.outcome == PrintOutcome.failed
    assert result.reason == "the printer lost the job"


async def test_ready_waits_for_a_killed_printer_then_gives_up(ippeve, make_printer):
    # What ready() logs says whether it began a wait ("not ready") or found the printer
    # back at once ("ready"); the seconds in its message are its own count.
    printer = make_printer(offline_deadline=2.0)
    ippeve.kill()

    with (
        capture_logs() as logs,
        pytest.raises(
            PrinterUnavailable, match=r"^printer office-1 unreachable for 2 s: connection refused$"
        ),
    ):
        await printer.ready()
    assert _events(logs) == ["ipp_printer_not_ready"]

    # The printer has been down since the first call: the next one does not wait again.
    with capture_logs() as logs, pytest.raises(PrinterUnavailable, match="for 2 s"):
        await printer.ready()
    assert _events(logs) == []

    ippeve.restart()
    with capture_logs() as logs:
        await printer.ready()
    assert _events(logs) == ["ipp_printer_ready"], "answered at the first try"

    # Ready again: a new outage gets the whole deadline once more.
    ippeve.kill()
    with capture_logs() as logs, pytest.raises(PrinterUnavailable, match="for 2 s"):
        await printer.ready()
    assert _events(logs) == ["ipp_printer_not_ready"]


async def test_ready_returns_once_a_restarted_printer_answers(ippeve, make_printer):
    printer = make_printer(offline_deadline=30.0)
    ippeve.kill()
    with capture_logs() as logs:
        waiting = asyncio.create_task(printer.ready())
        await wait_until(
            lambda: "ipp_printer_not_ready" in _events(logs), what="ready() saw the printer away"
        )
        assert not waiting.done()

        ippeve.restart()
        # Well inside the deadline: ready() returns because the printer answered.
        await asyncio.wait_for(waiting, timeout=10)

    assert _events(logs) == ["ipp_printer_not_ready", "ipp_printer_ready"]


def test_the_pauses_between_tries_double_from_0_2_s_up_to_2_s_cut_by_up_to_half():
    shortest, longest = ipp._backoff(), ipp._backoff()
    shortest.uniform, longest.uniform = min, max  # the two ends of the jitter
    low = [shortest.delay() for _ in range(6)]
    high = [longest.delay() for _ in range(6)]

    assert low == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert high == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


async def test_state_reads_idle_then_processing(ippeve, make_printer):
    ippeve.hold()
    printer = make_printer()

    idle = await printer.state()
    printing = asyncio.create_task(printer.print(a_request()))
    await ippeve.wait_for_job()
    busy = await printer.state()
    await printer.cancel("job-1")
    ippeve.release()
    await asyncio.wait_for(printing, timeout=10)

    assert idle.state == PrinterState.idle
    assert idle.accepting_jobs
    assert idle.reasons == ()
    assert busy.state == PrinterState.processing
    assert busy.accepting_jobs


async def test_a_wrong_printer_uri_fails_the_job_at_once(ippeve, make_printer):
    wrong = ippeve.uri.replace("/ipp/print", "/ipp/nothing")
    printer = make_printer(uri=wrong)

    result = await printer.print(a_request())

    assert result.outcome == PrintOutcome.failed
    assert result.reason is not None
    assert "client-error-not-found" in result.reason
    with pytest.raises(PrinterUnavailable, match="answering in error for 1 s: client-error"):
        await make_printer(uri=wrong, offline_deadline=1.0).ready()


@pytest.mark.parametrize(
    ("uri", "url"),
    [
        ("ipp://printer.example/ipp/print", "http://printer.example:631/ipp/print"),
        ("ipp://10.0.0.5:8631/printers/a?x=1", "http://10.0.0.5:8631/printers/a?x=1"),
        ("ipps://printer.example/ipp/print", "https://printer.example:631/ipp/print"),
        ("ipp://[fe80::1]/ipp/print", "http://[fe80::1]:631/ipp/print"),
        ("ipp://printer.example", "http://printer.example:631/"),
    ],
)
def test_printer_uris_are_reached_over_http(uri, url):
    assert http_url(uri) == url


@pytest.mark.parametrize("uri", ["http://printer.example/", "ipp:///ipp/print", "printer"])
def test_other_uris_are_refused(uri):
    with pytest.raises(ValueError, match="not an ipp"):
        http_url(uri)


@pytest.mark.parametrize(
    ("status", "problem"),
    [
        (PrinterStatus(state=PrinterState.idle, reasons=(), accepting_jobs=True), None),
        (PrinterStatus(state=PrinterState.processing, reasons=(), accepting_jobs=True), None),
        (
            PrinterStatus(
                state=PrinterState.stopped, reasons=("media-empty-error",), accepting_jobs=True
            ),
            ("stopped", "media-empty-error"),
        ),
        (
            PrinterStatus(state=PrinterState.idle, reasons=(), accepting_jobs=False),
            ("not accepting jobs", "no reason given"),
        ),
    ],
)
def test_a_stopped_printer_or_one_not_accepting_jobs_is_not_ready(status, problem):
    assert status.problem() == problem
