"""MQTT ingress: commands in, acknowledged only once they are handled.

The transport of the commands: it connects (service/adapters/mqtt/client.py knows how, and
why acknowledgements are manual), subscribes, runs an intake per connection
(service/adapters/mqtt/intake.py: batches, ordered acknowledgements) and, in a shared group,
leaves the group before it stops.

aiomqtt has no automatic reconnect: `run` makes a new connection per attempt, forever, with
backoff, logging each attempt. The backoff resets once a command has been acknowledged on
the new connection, not merely once it is up: a store that is away makes every connection
fail at its first command, and the service must not hammer the broker meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Final, Protocol

import structlog

from service.adapters.mqtt.client import COMMAND_QOS, WILL_QOS, BrokerError, MqttConnection
from service.adapters.mqtt.intake import Acknowledger, Handler, Intake, Source
from service.adapters.mqtt.options import IngressOptions
from service.adapters.mqtt.wills import LastWills, will_payload
from service.aio import sleep_unless
from service.core.backoff import Backoff
from service.metrics import Metrics
from service.ports import StoreError

# The QoS levels are part of the contract (tests/test_contract.py reads them here).
__all__ = ["COMMAND_QOS", "WILL_QOS", "Connection", "MqttIngress"]

log = structlog.get_logger(__name__)

FIRST_BACKOFF_S: Final = 0.5
MAX_BACKOFF_S: Final = 30.0
STORE_RETRY_MAX_S: Final = 4.0
# Leaving a shared group: wait for what the broker already sent us until it is quiet.
GROUP_DRAIN_QUIET_S: Final = 0.5
GROUP_DRAIN_MAX_S: Final = 5.0


class Connection(Source, Acknowledger, Protocol):
    """What the ingress needs of a connection (an `MqttConnection`, or a test's fake)."""

    async def subscribe(self, topic: str) -> None: ...

    async def unsubscribe(self, topic: str) -> None: ...

    @property
    def paused(self) -> bool:
        """Whether the connection has stopped reading (too many messages held)."""
        ...

    def held(self) -> int:
        """Messages received and not yet taken."""
        ...


class MqttIngress:
    def __init__(
        self,
        *,
        options: IngressOptions,
        metrics: Metrics,
        on_peer_will: Callable[[str], None] = lambda _: None,
        connect: Callable[[], AbstractAsyncContextManager[Connection]] | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[asyncio.Event, float], Awaitable[bool]] = sleep_unless,
    ) -> None:
        """`connect`, `backoff` and `sleep` are for tests: by default a real connection per
        attempt, the service's backoff with jitter, and a real pause."""
        self._options = options
        self._metrics = metrics
        self._connect = connect or self._mqtt_connection
        self._backoff = backoff or Backoff(first=FIRST_BACKOFF_S, cap=MAX_BACKOFF_S, jitter=0.2)
        # A store outage has its own, shorter rule: the broker is fine, and commands must
        # flow again soon after the store is back (nor may it lengthen a later broker pause).
        broker = self._backoff
        self._store_backoff = Backoff(
            first=min(broker.first, STORE_RETRY_MAX_S),
            cap=min(broker.cap, STORE_RETRY_MAX_S),
            factor=broker.factor,
            jitter=broker.jitter,
            uniform=broker.uniform,
        )
        self._sleep = sleep
        self._wills = LastWills(
            own_id=options.client_id, on_peer_will=on_peer_will, on_will=metrics.last_wills.inc
        )
        self._connected = False
        self._connection: Connection | None = None
        self._intake: Intake | None = None
        metrics.mqtt_backlog.set_function(self._backlog)

    @property
    def connected(self) -> bool:
        return self._connected

    def will_payload(self) -> bytes:
        return will_payload(self._options.client_id)

    async def run(self, handle: Handler, stopping: asyncio.Event) -> None:
        """Consume commands until `stopping` is set; reconnect on any broker failure."""
        attempt = 0
        while not stopping.is_set():
            attempt += 1
            self._metrics.reconnects.labels("mqtt").inc()
            log.info("mqtt_connecting", url=self._options.broker.redacted(), attempt=attempt)
            self._intake = None
            pause: float | None = None
            try:
                await self._session(handle, stopping, attempt)
            except BrokerError as exc:
                pause = self._pause()
                log.warning("mqtt_disconnected", error=str(exc), retry_in_s=round(pause, 2))
            except StoreError as exc:
                # The store is away: what was not committed is not acknowledged, and the
                # broker delivers it again on the next connection. Retry soon: an outage of
                # the store should not turn into a long pause once it is back.
                pause = self._pause(self._store_backoff)
                log.warning(
                    "commands_not_acknowledged",
                    why="the store is unavailable",
                    error=str(exc),
                    retry_in_s=round(pause, 2),
                )
            except Exception:
                # Handling failed: the command was not acknowledged. Reconnect, so that the
                # broker delivers it again, rather than skipping it.
                pause = self._pause()
                log.exception("mqtt_ingress_failed", retry_in_s=round(pause, 2))
            finally:
                self._set_connected(up=False)
            if self._worked():
                attempt = 0  # it worked for a while: start afresh
            if not stopping.is_set():
                await self._sleep(stopping, self._pause() if pause is None else pause)
        log.info("mqtt_stopped")

    async def _session(self, handle: Handler, stopping: asyncio.Event, attempt: int) -> None:
        """One connection: subscribe, then run its intake until stopped or broken."""
        options = self._options
        async with self._connect() as connection:
            self._connection = connection
            self._set_connected(up=True)
            log.info("mqtt_connected", client_id=options.client_id, attempt=attempt)
            await connection.subscribe(options.commands_subscription)
            await connection.subscribe(options.last_will_topic)
            intake = self._intake = Intake(
                source=connection,
                acknowledger=connection,
                handle=handle,
                on_will=self._wills,
                batch_size=options.batch_size,
                batches_committing=options.batches_committing,
            )
            stop = asyncio.Event()
            finishing = asyncio.create_task(self._finish(connection, intake, stopping, stop))
            try:
                await intake.run(stop)
            finally:
                finishing.cancel()

    async def _finish(
        self, connection: Connection, intake: Intake, stopping: asyncio.Event, stop: asyncio.Event
    ) -> None:
        await stopping.wait()
        if self._options.shared_group:
            await self._leave_group(connection, intake)
        stop.set()

    async def _leave_group(self, connection: Connection, intake: Intake) -> None:
        """Stop the broker sending us the group's commands, and take what it already sent.

        A replica that stops for good (a replaced pod has a new client id) must not leave
        commands in a session nobody resumes: its share would wait there until the session
        expires, and then be dropped.
        """
        with contextlib.suppress(BrokerError):
            await connection.unsubscribe(self._options.commands_subscription)
        deadline = time.monotonic() + GROUP_DRAIN_MAX_S
        while time.monotonic() < deadline:
            seen = intake.received
            await asyncio.sleep(GROUP_DRAIN_QUIET_S)
            if intake.received == seen and not intake.handling and not connection.paused:
                break
        log.info("mqtt_left_group", group=self._options.shared_group)

    def _worked(self) -> bool:
        """Whether the last connection acknowledged a command."""
        return self._intake is not None and self._intake.acknowledged > 0

    def _pause(self, backoff: Backoff | None = None) -> float:
        """The pause before the next attempt (by `backoff`, the broker's by default); every
        backoff starts afresh after a connection that worked."""
        if self._worked():
            self._backoff.reset()
            self._store_backoff.reset()
        return (backoff or self._backoff).delay()

    def _mqtt_connection(self) -> MqttConnection:
        return MqttConnection(
            options=self._options,
            will=self.will_payload(),
            on_pause=self._metrics.mqtt_pauses.inc,
        )

    def _backlog(self) -> int:
        return 0 if self._connection is None else self._connection.held()

    def _set_connected(self, *, up: bool) -> None:
        self._connected = up
        self._metrics.broker_up.labels("mqtt").set(1 if up else 0)
