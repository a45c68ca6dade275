"""Printer statuses: what a printer reports, made safe, and when it is worth an event.

A printer is hostile input like a command: its `printer-state-reasons` are kept only when
they are IPP keywords, and only so many of them, before they reach the contract's schema.
Deciding whether a status changed is pure: the loop that polls printers only asks here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from uuid import UUID

from service.core.events import PRINTER_LISTS_ROUTE_PREFIX, PRINTERS_ROUTE_PREFIX, Kind, Outgoing
from service.models import PrinterState, PrinterStatus, PrinterStatusList

__all__ = [
    "MAX_REASONS",
    "REASON_MAX_CHARS",
    "PrinterSnapshot",
    "changed",
    "printer_status",
    "printer_status_event",
    "printer_status_list_event",
    "sanitised_reasons",
]

MAX_REASONS: Final = 16
REASON_MAX_CHARS: Final = 64
# An IPP keyword (RFC 8011 5.1.4) in the lower case printers use; `none` means no reason.
_KEYWORD: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


@dataclass(frozen=True, slots=True)
class PrinterSnapshot:
    """What a printer says of itself at one moment; `reasons` already sanitised."""

    state: PrinterState
    reasons: tuple[str, ...] = ()
    accepting_jobs: bool = True

    @classmethod
    def of(
        cls, state: PrinterState, reasons: Iterable[object] = (), *, accepting_jobs: bool = True
    ) -> PrinterSnapshot:
        return cls(state, sanitised_reasons(reasons), accepting_jobs)


UNREACHABLE: Final = PrinterSnapshot(PrinterState.unreachable, (), accepting_jobs=False)


def sanitised_reasons(reasons: Iterable[object]) -> tuple[str, ...]:
    """The keywords among `reasons`, deduplicated and sorted (a printer that lists them in
    another order has not changed), without `none`, at most MAX_REASONS of them.

    Anything else (text with spaces or control characters, non-ASCII, too long, not a
    string) is dropped: it could not be a keyword, and it would go out to every consumer.
    The IPP suffixes `-report`, `-warning`, `-error` are part of the keyword and kept.
    """
    kept = {
        reason
        for reason in reasons
        if isinstance(reason, str)
        and reason != "none"
        and reason.isascii()
        and _KEYWORD.fullmatch(reason) is not None
    }
    return tuple(sorted(kept)[:MAX_REASONS])


def changed(last: PrinterSnapshot | None, now: PrinterSnapshot) -> bool:
    """Whether `now` is worth an event after `last` (None: never reported)."""
    return last != now


def printer_status(
    printer_id: str,
    queue_ids: Sequence[str],
    snapshot: PrinterSnapshot,
    *,
    event_id: UUID,
    at: datetime,
) -> PrinterStatus:
    return PrinterStatus(
        eventId=event_id,
        printerId=printer_id,
        queueIds=list(queue_ids),
        state=snapshot.state,
        stateReasons=list(snapshot.reasons),
        acceptingJobs=snapshot.accepting_jobs,
        timestamp=at.astimezone(UTC),
    )


def printer_status_event(status: PrinterStatus) -> Outgoing:
    """The event of a printer's changed status; its own event id is its correlation id (no
    command caused it)."""
    route = PRINTERS_ROUTE_PREFIX + status.printerId
    return Outgoing(
        message_id=str(status.eventId),
        kind=Kind.printer_status,
        routing_key=route,
        order_key=route,
        body=status.model_dump_json(exclude_none=True).encode(),
        correlation_id=str(status.eventId),
        label=status.state.value,
        received_at=None,
    )


def printer_status_list_event(
    queue_id: str,
    statuses: Sequence[PrinterStatus],
    *,
    event_id: UUID,
    correlation_id: str,
    received_at: float | None,
    now: datetime,
) -> Outgoing:
    """The answer to `getPrinterStatus`: the last status of each of the queue's printers."""
    event = PrinterStatusList(
        eventId=event_id, queueId=queue_id, timestamp=now.astimezone(UTC), printers=list(statuses)
    )
    route = PRINTER_LISTS_ROUTE_PREFIX + queue_id
    return Outgoing(
        message_id=str(event_id),
        kind=Kind.printer_status_list,
        routing_key=route,
        order_key=route,
        body=event.model_dump_json(exclude_none=True).encode(),
        correlation_id=correlation_id,
        label="printers",
        received_at=received_at,
    )
