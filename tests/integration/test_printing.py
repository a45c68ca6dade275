"""Commands on MQTT print on real IPP printers (`ippeveprinter` processes), and the job's
events follow what the printers report."""

from __future__ import annotations

import base64
import contextlib
import http.server
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from service.adapters.documents import REASON
from service.app import Service
from tests.integration.conftest import (
    Listener,
    Publisher,
    Received,
    ServiceFactory,
    statuses,
    unique,
)
from tests.integration.ippeve import IppEvePrinter
from tests.waits import wait_until, wait_until_async

pytestmark = pytest.mark.brokers

# A one-page PDF: what the printers spool is compared byte for byte.
PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)


def inline(data: bytes = PDF, content_type: str = "application/pdf") -> dict[str, str]:
    return {"contentType": content_type, "data": base64.b64encode(data).decode()}


def is_final(received: Any) -> bool:
    return received.kind == "commandRejected" or received.body.get("status") in (
        "finished",
        "canceled",
        "failed",
    )


async def until_final(
    listener: Listener, job_ids: set[str], timeout: float = 20
) -> tuple[list[Received], dict[str, dict[str, Any]]]:
    """What arrives until every one of `job_ids` has ended, and how each ended."""
    final: dict[str, dict[str, Any]] = {}

    def all_ended(received: Received) -> bool:
        if is_final(received) and received.body.get("jobId") in job_ids:
            final.setdefault(received.body["jobId"], received.body)
        return final.keys() == job_ids

    return await listener.until(all_ended, timeout), final


@pytest.fixture
def printers(tmp_path: Path) -> Iterator[dict[str, IppEvePrinter]]:
    made: dict[str, IppEvePrinter] = {}
    for name in ("ipp-a", "ipp-b"):
        made[name] = IppEvePrinter(name=name, workdir=tmp_path / name, print_seconds=1.0)
        made[name].start()
    yield made
    for printer in made.values():
        printer.kill()


def queue_file(tmp_path: Path, pools: dict[str, list[IppEvePrinter]], **printer: Any) -> Path:
    """A queue configuration with one queue per entry of `pools`."""
    settings = {"timeout": 3, "poll_interval": 0.2, "offline_deadline": 30, **printer}
    lines = ['unknown_queue = "reject"']
    for pool in pools.values():
        for ipp in pool:
            lines.append(f'[printers."{ipp.name}"]')
            lines.append(f'uri = "{ipp.uri}"')
            lines += [
                f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}"
                for key, value in settings.items()
            ]
    for queue_id, pool in pools.items():
        lines.append(f'[queues."{queue_id}"]')
        lines.append("printers = [" + ", ".join(f'"{p.name}"' for p in pool) + "]")
    path = tmp_path / f"queues-{unique('cfg')}.toml"
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return path


@contextlib.asynccontextmanager
async def printing_service(
    start_service: ServiceFactory,
    amqp: Any,
    tmp_path: Path,
    pools: dict[str, list[IppEvePrinter]],
    **printer: Any,
) -> AsyncIterator[tuple[Service, Listener]]:
    path = queue_file(tmp_path, pools, **printer)
    # The document server listens on loopback, which a fetch refuses unless allowed.
    async with start_service(print_queues_file=path, document_allow_hosts="127.0.0.1") as service:
        queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
        for queue_id in pools:
            await queue.bind("print.rejections", f"rejections/{queue_id}")
        yield service, Listener(amqp, queue)


async def test_a_pdf_is_printed_and_finished_because_the_printer_said_so(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    printers: dict[str, IppEvePrinter],
    tmp_path: Path,
):
    printer = printers["ipp-a"]
    async with printing_service(start_service, amqp, tmp_path, {"office": [printer]}) as (
        _,
        listener,
    ):
        job_id = unique("pdf")
        await listener.bind_job(job_id)
        await publisher.create(
            "office",
            job_id,
            title="Quarterly report",
            userId="alice",
            document=inline(),
            correlation_id="corr-print-1",
        )

        events = await listener.until(is_final, timeout=20)

        assert statuses(events) == ["created", "started", "finished"]
        assert {e.message.correlation_id for e in events} == {"corr-print-1"}
        (recorded,) = printer.jobs()
        assert recorded.document.read_bytes() == PDF
        assert recorded.env["IPP_JOB_NAME"] == "Quarterly report"
        assert recorded.env["IPP_JOB_ORIGINATING_USER_NAME"] == "alice"
        assert recorded.env["CONTENT_TYPE"] == "application/pdf"


