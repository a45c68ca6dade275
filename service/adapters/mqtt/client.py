"""One connection to the MQTT broker: the only module that knows aiomqtt's and paho's insides.

aiomqtt acknowledges QoS 1 messages on receipt, so a crash would lose what it had buffered.
The connection switches the underlying paho client to manual acknowledgement, and `ack` sends
a PUBACK when the intake says the command's effect is committed: the broker keeps (and
redelivers) anything not yet acknowledged. The session is persistent (MQTT 5 with a session
expiry, or 3.1.1 with clean session off), so commands published while the service is away
wait for it.

Retained commands are never applied: over MQTT 5 the subscription asks for none (Retain
Handling 2); one that arrives anyway (MQTT 3.1.1 sends them on every subscription) reaches
the decoder marked retained, which rejects it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

import aiomqtt
from paho.mqtt import client as paho_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from service.adapters.mqtt.intake import Delivery
from service.adapters.mqtt.options import IngressOptions
from service.adapters.mqtt.window import ReceiveWindow
from service.core.codec import Inbound
from service.tls import ssl_context

__all__ = ["COMMAND_QOS", "WILL_QOS", "BrokerError", "MqttConnection"]

COMMAND_QOS: Final = 1
WILL_QOS: Final = 2

# What a lost or refused connection raises, whichever call sees it.
BrokerError = aiomqtt.MqttError


class MqttConnection:
    """A client for one connection attempt, used as `async with`; a source of deliveries and
    their acknowledger for the intake."""

    def __init__(
        self, *, options: IngressOptions, will: bytes, on_pause: Callable[[], None]
    ) -> None:
        self._options = options
        self._client = _client(options, will)
        # Where we reach into paho: acknowledge after commit, not on receipt, and read only
        # as much as the receive window allows (service/adapters/mqtt/window.py).
        self._paho: paho_client.Client = self._client._client  # noqa: SLF001
        self._paho.manual_ack_set(on=True)
        self._messages = self._client.messages  # a view of the client's queue
        self._window = ReceiveWindow(
            self._paho,
            held=self.arrived,
            broken=self._broken,
            limit=options.receive_maximum,
            on_pause=on_pause,
        )

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._client.__aexit__(exc_type, exc, traceback)

    async def subscribe(self, topic: str) -> None:
        if self._options.v5:
            options = SubscribeOptions(
                qos=COMMAND_QOS, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND
            )
            await self._client.subscribe(topic, options=options)
        else:
            await self._client.subscribe(topic, qos=COMMAND_QOS)

    async def unsubscribe(self, topic: str) -> None:
        await self._client.unsubscribe(topic)

    async def receive(self) -> Delivery:
        # The window holds from the first receive on: before it, the answer to SUBSCRIBE
        # must still be read (see window.py).
        self._window.arm()
        message = await anext(self._messages)
        return Delivery(
            inbound=_inbound(message),
            last_will=message.topic.matches(self._options.last_will_topic),
            mid=message.mid,
            qos=message.qos,
        )

    def arrived(self) -> int:
        return len(self._messages)

    def taken(self) -> None:
        self._window.taken()

    def ack(self, delivery: Delivery) -> None:
        if delivery.qos > 0:
            self._paho.ack(delivery.mid, delivery.qos)

    @property
    def paused(self) -> bool:
        """Whether the receive window has stopped reading the socket."""
        return self._window.paused

    def held(self) -> int:
        """Messages received and not yet taken: the backlog in our memory."""
        return self.arrived()

    def _broken(self, exc: Exception) -> None:
        """End the connection with `exc`, as aiomqtt's own reader does when a read fails."""
        disconnected = self._client._disconnected  # noqa: SLF001 - aiomqtt has no public way
        if not disconnected.done():
            disconnected.set_exception(exc)


def _client(options: IngressOptions, will: bytes) -> aiomqtt.Client:
    broker = options.broker
    tls = None
    if broker.tls:
        tls = ssl_context(
            ca_file=options.ca_file, cert_file=options.cert_file, key_file=options.key_file
        )
    properties = None
    if options.v5:
        # Without a session expiry an MQTT 5 session ends with the connection, and the
        # commands published while the service is away would be lost.
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = options.session_expiry
        # At most this many unacknowledged commands on their way to us: the rest wait on
        # the broker, not in our memory (paho's default lets the broker send 65,535).
        properties.ReceiveMaximum = options.receive_maximum
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username,
        password=broker.password,
        identifier=options.client_id,
        protocol=aiomqtt.ProtocolVersion.V5 if options.v5 else aiomqtt.ProtocolVersion.V311,
        # MQTT 5 keeps the session with clean start off (and a session expiry); 3.1.1 with
        # clean session off. paho refuses a clean-start flag on a 3.1.1 connection.
        clean_session=None if options.v5 else False,
        clean_start=False if options.v5 else paho_client.MQTT_CLEAN_START_FIRST_ONLY,
        keepalive=options.keepalive,
        will=aiomqtt.Will(topic=options.last_will_topic, payload=will, qos=WILL_QOS, retain=False),
        properties=properties,
        tls_context=tls,
    )


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
