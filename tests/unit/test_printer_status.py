"""Printer statuses (issue 12, part 3): the core's sanitising and diffing, the monitor
through the harness (a FakePrinter whose status the test sets), and `getPrinterStatus`."""

from __future__ import annotations

import hashlib
from contextlib import AbstractAsyncContextManager
from typing import Final
from uuid import UUID

import pytest

from service.core.access import AccessControl, KeyTable
from service.core.events import Kind
from service.core.printers import (
    MAX_REASONS,
    UNREACHABLE,
    PrinterSnapshot,
    changed,
    printer_status,
    printer_status_event,
    sanitised_reasons,
)
from service.models import MessageType, PrinterState, PrinterStatus, RejectionReason
from service.ports import StoreError, StoreTransaction
from tests.harness.fakes import EPOCH, FakePrinter
from tests.harness.harness import Harness

QUEUE: Final = "queue-1"


def reasons(status: PrinterStatus) -> list[str]:
    return [reason.root for reason in status.stateReasons]


def queues(status: PrinterStatus) -> list[str]:
    return [queue.root for queue in status.queueIds]


GET: Final = MessageType.getPrinterStatus
EVENT_ID: Final = UUID(int=1)


# --- the core ---------------------------------------------------------------------------------


def test_reasons_keep_only_ipp_keywords_sorted_and_deduplicated() -> None:
    given = ["toner-low", "media-empty", "none", "toner-low", "Media Empty", "a\x00b", "é-low"]
    assert sanitised_reasons(given) == ("media-empty", "toner-low")


@pytest.mark.parametrize(
    "hostile",
    ["", " ", "x" * 65, "-leading-dash", "UPPER", "tab\there", "new\nline", 7, None, b"bytes"],
)
def test_what_is_not_a_keyword_is_dropped(hostile: object) -> None:
    assert sanitised_reasons([hostile, "offline-report"]) == ("offline-report",)


def test_reasons_are_capped_in_number() -> None:
    many = [f"reason-{n:03}" for n in range(100)]
    kept = sanitised_reasons(many)
    assert len(kept) == MAX_REASONS
    assert kept == tuple(sorted(many)[:MAX_REASONS])


def test_a_64_character_keyword_is_kept() -> None:
    assert sanitised_reasons(["k" * 64]) == ("k" * 64,)


def test_a_status_is_reported_when_state_reasons_or_acceptance_change() -> None:
    idle = PrinterSnapshot(PrinterState.idle)
    assert changed(None, idle)
    assert not changed(idle, PrinterSnapshot(PrinterState.idle))
    assert changed(idle, PrinterSnapshot(PrinterState.processing))
    assert changed(idle, PrinterSnapshot.of(PrinterState.idle, ["toner-low"]))
    assert changed(idle, PrinterSnapshot(PrinterState.idle, accepting_jobs=False))
    # The same reasons in another order, or with `none`, are no change.
    a = PrinterSnapshot.of(PrinterState.idle, ["toner-low", "media-low"])
    assert not changed(a, PrinterSnapshot.of(PrinterState.idle, ["none", "media-low", "toner-low"]))


def test_the_event_validates_and_is_routed_by_printer() -> None:
    snapshot = PrinterSnapshot.of(PrinterState.stopped, ["media-empty"], accepting_jobs=False)
    status = printer_status("front-desk", [QUEUE], snapshot, event_id=EVENT_ID, at=EPOCH)
    outgoing = printer_status_event(status)
    assert outgoing.kind is Kind.printer_status
    assert outgoing.routing_key == "printers/front-desk"
    assert outgoing.message_id == str(EVENT_ID)
    decoded = PrinterStatus.model_validate_json(outgoing.body)
    assert decoded == status
    assert decoded.state is PrinterState.stopped
    assert reasons(decoded) == ["media-empty"]
    assert queues(decoded) == [QUEUE]
    assert not decoded.acceptingJobs


# --- the monitor ------------------------------------------------------------------------------


async def test_a_poll_reports_each_printer_once_then_only_changes() -> None:
    printer = FakePrinter("front-desk")
    async with Harness(lanes={QUEUE: [printer]}) as service:
        assert await service.monitor.poll_once() == 1
        assert await service.monitor.poll_once() == 0
        printer.snapshot = PrinterSnapshot.of(PrinterState.idle, ["toner-low"])
        assert await service.monitor.poll_once() == 1
        printer.snapshot = PrinterSnapshot.of(
            PrinterState.stopped, ["media-empty", "toner-low"], accepting_jobs=False
        )
        assert await service.monitor.poll_once() == 1
        assert await service.monitor.poll_once() == 0
        await service.drained()

        statuses = service.printer_statuses()
        assert [(s.state, reasons(s), s.acceptingJobs) for s in statuses] == [
            (PrinterState.idle, [], True),
            (PrinterState.idle, ["toner-low"], True),
            (PrinterState.stopped, ["media-empty", "toner-low"], False),
        ]
        assert {s.printerId for s in statuses} == {"front-desk"}
        assert all(queues(s) == [QUEUE] for s in statuses)
        assert len({s.eventId for s in statuses}) == 3


