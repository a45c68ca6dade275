"""The service: wires the core to its adapters and owns every background loop.

```
MQTT commands/+ ─▶ CommandHandler ─▶ store (job + outbox, one transaction) ─▶ PUBACK
                                        │
PrintDispatcher ◀─ waiting jobs ────────┤ (started/finished also go through the store)
OutboxRelay ◀────── unsent messages ────┘ ─▶ AMQP publish, confirmed ─▶ mark sent
```

Shutdown (SIGTERM/SIGINT) drains in order: stop taking commands (the one being handled is
finished and acknowledged), publish what the outbox holds, stop the printers, close both
connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from service.adapters.amqp import AmqpPublisher
from service.adapters.documents import DocumentFetcher
from service.adapters.http import HealthServer
from service.adapters.keyfile import KeyFile
from service.adapters.mqtt import IngressOptions, MqttIngress
from service.adapters.printers.directory import Printers
from service.adapters.solo import Solo
from service.adapters.store.leases import PostgresLeases
from service.adapters.store.memory import MemoryStore
from service.adapters.store.postgres import PostgresStore
from service.adapters.store.sqlite import SqliteStore
from service.adapters.tracing import Tracing, tracing_from_env
from service.aio import sleep_unless
from service.application.dispatch import PrintDispatcher
from service.application.handler import CommandHandler
from service.application.printer_status import PrinterMonitor
from service.application.relay import OutboxRelay
from service.application.retention import Retention
from service.config import ConfigError, Settings
from service.core.access import AccessConfigError
from service.core.codec import CommandDecoder
from service.core.queues import QueueMap
from service.metrics import Metrics
from service.ports import Coordinator, JobStore, OutboxLanes, StoreError
from service.tls import amqp_ssl_context

__all__ = ["Service", "open_store"]

log = structlog.get_logger(__name__)


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        queues: QueueMap,
        registry: CollectorRegistry | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """Wire the service; nothing is read or connected until `run`. `queues` is the
        queue configuration, read (and refused if invalid) before: `Settings.queue_map()`.
        `tracing`: what the `OTEL_*` variables ask for, unless given (a ConfigError if they
        ask for what is not installed)."""
        self.settings = settings
        self.tracing = tracing if tracing is not None else tracing_from_env()
        tracer = self.tracing.tracer
        self.metrics = Metrics(registry or CollectorRegistry())
        self.stopping = asyncio.Event()
        self.queues = queues
        self.store = open_store(settings, lane_of=lambda queue_id: _lane_of(queues, queue_id))
        self.coordinator = _coordinator(settings, self.store, self.queues)
        self.publisher = AmqpPublisher(
            url=settings.amqp,
            connection_name=settings.mqtt_client_id,
            gzip_bodies=settings.event_gzip,
            metrics=self.metrics,
            ssl_context=amqp_ssl_context(settings),
        )
        self.relay = OutboxRelay(
            store=self.store,
            publisher=self.publisher,
            metrics=self.metrics,
            concurrency=settings.publish_concurrency,
            max_refusals=settings.dead_letter_after,
            lanes=_outbox_lanes(self.coordinator),
            tracer=tracer,
        )
        self.store.on_commit(self.relay.wake)
        self.store.on_commit(self.metrics.commits.inc)
        self.metrics.outbox_depth.set_function(lambda: self.store.outbox_depth)
        self.printers = Printers(self.queues, simulated_duration=settings.print_duration)
        self.documents = DocumentFetcher(
            max_bytes=settings.document_max_bytes,
            timeout=settings.document_fetch_timeout,
            spool_dir=settings.document_spool_dir,
            allow_hosts=settings.document_allow_hosts,
        )
        self.dispatcher = PrintDispatcher(
            store=self.store,
            queues=self.queues,
            printers=self.printers,
            documents=self.documents,
            coordinator=self.coordinator,
            metrics=self.metrics,
            max_interruptions=settings.print_max_interruptions,
            progress_interval=settings.progress_interval,
            tracer=tracer,
        )
        self.printer_monitor = PrinterMonitor(
            store=self.store,
            printers=self.printers,
            coordinator=self.coordinator,
            interval=settings.printer_status_interval,
        )
        # None with AUTH_DISABLED; a ConfigError without keys (fail closed).
        self.access = settings.access_control()
        self.keys = (
            KeyFile(
                access=self.access,
                plain=settings.api_keys,
                path=settings.api_keys_file,
                metrics=self.metrics,
            )
            if self.access is not None and settings.api_keys_file is not None
            else None
        )
        self.handler = CommandHandler(
            decoder=CommandDecoder(
                max_bytes=settings.max_message_bytes,
                max_decompressed_bytes=settings.max_decompressed_bytes,
                access=self.access,
                new_id=lambda: str(uuid.uuid4()),
                read_trace=tracer.enabled,
            ),
            store=self.store,
            queues=self.queues,
            dispatcher=self.dispatcher,
            metrics=self.metrics,
            list_max=settings.job_list_max,
            printer_statuses=self.printer_monitor.statuses,
            hold_timeout=settings.hold_timeout,
            pin_attempts=settings.hold_pin_attempts,
            tracer=tracer,
        )
        self.retention = Retention(
            self.store,
            retention=settings.job_retention,
            metrics=self.metrics,
            batch=settings.job_purge_batch,
            pause=settings.job_purge_pause,
            interval=settings.job_purge_interval,
        )
        self.ingress = MqttIngress(
            options=IngressOptions.from_settings(settings),
            metrics=self.metrics,
            on_peer_will=self._peer_died,
        )
        self.http = HealthServer(
            host=settings.http_host,
            port=settings.http_port,
            registry=self.metrics.registry,
            readiness=self.readiness,
        )
        self.metrics.watch_readiness(self.readiness)
        self.ready = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    def readiness(self) -> Mapping[str, bool]:
        depth = self.store.outbox_depth
        return {
            "mqtt": self.ingress.connected,
            "amqp": self.publisher.connected,
            "store": self.store.healthy,
            "outbox": depth < self.settings.outbox_ready_limit,
            "accepting": not self.stopping.is_set(),
        }

    def _peer_died(self, instance: str) -> None:
        if self.stopping.is_set():
            return  # the lanes are being given back: taking more would hold them
        task = asyncio.get_running_loop().create_task(self._take_over_from(instance))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _take_over_from(self, instance: str) -> None:
        try:
            await self.coordinator.replica_died(instance)
        except Exception:  # a lease scan will find the dead replica's lanes all the same
            log.exception("takeover_failed", instance=instance)

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("shutdown_requested")
            self.stopping.set()

    async def run(
        self, *, install_signal_handlers: bool = False, freeze_when_ready: bool = False
    ) -> None:
        """Run until `stop()` (or SIGTERM/SIGINT with `install_signal_handlers`), then drain.

        `freeze_when_ready`: the process is this service's alone (see
        `_freeze_startup_objects`); not where other code shares it, such as tests.
        """
        settings = self.settings
        if install_signal_handlers:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        if self.access is None:
            log.warning(
                "auth_disabled",
                detail="AUTH_DISABLED=true: every command is accepted without an API key",
            )
        if self.keys is not None:
            try:
                self.keys.load()
            except AccessConfigError as exc:
                raise ConfigError(f"API_KEYS_FILE: {exc}") from None
        log.info(
            "service_starting",
            client_id=settings.mqtt_client_id,
            mqtt=settings.mqtt.redacted(),
            amqp=settings.amqp.redacted(),
            queues=sorted(self.queues.queues) or "one simulated printer per queueId",
        )
        await self.store.open()
        await self.http.start()
        try:
            if not await self.publisher.connect(self.stopping):
                return
            ingress_done = asyncio.Event()
            relay_done = asyncio.Event()
            dispatcher_done = asyncio.Event()
            lanes_free = asyncio.Event()
            # Every loop recovers from what it can (broker and store outages) by itself; a
            # failure that reaches here is a bug: logged, it stops the service (non-zero).
            async with asyncio.TaskGroup() as tasks:

                def start(name: str, loop: Coroutine[Any, Any, None]) -> None:
                    tasks.create_task(_supervised(name, loop), name=name)

                # The lease outlives the relay and the dispatcher: the lanes are given back
                # only once the outbox is drained and the handover is written (both fenced).
                start("coordinator", self.coordinator.run(lanes_free))
                start("lanes", _set_after(lanes_free, relay_done, dispatcher_done))
                start("dispatcher", self._dispatch(ingress_done, dispatcher_done))
                start("relay", self._publish(ingress_done, relay_done))
                if isinstance(self.store, PostgresStore):
                    start("outbox", self._count_outbox(self.store, relay_done))
                if self.keys is not None:
                    start("keys", self.keys.run(self.stopping))
                start("ingress", self._ingest(ingress_done))
                start("retention", self.retention.run(self.stopping))
                start("printer-status", self.printer_monitor.run(self.stopping))
                start("ready", self._announce_ready(freeze=freeze_when_ready))
        finally:
            await self.printers.close()
            await self.documents.close()
            await self.publisher.close()
            await self.store.close()
            await self.http.close()
            # Flushes the spans not yet exported (blocking: the SDK's exporters are).
            await asyncio.to_thread(self.tracing.shutdown)
            log.info("service_stopped")

    async def _dispatch(self, ingress_done: asyncio.Event, done: asyncio.Event) -> None:
        try:
            await self.dispatcher.run(ingress_done)
        finally:
            done.set()

    async def _publish(self, ingress_done: asyncio.Event, done: asyncio.Event) -> None:
        try:
            await self.relay.run(ingress_done, drain_timeout=self.settings.shutdown_timeout)
        finally:
            done.set()

    async def _count_outbox(self, store: PostgresStore, done: asyncio.Event) -> None:
        """Other replicas add to the shared outbox and one publishes it: count it again."""
        while not done.is_set():
            with contextlib.suppress(StoreError):
                await store.refresh_depth()
            await sleep_unless(done, 5.0)

    async def _ingest(self, done: asyncio.Event) -> None:
        try:
            await self.ingress.run(self.handler.handle, self.stopping)
        finally:
            # The relay drains only once no more commands can come in.
            done.set()

    async def _announce_ready(self, *, freeze: bool) -> None:
        while not self.stopping.is_set():
            if all(self.readiness().values()):
                if freeze:
                    _freeze_startup_objects()
                self.ready.set()
                log.info(
                    "service_ready", http_port=self.http.port, frozen_objects=gc.get_freeze_count()
                )
                return
            await sleep_unless(self.stopping, 0.05)


def _freeze_startup_objects() -> None:
    """Leave what start-up made (modules, the schema's validators, the adapters) out of the
    collector's full scans, which otherwise walk all of it: a full collection paused the
    loop 20-25 ms in a bench run, delaying every command read meanwhile.

    The cost, once: a cycle among those objects that dies later is never freed. The first
    broker connections are such (aiormq's objects refer to each other): after a reconnect,
    what the first connection held stays in memory, its sockets closed. Objects made from
    here on are collected as before. The collection before the freeze pauses the loop
    once, a few tens of ms, as the service starts taking commands."""
    gc.collect()
    gc.freeze()


async def _set_after(event: asyncio.Event, *before: asyncio.Event) -> None:
    for other in before:
        await other.wait()
    event.set()


async def _supervised(name: str, loop: Coroutine[Any, Any, None]) -> None:
    try:
        await loop
    except Exception:
        log.critical("task_failed", task=name, detail="the service stops", exc_info=True)
        raise


def _coordinator(settings: Settings, store: JobStore, queues: QueueMap) -> Coordinator:
    """Leases in the store when replicas can share it (PostgreSQL); otherwise alone."""
    if isinstance(store, PostgresStore):
        return PostgresLeases(
            settings.database_url,
            instance=settings.mqtt_client_id,
            lease_seconds=settings.lease_seconds,
            lane_of=lambda queue_id: _lane_of(queues, queue_id),
        )
    return Solo(settings.mqtt_client_id)


def _lane_of(queues: QueueMap, queue_id: str) -> str:
    """The lane that prints `queue_id`'s jobs: the coordinator's lanes and the outbox's."""
    return queues.lane(queue_id) or queue_id


def _outbox_lanes(coordinator: Coordinator) -> Callable[[], OutboxLanes | None]:
    """What the relay publishes: the rows of the lanes this replica holds, or every row
    when it runs alone."""
    if isinstance(coordinator, PostgresLeases):
        return coordinator.outbox_lanes
    return lambda: None


def open_store(settings: Settings, *, lane_of: Callable[[str], str] | None = None) -> JobStore:
    """The store `DATABASE_URL` names (not yet opened); `lane_of` gives the lane of a job's
    outbox rows from its queue (the queue itself unless given)."""
    lanes = lane_of or (lambda queue_id: queue_id)
    url = settings.database_url
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(
            url,
            open_timeout=settings.store_open_timeout,
            notify_as=settings.mqtt_client_id,
            idle_limit=settings.lease_seconds / 4,
            lane_of=lanes,
        )
    if (path := settings.sqlite_path) is not None:
        return SqliteStore(
            path,
            synchronous=settings.store_synchronous,
            commit_delay=settings.store_commit_delay,
            lane_of=lanes,
        )
    return MemoryStore(lane_of=lanes)
