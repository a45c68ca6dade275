"""Tools for the fault tests: a burst publisher, an event counter, a cuttable TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiomqtt
import psycopg

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
    """The service's environment; auth is disabled explicitly (the service refuses to start
    without keys otherwise) unless `extra` gives keys."""
    keyed = "API_KEYS" in extra or "API_KEYS_FILE" in extra
    return {
        **({} if keyed else {"AUTH_DISABLED": "true"}),
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


# --- Outages of the real PostgreSQL and RabbitMQ (tests/faults/test_outages.py) ---------------


def created_rows(database: str, queue_id: str) -> dict[str, int]:
    """job id -> number of `created` rows in its job_history, read from the store itself."""
    query = (
        "SELECT j.job_id, (SELECT COUNT(*) FROM job_history h "
        "WHERE h.job_id = j.job_id AND h.status = 'created') FROM jobs j WHERE j.queue_id = {}"
    )
    if database.startswith("sqlite:///"):
        path = database.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn:
            rows: list[tuple[str, int]] = conn.execute(query.format("?"), (queue_id,)).fetchall()
            return dict(rows)
    with psycopg.connect(database) as pg:
        return {
            str(job): int(n)
            for job, n in pg.execute(query.format("%s").encode(), (queue_id,)).fetchall()
        }


def service_died(service: ServiceProcess) -> str | None:
    """None while the service process runs; else its exit code and the end of its log."""
    assert service.process is not None
    code = service.process.poll()
    if code is None:
        return None
    tail = service.log.read_text(errors="replace")[-4000:] if service.log.exists() else ""
    return f"service died with exit code {code}; the end of {service.log}:\n{tail}"


def alive_and(service: ServiceProcess, check: Callable[[], bool]) -> Callable[[], bool]:
    """A `wait_for` check that fails at once (with the service's log) if the service died."""

    def checked() -> bool:
        if (died := service_died(service)) is not None:
            raise AssertionError(died)
        return check()

    return checked


async def run_command(*args: str, timeout: float = 120) -> str:
    """Runs a command without blocking the event loop (consumers keep counting)."""
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{' '.join(args)} did not finish in {timeout} s") from None
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {process.returncode}:\n{text}")
    return text


def postgres_version() -> str:
    """The version of the only PostgreSQL cluster of this machine (/etc/postgresql/<version>)."""
    (version,) = os.listdir("/etc/postgresql")
    return version


async def postgres_ctl(action: str) -> None:
    """`pg_ctlcluster` on the machine's `main` cluster: restart and stop in fast mode."""
    mode = ["-m", "fast"] if action in ("stop", "restart") else []
    await run_command(
        "pg_ctlcluster",
        "--skip-systemctl-redirect",
        *mode,
        postgres_version(),
        "main",
        action,
    )


def postgres_running() -> bool:
    result = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", postgres_version(), "main", "status"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return result.returncode == 0


async def wait_postgres_accepting(url: str, *, timeout: float = 60) -> None:
    """Until a new connection to `url` runs a query."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(url, connect_timeout=2) as conn:
                await conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"PostgreSQL does not accept connections: {exc}") from exc
            await asyncio.sleep(0.2)
        else:
            return


async def rabbitmq_ctl(*args: str) -> str:
    return await run_command("rabbitmqctl", *args)


@dataclass(frozen=True)
class Readiness:
    """One answer of the service's `/readyz` (status 0: no answer)."""

    at: float
    status: int
    checks: dict[str, bool]


async def readyz(port: int, *, timeout: float = 2.0) -> Readiness:
    """GET /readyz on 127.0.0.1:`port`."""
    at = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                await writer.drain()
                raw = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return Readiness(at, 0, {})
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split()[1])
        checks = json.loads(body)["checks"]
    except (IndexError, ValueError, KeyError, TypeError):
        return Readiness(at, 0, {})
    return Readiness(at, status, {str(k): bool(v) for k, v in checks.items()})


