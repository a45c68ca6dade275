"""The simulated printer: the embedded default, so the service runs with nothing else.

It "prints" for a configured time, and can be stopped mid-job like a real one.
"""

from __future__ import annotations

import asyncio

from service.ports import OnSubmitted, PrintOutcome, PrintRequest, PrintResult

__all__ = ["SimulatedPrinter"]


class SimulatedPrinter:
    def __init__(self, *, name: str, duration: float) -> None:
        if duration < 0:
            raise ValueError("duration must be >= 0")
        self.name = name
        self._duration = duration
        self._current: tuple[str, asyncio.Event] | None = None

    async def ready(self) -> None:
        return None

    async def print(
        self, request: PrintRequest, *, on_submitted: OnSubmitted | None = None
    ) -> PrintResult:
        # Nothing survives the simulated printer's process: a job taken up again prints again.
        del on_submitted
        request.document.close()  # never read: nothing is printed
        stop = asyncio.Event()
        self._current = (request.job_id, stop)
        try:
            if self._duration == 0:
                return PrintResult(PrintOutcome.completed)
            async with asyncio.timeout(self._duration):
                await stop.wait()
        except TimeoutError:
            return PrintResult(PrintOutcome.completed)
        finally:
            self._current = None
        return PrintResult(PrintOutcome.canceled, "stopped while printing")

    async def cancel(self, job_id: str) -> None:
        if self._current is not None and self._current[0] == job_id:
            self._current[1].set()

    async def close(self) -> None:
        return None