async def test_every_option_reaches_the_printer(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    printers: dict[str, IppEvePrinter],
    tmp_path: Path,
):
    printer = printers["ipp-a"]
    printer.print_seconds = 0.1
    async with printing_service(start_service, amqp, tmp_path, {"office": [printer]}) as (
        _,
        listener,
    ):
        job_id = unique("options")
        await listener.bind_job(job_id)
        await publisher.create(
            "office",
            job_id,
            document=inline(),
            copies=2,
            options={
                "sides": "two-sided-short-edge",
                "media": "iso_a4_210x297mm",
                "colorMode": "monochrome",
                "pageRanges": [{"start": 1, "end": 2}, {"start": 4, "end": 4}],
                "orientation": "landscape",
                "quality": "high",
            },
        )

        assert statuses(await listener.until(is_final, timeout=20))[-1] == "finished"
        env = printer.jobs()[0].env
        assert env["IPP_COPIES"] == "2"
        assert env["IPP_SIDES"] == "two-sided-short-edge"
        assert env["IPP_MEDIA"] == "iso_a4_210x297mm"
        assert env["IPP_PRINT_COLOR_MODE"] == "monochrome"
        assert env["IPP_PAGE_RANGES"] == "1-2,4-4"
        assert env["IPP_ORIENTATION_REQUESTED"] == "landscape"
        assert env["IPP_PRINT_QUALITY"] == "high"


async def test_an_option_the_printer_refuses_fails_the_job_and_says_which(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    printers: dict[str, IppEvePrinter],
    tmp_path: Path,
):
    # ippeveprinter takes letter, legal, A4 and two envelopes; it does not take A3.
    printer = printers["ipp-a"]
    async with printing_service(start_service, amqp, tmp_path, {"office": [printer]}) as (
        _,
        listener,
    ):
        job_id = unique("a3")
        await listener.bind_job(job_id)
        await publisher.create(
            "office", job_id, document=inline(), options={"media": "iso_a3_297x420mm"}
        )

        events = await listener.until(is_final, timeout=20)

        assert statuses(events) == ["created", "started", "failed"]
        assert "media=iso_a3_297x420mm" in events[-1].body["reason"]
        assert printer.jobs() == [], "nothing printed on the wrong paper"


async def test_cancel_of_a_waiting_job_and_force_cancel_of_a_printing_one(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    printers: dict[str, IppEvePrinter],
    tmp_path: Path,
):
    printer = printers["ipp-a"]
    printer.print_seconds = 0
    printer.hold()
    async with printing_service(start_service, amqp, tmp_path, {"office": [printer]}) as (
        _,
        listener,
    ):
        printing, waiting = unique("printing"), unique("waiting")
        for job_id in (printing, waiting):
            await listener.bind_job(job_id)
            await publisher.create("office", job_id, document=inline())
        await listener.until(lambda r: r.body.get("status") == "started", timeout=20)
        await printer.wait_for_job(count=1)

        await publisher.command("office", "cancelPrintJob", {"jobId": waiting})
        await publisher.command("office", "cancelPrintJob", {"jobId": printing, "force": True})

        ends = await listener.until(
            lambda r: r.body.get("jobId") == printing and r.body.get("status") == "canceled",
            timeout=20,
        )
        by_job = {e.body["jobId"]: e.body for e in ends if e.body.get("status") == "canceled"}
        assert by_job[waiting]["reason"] == "canceled before it started"
        assert by_job[printing]["reason"] == "force-canceled while printing"

        # ippeveprinter ends a canceled job once its command exits. The next job prints
        # once the printer is done with the canceled one; then the canceled job's status.
        printer.release()
        after = unique("after")
        await listener.bind_job(after)
        await publisher.create("office", after, document=inline())
        rest = await listener.until(
            lambda r: r.body.get("jobId") == after and r.body.get("status") == "finished",
            timeout=20,
        )
        await publisher.command("office", "getPrintJobStatus", {"jobId": printing})
        rest += await listener.until(lambda r: r.body.get("snapshot") is True, timeout=20)

        assert rest[-1].body["status"] == "canceled"
        changes = [(r.body["jobId"], r.body.get("status")) for r in rest[:-1]]
        assert changes == [(after, "created"), (after, "started"), (after, "finished")], (
            "no finished after a forced cancel; the canceled waiting job never starts"
        )
        assert len(printer.jobs()) == 2, "the canceled waiting job never reached the printer"


