"""The simulated printer: the embedded default, so the service runs with nothing else.

It "prints" for a configured time, and can be stopped mid-job like a real one.
"""

from __future__ import annotations

import asyncio

from service.core.jobs import Job
from service.ports import PrintOutcome

__all__ = ["SimulatedPrinter", "SimulatedPrinters"]


class SimulatedPrinter:
    def __init__(self, *, name: str, duration: float) -> None:
        if duration < 0:
            raise ValueError("duration must be >= 0")
        self.name = name
        self._duration = duration
        self._current: tuple[str, asyncio.Event] | None = None

    async def print(self, job: Job) -> PrintOutcome:
        stop = asyncio.Event()
        self._current = (job.job_id, stop)
        try:
            if self._duration == 0:
                return PrintOutcome.completed
            async with asyncio.timeout(self._duration):
                await stop.wait()
        except TimeoutError:
            return PrintOutcome.completed
        finally:
            self._current = None
        return PrintOutcome.canceled

    async def cancel(self, job_id: str) -> None:
        if self._current is not None and self._current[0] == job_id:
            self._current[1].set()


class SimulatedPrinters:
    """One simulated printer per queue, made when the queue is first used."""

    def __init__(self, *, duration: float) -> None:
        self._duration = duration
        self._printers: dict[str, SimulatedPrinter] = {}

    def printer_for(self, queue_id: str) -> SimulatedPrinter:
        printer = self._printers.get(queue_id)
        if printer is None:
            printer = SimulatedPrinter(name=f"simulated-{queue_id}", duration=self._duration)
            self._printers[queue_id] = printer
        return printer
