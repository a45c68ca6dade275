"""Publishing shared by lane (issue 15): each relay publishes the rows of the lanes its
replica holds, stops at once on a lane it lost, and a job's events keep their order across
a handover and a move between lanes.

No broker: a `MemoryStore` (it keeps the store's contract, the lanes filter included) and
fake publishers that log what reached the "broker", in order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

import pytest
from prometheus_client import CollectorRegistry

from service.adapters.store.memory import MemoryStore
from service.application.relay import OutboxRelay
from service.core.backoff import Backoff
from service.core.events import Kind, Outgoing
from service.core.jobs import Job
from service.metrics import Metrics
from service.models import JobStatus, Priority
from service.ports import OutboxLanes

WAIT: Final = 3.0


class Broker:
    """What every fake publisher delivered, in arrival order: (publisher, message)."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, Outgoing]] = []

    def first_seen(self) -> list[Outgoing]:
        """Each message once, where it first arrived: what a deduplicating consumer sees."""
        seen: set[str] = set()
        first = []
        for _, message in self.delivered:
            if message.message_id not in seen:
                seen.add(message.message_id)
                first.append(message)
        return first

    def by(self, name: str) -> list[Outgoing]:
        return [message for who, message in self.delivered if who == name]


class SlowPublisher:
    """Confirms each message after `delay`; a gate (when closed) holds every publish."""

    def __init__(self, broker: Broker, name: str, *, delay: float = 0.0) -> None:
        self.broker = broker
        self.name = name
        self.delay = delay
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = 0

    async def publish(self, message: Outgoing) -> None:
        self.started += 1
        await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        self.broker.delivered.append((self.name, message))


class Lanes:
    """A replica's lanes, as a test changes them."""

    def __init__(self, *held: str, unlaned: bool = False) -> None:
        self.value = OutboxLanes(held=frozenset(held), unlaned=unlaned)

    def hold(self, *held: str, unlaned: bool = False) -> None:
        self.value = OutboxLanes(held=frozenset(held), unlaned=unlaned)

    def __call__(self) -> OutboxLanes:
        return self.value


def an_event(job_id: str, n: int) -> Outgoing:
    return Outgoing(
        message_id=str(uuid.uuid4()),
        kind=Kind.job_event,
        routing_key=f"events/{job_id}",
        order_key=job_id,
        body=f'{{"jobId": "{job_id}", "sequence": {n}}}'.encode(),
        correlation_id=f"corr-{job_id}",
        label="started",
        received_at=None,
    )


def a_reply(queue_id: str) -> Outgoing:
    route = f"counts/{queue_id}"
    return Outgoing(
        message_id=str(uuid.uuid4()),
        kind=Kind.counts,
        routing_key=route,
        order_key=route,
        body=b"{}",
        correlation_id="corr-counts",
        label="counts",
        received_at=None,
    )


def sequence(message: Outgoing) -> int:
    return int(message.body.decode().rsplit(":", 1)[1].strip(" }"))


async def emit(store: MemoryStore, lane: str | None, *messages: Outgoing) -> None:
    """Commit `messages` in a transaction fenced by `lane` (a dispatcher's), or in none."""
    async with store.transaction(lane=lane) as tx:
        for message in messages:
            tx.emit(message)


def a_relay(
    store: MemoryStore, publisher: SlowPublisher, lanes: Callable[[], OutboxLanes | None]
) -> OutboxRelay:
    relay = OutboxRelay(
        store=store,
        publisher=publisher,
        metrics=Metrics(CollectorRegistry()),
        concurrency=8,
        lanes=lanes,
        backoff=lambda: Backoff(first=0.01, cap=0.05),
    )
    store.on_commit(relay.wake)
    return relay


async def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.005)


