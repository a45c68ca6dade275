"""AMQP egress (aio-pika): declares the contract's exchanges and queues, publishes confirmed.

Topology (documented in asyncapi.yaml and README.md):

    print.events      (topic) ──#──▶ events/jobs        (durable, x-max-priority 10)
    print.rejections  (topic) ──#──▶ events/rejections  (durable, x-max-priority 10)

Events are routed by `events/<jobId>`, rejections by `rejections/<queueId>`. Every message
carries the properties of the contract's operation binding.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import struct
import zlib
from typing import Final, cast

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aiormq.exceptions import ChannelInvalidStateError, ChannelPreconditionFailed
from pamqp.common import FieldTable

from service.adapters.amqp_frames import PublishFrames, publish
from service.adapters.amqp_properties import PropertyEncoder
from service.adapters.amqp_transport import CoalescingConnection
from service.aio import sleep_unless
from service.config import BrokerUrl, ConfigError
from service.core.backoff import Backoff
from service.core.events import Kind, Outgoing
from service.metrics import Metrics
from service.ports import PublishRefused, Unpublishable

__all__ = [
    "EVENTS_EXCHANGE",
    "EVENTS_QUEUE",
    "QUEUE_ARGUMENTS",
    "REJECTIONS_EXCHANGE",
    "REJECTIONS_QUEUE",
    "AmqpPublisher",
    "gzip_body",
    "message_body",
]

log = structlog.get_logger(__name__)

EVENTS_EXCHANGE: Final = "print.events"
REJECTIONS_EXCHANGE: Final = "print.rejections"
EVENTS_QUEUE: Final = "events/jobs"
REJECTIONS_QUEUE: Final = "events/rejections"
QUEUE_ARGUMENTS: Final[FieldTable] = {"x-max-priority": 10}
_GZIP_WBITS: Final = 16 + 12  # gzip framing, 4 KB window
# What encoding a message raises (a field AMQP cannot carry): the message is at fault.
_UNENCODABLE: Final = (ValueError, TypeError, OverflowError, struct.error)
# The first connect retries soon (a broker starting with us); then they thin out to 30 s.
_CONNECT_FIRST_S: Final = 0.5
_CONNECT_CAP_S: Final = 30.0


class AmqpPublisher:
    """One robust connection and one confirming channel; `publish` returns on the confirm."""

    def __init__(
        self,
        *,
        url: BrokerUrl,
        connection_name: str,
        gzip_bodies: bool,
        metrics: Metrics,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._url = url
        self._name = connection_name
        self._gzip = gzip_bodies
        self._metrics = metrics
        self._ssl_context = ssl_context
        # RabbitMQ refuses a publish whose user_id is not the connection's user.
        try:
            self._properties = PropertyEncoder(user_id=url.username or "guest", gzip=gzip_bodies)
        except ValueError as exc:  # refused now, rather than every event parked later
            raise ConfigError(
                f"AMQP_URL's user name cannot be carried as an event's user_id: {exc}"
            ) from exc
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._frames: dict[Kind, PublishFrames] = {}  # by the exchange of each kind

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.connected.is_set()

    async def connect(self, stopping: asyncio.Event) -> bool:
        """Connect (retrying with backoff until `stopping`) and declare the topology.

        Returns False when `stopping` came first: a service that never reached its broker
        still stops at once on SIGTERM.
        """
        backoff = Backoff(first=_CONNECT_FIRST_S, cap=_CONNECT_CAP_S)
        attempt = 0
        while not stopping.is_set():
            attempt += 1
            self._metrics.reconnects.labels("amqp").inc()
            try:
                connection = await aio_pika.connect_robust(
                    self._url.url,
                    client_properties={"connection_name": self._name},
                    ssl_context=self._ssl_context,
                    connection_class=CoalescingConnection,
                )
                break
            except (OSError, aio_pika.exceptions.AMQPError) as exc:
                log.warning(
                    "amqp_connect_failed",
                    url=self._url.redacted(),
                    attempt=attempt,
                    retry_in_s=backoff.current,
                    error=repr(exc),
                )
                await sleep_unless(stopping, backoff.delay())
        else:
            return False
        connection.close_callbacks.add(self._on_close)
        connection.reconnect_callbacks.add(self._on_reconnect)
        self._connection = connection
        self._channel = await connection.channel(publisher_confirms=True)
        await self._declare(self._channel)
        self._metrics.broker_up.labels("amqp").set(1)
        log.info("amqp_connected", url=self._url.redacted(), attempt=attempt)
        return True

    async def _declare(self, channel: AbstractRobustChannel) -> None:
        try:
            for kind, exchange_name, queue_name in (
                (Kind.job_event, EVENTS_EXCHANGE, EVENTS_QUEUE),
                (Kind.rejection, REJECTIONS_EXCHANGE, REJECTIONS_QUEUE),
            ):
                exchange = await channel.declare_exchange(
                    exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
                )
                queue = await channel.declare_queue(
                    queue_name,
                    durable=True,
                    exclusive=False,
                    auto_delete=False,
                    arguments=QUEUE_ARGUMENTS,
                )
                await queue.bind(exchange, routing_key="#")
                self._frames[kind] = PublishFrames(exchange.name)
            # Counts and list answers share the events exchange (and the `events/jobs` queue).
            self._frames[Kind.counts] = self._frames[Kind.job_event]
            self._frames[Kind.job_list] = self._frames[Kind.job_event]
            # Printer statuses too: a consumer of `events/jobs` sees a printer stop beside
            # the jobs it holds up; one that wants only printers binds `printers/#`.
            self._frames[Kind.printer_status] = self._frames[Kind.job_event]
            self._frames[Kind.printer_status_list] = self._frames[Kind.job_event]
        except ChannelPreconditionFailed as exc:
            raise ConfigError(
                f"RabbitMQ already has {EVENTS_QUEUE!r} or {REJECTIONS_QUEUE!r} declared with "
                f"other arguments ({exc}); the contract needs durable queues with "
                f"x-max-priority=10: delete the old queues or load deploy/rabbitmq/definitions.json"
            ) from exc

    async def publish(self, message: Outgoing) -> None:
        """Publish and wait for the broker's confirm: on aiormq's channel, below aio-pika's
        Message and Exchange and aiormq's pamqp objects, with the properties encoded by
        `PropertyEncoder` and the frames by `PublishFrames`.

        The frames are queued, not waited for until written: the publishes of one loop
        iteration leave in one write (`amqp_transport`), the confirm is what says the
        broker has the message, and the relay bounds how many wait for one."""
        frames = self._frames.get(message.kind)
        channel = self._channel
        if frames is None or channel is None:
            raise ConnectionError("the AMQP publisher is not connected")
        if channel.is_closed:
            raise ChannelInvalidStateError(f"{channel!r} closed")
        underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
        try:
            encoded = frames.encode(
                channel=underlay.number,
                routing_key=message.routing_key,
                properties=self._properties.encode(message),
                body=gzip_body(message.body) if self._gzip else message.body,
                max_body=underlay.max_content_size,
            )
        except _UNENCODABLE as exc:  # nothing is sent
            raise Unpublishable(f"cannot be encoded as AMQP: {exc!r}") from exc
        try:
            await publish(underlay, encoded)
        except ChannelPreconditionFailed as exc:  # 406: the broker closed the channel
            raise PublishRefused(f"{exc!r}") from exc

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._metrics.broker_up.labels("amqp").set(0)

    def _on_close(self, _connection: object, exc: BaseException | None = None) -> None:
        self._metrics.broker_up.labels("amqp").set(0)
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            log.warning("amqp_connection_lost", error=repr(exc))

    def _on_reconnect(self, _connection: object) -> None:
        self._metrics.broker_up.labels("amqp").set(1)
        self._metrics.reconnects.labels("amqp").inc()
        log.info("amqp_reconnected")


def gzip_body(body: bytes) -> bytes:
    """Gzip an event body, in one call (zlib gives up the GIL in each, for the store's
    committer thread to take). A 4 KB window is as good as 32 KB for these bodies, and
    cheaper to set up."""
    return zlib.compress(body, 1, _GZIP_WBITS)


def message_body(message: AbstractIncomingMessage) -> bytes:
    """A received event's body, gunzipped when its content encoding says gzip."""
    if message.content_encoding == "gzip":
        return gzip.decompress(message.body)
    return message.body
