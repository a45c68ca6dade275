"""`PrintClient`: the service's commands as typed coroutines, its answers as models.

    async with PrintClient.from_env(queue="office") as client:
        created = await client.submit(title="report", copies=2)
        async for event in client.watch(created.jobId):
            print(event.status)

Each call binds the client's AMQP queue to the routes its answer comes on, then publishes
the command on MQTT, then waits (at most `timeout` seconds) for the answer that carries the
command's correlation id: a model, or `Rejected`. Every job command goes through `follow`,
so a new one (`releasePrintJob`, say) is a method of a few lines over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self, TypedDict, TypeVar, Unpack

from service.client.errors import ConfigurationError, Rejected, Timeout
from service.client.transport import CommandPublisher, ReplyQueue, Subscription
from service.client.wire import (
    EVENTS_EXCHANGE,
    REJECTIONS_EXCHANGE,
    Reply,
    encode_command,
    message_type_of,
    new_job_id,
)
from service.config import BrokerUrl, ConfigError, Settings
from service.core.codec import Command, valid_queue_id
from service.core.events import (
    COUNTS_ROUTE_PREFIX,
    EVENT_ROUTE_PREFIX,
    JOBS_ROUTE_PREFIX,
    PRINTER_LISTS_ROUTE_PREFIX,
    REJECTION_ROUTE_PREFIX,
)
from service.core.jobs import FINAL_STATUSES
from service.models import (
    CancelPrintJob,
    CommandRejected,
    CreatePrintJob,
    GetPrintCounts,
    GetPrinterStatus,
    GetPrintJobStatus,
    JobSummary,
    ListPrintJobs,
    MovePrintJob,
    PrintCounts,
    PrinterStatusList,
    PrintJobEvent,
    PrintJobList,
    PrintOptions,
    Priority,
    ReleasePrintJob,
    UpdatePrintJob,
)
from service.tls import ssl_context

__all__ = ["ClientOptions", "JobCommand", "JobEvents", "PrintClient"]

# The commands about one job: their answer is a `printJobEvent` on `events/<jobId>`.
JobCommand = (
    CreatePrintJob
    | CancelPrintJob
    | UpdatePrintJob
    | MovePrintJob
    | GetPrintJobStatus
    | ReleasePrintJob
)
_Answer = TypeVar("_Answer", PrintCounts, PrintJobList, PrinterStatusList)


class ClientOptions(TypedDict, total=False):
    """The arguments of `PrintClient` besides the brokers and their TLS files."""

    queue: str
    api_key: str | None
    mqtt_version: Literal["5", "3.1.1"]
    gzip: bool
    timeout: float


_DEFAULT_MQTT_URL: Final = "mqtt://127.0.0.1:1883"
_DEFAULT_AMQP_URL: Final = "amqp://guest:guest@127.0.0.1:5672/"


class JobEvents:
    """The events of one job after a command about it, as `(event, correlation id)` replies;
    iterating raises `Rejected` when the service refuses the command."""

    def __init__(
        self, subscription: Subscription, *, job_id: str, correlation_id: str, timeout: float
    ) -> None:
        self.job_id = job_id
        self.correlation_id = correlation_id
        self.timeout = timeout
        self._subscription = subscription

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Reply:
        reply = await self._subscription.next()
        if isinstance(reply.message, CommandRejected):
            raise Rejected(reply.message)
        return reply

    async def answer(self) -> PrintJobEvent:
        """The event that answers the command (the one with its correlation id), within the
        client's timeout; the job's other events before it are passed over."""
        try:
            async with asyncio.timeout(self.timeout):
                async for reply in self:
                    if reply.correlation_id == self.correlation_id:
                        return _event(reply)
        except TimeoutError:
            raise Timeout(
                f"no answer about job {self.job_id} within {self.timeout} s "
                "(is the service running? a create of a jobId that exists already with the "
                "same fields is not answered again)"
            ) from None
        raise AssertionError("unreachable: a subscription never ends")  # pragma: no cover


class PrintClient:
    """A client of the print service. Use it as `async with`: it connects on entry (one MQTT
    connection, one AMQP queue) and disconnects on exit.

    The TLS settings are the service's (README: Configuration): `*_ca_file` verifies the
    broker against a private CA, `*_cert_file` and `*_key_file` present a client certificate.
    """

    def __init__(
        self,
        *,
        mqtt_url: str = _DEFAULT_MQTT_URL,
        amqp_url: str = _DEFAULT_AMQP_URL,
        queue: str = "default",
        api_key: str | None = None,
        mqtt_version: Literal["5", "3.1.1"] = "5",
        gzip: bool = False,
        timeout: float = 30.0,
        mqtt_ca_file: Path | None = None,
        mqtt_cert_file: Path | None = None,
        mqtt_key_file: Path | None = None,
        amqp_ca_file: Path | None = None,
        amqp_cert_file: Path | None = None,
        amqp_key_file: Path | None = None,
    ) -> None:
        problems: list[str] = []
        mqtt = _broker(mqtt_url, ("mqtt", "mqtts"), "mqtt_url", problems)
        amqp = _broker(amqp_url, ("amqp", "amqps"), "amqp_url", problems)
        if not valid_queue_id(queue):
            problems.append(f"queue: {queue!r} is not a queueId (letters, digits, `._:-`)")
        if mqtt_version not in ("5", "3.1.1"):
            problems.append(f"mqtt_version: must be '5' or '3.1.1', not {mqtt_version!r}")
        if not timeout > 0:
            problems.append(f"timeout: must be more than 0 s, not {timeout!r}")
        mqtt_tls = _tls(
            mqtt,
            name="mqtt",
            ca_file=mqtt_ca_file,
            cert_file=mqtt_cert_file,
            key_file=mqtt_key_file,
            problems=problems,
        )
        amqp_tls = _tls(
            amqp,
            name="amqp",
            ca_file=amqp_ca_file,
            cert_file=amqp_cert_file,
            key_file=amqp_key_file,
            problems=problems,
        )
        if problems or mqtt is None or amqp is None:
            raise ConfigurationError("invalid client settings:\n  " + "\n  ".join(problems))
        self.queue = queue
        self.timeout = timeout
        self._api_key = api_key
        self._v5 = mqtt_version == "5"
        self._gzip = gzip
        self._commands = CommandPublisher(url=mqtt, v5=self._v5, tls=mqtt_tls, timeout=timeout)
        self._replies = ReplyQueue(url=amqp, tls=amqp_tls, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings, **options: Unpack[ClientOptions]) -> Self:
        """A client of the brokers (and their TLS files) that `settings` names, as the
        service reaches them; `options` are the other arguments (`queue`, `api_key`, ...)."""
        return cls(
            mqtt_url=settings.mqtt_url,
            amqp_url=settings.amqp_url,
            mqtt_ca_file=settings.mqtt_ca_file,
            mqtt_cert_file=settings.mqtt_cert_file,
            mqtt_key_file=settings.mqtt_key_file,
            amqp_ca_file=settings.amqp_ca_file,
            amqp_cert_file=settings.amqp_cert_file,
            amqp_key_file=settings.amqp_key_file,
            **options,
        )

    @classmethod
    def from_env(cls, **options: Unpack[ClientOptions]) -> Self:
        """A client configured by the service's environment variables (`MQTT_URL`,
        `AMQP_URL`, `MQTT_CA_FILE`, ...); a ConfigurationError names every bad one."""
        try:
            settings = Settings.from_env()
        except ConfigError as exc:
            raise ConfigurationError(str(exc)) from exc
        return cls.from_settings(settings, **options)

    def __repr__(self) -> str:  # never the API key
        return f"PrintClient(queue={self.queue!r})"

    async def __aenter__(self) -> Self:
        await self._replies.open()
        try:
            await self._commands.open()
        except BaseException:
            await self._replies.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._commands.close()
        await self._replies.close()

    # --- Commands about one job: the answer is the job's event, or Rejected.

    async def submit(
        self,
        job: CreatePrintJob | None = None,
        /,
        *,
        queue: str | None = None,
        correlation_id: str | None = None,
        **fields: object,
    ) -> PrintJobEvent:
        """Create a job: `job`, or one made of `fields` (the contract's names: `title`,
        `copies`, `document`, ...; `jobId` defaults to a new one). Returns its `created`
        event. A pydantic ValidationError says what is wrong with `fields`."""
        if job is None:
            job = CreatePrintJob.model_validate({"jobId": new_job_id(queue or self.queue)} | fields)
        elif fields:
            raise TypeError("give a CreatePrintJob or its fields, not both")
        return await self._answer(job, queue=queue, correlation_id=correlation_id)

    async def cancel(
        self, job_id: str, *, force: bool = False, queue: str | None = None
    ) -> PrintJobEvent:
        """Cancel a job (`force`: one being printed too); returns its `canceled` event."""
        return await self._answer(CancelPrintJob(jobId=job_id, force=force), queue=queue)

    async def update(
        self,
        job_id: str,
        *,
        priority: Priority | None = None,
        options: PrintOptions | None = None,
        queue: str | None = None,
    ) -> PrintJobEvent:
        """Change a waiting job's priority or options; the event lists what changed."""
        command = UpdatePrintJob(jobId=job_id, priority=priority, options=options)
        return await self._answer(command, queue=queue)

    async def move(self, job_id: str, to_queue: str, *, queue: str | None = None) -> PrintJobEvent:
        """Move a waiting job from `queue` (the client's) to `to_queue`."""
        return await self._answer(MovePrintJob(jobId=job_id, toQueue=to_queue), queue=queue)

    async def release(
        self, job_id: str, *, pin: str | None = None, queue: str | None = None
    ) -> PrintJobEvent:
        """Release a held job (with its PIN, when it has one): its `created` event (reason
        `released`), or its current status if it is not held. A wrong PIN: `Rejected`
        (`release_refused`)."""
        return await self._answer(ReleasePrintJob(jobId=job_id, pin=pin), queue=queue)

    async def status(self, job_id: str, *, queue: str | None = None) -> PrintJobEvent:
        """The job's current status (an event with `snapshot` true)."""
        return await self._answer(GetPrintJobStatus(jobId=job_id), queue=queue)

    async def watch(
        self, job_id: str, *, forever: bool = False, queue: str | None = None
    ) -> AsyncIterator[PrintJobEvent]:
        """The job's current status, then each of its events until a final status (with
        `forever`, until the caller stops). Raises `Rejected` (e.g. `unknown_job`), or
        `Timeout` when the current status is not answered within the client's timeout; how
        long to wait for the end is the caller's (`asyncio.timeout` around the loop)."""
        async with self.follow(GetPrintJobStatus(jobId=job_id), queue=queue) as events:
            answered = False
            while True:
                try:
                    async with asyncio.timeout(None if answered else events.timeout):
                        reply = await anext(events)
                except TimeoutError:
                    raise Timeout(
                        f"no answer about job {job_id} within {events.timeout} s "
                        "(is the service running?)"
                    ) from None
                event = _event(reply)
                answered = answered or reply.correlation_id == events.correlation_id
                yield event
                if event.status in FINAL_STATUSES and not forever:
                    return

    @contextlib.asynccontextmanager
    async def follow(
        self,
        command: JobCommand,
        *,
        queue: str | None = None,
        correlation_id: str | None = None,
    ) -> AsyncIterator[JobEvents]:
        """Send a job command and follow the job: the block gets its events (from before the
        command was published, so none is missed) until it ends."""
        queue_id = self._queue_id(queue)
        correlation_id = correlation_id or str(uuid.uuid4())
        job_id = command.jobId

        def about_the_job(reply: Reply) -> bool:
            message = reply.message
            if isinstance(message, CommandRejected):
                return message.correlationId == correlation_id
            return isinstance(message, PrintJobEvent) and message.jobId == job_id

        routes = (
            (EVENTS_EXCHANGE, EVENT_ROUTE_PREFIX + job_id),
            (REJECTIONS_EXCHANGE, REJECTION_ROUTE_PREFIX + queue_id),
        )
        async with self._replies.subscribed(about_the_job, *routes) as subscription:
            await self._publish(command, queue_id, correlation_id)
            yield JobEvents(
                subscription, job_id=job_id, correlation_id=correlation_id, timeout=self.timeout
            )

    # --- Queries about a queue: the answer is a model of its own, or Rejected.

    async def counts(self, *, queue: str | None = None) -> PrintCounts:
        """How many of the queue's jobs are in each status."""
        return await self._request(GetPrintCounts(), COUNTS_ROUTE_PREFIX, PrintCounts, queue)

    async def printer_statuses(self, *, queue: str | None = None) -> PrinterStatusList:
        """The statuses of the queue's printers, as last polled."""
        return await self._request(
            GetPrinterStatus(), PRINTER_LISTS_ROUTE_PREFIX, PrinterStatusList, queue
        )

    async def list_jobs(
        self, query: ListPrintJobs | None = None, /, *, queue: str | None = None, **fields: object
    ) -> PrintJobList:
        """One page of the queue's jobs, newest first: `query`, or one made of `fields`
        (`status`, `userId`, `since`, `limit`, `cursor`)."""
        if query is None:
            query = ListPrintJobs.model_validate(fields)
        elif fields:
            raise TypeError("give a ListPrintJobs or its fields, not both")
        return await self._request(query, JOBS_ROUTE_PREFIX, PrintJobList, queue)

    async def job_pages(
        self, query: ListPrintJobs | None = None, /, *, queue: str | None = None, **fields: object
    ) -> AsyncIterator[PrintJobList]:
        """Every page of the answer to `query` (or `fields`), following `nextCursor`."""
        page = await self.list_jobs(query, queue=queue, **fields)
        yield page
        while page.nextCursor is not None:
            page = await self.list_jobs(
                page.query.model_copy(update={"cursor": page.nextCursor}), queue=queue
            )
            yield page

    async def all_jobs(
        self, query: ListPrintJobs | None = None, /, *, queue: str | None = None, **fields: object
    ) -> AsyncIterator[JobSummary]:
        """Every job the query matches, page after page."""
        async for page in self.job_pages(query, queue=queue, **fields):
            for job in page.jobs:
                yield job

    # --- The two paths every call takes.

    async def _answer(
        self, command: JobCommand, *, queue: str | None, correlation_id: str | None = None
    ) -> PrintJobEvent:
        async with self.follow(command, queue=queue, correlation_id=correlation_id) as events:
            return await events.answer()

    async def _request(
        self, query: Command, route_prefix: str, answer: type[_Answer], queue: str | None
    ) -> _Answer:
        queue_id = self._queue_id(queue)
        correlation_id = str(uuid.uuid4())

        def ours(reply: Reply) -> bool:
            return reply.correlation_id == correlation_id and isinstance(
                reply.message, (answer, CommandRejected)
            )

        routes = (
            (EVENTS_EXCHANGE, route_prefix + queue_id),
            (REJECTIONS_EXCHANGE, REJECTION_ROUTE_PREFIX + queue_id),
        )
        async with self._replies.subscribed(ours, *routes) as subscription:
            await self._publish(query, queue_id, correlation_id)
            try:
                async with asyncio.timeout(self.timeout):
                    reply = await subscription.next()
            except TimeoutError:
                raise Timeout(
                    f"no answer to {message_type_of(query).value} on queue {queue_id} within "
                    f"{self.timeout} s (is the service running?)"
                ) from None
        if isinstance(reply.message, CommandRejected):
            raise Rejected(reply.message)
        assert isinstance(reply.message, answer)  # noqa: S101 - `ours` took only these
        return reply.message

    async def _publish(self, command: Command, queue_id: str, correlation_id: str) -> None:
        outbound = encode_command(
            command,
            correlation_id=correlation_id,
            api_key=self._api_key,
            v5=self._v5,
            compress=self._gzip,
        )
        await self._commands.publish(f"commands/{queue_id}", outbound)

    def _queue_id(self, queue: str | None) -> str:
        if queue is None:
            return self.queue
        if not valid_queue_id(queue):
            raise ValueError(f"{queue!r} is not a queueId (letters, digits, `._:-`)")
        return queue


def _event(reply: Reply) -> PrintJobEvent:
    assert isinstance(reply.message, PrintJobEvent)  # noqa: S101 - JobEvents raised the rest
    return reply.message


def _broker(url: str, schemes: tuple[str, str], name: str, problems: list[str]) -> BrokerUrl | None:
    try:
        return BrokerUrl(url, schemes=schemes)
    except ValueError as exc:
        problems.append(f"{name}: {exc}")
        return None


def _tls(
    broker: BrokerUrl | None,
    *,
    name: str,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    problems: list[str],
) -> ssl.SSLContext | None:
    """The context for an `mqtts://` or `amqps://` broker; as the service does, the files
    are not used for a plain one."""
    if broker is None or not broker.tls:
        return None
    try:
        return ssl_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    except (OSError, ssl.SSLError) as exc:
        problems.append(f"{name} TLS files: {exc}")
        return None