class Running:
    """Relays run as the service runs them, stopped (and checked alive) at the end."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, relay: OutboxRelay) -> None:
        self.tasks.append(asyncio.create_task(relay.run(self.stopping, drain_timeout=0.2)))

    async def stop(self) -> None:
        for task in self.tasks:
            assert not task.done(), task
        self.stopping.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), WAIT)


async def test_a_relay_publishes_only_the_rows_of_the_lanes_it_holds() -> None:
    store = MemoryStore()
    broker = Broker()
    await emit(store, "lane-a", an_event("job-a", 1))
    await emit(store, "lane-b", an_event("job-b", 1))
    await emit(store, None, a_reply("lane-a"))  # no job: no lane
    running = Running()
    running.start(a_relay(store, SlowPublisher(broker, "A"), Lanes("lane-a")))
    await eventually(lambda: len(broker.delivered) == 1, "lane-a's row published")
    await asyncio.sleep(0.1)  # time to publish what it must not
    await running.stop()
    assert [m.order_key for _, m in broker.delivered] == ["job-a"]
    left = await store.unsent(10)
    assert [(r.lane, r.message.order_key) for r in left] == [
        ("lane-b", "job-b"),
        (None, "counts/lane-a"),
    ]


async def test_the_rows_of_no_lane_go_with_the_relay_lane() -> None:
    store = MemoryStore()
    broker = Broker()
    await emit(store, "lane-b", an_event("job-b", 1))
    await emit(store, None, a_reply("lane-a"))
    running = Running()
    running.start(a_relay(store, SlowPublisher(broker, "A"), Lanes(unlaned=True)))
    await eventually(lambda: len(broker.delivered) == 1, "the reply published")
    await asyncio.sleep(0.1)
    await running.stop()
    assert [m.kind for _, m in broker.delivered] == [Kind.counts]
    assert [r.lane for r in await store.unsent(10)] == ["lane-b"]


async def test_a_lost_lane_is_not_published_from_then_on() -> None:
    store = MemoryStore()
    broker = Broker()
    publisher = SlowPublisher(broker, "A", delay=0.02)
    lanes = Lanes("lane-a", "lane-b")
    await emit(store, "lane-a", *(an_event("job-a", n) for n in range(1, 11)))
    running = Running()
    running.start(a_relay(store, publisher, lanes))
    await eventually(lambda: len(broker.delivered) >= 2, "lane-a being published")
    lanes.hold("lane-b")  # the lease of lane-a went to another replica
    when_lost = len(broker.delivered)
    await emit(store, "lane-b", an_event("job-b", 1))
    await eventually(
        lambda: bool(broker.by("A")[-1:]) and broker.by("A")[-1].order_key == "job-b",
        "lane-b still published",
    )
    await running.stop()
    job_a = [m for _, m in broker.delivered if m.order_key == "job-a"]
    # At most the one publish already handed to the broker when the lane went.
    assert len(job_a) <= when_lost + 1
    assert [sequence(m) for m in job_a] == list(range(1, len(job_a) + 1))
    # What it did not publish is left, all of it, for the lane's new holder.
    left = [sequence(r.message) for r in await store.unsent(20) if r.lane == "lane-a"]
    assert left == list(range(len(job_a) + 1, 11))


async def test_a_lane_regained_is_published_again_from_where_it_was_left() -> None:
    store = MemoryStore()
    broker = Broker()
    publisher = SlowPublisher(broker, "A", delay=0.01)
    lanes = Lanes("lane-a")
    await emit(store, "lane-a", *(an_event("job-a", n) for n in range(1, 21)))
    running = Running()
    running.start(a_relay(store, publisher, lanes))
    await eventually(lambda: len(broker.delivered) >= 2, "lane-a being published")
    lanes.hold()
    await asyncio.sleep(0.1)
    lanes.hold("lane-a")
    await eventually(lambda: store.outbox_depth == 0, "the whole lane published")
    await running.stop()
    # First arrivals in order, each message at least once (a repeat is harmless).
    assert [sequence(m) for m in broker.first_seen()] == list(range(1, 21))


async def test_a_job_keeps_its_order_across_a_handover_between_replicas() -> None:
    store = MemoryStore()
    broker = Broker()
    lanes_a, lanes_b = Lanes("lane-a", unlaned=True), Lanes()
    publisher_a = SlowPublisher(broker, "A", delay=0.01)
    publisher_b = SlowPublisher(broker, "B", delay=0.003)
    jobs = [f"job-{n}" for n in range(4)]
    for n in range(1, 16):
        await emit(store, "lane-a", *(an_event(job, n) for job in jobs))
    running = Running()
    running.start(a_relay(store, publisher_a, lanes_a))
    running.start(a_relay(store, publisher_b, lanes_b))
    await eventually(lambda: len(broker.by("A")) >= 8, "A publishing lane-a")
    # A's lease lapses (it is frozen, say: a publish of it is still on its way), B takes over.
    publisher_a.gate.clear()
    lanes_a.hold()
    lanes_b.hold("lane-a", unlaned=True)
    await eventually(lambda: store.outbox_depth <= 4, "B publishing lane-a")
    publisher_a.gate.set()  # the frozen replica's last publishes arrive, late
    await eventually(lambda: store.outbox_depth == 0, "everything published")
    await running.stop()
    assert broker.by("B"), "the new holder published"
    for job in jobs:
        seen = [sequence(m) for m in broker.first_seen() if m.order_key == job]
        assert seen == list(range(1, 16)), job
    # After the handover, A published nothing it had not already begun.
    assert len(broker.by("A")) <= publisher_a.started


async def test_a_moved_job_waits_for_its_events_in_the_old_lane() -> None:
    store = MemoryStore()
    broker = Broker()
    publisher_a = SlowPublisher(broker, "A", delay=0.01)
    publisher_a.gate.clear()  # the old lane's holder is slow to publish
    await emit(store, "lane-a", an_event("job-1", 1), an_event("job-1", 2))
    await emit(store, "lane-b", an_event("job-1", 3))  # moved: the new lane's holder prints it
    await emit(store, "lane-b", an_event("job-2", 1))
    running = Running()
    running.start(a_relay(store, SlowPublisher(broker, "B"), Lanes("lane-b")))
    running.start(a_relay(store, publisher_a, Lanes("lane-a", unlaned=True)))
    await eventually(lambda: len(broker.delivered) == 1, "job-2 published by B")
    await asyncio.sleep(0.1)
    assert [m.order_key for _, m in broker.delivered] == ["job-2"]  # job-1's 3 waits
    publisher_a.gate.set()
    await eventually(lambda: store.outbox_depth == 0, "everything published")
    await running.stop()
    assert [(who, sequence(m)) for who, m in broker.delivered if m.order_key == "job-1"] == [
        ("A", 1),
        ("A", 2),
        ("B", 3),
    ]


def a_job(job_id: str, queue_id: str) -> Job:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Job(
        job_id=job_id,
        queue_id=queue_id,
        status=JobStatus.created,
        sequence=1,
        priority=Priority.medium,
        user_id=None,
        document_name=None,
        created_at=now,
        updated_at=now,
        correlation_id="c",
    )


async def test_a_row_takes_its_lane_from_the_fence_or_its_jobs_queue() -> None:
    store = MemoryStore(lane_of=lambda queue_id: "printers-1" if queue_id == "alias" else queue_id)
    async with store.apply_commands() as tx:
        tx.put(a_job("job-1", "alias"))
        tx.emit(an_event("job-1", 1))  # the job written here: its queue's lane
        tx.emit(a_reply("alias"))  # not a job's event: no lane
        tx.emit(an_event("job-unknown", 1))  # a job this transaction did not see: no lane
    async with store.apply_commands() as tx:
        assert await tx.get("job-1") is not None
        tx.emit(an_event("job-1", 2))  # a status reply: the job read, not written
    await emit(store, "lane-x", an_event("job-1", 3))  # a dispatcher's: its fence
    lanes = [r.lane for r in await store.unsent(10)]
    assert lanes == ["printers-1", None, None, "printers-1", "lane-x"]


async def test_a_relay_left_with_no_lane_drains_without_blocking_the_loop() -> None:
    # Its lanes gone while a publish is in flight, then the stop: it waits for the publish
    # to end, yielding (it used to loop without an await until the drain's deadline, the
    # whole event loop frozen meanwhile).
    store = MemoryStore()
    broker = Broker()
    publisher = SlowPublisher(broker, "A", delay=0.05)
    lanes = Lanes("lane-a")
    relay = a_relay(store, publisher, lanes)
    stopping = asyncio.Event()
    task = asyncio.create_task(relay.run(stopping, drain_timeout=1.0))
    await emit(store, "lane-a", an_event("job-a", 1))
    await eventually(lambda: publisher.started >= 1, "the publish in flight")
    lanes.hold()
    stopping.set()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.005)

    started = time.monotonic()
    await asyncio.gather(task, tick())
    assert time.monotonic() - started < 0.5  # the publish's 50 ms, not the 1 s deadline
    assert ticks >= 3  # the loop ran other work meanwhile
