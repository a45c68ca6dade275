"""The outbox relay: publishes what the store committed, and marks it sent on confirm.

It streams: rows are taken as they commit (a cursor past the last one taken), each publish
waits only for the previous message with the same order key (one job's events stay in
order), and confirmed rows are marked sent in batches. Up to `concurrency` publishes are in
flight; a confirmed publish awaited in turn would be slow.

A failed publish fails the rest of its job's chain. Once what is in flight has settled, the
cursor goes back to the first failure and everything from there is taken again after a
backoff: nothing is dropped, and a message published twice keeps its message id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from service.aio import first_of
from service.core.events import Kind
from service.metrics import Metrics
from service.ports import EventPublisher, JobStore, OutboxRecord

__all__ = ["OutboxRelay"]

log = structlog.get_logger(__name__)

_MAX_BACKOFF = 5.0
_MARK_EVERY = 0.02  # seconds between batched mark_sent calls
_FOLLOWER_WAIT = 0.1  # seconds between checks whether this replica publishes now


class OutboxRelay:
    def __init__(
        self,
        *,
        store: JobStore,
        publisher: EventPublisher,
        metrics: Metrics,
        concurrency: int,
        batch_size: int = 1000,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        # With several replicas, one publishes (so one job's events keep their order).
        self._leading = leading
        self._publisher = publisher
        self._metrics = metrics
        self._slots = asyncio.Semaphore(concurrency)
        self._batch_size = batch_size
        self._wakeup = asyncio.Event()
        self._cursor = 0
        self._taken: set[int] = set()  # in flight, or confirmed and not yet marked sent
        # A read of unsent rows must not overlap marking rows sent: a read that began before
        # the rows were deleted would hand them back just after they left `_taken`.
        self._reading = asyncio.Lock()
        self._tails: dict[str, asyncio.Task[bool]] = {}
        self._confirmed: list[int] = []
        self._failed: list[int] = []
        self._last_error: Exception | None = None
        self._republish: set[str] = set()  # message ids whose publish failed at least once
        self._oldest_unsent: float | None = None
        metrics.outbox_oldest_age.set_function(self._oldest_age)

    def wake(self) -> None:
        """Something was committed to the outbox."""
        self._wakeup.set()

    async def run(self, stopping: asyncio.Event, *, drain_timeout: float) -> None:
        """Publish until `stopping` is set and the outbox is empty (or `drain_timeout` passes)."""
        marker = asyncio.create_task(self._mark_periodically())
        try:
            await self._stream(stopping, drain_timeout)
        finally:
            marker.cancel()
            await asyncio.gather(marker, return_exceptions=True)
            await self._settle()
            await self._flush_confirmed()

    async def _stream(self, stopping: asyncio.Event, drain_timeout: float) -> None:
        backoff = 0.1
        deadline: float | None = None
        while True:
            if stopping.is_set() and deadline is None:
                deadline = time.monotonic() + drain_timeout
            if deadline is not None and time.monotonic() > deadline:
                log.warning("outbox_drain_timed_out")
                return
            if self._failed:
                await self._settle()
                await self._retry_from_failure(backoff, stopping)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            if not self._leading():
                if stopping.is_set() and not self._tails:
                    return
                await first_of(stopping.wait(), asyncio.sleep(_FOLLOWER_WAIT))
                continue
            self._wakeup.clear()
            async with self._reading:
                fetched = await self._store.unsent(self._batch_size, after=self._cursor)
                records = [r for r in fetched if r.position not in self._taken]
            if records:
                if self._oldest_unsent is None:
                    self._oldest_unsent = records[0].enqueued_at
                for record in records:
                    await self._slots.acquire()
                    self._start(record)
                continue
            if not self._tails:
                backoff = 0.1
                self._oldest_unsent = None
                if stopping.is_set():
                    return
            await first_of(self._wakeup.wait(), stopping.wait(), asyncio.sleep(_MARK_EVERY))

    def _start(self, record: OutboxRecord) -> None:
        self._cursor = max(self._cursor, record.position)
        self._taken.add(record.position)
        key = record.message.order_key
        task = asyncio.create_task(self._publish(record, self._tails.get(key)))
        self._tails[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))

    def _finished(self, key: str, task: asyncio.Task[bool]) -> None:
        self._slots.release()
        if self._tails.get(key) is task:
            del self._tails[key]

    async def _publish(self, record: OutboxRecord, previous: asyncio.Task[bool] | None) -> bool:
        message = record.message
        if previous is not None and not await asyncio.shield(previous):
            self._failed.append(record.position)  # keep the job's order: not before its predecessor
            return False
        try:
            await self._publisher.publish(message)
        except Exception as exc:  # noqa: BLE001 - every failure is retried; logged per round
            self._last_error = exc
            self._failed.append(record.position)
            self._republish.add(message.message_id)
            self._metrics.publish_failures.inc()
            return False
        self._confirmed.append(record.position)
        if message.message_id in self._republish:
            self._republish.discard(message.message_id)
            self._metrics.redeliveries.inc()
        self._observe(record)
        return True

    async def _settle(self) -> None:
        """Wait for every publish in flight."""
        while self._tails:
            await asyncio.gather(*self._tails.values(), return_exceptions=True)

    async def _retry_from_failure(self, backoff: float, stopping: asyncio.Event) -> None:
        failed, self._failed = self._failed, []
        self._taken.difference_update(failed)
        await self._flush_confirmed()
        # Take everything again from the first failure; what was confirmed since is gone.
        self._cursor = min(failed) - 1
        log.warning(
            "publish_retry", failed=len(failed), backoff_s=backoff, error=repr(self._last_error)
        )
        await first_of(asyncio.sleep(backoff), stopping.wait())

    async def _mark_periodically(self) -> None:
        while True:
            await asyncio.sleep(_MARK_EVERY)
            await self._flush_confirmed()

    async def _flush_confirmed(self) -> None:
        if self._confirmed:
            async with self._reading:
                confirmed, self._confirmed = self._confirmed, []
                await self._store.mark_sent(confirmed)
                self._taken.difference_update(confirmed)
            if not self._tails:
                self._oldest_unsent = None

    def _oldest_age(self) -> float:
        oldest = self._oldest_unsent
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def _observe(self, record: OutboxRecord) -> None:
        message = record.message
        if message.kind is Kind.rejection:
            self._metrics.rejections.labels(message.label).inc()
        else:
            self._metrics.events.labels(message.label).inc()
        if message.received_at is not None:
            self._metrics.latency.labels(message.label).observe(
                max(0.0, time.time() - message.received_at)
            )
