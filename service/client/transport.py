"""The client's two connections: commands out on MQTT, answers in on one AMQP queue.

`CommandPublisher` keeps one MQTT connection and publishes at QoS 1 (a publish returns once
the broker has the command). `ReplyQueue` keeps one exclusive, auto-delete AMQP queue with
one consumer for the client's whole life, binds it to the routes a call needs (counted, so
that two calls on one route share a binding and the last one removes it), and hands every
message it receives to the subscriptions that want it. Binding before publishing is what
makes an answer impossible to miss.

Every library error is raised as `ConnectionFailed`, the library's exception as its cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import aio_pika
import aiomqtt
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from service.client.errors import ConnectionFailed
from service.client.wire import Outbound, Reply, decode_reply, reply_queue_name
from service.config import BrokerUrl

__all__ = ["CommandPublisher", "ReplyQueue", "Subscription", "mqtt_client_id"]

# The service's replicas connect as `print-service-...` (deploy/mosquitto/roles.json): a
# fixed id there could take over a replica's session, so that user publishes with a random
# one (it is bound to no client id).
_SERVICE_CLIENT_ID_PREFIX: Final = "print-service"
_COMMAND_QOS: Final = 1
_AMQP_ERRORS: Final = (OSError, aio_pika.exceptions.AMQPError, ssl.SSLError)


def mqtt_client_id(username: str | None) -> str | None:
    """The MQTT client id to publish with: the user name (the broker's dynamic-security
    plugin binds each integrator to a client id equal to its user name and refuses any
    other), or None for a random one when there is no user or it is the service's."""
    if not username or username.startswith(_SERVICE_CLIENT_ID_PREFIX):
        return None
    return username


class CommandPublisher:
    """One MQTT connection (5 or 3.1.1) that publishes commands."""

    def __init__(
        self, *, url: BrokerUrl, v5: bool, tls: ssl.SSLContext | None, timeout: float
    ) -> None:
        self._url = url
        self._v5 = v5
        self._tls = tls
        self._timeout = timeout
        self._client: aiomqtt.Client | None = None

    async def open(self) -> None:
        # Made here, not in __init__: aiomqtt binds a client to the running loop.
        client = aiomqtt.Client(
            self._url.host,
            self._url.port,
            username=self._url.username,
            password=self._url.password,
            identifier=mqtt_client_id(self._url.username),
            protocol=aiomqtt.ProtocolVersion.V5 if self._v5 else aiomqtt.ProtocolVersion.V311,
            tls_context=self._tls,
            timeout=self._timeout,
        )
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise ConnectionFailed(f"MQTT broker {self._url.redacted()}: {exc}") from exc
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def publish(self, topic: str, outbound: Outbound) -> None:
        properties = None
        if self._v5 and outbound.user_properties:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.UserProperty = list(outbound.user_properties.items())
        if self._client is None:
            raise ConnectionFailed("the client is not open: use it as `async with`")
        try:
            await self._client.publish(
                topic, outbound.payload, qos=_COMMAND_QOS, properties=properties
            )
        except aiomqtt.MqttError as exc:
            raise ConnectionFailed(f"MQTT broker {self._url.redacted()}: {exc}") from exc


class Subscription:
    """The replies one call waits for, in the order they arrived."""

    def __init__(self, accepts: Callable[[Reply], bool]) -> None:
        self.accepts = accepts
        self._inbox: asyncio.Queue[Reply | ConnectionFailed] = asyncio.Queue()

    def deliver(self, item: Reply | ConnectionFailed) -> None:
        self._inbox.put_nowait(item)

    async def next(self) -> Reply:
        item = await self._inbox.get()
        if isinstance(item, ConnectionFailed):
            self._inbox.put_nowait(item)  # every later call fails the same way
            raise item
        return item


class ReplyQueue:
    """One exclusive AMQP queue, its bindings, and the subscriptions it feeds."""

    def __init__(self, *, url: BrokerUrl, tls: ssl.SSLContext | None, timeout: float) -> None:
        self._url = url
        self._tls = tls
        self._timeout = timeout
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._bound: dict[tuple[str, str], int] = {}
        self._binding = asyncio.Lock()  # a bind and an unbind of one route never overlap
        self._subscriptions: set[Subscription] = set()
        self._failure: ConnectionFailed | None = None
        self._closing = False

    async def open(self) -> None:
        try:
            self._connection = await aio_pika.connect(
                self._url.url, ssl_context=self._tls, timeout=self._timeout
            )
            self._connection.close_callbacks.add(self._on_close)
            self._channel = await self._connection.channel()
            self._queue = await self._channel.declare_queue(
                reply_queue_name(self._url.username), exclusive=True, auto_delete=True
            )
            await self._queue.consume(self._on_message, no_ack=True)
        except _AMQP_ERRORS as exc:
            await self.close()
            raise ConnectionFailed(f"AMQP broker {self._url.redacted()}: {exc!r}") from exc

    async def close(self) -> None:
        self._closing = True
        if self._connection is not None:
            with contextlib.suppress(*_AMQP_ERRORS):
                await self._connection.close()

    @contextlib.asynccontextmanager
    async def subscribed(
        self, accepts: Callable[[Reply], bool], *routes: tuple[str, str]
    ) -> AsyncIterator[Subscription]:
        """A subscription to the replies `accepts` takes, with the queue bound to `routes`
        (exchange, routing key) until the block ends."""
        subscription = Subscription(accepts)
        if self._failure is not None:
            raise self._failure
        self._subscriptions.add(subscription)
        bound: list[tuple[str, str]] = []
        try:
            for route in routes:
                await self._bind(route)
                bound.append(route)
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            for route in bound:
                with contextlib.suppress(ConnectionFailed):
                    await self._unbind(route)

    async def _bind(self, route: tuple[str, str]) -> None:
        async with self._binding:
            if self._bound.get(route, 0) == 0:
                await self._call(lambda queue: queue.bind(route[0], route[1]), route)
            self._bound[route] = self._bound.get(route, 0) + 1

    async def _unbind(self, route: tuple[str, str]) -> None:
        async with self._binding:
            self._bound[route] -= 1
            if self._bound[route] == 0:
                del self._bound[route]
                if self._failure is None and not self._closing:
                    await self._call(lambda queue: queue.unbind(route[0], route[1]), route)

    async def _call(
        self, operation: Callable[[AbstractQueue], Awaitable[object]], route: tuple[str, str]
    ) -> None:
        if self._queue is None:
            raise ConnectionFailed("the client is not open: use it as `async with`")
        try:
            await operation(self._queue)
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise ConnectionFailed(
                f"AMQP exchange {route[0]!r} does not exist on {self._url.redacted()}: "
                "the service declares it when it first starts"
            ) from exc
        except _AMQP_ERRORS as exc:
            raise ConnectionFailed(f"AMQP broker {self._url.redacted()}: {exc!r}") from exc

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        reply = decode_reply(
            message_type=message.type,
            body=message.body,
            content_encoding=message.content_encoding,
            correlation_id=message.correlation_id,
        )
        if reply is None:
            return
        for subscription in tuple(self._subscriptions):
            if subscription.accepts(reply):
                subscription.deliver(reply)

    def _on_close(self, _sender: object, exc: BaseException | None) -> None:
        if self._closing:
            return
        self._failure = ConnectionFailed(
            f"AMQP broker {self._url.redacted()} closed the connection: {exc!r}"
        )
        for subscription in tuple(self._subscriptions):
            subscription.deliver(self._failure)