async def test_a_pool_of_two_printers_prints_two_jobs_at_once(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    printers: dict[str, IppEvePrinter],
    tmp_path: Path,
):
    pool = [printers["ipp-a"], printers["ipp-b"]]
    for printer in pool:
        printer.print_seconds = 0
        printer.hold()
    async with printing_service(start_service, amqp, tmp_path, {"pool": pool}) as (_, listener):
        first, second = unique("one"), unique("two")
        for job_id in (first, second):
            await listener.bind_job(job_id)
            await publisher.create("pool", job_id, document=inline())

        # Neither job can end while the printers are held: each printer has one at once.
        for printer in pool:
            await printer.wait_for_job(timeout=20)
        for printer in pool:
            printer.release()
        events, final = await until_final(listener, {first, second})

        assert {job_id: body["status"] for job_id, body in final.items()} == {
            first: "finished",
            second: "finished",
        }
        assert statuses(events).count("started") == 2
        assert [len(p.jobs()) for p in pool] == [1, 1]


async def test_a_printer_killed_mid_job_fails_the_job_after_its_deadline(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    printers: dict[str, IppEvePrinter],
    tmp_path: Path,
):
    printer = printers["ipp-a"]
    printer.hold()
    async with printing_service(
        start_service, amqp, tmp_path, {"office": [printer]}, offline_deadline=2, on_lost_job="fail"
    ) as (_, listener):
        job_id = unique("killed")
        await listener.bind_job(job_id)
        await publisher.create("office", job_id, document=inline())
        await printer.wait_for_job()

        printer.kill()

        events = await listener.until(is_final, timeout=30)
        assert statuses(events)[-1] == "failed"
        assert "unreachable" in events[-1].body["reason"]


async def test_a_printer_that_restarts_and_forgets_the_job_prints_it_again_when_told_to_retry(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    printers: dict[str, IppEvePrinter],
    tmp_path: Path,
):
    printer = printers["ipp-a"]
    printer.hold()
    async with printing_service(
        start_service, amqp, tmp_path, {"office": [printer]}, on_lost_job="retry"
    ) as (_, listener):
        job_id = unique("retried")
        await listener.bind_job(job_id)
        await publisher.create("office", job_id, document=inline())
        first = await printer.wait_for_job()

        printer.kill()
        printer.print_seconds = 0
        printer.release()
        printer.restart()

        events = await listener.until(is_final, timeout=30)
        assert statuses(events) == ["created", "started", "finished"]
        # The restarted printer numbers its jobs from 1 again: the second submission is
        # told apart from the first by its job UUID.
        (again,) = printer.jobs()
        assert again.env["IPP_JOB_UUID"] != first.env["IPP_JOB_UUID"], "printed again"
        assert again.document.read_bytes() == PDF


async def test_jobs_wait_for_an_offline_printer_and_print_when_it_is_back(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    printers: dict[str, IppEvePrinter],
    tmp_path: Path,
):
    printer = printers["ipp-a"]
    printer.print_seconds = 0.2
    printer.kill()
    async with printing_service(start_service, amqp, tmp_path, {"office": [printer]}) as (
        _,
        listener,
    ):
        job_id = unique("offline")
        await listener.bind_job(job_id)
        with capture_logs() as logs:
            await publisher.create("office", job_id, document=inline())
            assert statuses(await listener.collect(1)) == ["created"]
            await wait_until(
                lambda: any(
                    e["event"] == "ipp_printer_not_ready" and e.get("printer") == printer.name
                    for e in logs
                ),
                what="the service found the printer away",
            )
        # Past the point where it would have started or failed: the job still waits.
        await publisher.command("office", "getPrintJobStatus", {"jobId": job_id})
        snapshot = await listener.next()
        assert (snapshot.body["status"], snapshot.body.get("snapshot")) == ("created", True)

        printer.restart()

        assert statuses(await listener.until(is_final, timeout=20)) == ["started", "finished"]


