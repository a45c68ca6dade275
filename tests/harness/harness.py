"""The service's application layer without brokers: the real `CommandHandler` (with the real
`CommandDecoder`), `PrintDispatcher` and `OutboxRelay` over a memory store, fake printers, a
publisher that collects, a fake clock and sequential ids.

    async with Harness() as service:
        await service.send({"jobId": "job-1", ...}, queue_id="queue-1")
        await service.until_status("job-1", JobStatus.finished)
        await service.drained()
        assert [e.status for e in service.events("job-1")] == [...]

`send` goes in as the MQTT adapter's commands do (an `Inbound`, through `handler.handle`)
and returns once the command is committed; the waits are conditions on what the fakes
report, never sleeps. On exit the dispatcher stops and the relay drains the outbox.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Final, Self

from prometheus_client import CollectorRegistry

from service.adapters.solo import Solo
from service.application.dispatch import PrintDispatcher
from service.application.handler import CommandHandler
from service.application.printer_status import PrinterMonitor
from service.application.relay import OutboxRelay
from service.core.access import AccessControl
from service.core.backoff import Backoff
from service.core.codec import CommandDecoder, Inbound
from service.core.events import Kind
from service.core.jobs import Job
from service.core.queues import QueueMap
from service.metrics import Metrics
from service.models import (
    CommandRejected,
    JobStatus,
    MessageType,
    PrintCounts,
    PrinterStatus,
    PrinterStatusList,
    PrintJobEvent,
    PrintJobList,
)
from service.ports import NO_TRACING, Printer, Tracer
from tests.harness.fakes import (
    EPOCH,
    Changes,
    CollectingPublisher,
    FakeClock,
    FakeDocuments,
    FakePrinter,
    FakePrinters,
    SequentialIds,
    WatchedStore,
)

__all__ = ["COMMANDS_TOPIC", "Harness"]

COMMANDS_TOPIC: Final = "commands/{queue_id}"
MAX_BYTES: Final = 256 * 1024
DRAIN_TIMEOUT: Final = 2.0  # seconds the relay may take to empty the outbox on exit


def _fast_backoff() -> Backoff:
    # The relay's retry rule, scaled down: a retry a test provokes costs it milliseconds.
    return Backoff(first=0.001, cap=0.01)


class Harness:
    """The wired application layer; enter it (`async with`) to run the dispatcher and the
    relay. Every part is an attribute, for a test to drive or inspect."""

    def __init__(
        self,
        *,
        queues: QueueMap | None = None,
        lanes: Mapping[str, Sequence[Printer]] | None = None,
        documents: FakeDocuments | None = None,
        api_keys: frozenset[str] | None = None,
        access: AccessControl | None = None,
        max_interruptions: int = 3,
        progress_interval: float = 5.0,
        concurrency: int = 8,
        start: datetime = EPOCH,
        changes: Changes | None = None,
        list_max: int = 100,
        hold_timeout: timedelta = timedelta(days=1),
        pin_attempts: int = 5,
        store: WatchedStore | None = None,
        tracer: Tracer = NO_TRACING,
    ) -> None:
        """`lanes`: the printers of some lanes (made with `changes`, so that the waits hear
        of them); every other lane gets a FakePrinter of its own. `access`: the keys and
        their rights (`api_keys`: plain keys that may do everything); neither: auth off.
        `store`: another harness's, to start again on its data (pass its `changes` too)."""
        self.changes = changes or Changes()
        self.clock = FakeClock(start)
        self.ids = SequentialIds()
        # Another harness's store (with its `changes`): a restart, the same data.
        self.store = store or WatchedStore(self.changes)
        self.publisher = CollectingPublisher(self.changes)
        self.printers = FakePrinters(dict(lanes or {}), changes=self.changes)
        self.documents = documents or FakeDocuments()
        self.queues = queues or QueueMap.dynamic()
        self.metrics = Metrics(CollectorRegistry())
        self.dispatcher = PrintDispatcher(
            store=self.store,
            queues=self.queues,
            printers=self.printers,
            documents=self.documents,
            coordinator=Solo("harness"),
            metrics=self.metrics,
            max_interruptions=max_interruptions,
            progress_interval=progress_interval,
            clock=self.clock,
            new_id=self.ids,
            tracer=tracer,
        )
        self.relay = OutboxRelay(
            store=self.store,
            publisher=self.publisher,
            metrics=self.metrics,
            concurrency=concurrency,
            backoff=_fast_backoff,
            tracer=tracer,
        )
        self.store.on_commit(self.relay.wake)
        # Not run as a loop: a test polls it (`monitor.poll_once()`) when it wants a poll.
        self.monitor = PrinterMonitor(
            store=self.store,
            printers=self.printers,
            coordinator=Solo("harness"),
            clock=self.clock,
            ids=self.ids,
        )
        self.decoder = CommandDecoder(
            max_bytes=MAX_BYTES,
            max_decompressed_bytes=4 * MAX_BYTES,
            access=access if api_keys is None else AccessControl.plain(api_keys),
            new_id=lambda: str(self.ids()),
            read_trace=tracer.enabled,
        )
        self.handler = CommandHandler(
            decoder=self.decoder,
            store=self.store,
            queues=self.queues,
            dispatcher=self.dispatcher,
            metrics=self.metrics,
            clock=self.clock,
            new_id=self.ids,
            list_max=list_max,
            printer_statuses=self.monitor.statuses,
            hold_timeout=hold_timeout,
            pin_attempts=pin_attempts,
            tracer=tracer,
        )
        self.stopping = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None

    # --- running -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        tasks = asyncio.TaskGroup()
        await tasks.__aenter__()
        self._tasks = tasks
        tasks.create_task(self.dispatcher.run(self.stopping), name="dispatcher")
        tasks.create_task(self.relay.run(self.stopping, drain_timeout=DRAIN_TIMEOUT), name="relay")
        # Let both loops start before the first command, as in the service (whose ingress
        # starts last): over the memory store, the dispatcher's recovery never suspends, so
        # one turn of the loop is enough for it to be done.
        await asyncio.sleep(0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the dispatcher and drain the relay, as the service does at shutdown; a
        failure of either (a bug) fails the test."""
        assert self._tasks is not None, "not entered"
        tasks, self._tasks = self._tasks, None
        self.stopping.set()
        await tasks.__aexit__(exc_type, exc, traceback)

    # --- commands ------------------------------------------------------------------------------

    def inbound(
        self,
        payload: Mapping[str, object] | bytes,
        *,
        queue_id: str,
        message_type: MessageType | str | None = None,
        correlation_id: str | None = None,
        properties: Mapping[str, str] | None = None,
        correlation_data: bytes | None = None,
        retained: bool = False,
    ) -> Inbound:
        """A command as the MQTT adapter makes one: JSON bytes on `commands/<queueId>`, user
        properties with lower-cased names, received now (by the fake clock)."""
        given = dict(properties or {})
        if message_type is not None:
            given["x-message-type"] = str(message_type)
        if correlation_id is not None:
            given["x-correlation-id"] = correlation_id
        return Inbound(
            topic=COMMANDS_TOPIC.format(queue_id=queue_id),
            payload=payload if isinstance(payload, bytes) else json.dumps(payload).encode(),
            properties={key.lower(): value for key, value in given.items()},
            correlation_data=correlation_data,
            received_at=self.clock().timestamp(),
            retained=retained,
        )

    async def send(
        self,
        payload: Mapping[str, object] | bytes,
        *,
        queue_id: str,
        message_type: MessageType | str | None = None,
        correlation_id: str | None = None,
        properties: Mapping[str, str] | None = None,
        correlation_data: bytes | None = None,
        retained: bool = False,
    ) -> None:
        """Handle one command; returns once it is committed (when MQTT would acknowledge it)."""
        inbound = self.inbound(
            payload,
            queue_id=queue_id,
            message_type=message_type,
            correlation_id=correlation_id,
            properties=properties,
            correlation_data=correlation_data,
            retained=retained,
        )
        await self.send_batch([inbound])

    async def send_batch(self, inbounds: Sequence[Inbound]) -> None:
        """Handle a batch as the ingress does: applied together, then committed. Returns
        once the commit's effects (the dispatcher told, metrics counted) have run too; raises
        what the handler raised or what failed the commit."""
        committed = await self.handler.handle(inbounds)
        # The handler's effects run in a callback of the commit: one added after it runs
        # after them.
        effects_run = asyncio.get_running_loop().create_future()
        committed.add_done_callback(lambda _: effects_run.set_result(None))
        await self.changes.wait_for(effects_run, "the batch's commit")
        committed.result()

    # --- waiting -------------------------------------------------------------------------------

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Until `condition` holds, re-checked whenever a fake reports a change."""
        await self.changes.until(condition, what)

    async def drained(self) -> None:
        """Until everything committed to the outbox is published and marked sent."""
        await self.until(lambda: self.store.outbox_depth == 0, "the outbox to drain")

    async def until_status(self, job_id: str, status: JobStatus) -> Job:
        """Until the store says `job_id` is `status`; the job then."""

        def reached() -> bool:
            job = self.store.job(job_id)
            return job is not None and job.status is status

        await self.until(reached, f"job {job_id} to be {status.value}")
        job = self.store.job(job_id)
        assert job is not None
        return job

    async def until_printing(self, printer: FakePrinter) -> None:
        """Until `printer` is in the middle of a print (held there by `hold()`)."""
        await self.until(printer.printing.is_set, f"{printer.name} to be printing")

    def printer(self, lane: str) -> FakePrinter:
        """The one fake printer of `lane` (made on first use)."""
        (printer,) = self.printers.printers(lane)
        assert isinstance(printer, FakePrinter), printer
        return printer

    # --- what was published, as the contract's models -----------------------------------------

    def events(self, job_id: str | None = None) -> list[PrintJobEvent]:
        """Published job events, in publishing order; of one job with `job_id`."""
        events = [
            PrintJobEvent.model_validate_json(m.body)
            for m in self.publisher.published
            if m.kind is Kind.job_event
        ]
        return [e for e in events if job_id is None or e.jobId == job_id]

    def rejections(self) -> list[CommandRejected]:
        return [
            CommandRejected.model_validate_json(m.body)
            for m in self.publisher.published
            if m.kind is Kind.rejection
        ]

    def counts(self) -> list[PrintCounts]:
        return [
            PrintCounts.model_validate_json(m.body)
            for m in self.publisher.published
            if m.kind is Kind.counts
        ]

    def job_lists(self) -> list[PrintJobList]:
        return [
            PrintJobList.model_validate_json(m.body)
            for m in self.publisher.published
            if m.kind is Kind.job_list
        ]

    def printer_statuses(self) -> list[PrinterStatus]:
        """Published `printerStatus` events, in publishing order."""
        return [
            PrinterStatus.model_validate_json(m.body)
            for m in self.publisher.published
            if m.kind is Kind.printer_status
        ]

    def printer_status_lists(self) -> list[PrinterStatusList]:
        return [
            PrinterStatusList.model_validate_json(m.body)
            for m in self.publisher.published
            if m.kind is Kind.printer_status_list
        ]

    def metric(self, name: str, **labels: str) -> float:
        """A metric's value (0 if never set)."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0