async def test_a_printer_that_goes_away_and_comes_back_is_reported_both_ways() -> None:
    printer = FakePrinter("front-desk")
    async with Harness(lanes={QUEUE: [printer]}) as service:
        await service.monitor.poll_once()
        printer.snapshot = UNREACHABLE
        await service.monitor.poll_once()
        printer.snapshot = None
        await service.monitor.poll_once()
        await service.drained()
        assert [s.state for s in service.printer_statuses()] == [
            PrinterState.idle,
            PrinterState.unreachable,
            PrinterState.idle,
        ]
        assert not service.printer_statuses()[1].acceptingJobs


async def test_a_printer_whose_status_fails_is_unreachable_and_the_others_reported() -> None:
    broken, fine = FakePrinter("broken"), FakePrinter("fine")
    broken.status_error = RuntimeError("an adapter bug")
    async with Harness(lanes={QUEUE: [broken, fine]}) as service:
        assert await service.monitor.poll_once() == 2
        await service.drained()
        by_name = {s.printerId: s.state for s in service.printer_statuses()}
        assert by_name == {"broken": PrinterState.unreachable, "fine": PrinterState.idle}


async def test_a_printer_of_two_lanes_is_reported_once_with_both_queues() -> None:
    shared = FakePrinter("shared")
    async with Harness(lanes={"queue-a": [shared], "queue-b": [shared]}) as service:
        assert await service.monitor.poll_once() == 1
        await service.drained()
        (status,) = service.printer_statuses()
        assert queues(status) == ["queue-a", "queue-b"]


async def test_a_status_not_stored_is_reported_at_the_next_poll() -> None:
    printer = FakePrinter("front-desk")
    async with Harness(lanes={QUEUE: [printer]}) as service:
        real = service.store.transaction

        def failing(*, lane: str | None = None) -> AbstractAsyncContextManager[StoreTransaction]:
            service.store.transaction = real  # type: ignore[method-assign]
            raise StoreError("the store is away")

        service.store.transaction = failing  # type: ignore[method-assign,assignment]
        with pytest.raises(StoreError):
            await service.monitor.poll_once()
        assert await service.monitor.poll_once() == 1
        await service.drained()
        assert [s.state for s in service.printer_statuses()] == [PrinterState.idle]


# --- getPrinterStatus ---------------------------------------------------------------------------


async def test_get_printer_status_answers_the_last_reported_statuses() -> None:
    printer = FakePrinter("front-desk")
    async with Harness(lanes={QUEUE: [printer]}) as service:
        await service.send({}, queue_id=QUEUE, message_type=GET, correlation_id="corr-0")
        printer.snapshot = PrinterSnapshot.of(PrinterState.idle, ["toner-low"])
        await service.monitor.poll_once()
        await service.send({}, queue_id=QUEUE, message_type=GET, correlation_id="corr-1")
        await service.send({}, queue_id="queue-other", message_type=GET, correlation_id="corr-2")
        await service.drained()

        before, answer, other = service.printer_status_lists()
        assert (before.queueId, before.printers) == (QUEUE, [])
        (status,) = answer.printers
        assert (status.printerId, reasons(status)) == ("front-desk", ["toner-low"])
        assert (other.queueId, other.printers) == ("queue-other", [])
        replies = [m for m in service.publisher.published if m.kind is Kind.printer_status_list]
        assert [m.correlation_id for m in replies] == ["corr-0", "corr-1", "corr-2"]
        assert [m.routing_key for m in replies] == [
            f"printer-statuses/{QUEUE}",
            f"printer-statuses/{QUEUE}",
            "printer-statuses/queue-other",
        ]


@pytest.mark.parametrize("payload", [{"jobId": "job-1"}, {"printers": ["x"]}])
async def test_get_printer_status_with_fields_is_refused(payload: dict[str, object]) -> None:
    async with Harness() as service:
        await service.send(payload, queue_id=QUEUE, message_type=GET, correlation_id="corr-bad")
        await service.drained()
        (rejection,) = service.rejections()
        assert rejection.reason is RejectionReason.schema_violation
        assert rejection.correlationId == "corr-bad"
        assert service.printer_status_lists() == []


async def test_get_printer_status_needs_read_job() -> None:
    keys = f"""
[keys.writer]
sha256 = "{hashlib.sha256(b"writer").hexdigest()}"
queues = ["*"]
scopes = ["write:job"]
"""
    access = AccessControl(KeyTable.from_toml(keys, source="keys"), rate=1e3, burst=1000)
    async with Harness(access=access) as service:
        await service.send(
            {},
            queue_id=QUEUE,
            message_type=GET,
            correlation_id="corr-w",
            properties={"x-api-key": "writer"},
        )
        await service.drained()
        (rejection,) = service.rejections()
        assert rejection.reason is RejectionReason.forbidden
        assert rejection.correlationId == "corr-w"


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'"text"', b"\xff\xfe"])
async def test_get_printer_status_that_is_no_json_object_is_answered(payload: bytes) -> None:
    async with Harness() as service:
        await service.send(payload, queue_id=QUEUE, message_type=GET, correlation_id="corr-junk")
        await service.drained()
        (rejection,) = service.rejections()
        assert rejection.reason in {RejectionReason.invalid_json, RejectionReason.invalid_encoding}
        assert rejection.correlationId == "corr-junk"
        assert service.printer_status_lists() == []
