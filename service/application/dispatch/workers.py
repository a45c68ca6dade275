"""A lane's printers, each fed by its own worker while jobs wait there.

A worker first waits for its printer to be ready, then takes the next job, so a pool hands
each job to the next printer that is idle and reachable, and a printer that is offline takes
none. A worker exits when its lane is empty, or no longer held here.
"""

from __future__ import annotations

import asyncio

import structlog

from service.application.dispatch.progress import JobProgress
from service.application.dispatch.spawner import Spawner
from service.application.dispatch.waiting import WaitingRoom
from service.core.backoff import Backoff
from service.ports import Coordinator, Printer, PrinterDirectory, PrinterUnavailable

__all__ = ["LaneWorkers"]

# One logger name for the whole dispatcher (its package).
log = structlog.get_logger("service.application.dispatch")


class LaneWorkers:
    def __init__(
        self,
        *,
        waiting: WaitingRoom,
        printers: PrinterDirectory,
        coordinator: Coordinator,
        progress: JobProgress,
        spawner: Spawner,
    ) -> None:
        self._waiting = waiting
        self._printers = printers
        self._coordinator = coordinator
        self._progress = progress
        self._spawner = spawner
        self._workers: dict[str, asyncio.Task[None]] = {}  # by printer name
        self._unavailable: set[str] = set()  # printers past their offline deadline

    def start(self, lane: str) -> None:
        """Jobs wait in `lane`: each of its printers without a worker gets one."""
        for printer in self._printers.printers(lane):
            if printer.name not in self._workers:
                task = self._spawner.spawn(
                    self._work(lane, printer), name=f"printer:{printer.name}"
                )
                if task is not None:
                    self._workers[printer.name] = task

    def stop(self, lane: str) -> None:
        """`lane` is no longer printed here: its workers stop (a job being printed stays
        `started`, for the lane's next holder)."""
        for printer in self._printers.printers(lane):
            if (worker := self._workers.get(printer.name)) is not None:
                worker.cancel()

    async def stop_all(self) -> None:
        """Stop every worker, and return once they have."""
        workers = list(self._workers.values())
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.wait(workers)

    async def _work(self, lane: str, printer: Printer) -> None:
        broken = Backoff(first=1.0, cap=30.0)
        cancelled = False
        try:
            while self._waiting.waiting_in(lane) and self._coordinator.owns(lane):
                try:
                    await printer.ready()
                except PrinterUnavailable as exc:
                    if not self._all_unavailable(lane, printer):
                        return  # the pool's other printers take the jobs meanwhile
                    # Every printer of the lane has been away past its deadline: the jobs
                    # fail one by one, each with the reason, rather than wait forever.
                    if (turn := self._waiting.pop(lane)) is not None:
                        await self._progress.give_up(turn.job_id, str(exc), lane)
                    continue
                except Exception:
                    # A printer's adapter must not take the others down: treat it as away.
                    log.exception("printer_ready_failed", printer=printer.name)
                    await asyncio.sleep(broken.delay())
                    continue
                broken.reset()
                self._unavailable.discard(printer.name)
                if (turn := self._waiting.pop(lane)) is None:
                    return
                # An instant printer never suspends: yield, so that a long queue does not
                # starve the other loops.
                await asyncio.sleep(0)
                await self._progress.print_job(printer, turn.job_id, lane, resume=turn.resume)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if self._workers.get(printer.name) is asyncio.current_task():
                del self._workers[printer.name]
                # Stopped because the lane was lost, and regained since (its jobs loaded
                # again while this worker was still ending): the lane needs a worker again.
                if cancelled and self._waiting.waiting_in(lane) and self._coordinator.owns(lane):
                    self.start(lane)

    def _all_unavailable(self, lane: str, printer: Printer) -> bool:
        self._unavailable.add(printer.name)
        return all(p.name in self._unavailable for p in self._printers.printers(lane))
