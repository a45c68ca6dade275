"""Printer statuses: poll the printers of the lanes this replica holds, report changes.

Every `interval` seconds each printer is asked for its status; a status that differs from
the last one reported (the core decides) becomes a `printerStatus` event, emitted alone in
a store transaction so that it goes out through the outbox and the relay, with publisher
confirms, like every other event. A poll that finds nothing new emits nothing.

Only lanes this replica holds are polled: their printers have one driver, and one reporter.
A lane given up is forgotten, so that whoever holds it next (this replica again, later)
reports its printers afresh. What was last reported is also what `getPrinterStatus` answers.
"""

from __future__ import annotations

import asyncio
from typing import Final

import structlog

from service.aio import sleep_unless
from service.core.clock import Clock, IdSource, new_id, utc_now
from service.core.printers import (
    UNREACHABLE,
    PrinterSnapshot,
    changed,
    printer_status,
    printer_status_event,
)
from service.models import PrinterStatus
from service.ports import Coordinator, JobStore, Printer, PrinterRoster, StoreError

__all__ = ["PrinterMonitor"]

log = structlog.get_logger(__name__)

# A printer adapter bounds its own requests; this bounds one that does not.
_STATUS_TIMEOUT_S: Final = 30.0


class PrinterMonitor:
    def __init__(
        self,
        *,
        store: JobStore,
        printers: PrinterRoster,
        coordinator: Coordinator,
        interval: float = 10.0,
        clock: Clock = utc_now,
        ids: IdSource = new_id,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self._store = store
        self._printers = printers
        self._coordinator = coordinator
        self._interval = interval
        self._clock = clock
        self._ids = ids
        # By printer name: the status last reported (and committed), with its snapshot.
        self._reported: dict[str, tuple[PrinterSnapshot, PrinterStatus]] = {}
        # The printers of each lane held at the last poll (asking the directory instead
        # would make a printer for any queueId a query names).
        self._printers_of: dict[str, list[str]] = {}

    def statuses(self, lane: str) -> list[PrinterStatus]:
        """The last reported status of each of `lane`'s printers this replica polls."""
        names = self._printers_of.get(lane, ())
        return [self._reported[name][1] for name in names if name in self._reported]

    async def poll_once(self) -> int:
        """Poll every printer of the lanes held; how many statuses were reported.

        Raises StoreError when the events could not be stored: nothing is taken as reported,
        so the next poll reports them again."""
        by_name: dict[str, Printer] = {}
        lanes_of: dict[str, list[str]] = {}
        printers_of: dict[str, list[str]] = {}
        for lane in self._printers.lanes():
            if not self._coordinator.owns(lane):
                continue
            for printer in self._printers.printers(lane):
                by_name.setdefault(printer.name, printer)
                lanes_of.setdefault(printer.name, []).append(lane)
                printers_of.setdefault(lane, []).append(printer.name)
        self._printers_of = printers_of
        for gone in self._reported.keys() - by_name.keys():
            del self._reported[gone]
        names = list(by_name)
        snapshots = await asyncio.gather(*(_status_of(by_name[name]) for name in names))
        now = self._clock()
        news: list[tuple[str, PrinterSnapshot, PrinterStatus]] = []
        for name, snapshot in zip(names, snapshots, strict=True):
            last = self._reported.get(name)
            if changed(last[0] if last is not None else None, snapshot):
                status = printer_status(
                    name, sorted(lanes_of[name]), snapshot, event_id=self._ids(), at=now
                )
                news.append((name, snapshot, status))
        if not news:
            return 0
        async with self._store.transaction() as tx:
            for _, _, status in news:
                tx.emit(printer_status_event(status))
        for name, snapshot, status in news:
            self._reported[name] = (snapshot, status)
            log.info(
                "printer_status_changed",
                printer=name,
                state=snapshot.state.value,
                reasons=list(snapshot.reasons),
                accepting_jobs=snapshot.accepting_jobs,
            )
        return len(news)

    async def run(self, stopping: asyncio.Event) -> None:
        """Poll until `stopping`; a store outage only delays the report to the next poll."""
        while not stopping.is_set():
            try:
                await self.poll_once()
            except StoreError as exc:
                log.warning("printer_status_not_stored", error=str(exc))
            await sleep_unless(stopping, self._interval)


async def _status_of(printer: Printer) -> PrinterSnapshot:
    try:
        async with asyncio.timeout(_STATUS_TIMEOUT_S):
            return await printer.status()
    except TimeoutError:
        return UNREACHABLE
    except Exception:
        log.exception("printer_status_failed", printer=printer.name)
        return UNREACHABLE
