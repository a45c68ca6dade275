"""The outbox relay under faults (issue 10): store outages, poison messages, broker refusals.

No broker: a `MemoryStore` wrapped by small fakes and a fake `EventPublisher` whose failures
each test scripts. Every test runs the relay as the service does (`run` in a task, stopped by
`stopping`) and checks what reached the "broker", what is left in the outbox and what was
parked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from service.adapters.store.memory import MemoryStore
from service.application.relay import OutboxRelay
from service.core.backoff import Backoff
from service.core.events import Kind, Outgoing
from service.metrics import Metrics
from service.ports import (
    DeadLetter,
    OutboxLanes,
    OutboxRecord,
    PublishRefused,
    StoreError,
    Unpublishable,
)

WAIT: Final = 2.0  # seconds: the most any condition below may take


# --- fakes -------------------------------------------------------------------------------------


class FlakyStore(MemoryStore):
    """A memory store whose `unsent`, `mark_sent` and `park` fail as a test says."""

    def __init__(self) -> None:
        super().__init__()
        self.unsent_failures: list[BaseException] = []  # raised, one per call, first first
        self.mark_failures: list[BaseException] = []
        self.park_failures: list[BaseException] = []
        self.unsent_calls = 0
        self.mark_calls = 0
        self.park_calls = 0

    async def unsent(
        self, limit: int, *, after: int = 0, lanes: OutboxLanes | None = None
    ) -> Sequence[OutboxRecord]:
        self.unsent_calls += 1
        if self.unsent_failures:
            raise self.unsent_failures.pop(0)
        return await super().unsent(limit, after=after, lanes=lanes)

    async def mark_sent(self, positions: Iterable[int]) -> None:
        self.mark_calls += 1
        if self.mark_failures:
            raise self.mark_failures.pop(0)
        await super().mark_sent(positions)

    async def park(self, letter: DeadLetter, *, position: int | None = None) -> None:
        self.park_calls += 1
        if self.park_failures:
            raise self.park_failures.pop(0)
        await super().park(letter, position=position)


class FakePublisher:
    """Confirms every message, unless `failure` (given the message) returns an exception."""

    def __init__(
        self,
        failure: Callable[[Outgoing], BaseException | None] = lambda _: None,
        *,
        delay: float = 0.0,
    ) -> None:
        self.failure = failure
        self.delay = delay
        self.published: list[Outgoing] = []
        self.attempts: list[Outgoing] = []

    async def publish(self, message: Outgoing) -> None:
        self.attempts.append(message)
        if self.delay:
            await asyncio.sleep(self.delay)
        if (exc := self.failure(message)) is not None:
            raise exc
        self.published.append(message)

    def ids(self) -> list[str]:
        return [message.message_id for message in self.published]


class ClosingChannelPublisher:
    """A broker that refuses `poison` with 406 and so closes the channel: every publish in
    flight at the same moment as a poison one fails with it. A message published alone that
    is not poison is confirmed."""

    def __init__(self, poison: set[str], *, delay: float = 0.005) -> None:
        self.poison = poison
        self.delay = delay
        self.published: list[Outgoing] = []
        self.attempts: list[Outgoing] = []
        self._in_flight: dict[int, bool] = {}  # attempt number: doomed
        self._poison_pending = 0

    async def publish(self, message: Outgoing) -> None:
        number = len(self.attempts)
        self.attempts.append(message)
        is_poison = message.message_id in self.poison
        if is_poison:
            self._poison_pending += 1
            for other in self._in_flight:
                self._in_flight[other] = True  # the channel closes under them too
        self._in_flight[number] = is_poison or self._poison_pending > 0
        try:
            await asyncio.sleep(self.delay)
        finally:
            doomed = self._in_flight.pop(number)
            if is_poison:
                self._poison_pending -= 1
        if doomed:
            raise PublishRefused("406 PRECONDITION_FAILED - message too large")
        self.published.append(message)

    def ids(self) -> list[str]:
        return [message.message_id for message in self.published]


# --- helpers -----------------------------------------------------------------------------------


def a_message(job_id: str, n: int = 0) -> Outgoing:
    message_id = str(uuid.uuid4())
    return Outgoing(
        message_id=message_id,
        kind=Kind.job_event,
        routing_key=f"events/{job_id}",
        order_key=job_id,
        body=f'{{"jobId": "{job_id}", "n": {n}}}'.encode(),
        correlation_id=f"corr-{job_id}-{n}",
        label="created",
        received_at=None,
    )


async def commit(store: MemoryStore, messages: Iterable[Outgoing]) -> None:
    async with store.transaction() as tx:
        for message in messages:
            tx.emit(message)


def a_relay(
    store: MemoryStore,
    publisher: FakePublisher | ClosingChannelPublisher,
    *,
    concurrency: int = 8,
    max_refusals: int = 3,
    backoff: Callable[[], Backoff] | None = None,
    lanes: Callable[[], OutboxLanes | None] = lambda: None,
) -> tuple[OutboxRelay, Metrics]:
    metrics = Metrics(CollectorRegistry())
    relay = OutboxRelay(
        store=store,
        publisher=publisher,
        metrics=metrics,
        concurrency=concurrency,
        max_refusals=max_refusals,
        lanes=lanes,
        backoff=backoff,
    )
    store.on_commit(relay.wake)
    return relay, metrics


async def eventually(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.005)


async def stop(relay_task: asyncio.Task[None], stopping: asyncio.Event) -> None:
    """Set `stopping`; the relay must return normally, soon."""
    assert not relay_task.done(), relay_task  # it did not die meanwhile
    stopping.set()
    await asyncio.wait_for(relay_task, WAIT)


_running: list[asyncio.Task[None]] = []


def start(
    relay: OutboxRelay, stopping: asyncio.Event, *, drain_timeout: float = WAIT
) -> asyncio.Task[None]:
    task = asyncio.create_task(relay.run(stopping, drain_timeout=drain_timeout))
    _running.append(task)
    return task


@pytest.fixture(autouse=True)
async def _no_relay_left() -> AsyncIterator[None]:
    """A test that fails midway leaves no relay running into the next one."""
    yield
    while _running:
        task = _running.pop()
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


def dead_letters(metrics: Metrics, source: str) -> float | None:
    return metrics.registry.get_sample_value("print_dead_letters_total", {"source": source})


def in_order(published: Sequence[str], expected: Sequence[str]) -> bool:
    """Whether `expected` appear in `published` in this order (first occurrences)."""
    positions = [published.index(message_id) for message_id in expected]
    return positions == sorted(positions)


# --- store failures ----------------------------------------------------------------------------


async def test_mark_sent_failing_once_is_retried_and_the_relay_keeps_running() -> None:
    store = FlakyStore()
    store.mark_failures.append(StoreError("connection lost"))
    publisher = FakePublisher()
    relay, _ = a_relay(store, publisher)
    first = [a_message(f"job-{n}") for n in range(5)]
    await commit(store, first)
    stopping = asyncio.Event()
    task = start(relay, stopping)

    await eventually(lambda: store.outbox_depth == 0, "the rows marked sent after the failure")
    assert store.mark_calls >= 2  # the failed call, then the one that marked them
    assert not store.mark_failures
    # Confirmed rows stay taken while they wait to be marked: none is published again.
    assert sorted(publisher.ids()) == sorted(m.message_id for m in first)

    # The marker did not die: what is committed next is published and marked too.
    later = [a_message(f"job-later-{n}") for n in range(3)]
    await commit(store, later)
    await eventually(lambda: store.outbox_depth == 0, "later rows marked sent")
    assert sorted(publisher.ids()) == sorted(m.message_id for m in first + later)
    await stop(task, stopping)
    assert await store.dead_letters(10) == []


async def test_outbox_reads_failing_do_not_stop_the_relay() -> None:
    store = FlakyStore()
    store.unsent_failures.extend(StoreError(f"server restarting ({n})") for n in range(3))
    publisher = FakePublisher()
    relay, _ = a_relay(store, publisher, backoff=tiny_backoff)
    messages = [a_message(f"job-{n % 3}", n) for n in range(9)]
    await commit(store, messages)
    stopping = asyncio.Event()
    task = start(relay, stopping)

    await eventually(lambda: store.outbox_depth == 0, "everything published once reads work")
    assert not store.unsent_failures
    assert store.unsent_calls > 3
    assert sorted(publisher.ids()) == sorted(m.message_id for m in messages)
    for job in ("job-0", "job-1", "job-2"):
        of_job = [m.message_id for m in messages if m.order_key == job]
        assert in_order(publisher.ids(), of_job), job
    await stop(task, stopping)


async def test_a_store_failure_while_stopping_does_not_escape() -> None:
    """Reads failing when `stopping` is set: run() still returns (nothing to publish left)."""
    store = FlakyStore()
    publisher = FakePublisher()
    relay, _ = a_relay(store, publisher)
    stopping = asyncio.Event()
    task = start(relay, stopping)
    await commit(store, [a_message("job-1")])
    await eventually(lambda: store.outbox_depth == 0, "the first message published")
    store.unsent_failures.extend(StoreError("away") for _ in range(2))
    await asyncio.sleep(0.05)
    await stop(task, stopping)


# --- poison ------------------------------------------------------------------------------------


async def test_an_unencodable_message_is_parked_at_once_and_its_job_goes_on() -> None:
    store = FlakyStore()
    a1, poison, a3, a4 = (a_message("job-a", n) for n in range(4))
    b1, b2 = a_message("job-b", 0), a_message("job-b", 1)

    def failure(message: Outgoing) -> BaseException | None:
        if message.message_id == poison.message_id:
            return Unpublishable("cannot be encoded as AMQP: short string too long")
        return None

    publisher = FakePublisher(failure)
    relay, metrics = a_relay(store, publisher)
    await commit(store, [a1, b1, poison, a3, b2, a4])
    stopping = asyncio.Event()
    task = start(relay, stopping)

    await eventually(lambda: store.outbox_depth == 0, "the outbox emptied")
    await stop(task, stopping)

    letters = await store.dead_letters(10)
    assert len(letters) == 1
    (letter,) = letters
    assert letter.source == "event"
    assert letter.address == poison.routing_key
    assert letter.payload == poison.body
    assert letter.attempts == 1
    assert letter.properties["message_id"] == poison.message_id
    assert dead_letters(metrics, "event") == 1
    # Tried once: an encoding error is deterministic.
    assert [m.message_id for m in publisher.attempts].count(poison.message_id) == 1
    innocents = [a1, b1, a3, b2, a4]
    assert sorted(publisher.ids()) == sorted(m.message_id for m in innocents)
    assert in_order(publisher.ids(), [a1.message_id, a3.message_id, a4.message_id])
    assert in_order(publisher.ids(), [b1.message_id, b2.message_id])


async def test_a_refused_message_is_parked_alone_and_no_innocent_one_is() -> None:
    store = FlakyStore()
    poison = a_message("job-poison", 0)
    after_poison = a_message("job-poison", 1)  # same job: waits for it, then goes on
    innocents = [a_message(f"job-{n}") for n in range(6)]
    everything = [*innocents[:3], poison, after_poison, *innocents[3:]]
    publisher = ClosingChannelPublisher({poison.message_id})
    relay, metrics = a_relay(store, publisher, concurrency=16, max_refusals=3, backoff=tiny_backoff)
    await commit(store, everything)
    stopping = asyncio.Event()
    task = start(relay, stopping)

    await eventually(lambda: store.outbox_depth == 0, "the outbox emptied")
    # More innocents once the poison is gone: published as usual.
    later = [a_message(f"job-later-{n}") for n in range(4)]
    await commit(store, later)
    await eventually(lambda: store.outbox_depth == 0, "the later messages published")
    await stop(task, stopping)

    # The round with the poison failed more than the poison (the simulation is effective).
    attempts = [m.message_id for m in publisher.attempts]
    assert any(attempts.count(m.message_id) > 1 for m in innocents)
    letters = await store.dead_letters(10)
    assert [letter.properties["message_id"] for letter in letters] == [poison.message_id]
    assert letters[0].source == "event"
    assert letters[0].address == poison.routing_key
    assert letters[0].attempts == 3
    assert dead_letters(metrics, "event") == 1
    expected = [*innocents, after_poison, *later]
    assert sorted(publisher.ids()) == sorted(m.message_id for m in expected)


async def test_innocents_refused_in_several_rounds_are_not_parked() -> None:
    """Two poison messages, each closing the channel on whatever is in flight, over rounds in
    which the innocents fail more than `max_refusals` times: only the poisons are parked."""
    store = FlakyStore()
    poisons = [a_message("job-p1"), a_message("job-p2")]
    innocents = [a_message(f"job-{n}") for n in range(8)]
    everything = [innocents[0], poisons[0], *innocents[1:5], poisons[1], *innocents[5:]]
    publisher = ClosingChannelPublisher({p.message_id for p in poisons})
    relay, metrics = a_relay(store, publisher, concurrency=16, max_refusals=3, backoff=tiny_backoff)
    await commit(store, everything)
    stopping = asyncio.Event()
    task = start(relay, stopping)

    await eventually(lambda: store.outbox_depth == 0, "the outbox emptied", timeout=5.0)
    await stop(task, stopping)

    letters = await store.dead_letters(10)
    assert sorted(letter.properties["message_id"] for letter in letters) == sorted(
        p.message_id for p in poisons
    )
    assert dead_letters(metrics, "event") == 2
    assert sorted(publisher.ids()) == sorted(m.message_id for m in innocents)


# --- transient failures ------------------------------------------------------------------------


async def test_transient_failures_are_retried_and_the_backoff_resets() -> None:
    store = FlakyStore()
    failures_left = [3]

    def failure(message: Outgoing) -> BaseException | None:
        del message
        if failures_left[0] > 0:
            failures_left[0] -= 1
            return ConnectionError("broker away")
        return None

    publisher = FakePublisher(failure)
    relay, metrics = a_relay(store, publisher)
    first = [a_message("job-1", 0), a_message("job-1", 1)]
    stopping = asyncio.Event()
    with capture_logs() as logs:
        await commit(store, first)
        task = start(relay, stopping)
        await eventually(lambda: store.outbox_depth == 0, "published once the broker is back")
        retries = [entry["backoff_s"] for entry in logs if entry["event"] == "publish_retry"]
        assert retries == [0.1, 0.2, 0.4]  # growing while nothing can be published

        failures_left[0] = 1  # one more failure, after publishing worked
        second = a_message("job-2")
        await commit(store, [second])
        await eventually(lambda: store.outbox_depth == 0, "the second message published")
        retries = [entry["backoff_s"] for entry in logs if entry["event"] == "publish_retry"]
        assert retries == [0.1, 0.2, 0.4, 0.1]  # a fresh start, not 0.8
        await stop(task, stopping)

    assert await store.dead_letters(10) == []
    assert dead_letters(metrics, "event") is None or dead_letters(metrics, "event") == 0
    assert publisher.ids() == [m.message_id for m in [*first, second]]
    # The same message ids, published again: counted as redeliveries.
    assert metrics.registry.get_sample_value("print_outbox_redeliveries_total") == 2
    assert metrics.registry.get_sample_value("print_publish_failures_total") == 4


# --- bugs --------------------------------------------------------------------------------------


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


@pytest.mark.parametrize("times", [1, 100], ids=["once", "always"])
async def test_a_bug_in_the_marker_reaches_the_caller(times: int) -> None:
    store = FlakyStore()
    store.mark_failures.extend(RuntimeError("a bug in mark_sent") for _ in range(times))
    publisher = FakePublisher()
    relay, _ = a_relay(store, publisher)
    await commit(store, [a_message("job-1")])
    stopping = asyncio.Event()  # never set: the relay must not wait for it
    task = start(relay, stopping)

    done, _ = await asyncio.wait([task], timeout=WAIT)
    assert done, "the relay went on as if nothing happened"
    exc = task.exception()
    assert exc is not None, "run() returned normally after a bug"
    assert any(
        isinstance(leaf, RuntimeError) and "a bug in mark_sent" in str(leaf)
        for leaf in _leaves(exc)
    ), exc


# --- retry pauses, parking, shutdown, leadership -----------------------------------------------


async def test_an_idle_relay_takes_a_commit_and_a_stop_within_a_few_loop_iterations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It waits on one future, which a commit and a stop both resolve: counted in loop
    # iterations, not seconds (its idle timeout would take 20 ms). Every iteration between
    # a commit and its publish is latency added to every event.
    monkeypatch.setattr("service.application.relay._MARK_EVERY", 60.0)  # only a wake-up
    store, publisher = MemoryStore(), FakePublisher()
    relay, _ = a_relay(store, publisher)
    stopping = asyncio.Event()
    task = start(relay, stopping)
    await asyncio.sleep(0.05)  # idle: nothing committed
    message = a_message("job-1")
    await commit(store, [message])
    for _ in range(2):  # the relay's wake-up, then its publish's task (it took four)
        await asyncio.sleep(0)
    assert publisher.ids() == [message.message_id]
    await asyncio.sleep(0.05)  # idle again
    stopping.set()
    for _ in range(20):
        if task.done():
            break
        await asyncio.sleep(0)
    assert task.done()
    await task


def tiny_backoff() -> Backoff:
    """The retry rule at a thousandth of its scale: what each pause is, without the wait."""
    return Backoff(first=0.001, cap=0.004)


def pauses(logs: Sequence[Mapping[str, Any]], event: str) -> list[float]:
    return [
        entry["retry_in_s"] for entry in logs if entry["event"] == event and "retry_in_s" in entry
    ]


async def test_outbox_reads_back_off_up_to_the_cap_and_start_afresh_after_a_success() -> None:
    store = FlakyStore()
    store.unsent_failures.extend(StoreError(f"away ({n})") for n in range(4))
    publisher = FakePublisher()
    relay, _ = a_relay(store, publisher, backoff=tiny_backoff)
    stopping = asyncio.Event()
    with capture_logs() as logs:
        await commit(store, [a_message("job-1")])
        task = start(relay, stopping)
        await eventually(lambda: store.outbox_depth == 0, "published once reads work")
        assert pauses(logs, "outbox_read_failed") == [0.001, 0.002, 0.004, 0.004]

        store.unsent_failures.extend(StoreError("away again") for _ in range(2))
        await commit(store, [a_message("job-2")])
        await eventually(lambda: store.outbox_depth == 0, "published once reads work again")
        await stop(task, stopping)
    assert pauses(logs, "outbox_read_failed") == [0.001, 0.002, 0.004, 0.004, 0.001, 0.002]
    assert len(publisher.published) == 2


async def test_marking_backs_off_and_starts_afresh_after_a_success() -> None:
    store = FlakyStore()
    store.mark_failures.extend(StoreError(f"away ({n})") for n in range(3))
    publisher = FakePublisher()
    relay, _ = a_relay(store, publisher, backoff=tiny_backoff)
    stopping = asyncio.Event()
    with capture_logs() as logs:
        await commit(store, [a_message("job-1")])
        task = start(relay, stopping)
        await eventually(lambda: store.outbox_depth == 0, "marked sent once the store is back")
        store.mark_failures.append(StoreError("away again"))
        await commit(store, [a_message("job-2")])
        await eventually(lambda: store.outbox_depth == 0, "marked sent again")
        await stop(task, stopping)
    assert pauses(logs, "outbox_mark_failed") == [0.001, 0.002, 0.004, 0.001]
    assert len(publisher.published) == 2  # confirmed rows are not published again


@pytest.mark.parametrize(
    "failure",
    [StoreError("the store is away"), RuntimeError("a bug in park")],
    ids=["outage", "bug"],
)
async def test_a_poison_message_not_parked_is_tried_again_and_never_lost(
    failure: BaseException,
) -> None:
    store = FlakyStore()
    store.park_failures.append(failure)
    poison, after = a_message("job-a", 0), a_message("job-a", 1)
    publisher = FakePublisher(
        lambda m: Unpublishable("unencodable") if m.message_id == poison.message_id else None
    )
    relay, metrics = a_relay(store, publisher, backoff=tiny_backoff)
    await commit(store, [poison, after])
    stopping = asyncio.Event()
    with capture_logs() as logs:
        task = start(relay, stopping)
        await eventually(lambda: store.outbox_depth == 0, "the poison parked, the rest published")
        await stop(task, stopping)

    assert store.park_calls == 2  # failed, then kept
    (letter,) = await store.dead_letters(10)
    assert letter.properties["message_id"] == poison.message_id
    assert dead_letters(metrics, "event") == 1
    assert publisher.ids() == [after.message_id]  # after its predecessor was dealt with
    not_parked = [entry for entry in logs if entry["event"] == "event_not_parked"]
    assert len(not_parked) == (0 if isinstance(failure, StoreError) else 1)
    assert any(entry["event"] == "publish_retry" for entry in logs)


async def test_rows_not_marked_sent_at_shutdown_are_published_again_with_their_ids() -> None:
    store = FlakyStore()
    store.mark_failures.extend(StoreError("away") for _ in range(1000))
    publisher = FakePublisher()
    relay, _ = a_relay(store, publisher, backoff=tiny_backoff)
    messages = [a_message("job-1", n) for n in range(3)]
    await commit(store, messages)
    stopping = asyncio.Event()
    with capture_logs() as logs:
        task = start(relay, stopping, drain_timeout=0.05)
        await eventually(lambda: len(publisher.published) == 3, "all three published")
        await stop(task, stopping)  # returns normally although the rows are not marked
    assert any(entry["event"] == "outbox_not_marked_sent" for entry in logs)
    assert store.outbox_depth == 3

    store.mark_failures.clear()  # the next start: the store is back
    again = FakePublisher()
    relay, _ = a_relay(store, again)
    stopping = asyncio.Event()
    task = start(relay, stopping)
    await eventually(lambda: store.outbox_depth == 0, "published and marked on the next start")
    await stop(task, stopping)
    assert again.ids() == [m.message_id for m in messages]  # the same ids, in order


async def test_draining_gives_up_after_the_drain_timeout() -> None:
    store = FlakyStore()
    publisher = FakePublisher(lambda _: ConnectionError("broker away for good"))
    relay, _ = a_relay(store, publisher, backoff=tiny_backoff)
    await commit(store, [a_message("job-1")])
    stopping = asyncio.Event()
    with capture_logs() as logs:
        task = start(relay, stopping, drain_timeout=0.05)
        await eventually(lambda: len(publisher.attempts) >= 2, "the publish failing")
        await stop(task, stopping)
    assert any(entry["event"] == "outbox_drain_timed_out" for entry in logs)
    assert store.outbox_depth == 1  # kept for the next start


async def test_a_follower_publishes_nothing_until_it_leads() -> None:
    store = FlakyStore()
    publisher = FakePublisher()
    leads = [False]
    asked = [0]

    def lanes() -> OutboxLanes:
        asked[0] += 1
        return OutboxLanes(held=frozenset(), unlaned=leads[0])

    relay, _ = a_relay(store, publisher, lanes=lanes)
    await commit(store, [a_message("job-1")])
    stopping = asyncio.Event()
    task = start(relay, stopping)
    await eventually(lambda: asked[0] >= 2, "the relay asking twice whether it leads")
    assert publisher.attempts == []
    assert store.unsent_calls == 0  # a follower does not even read the outbox

    leads[0] = True  # the relay's lane came to this replica (the row has no lane)
    await eventually(lambda: store.outbox_depth == 0, "published once leading")
    await stop(task, stopping)
    assert len(publisher.published) == 1