@contextlib.asynccontextmanager
async def sample_readiness(port: int, *, every: float = 0.05) -> AsyncIterator[list[Readiness]]:
    """Asks `/readyz` every `every` seconds while the block runs; yields the answers so far."""
    samples: list[Readiness] = []

    async def sample() -> None:
        while True:
            samples.append(await readyz(port, timeout=1.0))
            await asyncio.sleep(every)

    task = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class DurableEventCounter:
    """Counts a queue's events through its own durable queue, and reconnects by itself.

    The queue (unique name, durable, non-exclusive, `x-max-priority` 10 as the events need,
    bound to `print.events` `#`) is declared before the burst, so it survives a RabbitMQ
    restart (`stop_app`/`start_app`) and holds what is published while the counter is away
    (for up to the events' 60 s TTL). Each connection is plain (not robust): when it closes,
    the counter makes a new one and consumes the same queue again. `x-expires` removes the
    queue if a test dies without `close()`.
    """

    def __init__(self, amqp_url: str, queue_id: str) -> None:
        self.amqp_url = amqp_url
        self.queue_id = queue_id
        self.queue_name = f"faults-counter-{uuid.uuid4().hex[:12]}"
        self.counted = EventCount()
        self.connections = 0  # consuming connections made: 1 + reconnections
        self.consuming = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _declare(self, channel: aio_pika.abc.AbstractChannel) -> aio_pika.abc.AbstractQueue:
        queue = await channel.declare_queue(
            self.queue_name,
            durable=True,
            arguments={"x-max-priority": 10, "x-expires": 300_000},
        )
        await queue.bind("print.events", "#")
        return queue

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = json.loads(message_body(message))
        if event.get("queueId") == self.queue_id:
            self.counted.add(event)
        # After a broker restart the ack may find the channel gone: the message comes back
        # (same event id) and is counted as a redelivery, never as a new event.
        with contextlib.suppress(aio_pika.exceptions.AMQPError, RuntimeError, OSError):
            await message.ack()

    async def _consume_once(self) -> None:
        connection = await aio_pika.connect(self.amqp_url, timeout=5)
        lost = asyncio.Event()

        def on_close(_sender: object, _exc: BaseException | None) -> None:
            lost.set()

        connection.close_callbacks.add(on_close)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1000)
            queue = await self._declare(channel)
            await queue.consume(self._on_message)
            self.connections += 1
            self.consuming.set()
            while not lost.is_set() and not channel.is_closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), 0.5)
        finally:
            self.consuming.clear()
            with contextlib.suppress(aio_pika.exceptions.AMQPError, RuntimeError, OSError):
                await connection.close()

    async def _run(self) -> None:
        while True:
            transient = (aio_pika.exceptions.AMQPError, RuntimeError, OSError, TimeoutError)
            with contextlib.suppress(*transient):
                await self._consume_once()
            await asyncio.sleep(0.5)

    async def start(self) -> None:
        """Declares the queue (now: what is published from here on is kept) and consumes it."""
        connection = await aio_pika.connect(self.amqp_url, timeout=10)
        async with connection:
            await self._declare(await connection.channel())
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(30):
            await self.consuming.wait()

    async def consumers(self) -> int:
        """The queue's consumer count, as RabbitMQ sees it (1 while this counter consumes)."""
        connection = await aio_pika.connect(self.amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.queue_name, passive=True)
            return int(queue.declaration_result.consumer_count or 0)

    async def close(self) -> None:
        """Stops consuming and deletes the queue."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(aio_pika.exceptions.AMQPError, OSError):
            connection = await aio_pika.connect(self.amqp_url, timeout=10)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(self.queue_name)


@contextlib.asynccontextmanager
async def count_events_durably(amqp_url: str, queue_id: str) -> AsyncIterator[DurableEventCounter]:
    """A `DurableEventCounter`, started, and closed (its queue deleted) at the end."""
    counter = DurableEventCounter(amqp_url, queue_id)
    await counter.start()
    try:
        yield counter
    finally:
        await counter.close()


def store_summary(database: str, queue_id: str) -> dict[str, int]:
    """A queue's jobs per status and the outbox's rows, read from the store: where a stall is."""
    by_status = "SELECT status, COUNT(*) FROM jobs WHERE queue_id = {} GROUP BY status"
    outbox = "SELECT COUNT(*) FROM outbox"
    if database.startswith("sqlite:///"):
        path = database.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn:
            rows: list[tuple[str, int]] = conn.execute(
                by_status.format("?"), (queue_id,)
            ).fetchall()
            (depth,) = conn.execute(outbox).fetchone()
    else:
        with psycopg.connect(database) as pg:
            rows = [
                (str(s), int(n))
                for s, n in pg.execute(by_status.format("%s").encode(), (queue_id,)).fetchall()
            ]
            fetched = pg.execute(outbox.encode()).fetchone()
            depth = fetched[0] if fetched else 0
    return {**{f"jobs_{status}": n for status, n in sorted(rows)}, "outbox_rows": int(depth)}


OUTAGE_LOCK = Path(tempfile.gettempdir()) / "print-service-outage-tests.lock"


@contextlib.asynccontextmanager
async def one_outage_at_a_time(*, timeout: float = 240) -> AsyncIterator[float]:
    """Holds a machine-wide lock while a test restarts the shared PostgreSQL or RabbitMQ.

    Two runs at once (two people, or CI and a person) would restart them under each other's
    bursts and count each other's outages. Yields the seconds waited for the lock.
    """
    started = time.monotonic()
    with OUTAGE_LOCK.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - started > timeout:
                    raise AssertionError(
                        f"another run of the outage tests held {OUTAGE_LOCK} for {timeout} s"
                    ) from None
                await asyncio.sleep(0.5)
        try:
            yield time.monotonic() - started
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def wait_for_all(
    service: ServiceProcess,
    count: Callable[[], int],
    target: int,
    *,
    timeout: float,
    stall: float = 30.0,
    what: str,
) -> None:
    """Until `count()` reaches `target`; fails at once if the service dies, and tells a stall
    (no progress for `stall` seconds) from slowness (progress, but not by `timeout`)."""
    started = last_change = time.monotonic()
    last = count()
    while last < target:
        if (died := service_died(service)) is not None:
            raise AssertionError(f"{what}: {last}/{target}; {died}")
        now = time.monotonic()
        if now - last_change > stall:
            raise AssertionError(f"{what}: stalled at {last}/{target} (no progress for {stall} s)")
        if now - started > timeout:
            raise AssertionError(f"{what}: too slow, {last}/{target} after {timeout} s")
        await asyncio.sleep(0.1)
        if (current := count()) != last:
            last, last_change = current, time.monotonic()
