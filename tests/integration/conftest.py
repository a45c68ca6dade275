"""Fixtures for tests against real brokers: the service in-process, an MQTT publisher and an
AMQP listener that sees exactly what an integrator would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiomqtt
import pytest
from aio_pika.abc import AbstractIncomingMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import CollectorRegistry

from service.adapters.amqp import EVENTS_EXCHANGE, REJECTIONS_EXCHANGE, message_body
from service.app import Service
from service.config import BrokerUrl, Settings
from service.ports import PrinterDirectory
from tests.conftest import Brokers
from tests.waits import wait_until


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def queue_id() -> str:
    return unique("q")


ServiceFactory = Callable[..., contextlib.AbstractAsyncContextManager[Service]]


@pytest.fixture
def start_service(brokers: Brokers, tmp_path, monkeypatch: pytest.MonkeyPatch) -> ServiceFactory:
    """Start the service in-process with test settings; overrides as keyword arguments.

    Auth is disabled (the service refuses to start without keys otherwise) unless the
    overrides give keys (`api_keys`, `api_keys_file`).

    `printers`: a printer directory to print with instead of the configured printers (e.g.
    `FakePrinters` whose printers the test holds, so that a job is still printing when the
    test acts on it). Service has no constructor argument for it: its directory's lookup is
    replaced before the service runs.
    """

    @contextlib.asynccontextmanager
    async def start(
        *, printers: PrinterDirectory | None = None, **overrides: Any
    ) -> AsyncIterator[Service]:
        values: dict[str, Any] = {
            "mqtt_url": brokers.mqtt_url,
            "amqp_url": brokers.amqp_url,
            "mqtt_client_id": unique("svc"),
            "mqtt_session_expiry": 30,
            "http_host": "127.0.0.1",
            "http_port": 0,
            "print_duration": 0.2,
            "shutdown_timeout": 5.0,
            "database_url": f"sqlite:///{tmp_path}/jobs.db",
            "store_synchronous": "NORMAL",
        }
        values.update(overrides)
        values.setdefault(
            "auth_disabled", not (values.get("api_keys") or values.get("api_keys_file"))
        )
        settings = Settings(**values)
        service = Service(settings, queues=settings.queue_map(), registry=CollectorRegistry())
        if printers is not None:
            monkeypatch.setattr(service.printers, "printers", printers.printers)
        task = asyncio.create_task(service.run())
        try:
            # Ready, or the run failed (and says why).
            ready = asyncio.ensure_future(service.ready.wait())
            try:
                await asyncio.wait([task, ready], timeout=15, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
            if task.done():
                task.result()
            assert service.ready.is_set(), "the service was not ready within 15 s"
            yield service
        finally:
            service.stop()
            async with asyncio.timeout(15):
                await task

    return start


@pytest.fixture
async def service(start_service: ServiceFactory) -> AsyncIterator[Service]:
    async with start_service() as running:
        yield running


@dataclass
class Received:
    kind: str
    body: dict[str, Any]
    message: AbstractIncomingMessage


class Listener:
    """A private queue bound to chosen event routes and to a queue's rejections."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, queue: aio_pika.abc.AbstractQueue):
        self.channel = channel
        self.queue = queue
        # Delivered by a consumer into a plain asyncio queue: waiting on it is cancellable
        # and bounded, whatever state the AMQP channel is in.
        self._inbox: asyncio.Queue[Received] = asyncio.Queue()
        self._consuming = False

    async def bind_job(self, job_id: str) -> None:
        await self.queue.bind(EVENTS_EXCHANGE, f"events/{job_id}")

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(decode(message))

    async def next(self, timeout: float = 10.0) -> Received:
        if not self._consuming:
            self._consuming = True
            await self.queue.consume(self._deliver, no_ack=True)
        return await asyncio.wait_for(self._inbox.get(), timeout)

    async def collect(self, count: int, timeout: float = 10.0) -> list[Received]:
        return [await self.next(timeout) for _ in range(count)]

    async def until(
        self, predicate: Callable[[Received], bool], timeout: float = 10.0
    ) -> list[Received]:
        """Everything received up to and including the first message matching `predicate`."""
        seen: list[Received] = []
        async with asyncio.timeout(timeout):
            while True:
                received = await self.next(timeout)
                seen.append(received)
                if predicate(received):
                    return seen

    async def quiet(self, seconds: float) -> list[Received]:
        """Whatever arrives within `seconds` (to show that nothing more comes)."""
        seen: list[Received] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    seen.append(await self.next(seconds))
        return seen


def decode(message: AbstractIncomingMessage) -> Received:
    return Received(kind=str(message.type), body=json.loads(message_body(message)), message=message)


@pytest.fixture
async def amqp(brokers: Brokers) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(brokers.amqp_url)
    async with connection:
        yield await connection.channel()


@pytest.fixture
async def listener(service: Service, amqp: aio_pika.abc.AbstractChannel, queue_id: str) -> Listener:
    """Listens to `rejections/<queue_id>`; tests add the job routes they follow."""
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(REJECTIONS_EXCHANGE, f"rejections/{queue_id}")
    return Listener(amqp, queue)


class Publisher:
    """Publishes commands as integrators do, over MQTT 5 or 3.1.1."""

    def __init__(self, url: str) -> None:
        self._url = BrokerUrl(url, schemes=("mqtt", "mqtts"))

    async def raw(
        self,
        topic: str,
        payload: bytes,
        *,
        user_properties: Mapping[str, str] | None = None,
        correlation_data: bytes | None = None,
        v5: bool = True,
    ) -> None:
        properties = None
        if v5 and (user_properties or correlation_data):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if user_properties:
                properties.UserProperty = list(user_properties.items())
            if correlation_data:
                properties.CorrelationData = correlation_data
        async with aiomqtt.Client(
            self._url.host,
            self._url.port,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        ) as client:
            await client.publish(topic, payload, qos=1, properties=properties)

    async def command(
        self,
        queue_id: str,
        message_type: str,
        payload: Mapping[str, Any],
        *,
        correlation_id: str | None = None,
        api_key: str | None = None,
    ) -> None:
        """An MQTT 5 command with its headers as user properties."""
        headers = {"x-message-type": message_type}
        if correlation_id:
            headers["x-correlation-id"] = correlation_id
        if api_key:
            headers["x-api-key"] = api_key
        await self.raw(
            f"commands/{queue_id}", json.dumps(payload).encode(), user_properties=headers
        )

    async def create(self, queue_id: str, job_id: str, **fields: Any) -> None:
        correlation_id = fields.pop("correlation_id", None)
        await self.command(
            queue_id,
            "createPrintJob",
            {"jobId": job_id, **fields},
            correlation_id=correlation_id,
        )


@pytest.fixture
def publisher(brokers: Brokers) -> Publisher:
    return Publisher(brokers.mqtt_url)


def statuses(received: list[Received]) -> list[str]:
    return [r.body["status"] for r in received if r.kind == "printJobEvent"]


def counter(service: Service, name: str, *labels: str) -> float:
    """The current value of one of the service's metrics."""
    names = {
        "print_rejections_total": service.metrics.rejections,
        "print_events_published_total": service.metrics.events,
        "print_last_wills_received_total": service.metrics.last_wills,
    }
    metric = names[name]
    sample = metric.labels(*labels) if labels else metric
    return float(sample._value.get())


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Whether `check` becomes true within `timeout` (for values updated after a confirm)."""
    return await wait_until(check, what="the condition became true", timeout=timeout)
