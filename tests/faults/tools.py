"""Tools for the fault tests: a burst publisher, an event counter, a cuttable TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiomqtt

from service.adapters.amqp import message_body
from service.config import BrokerUrl
from tests.integration.brokers import free_port, reachable


async def publish_burst(
    mqtt_url: str, queue_id: str, job_ids: list[str], *, in_flight: int = 500
) -> int:
    """Publish a createPrintJob per job id at QoS 1 as fast as the broker takes them.

    Returns how many the broker acknowledged (PUBACK): those it has taken responsibility for.
    """
    url = BrokerUrl(mqtt_url, schemes=("mqtt", "mqtts"))
    acknowledged = 0
    async with aiomqtt.Client(
        url.host, url.port, max_inflight_messages=in_flight, timeout=60
    ) as client:
        topic = f"commands/{queue_id}"

        async def one(job_id: str) -> None:
            nonlocal acknowledged
            body = json.dumps({"jobId": job_id, "userId": "burst"})
            await client.publish(topic, body, qos=1)
            acknowledged += 1

        for start in range(0, len(job_ids), in_flight):
            await asyncio.gather(*(one(j) for j in job_ids[start : start + in_flight]))
    return acknowledged


@dataclass
class EventCount:
    """Every job event of one queue, as a consumer of `events/jobs` would see them."""

    by_status: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    event_ids: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    deliveries: int = 0

    def add(self, body: dict[str, object]) -> None:
        job_id, status = str(body["jobId"]), str(body["status"])
        self.deliveries += 1
        self.by_status[status][job_id] += 1
        self.event_ids[(job_id, status)].add(str(body["eventId"]))

    def jobs_with(self, status: str) -> int:
        return len(self.by_status[status])

    def duplicated(self, status: str) -> int:
        """Deliveries beyond the first of the same (job, status)."""
        return sum(n - 1 for n in self.by_status[status].values())

    def distinct_events_for_one_change(self) -> int:
        """(job, status) pairs seen with more than one event id: a true duplicate."""
        return sum(1 for ids in self.event_ids.values() if len(ids) > 1)


@contextlib.asynccontextmanager
async def count_events(amqp_url: str, queue_id: str) -> AsyncIterator[EventCount]:
    """Counts the events of `queue_id`'s jobs, through a private queue bound to all events."""
    counted = EventCount()
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind("print.events", "#")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            event = json.loads(message_body(message))
            if event.get("queueId") == queue_id:
                counted.add(event)
            await message.ack()

        tag = await queue.consume(on_message)
        try:
            yield counted
        finally:
            await queue.cancel(tag)


async def wait_for(check: object, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class ServiceProcess:
    """The service as a process (so that it can be SIGKILLed), logging to a file."""

    def __init__(self, *, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        port = int(self.env["HTTP_PORT"])
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "run"],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while not reachable("127.0.0.1", port, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"service did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


def service_env(
    *, mqtt_url: str, amqp_url: str, database_url: str, client_id: str, **extra: str
) -> dict[str, str]:
    return {
        "MQTT_URL": mqtt_url,
        "AMQP_URL": amqp_url,
        "DATABASE_URL": database_url,
        "MQTT_CLIENT_ID": client_id,
        "MQTT_SESSION_EXPIRY": "600",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(free_port()),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "warning",
        "PRINT_DURATION": "0",
        **extra,
    }


class TcpProxy:
    """A TCP proxy that can be cut and restored: a broker outage without touching the broker."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop accepting and drop every connection, as a broker that went away."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            dst.transport.abort()
            self._writers.discard(dst)
