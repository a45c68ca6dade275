"""The outbox relay: publishes what the store committed, and marks it sent on confirm.

It streams: rows are taken as they commit (a cursor past the last one taken), each publish
waits only for the previous message with the same order key (one job's events stay in
order), and confirmed rows are marked sent in batches. Up to `concurrency` publishes are in
flight; a confirmed publish awaited in turn would be slow.

A failed publish fails the rest of its job's chain. Once what is in flight has settled, the
cursor goes back to the first failure and everything from there is taken again after a
backoff (reset once a publish succeeds): nothing is dropped, and a message published twice
keeps its message id.

Poison: a message that cannot be encoded (pamqp, the contract's headers) is parked as a
dead letter at once; it never reached the wire. A message the broker refuses (406
PRECONDITION_FAILED: over its size limit, a user id it rejects) closes the channel, and so
fails every publish in flight with it: after such a round the failed rows are published
again one at a time, so that a refusal is the message's own, and a message refused
`max_refusals` times alone is parked. Store failures (reading the outbox, marking rows sent)
are retried with backoff; the relay stops only when the service does.

Replicas share the publishing by lane: each relay reads the rows of the lanes its replica
holds (`lanes`; the holder of the relay's own lane also the rows of no lane), so a job's
events have one publisher at a time. A row of a lane this replica no longer holds is not
published, nor is anything after it in its job's chain: they are abandoned (left in the
outbox, for the lane's new holder, which publishes a job's rows from its oldest unsent one;
at worst a message goes out twice, never out of its job's order).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto

import structlog

from service.aio import sleep_unless
from service.core.backoff import Backoff
from service.core.events import Kind, with_trace
from service.metrics import Metrics
from service.ports import (
    NO_TRACING,
    DeadLetter,
    EventPublisher,
    JobStore,
    OutboxLanes,
    OutboxRecord,
    PublishRefused,
    StoreError,
    Tracer,
    Unpublishable,
)

__all__ = ["OutboxRelay"]

log = structlog.get_logger(__name__)

_MARK_EVERY = 0.02  # seconds between batched mark_sent calls
_FOLLOWER_WAIT = 0.1  # seconds between checks whether this replica holds lanes now
# A publish span's error when the broker did not take the message (it is retried or parked).
_NOT_PUBLISHED = RuntimeError("not published: retried later, or parked as a dead letter")


def _retry_backoff() -> Backoff:
    """The pauses of each retry loop (publishing, reading the outbox, marking rows sent)."""
    return Backoff(first=0.1, cap=5.0)


async def _retry_pause(stopping: asyncio.Event, seconds: float) -> None:
    """A retry's pause, cut short by a stop. Stopping, the retries go on until the drain's
    deadline, in short pauses and never none: a store whose reads fail at once (SQLite's
    do not suspend) would otherwise spin the event loop."""
    if stopping.is_set():
        await asyncio.sleep(min(seconds, _FOLLOWER_WAIT))
    else:
        await sleep_unless(stopping, seconds)


class _Outcome(Enum):
    """How a row's publish ended; its job's next row goes on only after `published`."""

    published = auto()  # confirmed by the broker, or parked as a dead letter
    failed = auto()  # taken again, in the next retry round
    abandoned = auto()  # its lane was lost: the lane's new holder publishes it


def _every_row() -> OutboxLanes | None:
    return None


@dataclass(slots=True)
class _Failures:
    """What failed among the publishes since the last retry round."""

    positions: list[int] = field(default_factory=list)  # the rows to take again
    last_error: Exception | None = None  # for the retry's log line
    # The broker refused a message, and so closed the channel on every publish in flight.
    refused: bool = False

    def add(self, position: int, error: Exception | None = None) -> None:
        self.positions.append(position)
        if error is not None:
            self.last_error = error


class OutboxRelay:
    def __init__(
        self,
        *,
        store: JobStore,
        publisher: EventPublisher,
        metrics: Metrics,
        concurrency: int,
        batch_size: int = 1000,
        max_refusals: int = 3,
        lanes: Callable[[], OutboxLanes | None] = _every_row,
        backoff: Callable[[], Backoff] | None = None,
        tracer: Tracer = NO_TRACING,
    ) -> None:
        self._tracer = tracer
        self._store = store
        self._max_refusals = max_refusals
        # With several replicas, the rows this one publishes now (None: every row, alone).
        self._lanes = lanes
        self._publisher = publisher
        self._metrics = metrics
        self._slots = asyncio.Semaphore(concurrency)
        self._batch_size = batch_size
        # A fresh Backoff for each retry loop: publishing, reading the outbox, marking sent.
        self._backoff = backoff or _retry_backoff
        # Reset by any confirmed publish, and when the outbox is idle: a fresh start.
        self._retries = self._backoff()
        self._wakeup = asyncio.Event()
        self._cursor = 0
        self._taken: set[int] = set()  # in flight, or confirmed and not yet marked sent
        # A read of unsent rows must not overlap marking rows sent: a read that began before
        # the rows were deleted would hand them back just after they left `_taken`.
        self._reading = asyncio.Lock()
        self._tails: dict[str, asyncio.Task[_Outcome]] = {}
        self._rewind: int | None = None  # read again from here: rows abandoned meanwhile
        self._confirmed: list[int] = []
        self._failures = _Failures()
        self._republish: set[str] = set()  # message ids whose publish failed at least once
        self._oldest_unsent: float | None = None
        self._serial_until: int | None = None  # publish one at a time up to this position
        self._refusals: dict[int, int] = {}  # refused while published alone, by position
        metrics.outbox_oldest_age.set_function(self._oldest_age)

    def wake(self) -> None:
        """Something was committed to the outbox."""
        self._wakeup.set()

    async def run(self, stopping: asyncio.Event, *, drain_timeout: float) -> None:
        """Publish until `stopping` is set and the outbox is empty (or `drain_timeout` passes).

        The marker runs beside the stream in one task group: if either fails (a bug), both
        stop and the failure reaches the service, which exits; neither dies alone.
        """
        try:
            async with asyncio.TaskGroup() as tasks:
                marker = tasks.create_task(self._mark_periodically(), name="outbox-marker")
                waker = tasks.create_task(self._wake_on(stopping), name="outbox-stop-waker")
                await self._stream(stopping, drain_timeout)
                marker.cancel()
                waker.cancel()
        finally:
            await self._settle()
            try:
                await self._flush_confirmed()
            except StoreError as exc:
                # Published again on the next start, with the same ids: consumers dedupe.
                log.warning("outbox_not_marked_sent", rows=len(self._confirmed), error=str(exc))

    async def _stream(self, stopping: asyncio.Event, drain_timeout: float) -> None:
        reads = self._backoff()
        deadline: float | None = None
        while True:
            if stopping.is_set() and deadline is None:
                deadline = time.monotonic() + drain_timeout
            if deadline is not None and time.monotonic() > deadline:
                log.warning("outbox_drain_timed_out")
                return
            if self._failures.positions:
                await self._settle()
                await self._retry_from_failure(stopping)
                continue
            lanes = self._lanes()
            if lanes is not None and lanes.empty:
                if await self._follow(stopping):
                    return
                continue
            self._wakeup.clear()
            try:
                records = await self._read_unsent(lanes)
            except StoreError as exc:
                pause = reads.delay()
                log.warning("outbox_read_failed", error=str(exc), retry_in_s=pause)
                await _retry_pause(stopping, pause)
                continue
            reads.reset()
            if records:
                await self._take(records)
                continue
            if not self._tails:
                self._retries.reset()
                self._oldest_unsent = None
                if stopping.is_set():
                    return
            # One future to wait on (`_wake_on` sets it on a stop too): a commit's rows are
            # taken on the loop iteration after it, and an idle relay costs no tasks.
            await sleep_unless(self._wakeup, _MARK_EVERY)

    async def _follow(self, stopping: asyncio.Event) -> bool:
        """No lane is held here: wait for one or, stopping, for what is in flight to end.
        Whether the stream is done."""
        if not stopping.is_set():
            await sleep_unless(stopping, _FOLLOWER_WAIT)
            return False
        if not self._tails:
            return True
        # A real wait: what is in flight ends only if the loop runs (no busy loop).
        await asyncio.wait(list(self._tails.values()), timeout=_FOLLOWER_WAIT)
        return False

    async def _wake_on(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self.wake()

    async def _read_unsent(self, lanes: OutboxLanes | None) -> list[OutboxRecord]:
        async with self._reading:
            if self._rewind is not None:
                self._cursor, self._rewind = min(self._cursor, self._rewind), None
            fetched = await self._store.unsent(self._batch_size, after=self._cursor, lanes=lanes)
            return [r for r in fetched if r.position not in self._taken]

    def _holds(self, lane: str | None) -> bool:
        """Whether this replica may publish a row of `lane` now."""
        lanes = self._lanes()
        return lanes is None or lanes.admits(lane)

    def _abandon(self, record: OutboxRecord) -> _Outcome:
        """Leave `record` to its lane's new holder; read from it again if the lane returns."""
        self._taken.discard(record.position)
        position = record.position - 1
        self._rewind = position if self._rewind is None else min(self._rewind, position)
        log.debug("publish_abandoned", lane=record.lane, position=record.position)
        return _Outcome.abandoned

    async def _take(self, records: list[OutboxRecord]) -> None:
        """Start publishing `records`, one at a time where a refusal must be traced."""
        if self._oldest_unsent is None:
            self._oldest_unsent = records[0].enqueued_at
        for record in records:
            if self._serial_until is not None and record.position <= self._serial_until:
                # One at a time: a refusal now is this message's own.
                await self._settle()
                await self._slots.acquire()
                self._start(record)
                await self._settle()
                if self._failures.positions:
                    return
                continue
            self._serial_until = None
            await self._slots.acquire()
            self._start(record)

    def _start(self, record: OutboxRecord) -> None:
        self._cursor = max(self._cursor, record.position)
        self._taken.add(record.position)
        key = record.message.order_key
        task = asyncio.create_task(self._publish(record, self._tails.get(key)))
        self._tails[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))

    def _finished(self, key: str, task: asyncio.Task[_Outcome]) -> None:
        self._slots.release()
        if self._tails.get(key) is task:
            del self._tails[key]

    async def _publish(
        self, record: OutboxRecord, previous: asyncio.Task[_Outcome] | None
    ) -> _Outcome:
        # Keep the job's order: not before its predecessor, nor once the lane is lost.
        if previous is not None:
            before = await asyncio.shield(previous)
            if before is _Outcome.abandoned:
                return self._abandon(record)
            if before is _Outcome.failed:
                self._failures.add(record.position)
                return _Outcome.failed
        if not self._holds(record.lane):
            return self._abandon(record)
        if self._tracer.enabled:
            published = await self._publish_traced(record)
        else:
            published = await self._publish_now(record)
        return _Outcome.published if published else _Outcome.failed

    async def _publish_traced(self, record: OutboxRecord) -> bool:
        """Publish in a `publish` span, child of the command's trace; the message carries
        the span's own context (OpenTelemetry's producer convention: a consumer's spans are
        its children)."""
        message = record.message
        span = self._tracer.start(
            "publish",
            parent=message.trace,
            kind="producer",
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "send",
                "messaging.destination.name": message.routing_key,
                "messaging.message.id": message.message_id,
                "messaging.message.conversation_id": message.correlation_id,
            },
        )
        traced = OutboxRecord(
            record.position, with_trace(message, span.context), record.enqueued_at, record.lane
        )
        try:
            published = await self._publish_now(traced)
        except BaseException as exc:
            span.end(error=exc)
            raise
        span.end(error=None if published else _NOT_PUBLISHED)
        return published

    async def _publish_now(self, record: OutboxRecord) -> bool:
        message = record.message
        try:
            await self._publisher.publish(message)
        except Unpublishable as exc:
            return await self._park(record, str(exc), attempts=1)
        except Exception as exc:  # noqa: BLE001 - every failure is retried; logged per round
            if isinstance(exc, PublishRefused):
                self._failures.refused = True
                if self._serial_until is not None:
                    refusals = self._refusals.get(record.position, 0) + 1
                    self._refusals[record.position] = refusals
                    if refusals >= self._max_refusals:
                        reason = f"refused by the broker {refusals} times: {exc}"
                        return await self._park(record, reason, attempts=refusals)
            self._failures.add(record.position, exc)
            self._republish.add(message.message_id)
            self._metrics.publish_failures.inc()
            return False
        self._retries.reset()  # publishing works again: the next failure starts afresh
        self._refusals.pop(record.position, None)
        self._confirmed.append(record.position)
        if message.message_id in self._republish:
            self._republish.discard(message.message_id)
            self._metrics.redeliveries.inc()
        self._observe(record)
        return True

    async def _park(self, record: OutboxRecord, reason: str, *, attempts: int) -> bool:
        """Take a message the broker will never accept out of the outbox, into the dead
        letters (in one commit); its job's later messages go on. False if the store failed:
        then it is retried like any failed publish."""
        message = record.message
        letter = DeadLetter(
            source="event",
            reason=reason,
            address=message.routing_key,
            payload=message.body,
            properties={
                "message_id": message.message_id,
                "type": message.kind.value,
                "correlation_id": message.correlation_id,
            },
            attempts=attempts,
            at=time.time(),
        )
        try:
            async with self._reading:
                await self._store.park(letter, position=record.position)
                self._taken.discard(record.position)
        except Exception as exc:  # retried like a failed publish: never lost
            if not isinstance(exc, StoreError):
                log.exception("event_not_parked", message_id=message.message_id)
            self._failures.add(record.position, exc)
            return False
        self._refusals.pop(record.position, None)
        self._metrics.dead_letters.labels("event").inc()
        log.error(
            "event_parked",
            message_id=message.message_id,
            routing_key=message.routing_key,
            reason=reason,
        )
        return True

    async def _settle(self) -> None:
        """Wait for every publish in flight."""
        while self._tails:
            await asyncio.gather(*self._tails.values(), return_exceptions=True)

    async def _retry_from_failure(self, stopping: asyncio.Event) -> None:
        failures, self._failures = self._failures, _Failures()
        failed = failures.positions
        self._taken.difference_update(failed)
        if failures.refused:
            # The broker closed the channel on someone: find whom, one at a time.
            self._serial_until = max(failed)
        try:
            await self._flush_confirmed()
        except StoreError as exc:
            log.warning("outbox_mark_failed", error=str(exc))
        # Take everything again from the first failure; what was confirmed since is gone.
        self._cursor = min(failed) - 1
        pause = self._retries.delay()
        log.warning(
            "publish_retry", failed=len(failed), backoff_s=pause, error=repr(failures.last_error)
        )
        await sleep_unless(stopping, pause)

    async def _mark_periodically(self) -> None:
        failing = self._backoff()
        pause = _MARK_EVERY
        while True:
            await asyncio.sleep(pause)
            try:
                await self._flush_confirmed()
            except StoreError as exc:
                # Kept, and marked on a later try; until then the rows stay taken here.
                pause = failing.delay()
                log.warning("outbox_mark_failed", error=str(exc), retry_in_s=pause)
            else:
                failing.reset()
                pause = _MARK_EVERY

    async def _flush_confirmed(self) -> None:
        """Mark confirmed rows sent; on a StoreError they stay confirmed, for the next try."""
        if self._confirmed:
            async with self._reading:
                confirmed, self._confirmed = self._confirmed, []
                try:
                    await self._store.mark_sent(confirmed)
                except BaseException:
                    self._confirmed[:0] = confirmed
                    raise
                self._taken.difference_update(confirmed)
            if not self._tails:
                self._oldest_unsent = None

    def _oldest_age(self) -> float:
        oldest = self._oldest_unsent
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def _observe(self, record: OutboxRecord) -> None:
        message = record.message
        if message.kind is Kind.rejection:
            self._metrics.rejections_of(message.label).inc()
        else:
            self._metrics.events_of(message.label).inc()
        if message.received_at is not None:
            self._metrics.latency_of(message.label).observe(
                max(0.0, time.time() - message.received_at)
            )