class _Documents(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/report.pdf":
            self.send_response(200)
            self.send_header("Content-Type", "application/pdf")
            self.send_header("Content-Length", str(len(PDF)))
            self.end_headers()
            self.wfile.write(PDF)
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        del format, args  # quiet: the test reads the job's events, not this log


@pytest.fixture
def document_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Documents)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_a_document_given_by_url_is_fetched_and_printed_and_a_missing_one_fails(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    printers: dict[str, IppEvePrinter],
    tmp_path: Path,
    document_server: str,
):
    printer = printers["ipp-a"]
    printer.print_seconds = 0.1
    async with printing_service(start_service, amqp, tmp_path, {"office": [printer]}) as (
        _,
        listener,
    ):
        found, missing = unique("url"), unique("missing")
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            for job_id, path in ((found, "/report.pdf"), (missing, "/absent.pdf")):
                await listener.bind_job(job_id)
                url = document_server + path
                await publisher.create(
                    "office", job_id, document={"contentType": "application/pdf", "url": url}
                )

            _, final = await until_final(listener, {found, missing})

        assert final[found]["status"] == "finished"
        assert final[missing]["status"] == "failed"
        # The job says only that its document could not be had; the log says why.
        assert final[missing]["reason"] == REASON
        [refusal] = [line for line in logs if line["event"] == "document_unavailable"]
        assert refusal["job_id"] == missing
        assert refusal["detail"] == f"HTTP 404 from {document_server}/absent.pdf"
        assert [job.document.read_bytes() for job in printer.jobs()] == [PDF]


async def test_what_a_printing_queue_refuses_at_create(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    printers: dict[str, IppEvePrinter],
    tmp_path: Path,
):
    async with printing_service(start_service, amqp, tmp_path, {"office": [printers["ipp-a"]]}) as (
        _,
        listener,
    ):
        await listener.queue.bind("print.rejections", "rejections/nowhere")
        await publisher.create("office", unique("no-doc"), correlation_id="corr-no-doc")
        await publisher.create("nowhere", unique("lost"), document=inline(), correlation_id="c-q")

        rejections = {r.body["correlationId"]: r.body for r in await listener.collect(2)}

        assert rejections["corr-no-doc"]["reason"] == "document_required"
        assert rejections["c-q"]["reason"] == "unknown_queue"
        assert rejections["c-q"]["queueId"] == "nowhere"


async def test_a_restart_follows_the_job_on_the_printer_rather_than_printing_it_again(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    printers: dict[str, IppEvePrinter],
    tmp_path: Path,
):
    printer = printers["ipp-a"]
    printer.print_seconds = 0
    printer.hold()
    path = queue_file(tmp_path, {"office": [printer]})
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    listener = Listener(amqp, queue)
    job_id = unique("followed")
    await listener.bind_job(job_id)
    async with start_service(print_queues_file=path) as service:
        await publisher.create("office", job_id, document=inline())
        assert statuses(await listener.collect(2)) == ["created", "started"]
        await printer.wait_for_job()

        async def recorded() -> bool:
            job = await service.store.read_job(job_id)
            return job is not None and job.printer_job is not None

        # At its first poll, the service records which of the printer's jobs is ours.
        await wait_until_async(recorded, what="the printer's job recorded with the job")
    # Stopped mid-print: the job stays `started`; the printer goes on printing it.

    async with start_service(print_queues_file=path):
        printer.release()
        events = await listener.until(is_final, timeout=20)

    assert statuses(events) == ["finished"]
    assert len(printer.jobs()) == 1, "followed on the printer, not submitted again"


async def test_a_held_job_reaches_the_printer_only_once_released(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    printers: dict[str, IppEvePrinter],
    tmp_path: Path,
):
    printer = printers["ipp-a"]
    printer.print_seconds = 0
    async with printing_service(start_service, amqp, tmp_path, {"office": [printer]}) as (
        _,
        listener,
    ):
        held, plain = unique("held"), unique("plain")
        for job_id in (held, plain):
            await listener.bind_job(job_id)
        secret = b"%PDF-1.4\n% payroll\n" + PDF
        await publisher.create(
            "office", held, document=inline(secret), hold="indefinite", releasePin="9999"
        )
        await publisher.create("office", plain, document=inline())
        # The job sent after it prints: the printer was free, and got only that one.
        _, final = await until_final(listener, {plain})
        assert final[plain]["status"] == "finished"
        assert [job.document.read_bytes() for job in printer.jobs()] == [PDF]

        await publisher.command(
            "office", "releasePrintJob", {"jobId": held, "pin": "9999"}, correlation_id="c-rel"
        )
        events, final = await until_final(listener, {held})
        assert final[held]["status"] == "finished"
        of_held = [e.body["status"] for e in events if e.body.get("jobId") == held]
        assert of_held[-3:] == ["created", "started", "finished"]
        assert [job.document.read_bytes() for job in printer.jobs()] == [PDF, secret]
