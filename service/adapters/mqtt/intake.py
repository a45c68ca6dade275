"""The intake of one connection: deliveries in batches to the handler, acknowledged in order
once their batch is committed.

What has already arrived is taken as one batch (up to `batch_size`): one commit for all of
it. Up to `batches_committing` batches wait for their commit at once, so the next batch is
applied while the previous ones are committed. Acknowledgements go out in the order the
messages were received, as MQTT asks, and only after the commit: the broker redelivers
whatever is not acknowledged. A failed commit acknowledges nothing after it on this
connection; the intake ends with its error, and the broker delivers it all again on the
next one.

It knows no MQTT client: it takes deliveries from a `Source` and acknowledges them through
an `Acknowledger` (service/adapters/mqtt/client.py is both).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from service.adapters.mqtt.options import BATCHES_COMMITTING
from service.aio import resolved
from service.core.codec import Inbound

__all__ = ["Acknowledger", "Delivery", "Handler", "Intake", "Source"]

log = structlog.get_logger(__name__)

# Applies a batch of commands; what it returns resolves once the batch is committed.
Handler = Callable[[Sequence[Inbound]], Awaitable[Awaitable[None]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One message received: a command, or a last will (for `on_will`, not the handler)."""

    inbound: Inbound
    last_will: bool
    mid: int  # what acknowledges it
    qos: int


class Source(Protocol):
    async def receive(self) -> Delivery:
        """The next delivery, once there is one; raises when the connection ends."""
        ...

    def arrived(self) -> int:
        """How many deliveries `receive` returns without waiting."""
        ...

    def taken(self) -> None:
        """The intake took a batch (the source may read more now)."""
        ...


class Acknowledger(Protocol):
    def ack(self, delivery: Delivery) -> None:
        """Tell the broker `delivery` is done with; it will not send it again."""
        ...


class Intake:
    """Takes, applies and acknowledges the deliveries of one connection (`run`)."""

    def __init__(
        self,
        *,
        source: Source,
        acknowledger: Acknowledger,
        handle: Handler,
        on_will: Callable[[bytes], None],
        batch_size: int,
        batches_committing: int = BATCHES_COMMITTING,
    ) -> None:
        if batch_size < 1 or batches_committing < 1:
            raise ValueError("batch_size and batches_committing must be at least 1")
        self._source = source
        self._acknowledger = acknowledger
        self._handle = handle
        self._on_will = on_will
        self._batch_size = batch_size
        self._batches_committing = batches_committing
        self._handling = False
        self._received = 0
        self._acknowledged = 0

    @property
    def received(self) -> int:
        """Deliveries taken from the source so far."""
        return self._received

    @property
    def acknowledged(self) -> int:
        """Deliveries acknowledged so far (the connection has worked once this is above 0)."""
        return self._acknowledged

    @property
    def handling(self) -> bool:
        """Whether a batch is being taken or applied (a stop waits for it)."""
        return self._handling

    async def run(self, stop: asyncio.Event) -> None:
        """Take and acknowledge until `stop` is set, then acknowledge what is committed.

        A stop ends the intake between batches, never in one: a batch being applied is
        finished and acknowledged first. Raises what failed: the source (the connection
        ended) or a commit.
        """
        committing: asyncio.Queue[_Committing | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self._batches_committing)
        consumer = asyncio.create_task(self._consume(stop, committing, slots))
        acker = asyncio.create_task(self._ack_in_order(committing, slots))
        watcher = asyncio.create_task(self._cancel_when_idle(stop, consumer))
        try:
            await asyncio.wait({consumer, acker}, return_when=asyncio.FIRST_COMPLETED)
            if not acker.done():
                # Stopped, or the connection failed: acknowledge what is committed first.
                committing.put_nowait(None)
                await asyncio.wait({acker})
        finally:
            for task in (watcher, consumer, acker):
                task.cancel()
        errors = [
            exc
            for task in (acker, consumer)
            if task.done() and not task.cancelled() and (exc := task.exception()) is not None
        ]
        if len(errors) > 1:
            log.error("mqtt_consumer_failed", error=repr(errors[1]))
        if errors:
            raise errors[0]

    async def _cancel_when_idle(self, stop: asyncio.Event, consumer: asyncio.Task[None]) -> None:
        await stop.wait()
        # Cancel the consumer only while it waits for a delivery; one handling a batch sees
        # `stop` once the batch is applied.
        if not self._handling:
            consumer.cancel()

    async def _consume(
        self,
        stop: asyncio.Event,
        committing: asyncio.Queue[_Committing | None],
        slots: asyncio.Semaphore,
    ) -> None:
        source = self._source
        while True:
            first = await source.receive()
            self._handling = True
            self._received += 1
            try:
                # Take what has already arrived, up to a batch: one commit for all of it.
                batch = [first]
                while len(batch) < self._batch_size and source.arrived() > 0:
                    batch.append(await source.receive())
                    self._received += 1
                source.taken()
                commands = []
                for delivery in batch:
                    if delivery.last_will:
                        self._on_will(delivery.inbound.payload)
                    else:
                        commands.append(delivery.inbound)
                await slots.acquire()
                committed = await self._handle(commands) if commands else resolved()
                committing.put_nowait(_Committing(batch, committed))
            finally:
                self._handling = False
            if stop.is_set():
                return

    async def _ack_in_order(
        self, committing: asyncio.Queue[_Committing | None], slots: asyncio.Semaphore
    ) -> None:
        """Acknowledge each batch once it is committed, in the order received.

        A failed commit raises here. Its slot is not given back, so the consumer applies
        nothing more on this connection (it would be applied again after the redelivery).
        """
        while (batch := await committing.get()) is not None:
            # Shielded: stopping this task must not cancel the store's commit future, whose
            # callbacks hand the jobs to the printers.
            await asyncio.shield(batch.committed)
            slots.release()
            for delivery in batch.deliveries:
                self._acknowledger.ack(delivery)
            self._acknowledged += len(batch.deliveries)


@dataclass(frozen=True, slots=True)
class _Committing:
    """A batch applied, and what resolves once it is committed."""

    deliveries: list[Delivery]
    committed: Awaitable[None]
