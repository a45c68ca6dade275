"""The printers of every queue, made from the queue configuration."""

from __future__ import annotations

from collections.abc import Sequence

from service.adapters.printers.ipp import IppPrinter
from service.adapters.printers.simulated import SimulatedPrinter
from service.core.queues import PrinterSpec, QueueMap
from service.ports import Printer

__all__ = ["Printers"]


class Printers:
    """Printer objects per lane. Without a configuration, one simulated printer per queueId,
    made when the queue is first used."""

    def __init__(self, queues: QueueMap, *, simulated_duration: float) -> None:
        self._queues = queues
        self._duration = simulated_duration
        self._by_lane: dict[str, tuple[Printer, ...]] = {}
        self._all: list[SimulatedPrinter | IppPrinter] = []
        for lane, spec in queues.queues.items():
            made = [self._make(queues.printers[name]) for name in spec.printers]
            self._all.extend(made)
            self._by_lane[lane] = tuple(made)

    def printers(self, lane: str) -> Sequence[Printer]:
        printers = self._by_lane.get(lane)
        if printers is None:
            printer = SimulatedPrinter(name=f"simulated-{lane}", duration=self._duration)
            printers = self._by_lane[lane] = (printer,)
        return printers

    def lanes(self) -> Sequence[str]:
        return list(self._by_lane)

    async def close(self) -> None:
        for printer in self._all:
            await printer.close()

    @staticmethod
    def _make(spec: PrinterSpec) -> SimulatedPrinter | IppPrinter:
        if spec.backend == "simulated":
            return SimulatedPrinter(name=spec.name, duration=spec.duration)
        if spec.uri is None:  # refused when the configuration was read
            raise ValueError(f"printer {spec.name!r} has no uri")
        return IppPrinter(
            name=spec.name,
            uri=spec.uri,
            timeout=spec.timeout,
            poll_interval=spec.poll_interval,
            offline_deadline=spec.offline_deadline,
            on_lost_job=spec.on_lost_job,
            ca_file=spec.ca_file,
        )
