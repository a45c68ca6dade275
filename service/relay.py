"""The outbox relay: publishes what the store committed, and marks it sent on confirm.

Messages with the same order key (one job's events) are published one after the other; the
rest go concurrently, up to a bound, because a confirmed publish awaited in turn is slow.
A failed publish stops its key's chain (so a job's events never overtake one another) and
is retried with backoff; the outbox keeps growing meanwhile, and nothing is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Coroutine, Sequence
from typing import Any

import structlog

from service.core.events import Kind
from service.metrics import Metrics
from service.ports import EventPublisher, JobStore, OutboxRecord

__all__ = ["OutboxRelay"]

log = structlog.get_logger(__name__)

_MAX_BACKOFF = 5.0


class OutboxRelay:
    def __init__(
        self,
        *,
        store: JobStore,
        publisher: EventPublisher,
        metrics: Metrics,
        concurrency: int,
        batch_size: int = 2000,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._limit = asyncio.Semaphore(concurrency)
        self._batch_size = batch_size
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._last_error: Exception | None = None
        self._failed: set[str] = set()  # message ids whose publish failed at least once
        self._oldest_unsent: float | None = None
        metrics.outbox_oldest_age.set_function(self._oldest_age)

    def _oldest_age(self) -> float:
        oldest = self._oldest_unsent
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def wake(self) -> None:
        """Something was committed to the outbox."""
        self._wakeup.set()

    async def run(self, stopping: asyncio.Event, *, drain_timeout: float) -> None:
        """Publish until `stopping` is set and the outbox is empty (or `drain_timeout` passes)."""
        backoff = 0.1
        deadline: float | None = None
        while True:
            if stopping.is_set() and deadline is None:
                deadline = time.monotonic() + drain_timeout
            if deadline is not None and time.monotonic() > deadline:
                log.warning("outbox_drain_timed_out")
                return
            self._wakeup.clear()
            records = await self._store.unsent(self._batch_size)
            self._oldest_unsent = records[0].enqueued_at if records else None
            if not records:
                self._idle.set()
                if stopping.is_set():
                    return
                await _first_of(self._wakeup.wait(), stopping.wait())
                continue
            self._idle.clear()
            sent = await self._publish(records)
            await self._store.mark_sent(sent)
            if len(sent) == len(records):
                backoff = 0.1
                continue
            self._metrics.publish_failures.inc(len(records) - len(sent))
            log.warning(
                "publish_retry",
                unsent=len(records) - len(sent),
                backoff_s=backoff,
                error=repr(self._last_error),
            )
            await _first_of(asyncio.sleep(backoff), stopping.wait())
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def wait_idle(self) -> None:
        """Until the outbox was last seen empty (tests and drain use it)."""
        await self._idle.wait()

    async def _publish(self, records: Sequence[OutboxRecord]) -> list[int]:
        chains: defaultdict[str, list[OutboxRecord]] = defaultdict(list)
        for record in records:
            chains[record.message.order_key].append(record)
        sent: list[int] = []
        await asyncio.gather(*(self._publish_chain(chain, sent) for chain in chains.values()))
        return sent

    async def _publish_chain(self, chain: list[OutboxRecord], sent: list[int]) -> None:
        for record in chain:
            message = record.message
            try:
                async with self._limit:
                    await self._publisher.publish(message)
            except Exception as exc:  # noqa: BLE001 - every failure is retried, and logged per batch
                self._last_error = exc
                self._failed.add(message.message_id)
                return
            sent.append(record.position)
            if self._failed:
                self._count_redelivery(message.message_id)
            self._observe(record)

    def _count_redelivery(self, message_id: str) -> None:
        if message_id in self._failed:
            self._failed.discard(message_id)
            self._metrics.redeliveries.inc()

    def _observe(self, record: OutboxRecord) -> None:
        message = record.message
        if message.kind is Kind.job_event:
            self._metrics.events.labels(message.label).inc()
        else:
            self._metrics.rejections.labels(message.label).inc()
        if message.received_at is not None:
            self._metrics.latency.labels(message.label).observe(
                max(0.0, time.time() - message.received_at)
            )


async def _first_of(*waits: Coroutine[Any, Any, object]) -> None:
    """Wait for the first of several coroutines; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
