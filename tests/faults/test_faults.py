"""Fault tests that count: bursts, a SIGKILL, a broker outage, a store that refuses writes.

Each prints its figures (sent, jobs, events, lost, duplicated) so the run shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from service.app import Service
from service.config import BrokerUrl
from tests.conftest import Brokers
from tests.faults.conftest import Report
from tests.faults.tools import (
    ServiceProcess,
    TcpProxy,
    count_events,
    publish_burst,
    service_env,
    wait_for,
)
from tests.integration.conftest import ServiceFactory, unique

pytestmark = pytest.mark.brokers


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """DATABASE_URL for each durable store."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.db"
    return str(request.getfixturevalue("postgres_url"))


def jobs_stored(database: str, queue_id: str) -> dict[str, int]:
    """job id -> number of `created` rows in its history, read from the store itself."""
    query = (
        "SELECT j.job_id, (SELECT COUNT(*) FROM job_history h "
        "WHERE h.job_id = j.job_id AND h.status = 'created') FROM jobs j WHERE j.queue_id = {}"
    )
    if database.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(database.removeprefix("sqlite:///"))) as conn:
            return dict(conn.execute(query.format("?"), (queue_id,)).fetchall())
    with psycopg.connect(database) as conn:
        return dict(conn.execute(query.format("%s").encode(), (queue_id,)).fetchall())


# Sized for CI's 20 minutes on a 2-core machine: PostgreSQL prints about 40 jobs/s here
# (one replica, three fenced transactions a job), SQLite about 140/s with the test's own
# publisher and consumer in the same process.
BURST = 4_000
KILL_BURST = 3_000


async def test_a_burst_of_creates_gives_as_many_jobs_and_created_events(
    start_service: ServiceFactory, brokers: Brokers, database: str, report: Report
):
    queue_id = unique("burst")
    job_ids = [f"b-{i}-{uuid.uuid4().hex[:8]}" for i in range(BURST)]
    async with (
        start_service(print_duration=0, store_synchronous="FULL", database_url=database) as service,
        count_events(brokers.amqp_url, queue_id) as events,
    ):
        started = time.monotonic()
        sent = await publish_burst(brokers.mqtt_url, queue_id, job_ids)
        await wait_for(
            lambda: events.jobs_with("finished") >= len(job_ids), timeout=240, what="all jobs"
        )
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.5)  # anything extra would show now
    stored = jobs_stored(database, queue_id)
    lost = len(set(job_ids) - set(events.by_status["created"]))
    report(
        f"burst {database.split(':', maxsplit=1)[0]}",
        sent=sent,
        jobs=len(stored),
        created_events=events.jobs_with("created"),
        finished_events=events.jobs_with("finished"),
        lost=lost,
        duplicated=events.duplicated("created"),
        seconds=round(elapsed, 1),
        jobs_per_s=round(len(job_ids) / elapsed),
        commits=int(service.metrics.commits._value.get()),
    )
    assert sent == len(job_ids)
    assert len(stored) == len(job_ids)
    assert set(stored.values()) == {1}
    assert events.jobs_with("created") == len(job_ids)
    assert lost == 0
    assert events.distinct_events_for_one_change() == 0
    assert events.duplicated("created") == 0


async def test_a_flood_waits_in_the_broker_not_in_the_service(
    start_service: ServiceFactory, brokers: Brokers, report: Report
):
    """The service holds at most MQTT_RECEIVE_MAXIMUM received commands, whatever the broker
    sends (Mosquitto 2.0.11 ignores Receive Maximum once acknowledgements flow)."""
    limit = 64
    queue_id = unique("window")
    job_ids = [f"w-{i}-{uuid.uuid4().hex[:8]}" for i in range(3_000)]
    async with (
        start_service(print_duration=0, mqtt_receive_maximum=limit, mqtt_batch_size=16) as service,
        count_events(brokers.amqp_url, queue_id) as events,
    ):
        held: list[float] = []

        async def sample() -> None:
            while True:
                held.append(_sample(service, "print_mqtt_received_backlog"))
                await asyncio.sleep(0.002)

        sampler = asyncio.create_task(sample())
        try:
            await publish_burst(brokers.mqtt_url, queue_id, job_ids)
            await wait_for(
                lambda: events.jobs_with("created") >= len(job_ids), timeout=120, what="all jobs"
            )
        finally:
            sampler.cancel()
        pauses = _sample(service, "print_mqtt_receive_pauses_total")
    report(
        "receive-window",
        sent=len(job_ids),
        created_events=events.jobs_with("created"),
        limit=limit,
        most_held=int(max(held)),
        pauses=int(pauses),
    )
    assert events.jobs_with("created") == len(job_ids)
    assert pauses > 0, "the flood never reached the window: the test proves nothing"
    # One read of the socket may take a few packets past the limit, never a flood.
    assert max(held) <= limit + 16


def _sample(service: Service, name: str) -> float:
    value = service.metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


