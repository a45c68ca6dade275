"""Real outages of the service's peers, mid-burst: PostgreSQL restarted or stopped, RabbitMQ
restarted (`stop_app`/`start_app`). The service runs as a process and must stay up through
them, finish every job, lose nothing and announce no change twice (issue 10, "Store outages").

These tests restart the machine's PostgreSQL and RabbitMQ: they always start them again, and
wait until they answer, before they end; and each holds a machine-wide lock meanwhile (a second
run of them waits, instead of restarting the services under the first one's burst). Each prints
its figures, also when it fails (then with the store's view: jobs per status, the outbox's rows,
and the service's log file).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Brokers
from tests.faults.conftest import Report
from tests.faults.tools import (
    EventCount,
    Readiness,
    ServiceProcess,
    alive_and,
    count_events,
    count_events_durably,
    created_rows,
    one_outage_at_a_time,
    postgres_ctl,
    postgres_running,
    publish_burst,
    rabbitmq_ctl,
    readyz,
    sample_readiness,
    service_died,
    service_env,
    store_summary,
    wait_for,
    wait_for_all,
    wait_postgres_accepting,
)
from tests.integration.conftest import unique

# Each test may first wait (up to 150 s) for another run's outage test to end.
pytestmark = [pytest.mark.brokers, pytest.mark.timeout(480)]

STATUSES = ("created", "started", "finished")
OUTAGE = 15.0  # seconds PostgreSQL is away in test_postgresql_away_for_a_while


@pytest.fixture(autouse=True)
async def one_at_a_time(report: Report) -> AsyncIterator[None]:
    """These tests restart machine-wide services: runs of them wait for each other."""
    async with one_outage_at_a_time(timeout=150) as waited:
        if waited > 1:
            report("outage-lock", waited_s=round(waited, 1))
        yield


def redelivered(events: EventCount) -> int:
    """Deliveries beyond the first of one (job, status): at-least-once, same event id."""
    return sum(events.duplicated(status) for status in STATUSES)


def assert_alive(service: ServiceProcess) -> None:
    if (died := service_died(service)) is not None:
        raise AssertionError(died)


async def ensure_postgres_up(url: str) -> None:
    """Never leave PostgreSQL stopped: other tests (and people) need it."""
    if not postgres_running():
        await postgres_ctl("start")
    await wait_postgres_accepting(url)


def event_figures(events: EventCount, job_ids: list[str]) -> dict[str, object]:
    return {
        "created": events.jobs_with("created"),
        "finished": events.jobs_with("finished"),
        "lost": len(set(job_ids) - set(events.by_status["finished"])),
        "redelivered": redelivered(events),
        "true_duplicates": events.distinct_events_for_one_change(),
    }


def store_figures(database: str, queue_id: str) -> dict[str, object]:
    with contextlib.suppress(psycopg.Error, OSError):
        stored = created_rows(database, queue_id)
        return {
            "jobs": len(stored),
            "jobs_without_one_created_row": sum(1 for n in stored.values() if n != 1),
            **store_summary(database, queue_id),
        }
    return {"jobs": "unreadable"}


def assert_complete(figures: dict[str, object], job_ids: list[str]) -> None:
    assert figures["sent"] == len(job_ids)
    assert figures["finished"] == len(job_ids)
    assert figures["lost"] == 0
    assert figures["jobs"] == len(job_ids)
    assert figures["jobs_without_one_created_row"] == 0, "one `created` row per job in history"
    assert figures["true_duplicates"] == 0, "a change announced twice with two event ids"
    assert figures["exit_code"] == 0, "SIGTERM after the outage"


async def test_postgresql_restart_mid_burst(
    brokers: Brokers, tmp_path: Path, postgres_url, report: Report
):
    queue_id = unique("pg-restart")
    job_ids = [f"pr-{i}-{uuid.uuid4().hex[:8]}" for i in range(3_000)]
    env = service_env(
        mqtt_url=brokers.mqtt_url,
        amqp_url=brokers.amqp_url,
        database_url=postgres_url,
        client_id=unique("pg-restart"),
    )
    service = ServiceProcess(env=env, log=tmp_path / "service.log")
    figures: dict[str, object] = {"sent": 0}
    events = EventCount()
    burst: asyncio.Task[int] | None = None
    readiness: list[Readiness] = []
    restart_started = outage_end = float("inf")
    service.start()
    started = time.monotonic()
    try:
        async with (
            count_events(brokers.amqp_url, queue_id) as events,
            sample_readiness(int(env["HTTP_PORT"])) as readiness,
        ):
            burst = asyncio.create_task(publish_burst(brokers.mqtt_url, queue_id, job_ids))
            await wait_for(
                alive_and(service, lambda: events.jobs_with("created") >= 1000),
                timeout=60,
                what="1,000 created before the restart",
            )
            figures["created_before_restart"] = events.jobs_with("created")
            restart_started = time.monotonic()
            try:
                await postgres_ctl("restart")
            finally:
                await ensure_postgres_up(postgres_url)
            outage_end = time.monotonic()
            figures["restart_seconds"] = round(outage_end - restart_started, 1)
            figures["sent"] = await burst
            await wait_for_all(
                service,
                lambda: events.jobs_with("finished"),
                len(job_ids),
                # With PostgreSQL the dispatcher finishes ~35-40 jobs/s on an idle 2-core
                # machine (one fenced transaction per change), ~20/s on a busy one: 3,000
                # jobs took 65-145 s. A stall (30 s without progress) fails at once.
                timeout=240,
                what="all jobs finished after the restart",
            )
            figures["seconds"] = round(time.monotonic() - started, 1)
            await asyncio.sleep(1.0)  # anything extra would show now
            assert_alive(service)
        figures["exit_code"] = service.terminate()
    finally:
        if burst is not None and not burst.done():
            burst.cancel()
        service.kill()
        during = [s for s in readiness if restart_started <= s.at <= outage_end + 5]
        figures |= event_figures(events, job_ids)
        figures |= store_figures(postgres_url, queue_id)
        figures |= {
            "readyz_samples_in_outage": len(during),
            "readyz_said_store_false": any(s.checks.get("store") is False for s in during),
            "readyz_503": any(s.status == 503 for s in during),
            "log": service.log,
        }
        report("postgresql-restart", **figures)
    assert_complete(figures, job_ids)


async def watch_outage(
    service: ServiceProcess, port: int, *, until: float
) -> tuple[Readiness | None, int]:
    """Until `until`: the service stays alive; the first `/readyz` 503 with store false."""
    not_ready: Readiness | None = None
    samples = 0
    while time.monotonic() < until:
        assert_alive(service)
        answer = await readyz(port)
        samples += 1
        if not_ready is None and answer.status == 503 and answer.checks.get("store") is False:
            not_ready = answer
        await asyncio.sleep(0.2)
    assert_alive(service)
    return not_ready, samples


async def test_postgresql_away_for_a_while(
    brokers: Brokers, tmp_path: Path, postgres_url, report: Report
):
    queue_id = unique("pg-away")
    job_ids = [f"pa-{i}-{uuid.uuid4().hex[:8]}" for i in range(500)]
    # Half before the stop, half while PostgreSQL is away: the service certainly has
    # commands to store during the outage (the broker keeps them for it).
    before, during = job_ids[:250], job_ids[250:]
    env = service_env(
        mqtt_url=brokers.mqtt_url,
        amqp_url=brokers.amqp_url,
        database_url=postgres_url,
        client_id=unique("pg-away"),
    )
    port = int(env["HTTP_PORT"])
    service = ServiceProcess(env=env, log=tmp_path / "service.log")
    figures: dict[str, object] = {"sent": 0}
    events = EventCount()
    burst: asyncio.Task[int] | None = None
    not_ready: Readiness | None = None
    service.start()
    started = time.monotonic()
    try:
        async with count_events(brokers.amqp_url, queue_id) as events:
            figures["sent"] = await publish_burst(brokers.mqtt_url, queue_id, before)
            await wait_for(
                alive_and(service, lambda: events.jobs_with("created") >= 100),
                timeout=60,
                what="100 created before the stop",
            )
            try:
                await postgres_ctl("stop")
                stopped_at = time.monotonic()
                created_at_stop = events.jobs_with("created")
                figures["created_before_stop"] = created_at_stop
                burst = asyncio.create_task(publish_burst(brokers.mqtt_url, queue_id, during))
                not_ready, samples = await watch_outage(service, port, until=stopped_at + OUTAGE)
                figures["readyz_samples"] = samples
                figures["created_while_away"] = events.jobs_with("created") - created_at_stop
                figures["sent"] = len(before) + await burst
            finally:
                await ensure_postgres_up(postgres_url)
            figures["away_seconds"] = round(time.monotonic() - stopped_at, 1)
            await wait_for_all(
                service,
                lambda: events.jobs_with("finished"),
                len(job_ids),
                timeout=60,
                what="all jobs finished after PostgreSQL came back",
            )
            figures["seconds"] = round(time.monotonic() - started, 1)
            await asyncio.sleep(1.0)
            assert_alive(service)
            figures["ready_after"] = (await readyz(port)).status
        figures["exit_code"] = service.terminate()
    finally:
        if burst is not None and not burst.done():
            burst.cancel()
        service.kill()
        if not_ready is not None:
            figures["readyz_503_store_false_after_s"] = round(not_ready.at - stopped_at, 2)
        figures |= event_figures(events, job_ids)
        figures |= store_figures(postgres_url, queue_id)
        figures["log"] = service.log
        report("postgresql-away", **figures)
    assert not_ready is not None, "/readyz never said 503, store false, while PostgreSQL was away"
    assert figures["ready_after"] == 200
    assert_complete(figures, job_ids)


async def test_rabbitmq_restart_mid_burst(brokers: Brokers, tmp_path: Path, report: Report):
    queue_id = unique("rmq-restart")
    job_ids = [f"rr-{i}-{uuid.uuid4().hex[:8]}" for i in range(3_000)]
    database = f"sqlite:///{tmp_path}/jobs.db"
    env = service_env(
        mqtt_url=brokers.mqtt_url,
        amqp_url=brokers.amqp_url,
        database_url=database,
        client_id=unique("rmq-restart"),
    )
    service = ServiceProcess(env=env, log=tmp_path / "service.log")
    figures: dict[str, object] = {"sent": 0}
    events = EventCount()
    burst: asyncio.Task[int] | None = None
    service.start()
    started = time.monotonic()
    try:
        async with count_events_durably(brokers.amqp_url, queue_id) as counter:
            events = counter.counted
            burst = asyncio.create_task(publish_burst(brokers.mqtt_url, queue_id, job_ids))
            await wait_for(
                alive_and(service, lambda: events.jobs_with("created") >= 1000),
                timeout=60,
                what="1,000 created before the restart",
            )
            figures["created_before_restart"] = events.jobs_with("created")
            restart_started = time.monotonic()
            try:
                await rabbitmq_ctl("stop_app")
                await asyncio.sleep(3)
                assert_alive(service)
            finally:
                await rabbitmq_ctl("start_app")
                await rabbitmq_ctl("await_startup")
            figures["restart_seconds"] = round(time.monotonic() - restart_started, 1)
            figures["sent"] = await burst
            await wait_for_all(
                service,
                lambda: events.jobs_with("finished"),
                len(job_ids),
                timeout=120,
                what="all jobs finished after the restart",
            )
            figures["seconds"] = round(time.monotonic() - started, 1)
            await asyncio.sleep(1.0)
            assert_alive(service)
            figures["counter_reconnections"] = counter.connections - 1
            figures["counter_consumers"] = await counter.consumers()
        figures["exit_code"] = service.terminate()
    finally:
        if burst is not None and not burst.done():
            burst.cancel()
        service.kill()
        figures |= event_figures(events, job_ids)
        figures |= store_figures(database, queue_id)
        figures["log"] = service.log
        report("rabbitmq-restart", **figures)
    assert figures.get("counter_reconnections", 0) != 0, "the counter never reconnected"
    assert figures["counter_consumers"] == 1, "the counter's queue lost its consumer"
    assert_complete(figures, job_ids)
