"""MQTT ingress (aiomqtt): commands in, acknowledged only once they are handled.

aiomqtt acknowledges QoS 1 messages on receipt, so a crash would lose what it had buffered.
This adapter switches the underlying paho client to manual acknowledgement and sends each
PUBACK after the command's effect is committed: the broker keeps (and redelivers) anything
not yet acknowledged. The session is persistent (MQTT 5 with a session expiry, or 3.1.1
with clean session off), so commands published while the service is away wait for it.

aiomqtt has no automatic reconnect: `run` makes a new client per attempt, forever, with
backoff, logging each attempt. The backoff resets once a command has been acknowledged on
the new connection, not merely once it is up: a store that is away makes every connection
fail at its first command, and the service must not hammer the broker meanwhile.

Retained commands are never applied: over MQTT 5 the subscription asks for none (Retain
Handling 2); one that arrives anyway (MQTT 3.1.1 sends them on every subscription) reaches
the decoder marked retained, which rejects it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import aiomqtt
import structlog
from paho.mqtt import client as paho_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from service.adapters.mqtt.window import ReceiveWindow
from service.aio import resolved
from service.config import Settings
from service.core.codec import Inbound
from service.metrics import Metrics
from service.models import LastWill, Status
from service.ports import StoreError

__all__ = ["MqttIngress"]

log = structlog.get_logger(__name__)

COMMAND_QOS: Final = 1
WILL_QOS: Final = 2
MAX_BACKOFF_S: Final = 30.0
STORE_RETRY_MAX_S: Final = 4.0
# Leaving a shared group: wait for what the broker already sent us until it is quiet.
GROUP_DRAIN_QUIET_S: Final = 0.5
GROUP_DRAIN_MAX_S: Final = 5.0

# Applies a batch of commands; what it returns resolves once the batch is committed.
Handler = Callable[[Sequence[Inbound]], Awaitable[Awaitable[None]]]
# Batches applied and waiting for their commit at once: the next batch is applied while
# the previous ones are committed (one fsync may serve several).
BATCHES_COMMITTING: Final = 4


class MqttIngress:
    def __init__(
        self,
        *,
        settings: Settings,
        metrics: Metrics,
        on_peer_will: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._settings = settings
        self._on_peer_will = on_peer_will
        self._url = settings.mqtt
        self._metrics = metrics
        self._v5 = settings.mqtt_protocol == "5"
        self._client_id = settings.mqtt_client_id
        self._connected = False
        self._handling = False
        self._received = 0
        self._acknowledged = 0
        self._window: ReceiveWindow | None = None
        metrics.mqtt_backlog.set_function(self._backlog)

    @property
    def connected(self) -> bool:
        return self._connected

    def will_payload(self) -> bytes:
        will = LastWill(
            instance=self._client_id,
            status=Status.dead,
            message=f"print service instance {self._client_id} died without disconnecting",
        )
        return will.model_dump_json(exclude_none=True).encode()

    async def run(self, handle: Handler, stopping: asyncio.Event) -> None:
        """Consume commands until `stopping` is set; reconnect on any broker failure."""
        attempt = 0
        backoff = 0.5
        while not stopping.is_set():
            attempt += 1
            self._metrics.reconnects.labels("mqtt").inc()
            log.info("mqtt_connecting", url=self._url.redacted(), attempt=attempt)
            acknowledged = self._acknowledged
            try:
                async with self._client() as client:
                    self._set_connected(up=True)
                    log.info("mqtt_connected", client_id=self._client_id, attempt=attempt)
                    await self._subscribe(client, self._settings.commands_subscription)
                    await self._subscribe(client, self._settings.mqtt_last_will_topic)
                    await self._consume_until_stopped(client, handle, stopping)
            except aiomqtt.MqttError as exc:
                log.warning("mqtt_disconnected", error=str(exc), retry_in_s=round(backoff, 2))
            except StoreError as exc:
                # The store is away: what was not committed is not acknowledged, and the
                # broker delivers it again on the next connection. Retry soon: an outage of
                # the store should not turn into a long pause once it is back.
                backoff = min(backoff, STORE_RETRY_MAX_S)
                log.warning(
                    "commands_not_acknowledged",
                    why="the store is unavailable",
                    error=str(exc),
                    retry_in_s=round(backoff, 2),
                )
            except Exception:
                # Handling failed (the store, say): the command was not acknowledged. Reconnect,
                # so that the broker delivers it again, rather than skipping it.
                log.exception("mqtt_ingress_failed", retry_in_s=round(backoff, 2))
            finally:
                self._set_connected(up=False)
                if self._acknowledged > acknowledged:
                    attempt, backoff = 0, 0.5  # it worked for a while: start afresh
            if not stopping.is_set():
                await _sleep_unless(stopping, backoff * random.uniform(0.8, 1.2))  # noqa: S311
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        log.info("mqtt_stopped")

    async def _subscribe(self, client: aiomqtt.Client, topic: str) -> None:
        if self._v5:
            options = SubscribeOptions(
                qos=COMMAND_QOS, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND
            )
            await client.subscribe(topic, options=options)
        else:
            await client.subscribe(topic, qos=COMMAND_QOS)

    def _client(self) -> aiomqtt.Client:
        settings = self._settings
        will = aiomqtt.Will(
            topic=settings.mqtt_last_will_topic,
            payload=self.will_payload(),
            qos=WILL_QOS,
            retain=False,
        )
        tls = None
        if self._url.tls:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
                certfile=str(settings.mqtt_cert_file) if settings.mqtt_cert_file else None,
                keyfile=str(settings.mqtt_key_file) if settings.mqtt_key_file else None,
            )
        properties = None
        if self._v5:
            # Without a session expiry an MQTT 5 session ends with the connection, and the
            # commands published while the service is away would be lost.
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.mqtt_session_expiry
            # At most this many unacknowledged commands on their way to us: the rest wait on
            # the broker, not in our memory (paho's default lets the broker send 65,535).
            properties.ReceiveMaximum = settings.mqtt_receive_maximum
        client = aiomqtt.Client(
            self._url.host,
            self._url.port,
            username=self._url.username,
            password=self._url.password,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if self._v5 else aiomqtt.ProtocolVersion.V311,
            # MQTT 5 keeps the session with clean start off (and a session expiry); 3.1.1 with
            # clean session off. paho refuses a clean-start flag on a 3.1.1 connection.
            clean_session=None if self._v5 else False,
            clean_start=False if self._v5 else paho_client.MQTT_CLEAN_START_FIRST_ONLY,
            keepalive=settings.mqtt_keepalive,
            will=will,
            properties=properties,
            tls_params=tls,
        )
        # Where we reach into paho: acknowledge after commit, not on receipt, and read only
        # as much as the receive window allows (service/adapters/mqtt/window.py).
        client._client.manual_ack_set(on=True)  # noqa: SLF001
        self._window = ReceiveWindow(
            client, limit=settings.mqtt_receive_maximum, on_pause=self._metrics.mqtt_pauses.inc
        )
        return client

    async def _consume_until_stopped(
        self, client: aiomqtt.Client, handle: Handler, stopping: asyncio.Event
    ) -> None:
        finished = asyncio.Event()
        committing: asyncio.Queue[_Committing | None] = asyncio.Queue()
        slots = asyncio.Semaphore(BATCHES_COMMITTING)
        consumer = asyncio.create_task(self._consume(client, handle, finished, committing, slots))
        acker = asyncio.create_task(self._ack_in_order(client, committing, slots))
        watcher = asyncio.create_task(self._finish(client, consumer, stopping, finished))
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

    async def _finish(
        self,
        client: aiomqtt.Client,
        consumer: asyncio.Task[None],
        stopping: asyncio.Event,
        finished: asyncio.Event,
    ) -> None:
        await stopping.wait()
        if self._settings.mqtt_shared_group:
            await self._leave_group(client)
        finished.set()
        # Cancel the consumer only while it waits for a message, never mid-command: a command
        # being handled is finished and acknowledged first.
        if not self._handling:
            consumer.cancel()

    async def _leave_group(self, client: aiomqtt.Client) -> None:
        """Stop the broker sending us the group's commands, and take what it already sent.

        A replica that stops for good (a replaced pod has a new client id) must not leave
        commands in a session nobody resumes: its share would wait there until the session
        expires, and then be dropped.
        """
        with contextlib.suppress(aiomqtt.MqttError):
            await client.unsubscribe(self._settings.commands_subscription)
        deadline = time.monotonic() + GROUP_DRAIN_MAX_S
        while time.monotonic() < deadline:
            seen = self._received
            await asyncio.sleep(GROUP_DRAIN_QUIET_S)
            paused = self._window is not None and self._window.paused
            if self._received == seen and not self._handling and not paused:
                break
        log.info("mqtt_left_group", group=self._settings.mqtt_shared_group)

    async def _consume(
        self,
        client: aiomqtt.Client,
        handle: Handler,
        stopping: asyncio.Event,
        committing: asyncio.Queue[_Committing | None],
        slots: asyncio.Semaphore,
    ) -> None:
        will_topic = self._settings.mqtt_last_will_topic
        batch_size = self._settings.mqtt_batch_size
        messages = client.messages
        if self._window is not None:
            self._window.arm()
        async for first in messages:
            self._handling = True
            self._received += 1
            try:
                # Take what has already arrived, up to a batch: one commit for all of it.
                batch = [first]
                while len(batch) < batch_size and len(messages) > 0:
                    batch.append(await anext(messages))
                    self._received += 1
                if self._window is not None:
                    self._window.taken()
                commands = []
                for message in batch:
                    if message.topic.matches(will_topic):
                        self._on_will(message)
                    else:
                        commands.append(_inbound(message))
                await slots.acquire()
                committed = await handle(commands) if commands else resolved()
                committing.put_nowait(_Committing(batch, committed))
            finally:
                self._handling = False
            if stopping.is_set():
                return

    def _on_will(self, message: aiomqtt.Message) -> None:
        self._metrics.last_wills.inc()
        payload = message.payload if isinstance(message.payload, bytes) else b""
        try:
            will = LastWill.model_validate_json(payload)
        except ValidationError:
            log.warning("last_will_unreadable", size=len(payload))
            return
        if will.instance == self._client_id:
            log.info("own_last_will_seen", detail="a previous connection of ours was lost")
        else:
            log.warning("peer_last_will", instance=will.instance, detail=will.message)
            self._on_peer_will(will.instance)

    async def _ack_in_order(
        self,
        client: aiomqtt.Client,
        committing: asyncio.Queue[_Committing | None],
        slots: asyncio.Semaphore,
    ) -> None:
        """Acknowledge each batch once it is committed, in the order received (as MQTT asks).

        A failed commit raises here: nothing after it is acknowledged, and the broker delivers
        it all again on the next connection. Its slot is not given back, so the consumer applies
        nothing more on this connection (it would be applied again after the redelivery).
        """
        while (batch := await committing.get()) is not None:
            # Shielded: stopping this task must not cancel the store's commit future, whose
            # callbacks hand the jobs to the printers.
            await asyncio.shield(batch.committed)
            slots.release()
            for message in batch.messages:
                if message.qos > 0:
                    client._client.ack(message.mid, message.qos)  # noqa: SLF001
            self._acknowledged += len(batch.messages)

    def _backlog(self) -> int:
        return 0 if self._window is None else self._window.held()

    def _set_connected(self, *, up: bool) -> None:
        self._connected = up
        self._metrics.broker_up.labels("mqtt").set(1 if up else 0)


@dataclass(frozen=True, slots=True)
class _Committing:
    """A batch applied to the store, and what resolves once it is committed."""

    messages: list[aiomqtt.Message]
    committed: Awaitable[None]


def _inbound(message: aiomqtt.Message) -> Inbound:
    properties: dict[str, str] = {}
    correlation_data = None
    if message.properties is not None:
        for key, value in getattr(message.properties, "UserProperty", ()):
            properties[key.lower()] = value
        correlation_data = getattr(message.properties, "CorrelationData", None)
    payload = message.payload
    if isinstance(payload, str):
        payload = payload.encode()
    elif not isinstance(payload, bytes):
        payload = b"" if payload is None else str(payload).encode()
    return Inbound(
        topic=message.topic.value,
        payload=payload,
        properties=properties,
        correlation_data=correlation_data if isinstance(correlation_data, bytes) else None,
        received_at=time.time(),
        retained=bool(message.retain),
    )


async def _sleep_unless(stopping: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stopping.wait()
    except TimeoutError:
        return
