"""The simulated printer: the embedded default, so the service runs with nothing else.

It "prints" for a configured time, and can be stopped mid-job like a real one. It reports
pages as a printer would: the impressions of the document (a PDF's pages, counted cheaply;
else one) times the copies, as progress spread over its duration, and the totals at the end.
"""

from __future__ import annotations

import asyncio
import re
from typing import Final

import structlog

from service.core.printers import PrinterSnapshot
from service.models import PrinterState, Sides
from service.ports import (
    Document,
    OnProgress,
    OnSubmitted,
    PrintOutcome,
    PrintRequest,
    PrintResult,
)

__all__ = ["SimulatedPrinter", "page_count"]

log = structlog.get_logger(__name__)

# Pages are counted in the document's head only: a simulation must not read a large file.
SCAN_BYTES: Final = 1 << 20
# Progress reports per job at most (a long document does not make one per page).
MAX_REPORTS: Final = 20
# `/Type /Page` but not `/Type /Pages` (the page tree's nodes).
_PAGE: Final = re.compile(rb"/Type\s*/Page(?![A-Za-z])")


async def page_count(document: Document, content_type: str) -> int:
    """The document's pages, if it is a PDF whose page objects lie in its first MiB (not in
    compressed object streams); else 1."""
    head = bytearray()
    async for chunk in document.chunks():
        head += chunk[: SCAN_BYTES - len(head)]
        if len(head) >= SCAN_BYTES:
            break
    if content_type != "application/pdf" and not head.startswith(b"%PDF"):
        return 1
    return max(1, len(_PAGE.findall(head)))


class SimulatedPrinter:
    def __init__(self, *, name: str, duration: float) -> None:
        if duration < 0:
            raise ValueError("duration must be >= 0")
        self.name = name
        self._duration = duration
        self._current: tuple[str, asyncio.Event] | None = None

    async def ready(self) -> None:
        return None

    async def status(self) -> PrinterSnapshot:
        """Always accepting: processing while it prints a job, idle otherwise."""
        state = PrinterState.idle if self._current is None else PrinterState.processing
        return PrinterSnapshot(state)

    async def print(
        self,
        request: PrintRequest,
        *,
        on_submitted: OnSubmitted | None = None,
        on_progress: OnProgress | None = None,
    ) -> PrintResult:
        # Nothing survives the simulated printer's process: a job taken up again prints again.
        del on_submitted
        stop = asyncio.Event()
        self._current = (request.job_id, stop)
        try:
            try:
                pages = await page_count(request.document, request.content_type)
            finally:
                request.document.close()
            impressions = pages * request.copies
            two_sided = request.options.sides not in {None, Sides.one_sided}
            sheets_per_copy = (pages + 1) // 2 if two_sided else pages
            steps = min(impressions, MAX_REPORTS)
            for step in range(1, steps + 1):
                if await _stopped(stop, self._duration / steps):
                    return PrintResult(PrintOutcome.canceled, "stopped while printing")
                done = impressions * step // steps
                # Sheets of the copies done, and of the copy under way.
                copies, rest = divmod(done, pages)
                sheets = copies * sheets_per_copy + ((rest + 1) // 2 if two_sided else rest)
                await self._report(on_progress, request.job_id, done, sheets)
            return PrintResult(PrintOutcome.completed)
        finally:
            self._current = None

    async def _report(
        self, on_progress: OnProgress | None, job_id: str, impressions: int, sheets: int
    ) -> None:
        if on_progress is None:
            return
        try:
            await on_progress(impressions, sheets)
        except Exception:  # noqa: BLE001 - the print goes on, as at a real printer
            log.warning("simulated_progress_not_reported", job_id=job_id, printer=self.name)

    async def cancel(self, job_id: str) -> None:
        if self._current is not None and self._current[0] == job_id:
            self._current[1].set()

    async def close(self) -> None:
        return None


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Waits `seconds` (none: at once) unless `stop` is set first; whether it was."""
    if seconds <= 0:
        return stop.is_set()
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True
