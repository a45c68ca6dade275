"""Printer statuses against a real ippeveprinter: what `IppPrinter.status()` reads (its
state reasons too, set by the job's command as an IPP Everywhere command does), and the
service's `printerStatus` events and `getPrinterStatus` answer on real brokers, while the
printer goes away and comes back."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from service.adapters.printers.ipp import IppPrinter
from service.core.printers import PrinterSnapshot
from service.models import PrinterState
from tests.conftest import Brokers
from tests.integration.conftest import Listener, Publisher, Received, ServiceFactory, unique
from tests.integration.ippeve import IppEvePrinter, IppEveUnavailableError
from tests.integration.test_cli import cli
from tests.integration.test_ipp_printer import a_request
from tests.integration.test_printing import printing_service

pytestmark = pytest.mark.brokers


@pytest.fixture
def ippeve(tmp_path: Path) -> Iterator[IppEvePrinter]:
    printer = IppEvePrinter(name=unique("ipp-status"), workdir=tmp_path / "ippeve", print_seconds=0)
    try:
        printer.start()
    except IppEveUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield printer
    printer.kill()


async def test_the_adapter_reads_state_and_reasons_and_unreachable(ippeve: IppEvePrinter):
    printer = IppPrinter(name=ippeve.name, uri=ippeve.uri, timeout=2.0, poll_interval=0.1)
    try:
        assert await printer.status() == PrinterSnapshot(PrinterState.idle)
        # The job's command reports a low toner: ippeveprinter keeps it as a `-report` reason.
        ippeve.report_state("+toner-low")
        await printer.print(a_request())
        status = await printer.status()
        assert status.state is PrinterState.idle
        assert status.reasons == ("toner-low-report",)
        assert status.accepting_jobs

        ippeve.kill()
        unreachable = await printer.status()
        assert unreachable == PrinterSnapshot(PrinterState.unreachable, accepting_jobs=False)

        ippeve.start()  # a new process: the reason is gone with the old one
        assert await printer.status() == PrinterSnapshot(PrinterState.idle)
    finally:
        await printer.close()


def is_printer(state: str) -> Any:
    def matches(received: Received) -> bool:
        return received.kind == "printerStatus" and received.body["state"] == state

    return matches


async def test_the_service_reports_a_printer_that_goes_away_and_comes_back(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    ippeve: IppEvePrinter,
    tmp_path: Path,
    brokers: Brokers,
):
    queue_id = unique("printers")
    with_interval = partial(start_service, printer_status_interval=0.1)
    async with printing_service(with_interval, amqp, tmp_path, {queue_id: [ippeve]}, timeout=1) as (
        _,
        listener,
    ):
        await listener.queue.bind("print.events", f"printers/{ippeve.name}")
        await listener.queue.bind("print.events", f"printer-statuses/{queue_id}")
        # Bound after the service started: the first status may have gone out already; the
        # answer to getPrinterStatus says it whatever.
        await publisher.command(queue_id, "getPrinterStatus", {}, correlation_id="corr-printers")
        answer = (await listener.until(lambda r: r.kind == "printerStatusList"))[-1]
        assert answer.message.correlation_id == "corr-printers"
        assert answer.message.routing_key == f"printer-statuses/{queue_id}"
        assert answer.body["queueId"] == queue_id
        (idle,) = answer.body["printers"]
        assert idle["printerId"] == ippeve.name
        assert idle["queueIds"] == [queue_id]
        assert (idle["state"], idle["stateReasons"], idle["acceptingJobs"]) == ("idle", [], True)
        # The CLI asks the same, as a person would.
        code, lines = await cli(brokers, "printers", "--queue", queue_id)
        assert code == 0, lines
        (line,) = lines
        assert f"printer={ippeve.name}  idle" in line
        assert line.endswith("accepting  reasons=-")

        ippeve.kill()
        gone = (await listener.until(is_printer("unreachable"), timeout=15))[-1]
        assert gone.message.routing_key == f"printers/{ippeve.name}"
        assert gone.body["acceptingJobs"] is False
        ippeve.start()
        back = await listener.until(is_printer("idle"), timeout=15)
        # Once each way: polls that find nothing new publish nothing.
        assert [r.body["state"] for r in back if r.kind == "printerStatus"] == ["idle"]
        assert gone.body["eventId"] != back[-1].body["eventId"]
        assert await _statuses_in(listener, 0.5) == []


async def _statuses_in(listener: Listener, seconds: float) -> list[Received]:
    return [r for r in await listener.quiet(seconds) if r.kind == "printerStatus"]