async def test_sigkill_mid_burst_loses_nothing_and_creates_nothing_twice(
    brokers: Brokers, tmp_path: Path, database: str, report: Report
):
    queue_id = unique("kill")
    job_ids = [f"k-{i}-{uuid.uuid4().hex[:8]}" for i in range(KILL_BURST)]
    env = service_env(
        mqtt_url=brokers.mqtt_url,
        amqp_url=brokers.amqp_url,
        database_url=database,
        client_id=unique("kill"),
    )
    service = ServiceProcess(env=env, log=tmp_path / "service.log")
    service.start()
    try:
        async with count_events(brokers.amqp_url, queue_id) as events:
            burst = asyncio.create_task(publish_burst(brokers.mqtt_url, queue_id, job_ids))
            await wait_for(lambda: events.jobs_with("created") >= 1000, timeout=60, what="1000")
            service.kill()
            killed_at = events.jobs_with("created")
            sent = await burst  # the broker keeps taking commands while the service is dead
            service.start()
            await wait_for(
                lambda: events.jobs_with("finished") >= len(job_ids), timeout=240, what="all"
            )
            await asyncio.sleep(1.0)
            assert service.terminate() == 0
    finally:
        service.kill()
    stored = jobs_stored(database, queue_id)
    lost = len(set(job_ids) - set(stored))
    report(
        f"sigkill {database.split(':', maxsplit=1)[0]}",
        sent=sent,
        created_before_kill=killed_at,
        jobs=len(stored),
        created_events=events.jobs_with("created"),
        finished_events=events.jobs_with("finished"),
        lost=lost,
        redelivered_created=events.duplicated("created"),
        created_twice=events.distinct_events_for_one_change(),
    )
    assert sent == len(job_ids)
    assert lost == 0
    assert len(stored) == len(job_ids)
    assert set(stored.values()) == {1}, "every job has exactly one `created` in its history"
    assert events.jobs_with("created") == len(job_ids)
    # A redelivered event keeps its event id: the same change is never announced twice.
    assert events.distinct_events_for_one_change() == 0


async def test_rabbitmq_outage_the_outbox_grows_and_drains(
    start_service: ServiceFactory, brokers: Brokers, report: Report
):
    amqp = BrokerUrl(brokers.amqp_url, schemes=("amqp", "amqps"))
    proxy = TcpProxy(amqp.port)
    await proxy.start()
    via_proxy = f"amqp://{amqp.username}:{amqp.password}@127.0.0.1:{proxy.port}/"
    queue_id = unique("outage")
    first = [f"o1-{i}-{uuid.uuid4().hex[:6]}" for i in range(500)]
    during = [f"o2-{i}-{uuid.uuid4().hex[:6]}" for i in range(2000)]
    async with (
        start_service(amqp_url=via_proxy, print_duration=0) as service,
        count_events(brokers.amqp_url, queue_id) as events,
    ):
        await publish_burst(brokers.mqtt_url, queue_id, first)
        await wait_for(lambda: events.jobs_with("finished") == 500, timeout=60, what="first")
        await proxy.cut()
        await wait_for(lambda: not service.publisher.connected, timeout=10, what="amqp down")
        await publish_burst(brokers.mqtt_url, queue_id, during)
        # Commands are still taken while RabbitMQ is away; their events wait in the outbox.
        await wait_for(
            lambda: service.store.outbox_depth >= 3 * len(during),
            timeout=60,
            what="outbox to hold the events",
        )
        backlog = service.store.outbox_depth
        assert service.readiness()["amqp"] is False
        await asyncio.sleep(0.2)
        (oldest,) = list(service.metrics.outbox_oldest_age.collect())
        assert oldest.samples[0].value > 0.1
        assert service.metrics.publish_failures._value.get() > 0
        await proxy.start()
        await wait_for(
            lambda: events.jobs_with("finished") == len(first) + len(during),
            timeout=120,
            what="the backlog to drain",
        )
        await wait_for(lambda: service.store.outbox_depth == 0, timeout=30, what="empty outbox")
        redeliveries = int(service.metrics.redeliveries._value.get())
        assert redeliveries > 0, "what failed during the outage was published again"
    lost = len(set(first + during) - set(events.by_status["finished"]))
    report(
        "rabbitmq-outage",
        sent=len(first) + len(during),
        backlog_during_outage=backlog,
        created_events=events.jobs_with("created"),
        finished_events=events.jobs_with("finished"),
        lost=lost,
        redelivered=events.duplicated("created") + events.duplicated("finished"),
        republished_after_failure=redeliveries,
        true_duplicates=events.distinct_events_for_one_change(),
    )
    assert lost == 0
    assert events.distinct_events_for_one_change() == 0
    await proxy.cut()


async def test_store_refusing_writes_stops_acknowledging_then_recovers(
    start_service: ServiceFactory, brokers: Brokers, tmp_path: Path, report: Report
):
    queue_id = unique("locked")
    job_ids = [unique("locked-job") for _ in range(20)]
    async with (
        start_service(print_duration=0) as service,
        count_events(brokers.amqp_url, queue_id) as events,
    ):
        # Another process holding the write lock: the service's writes time out.
        blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            await publish_burst(brokers.mqtt_url, queue_id, job_ids)
            await wait_for(lambda: not service.store.healthy, timeout=30, what="store unhealthy")
            assert service.readiness()["store"] is False
            assert events.jobs_with("created") == 0
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await wait_for(
            lambda: events.jobs_with("created") == len(job_ids), timeout=90, what="recovery"
        )
        assert service.store.healthy
    report(
        "store-locked",
        sent=len(job_ids),
        created_events=events.jobs_with("created"),
        lost=len(set(job_ids) - set(events.by_status["created"])),
        true_duplicates=events.distinct_events_for_one_change(),
    )
    assert events.distinct_events_for_one_change() == 0
