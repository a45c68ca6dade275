"""The AMQP adapter on a real RabbitMQ: what the broker or the encoder refuses reaches the
relay as the port's verdicts (`Unpublishable`, `PublishRefused`), and publishing goes on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from yarl import URL

from service.adapters.amqp import AmqpPublisher
from service.adapters.amqp_properties import PropertyEncoder
from service.adapters.amqp_transport import (
    WRITE_QUEUE_FRAMES,
    CoalescingTransport,
    CoalescingTransportFactory,
)
from service.config import BrokerUrl
from service.core.events import Kind, Outgoing
from service.metrics import Metrics
from service.ports import PublishRefused, Unpublishable
from tests.conftest import Brokers


def message(*, correlation_id: str = "corr-1") -> Outgoing:
    job_id = f"job-{uuid.uuid4()}"
    return Outgoing(
        message_id=str(uuid.uuid4()),
        kind=Kind.job_event,
        routing_key=f"events.jobs.{job_id}",
        order_key=job_id,
        body=b'{"jobId": "%s"}' % job_id.encode(),
        correlation_id=correlation_id,
        label="created",
        received_at=None,
    )


@pytest.fixture
async def publisher(brokers: Brokers) -> AsyncIterator[AmqpPublisher]:
    publisher = AmqpPublisher(
        url=BrokerUrl(brokers.amqp_url, schemes=("amqp", "amqps")),
        connection_name=f"test-{uuid.uuid4()}",
        gzip_bodies=False,
        metrics=Metrics(CollectorRegistry()),
    )
    assert await publisher.connect(asyncio.Event())
    try:
        yield publisher
    finally:
        await publisher.close()


async def test_a_header_amqp_cannot_carry_is_unpublishable(publisher: AmqpPublisher) -> None:
    # A correlation id is an AMQP short string: at most 255 bytes.
    with pytest.raises(Unpublishable, match="cannot be encoded as AMQP"):
        await publisher.publish(message(correlation_id="c" * 300))
    await publisher.publish(message())  # nothing reached the wire: the channel is fine


async def test_a_message_the_broker_refuses_is_publish_refused(publisher: AmqpPublisher) -> None:
    # RabbitMQ refuses (406) a user id that is not the connection's user.
    own = publisher._properties
    publisher._properties = PropertyEncoder(user_id="someone-else", gzip=False)
    with pytest.raises(PublishRefused, match="PRECONDITION_FAILED"):
        await publisher.publish(message())
    publisher._properties = own
    # The broker closed the channel; the robust channel comes back and publishing goes on.
    for _ in range(100):
        try:
            await publisher.publish(message())
        except Exception:  # noqa: BLE001 - the channel is being reopened
            await asyncio.sleep(0.05)
        else:
            return
    pytest.fail("publishing did not resume after the broker refused a message")


async def test_the_connection_writes_through_the_coalescing_transport(
    publisher: AmqpPublisher,
) -> None:
    # Pins how aio-pika hands our TransportFactory down to aiormq: if an upgrade drops it,
    # publishing still works, one send per frame, and this says why the bench got slower.
    connection = publisher._connection
    assert connection is not None
    underlay = connection.transport
    assert underlay is not None
    factory = getattr(underlay.connection, "_transport_factory", None)
    assert isinstance(factory, CoalescingTransportFactory)
    # ...and the socket knows what aiormq's writer still has queued (a burst is sent once
    # its last frame is written, not at the end of the next loop iteration).
    assert factory.transport is not None
    assert factory.transport.follows == underlay.connection.write_queue.qsize
    await publisher.publish(message())


async def test_a_reconnection_tells_the_new_socket_what_aiormq_has_queued(
    publisher: AmqpPublisher,
) -> None:
    connection = publisher._connection
    assert connection is not None
    assert connection.transport is not None
    factory = getattr(connection.transport.connection, "_transport_factory", None)
    assert isinstance(factory, CoalescingTransportFactory)
    first = factory.transport
    await connection.transport.connection.close()  # as a broker that went away
    async with asyncio.timeout(30):
        while not (connection.connected.is_set() and factory.transport is not first):
            await asyncio.sleep(0.05)
    assert connection.transport is not None
    assert factory.transport is not None
    assert factory.transport.follows == connection.transport.connection.write_queue.qsize
    await publisher.publish(message())  # confirmed on the new connection


async def test_publishes_started_together_leave_in_a_few_writes(
    brokers: Brokers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With aiormq's write queue of 10 and a wait for each frame's drain, 300 concurrent
    # publishes would take about 300 loop iterations and as many sends; they must go out
    # together (amqp_transport), and every one still be confirmed.
    transports: list[CoalescingTransport] = []
    create = CoalescingTransportFactory.create

    async def recorded(
        self: CoalescingTransportFactory, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await create(self, url, **kwargs)
        assert isinstance(writer.transport, CoalescingTransport)
        transports.append(writer.transport)
        return reader, writer

    monkeypatch.setattr(CoalescingTransportFactory, "create", recorded)
    publisher = AmqpPublisher(
        url=BrokerUrl(brokers.amqp_url, schemes=("amqp", "amqps")),
        connection_name=f"test-{uuid.uuid4()}",
        gzip_bodies=True,
        metrics=Metrics(CollectorRegistry()),
    )
    assert await publisher.connect(asyncio.Event())
    try:
        connection = publisher._connection
        assert connection is not None
        assert connection.transport is not None
        assert connection.transport.connection.write_queue.maxsize >= WRITE_QUEUE_FRAMES
        (transport,) = transports
        sends = 0
        inner_write = transport._inner.write

        def counted(data: bytes | bytearray | memoryview) -> None:
            nonlocal sends
            sends += 1
            inner_write(data)

        monkeypatch.setattr(transport._inner, "write", counted)
        await asyncio.gather(*(publisher.publish(message()) for _ in range(300)))
    finally:
        await publisher.close()
    assert 0 < sends < 30, f"300 publishes took {sends} sends"


async def test_publishes_cancelled_while_awaiting_their_confirm_leave_the_channel_in_step(
    publisher: AmqpPublisher,
) -> None:
    # The relay cancels publishes when it stops or loses a lane: the delivery tags and
    # confirms of the others must stay matched, and later publishes be confirmed.
    tasks = [asyncio.create_task(publisher.publish(message())) for _ in range(400)]
    await asyncio.sleep(0)  # every one has queued its frames and waits for its confirm
    for task in tasks[::3]:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    cancelled = [o for o in outcomes if isinstance(o, asyncio.CancelledError)]
    assert len(cancelled) == len(tasks[::3])
    assert all(o is None for o in outcomes if not isinstance(o, asyncio.CancelledError))
    await asyncio.wait_for(
        asyncio.gather(*(publisher.publish(message()) for _ in range(100))), timeout=30
    )
