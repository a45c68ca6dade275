"""Three service processes on one Mosquitto, one RabbitMQ and one PostgreSQL.

Commands are shared between the replicas (MQTT shared subscription); each queue (lane) is
printed by the one replica that holds its lease. The tests count, from `events/jobs`, that
every job reached one final state, once, and that no job was printed twice, through a
SIGKILL of a replica and through a rolling restart. Each prints its counts.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiomqtt
import psycopg
import pytest

from service.adapters.amqp import message_body
from service.config import BrokerUrl
from tests.conftest import Brokers
from tests.faults.conftest import Report
from tests.faults.tools import ServiceProcess, service_env, wait_for
from tests.integration.conftest import unique

pytestmark = pytest.mark.brokers

REPLICAS = 3
JOBS = 3_000
QUEUES = 30
KEEPALIVE = 5  # seconds; takeover must come within twice this
LEASE = 4  # seconds; the backstop when no last will comes
FINAL = ("finished", "canceled", "failed")


@dataclass
class Ledger:
    """Every event of this run's jobs, as a consumer of `events/jobs` sees them."""

    prefix: str
    event_ids: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))

    def add(self, event: dict[str, object]) -> None:
        if "jobId" not in event:
            return  # a printer's status: it goes by the same exchange, and is no job's
        job_id = str(event["jobId"])
        if job_id.startswith(self.prefix) and not event.get("snapshot"):
            self.event_ids[(job_id, str(event["status"]))].add(str(event["eventId"]))

    def jobs_with(self, *statuses: str) -> set[str]:
        return {job for (job, status) in self.event_ids if status in statuses}

    def changes(self, status: str) -> Counter[str]:
        """Per job, how many distinct changes to `status` were announced."""
        return Counter({job: len(ids) for (job, s), ids in self.event_ids.items() if s == status})

    def finals_per_job(self) -> Counter[str]:
        finals: Counter[str] = Counter()
        for (job, status), ids in self.event_ids.items():
            if status in FINAL:
                finals[job] += len(ids)
        return finals


@asynccontextmanager
async def ledger(amqp_url: str, prefix: str) -> AsyncIterator[Ledger]:
    counted = Ledger(prefix)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=2000)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind("print.events", "#")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            counted.add(json.loads(message_body(message)))
            await message.ack()

        tag = await queue.consume(on_message)
        try:
            yield counted
        finally:
            await queue.cancel(tag)


async def publish(mqtt_url: str, job_ids: list[str], *, per_second: float | None = None) -> int:
    """Creates spread over QUEUES queues, as fast as the broker takes them or at a rate."""
    url = BrokerUrl(mqtt_url, schemes=("mqtt", "mqtts"))
    sent = 0
    async with aiomqtt.Client(url.host, url.port, max_inflight_messages=500, timeout=60) as client:
        started = time.monotonic()
        for start in range(0, len(job_ids), 250):
            batch = job_ids[start : start + 250]
            await asyncio.gather(
                *(
                    client.publish(
                        f"commands/{job_id.split('.')[1]}",
                        json.dumps({"jobId": job_id, "userId": "replicas"}),
                        qos=1,
                    )
                    for job_id in batch
                )
            )
            sent += len(batch)
            if per_second:
                await asyncio.sleep(max(0.0, started + sent / per_second - time.monotonic()))
    return sent


def job_ids(prefix: str) -> list[str]:
    return [f"{prefix}-{n}.{prefix}q{n % QUEUES}.x" for n in range(JOBS)]


@pytest.fixture
def replicas(brokers: Brokers, postgres_url: str, tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    group = unique("grp")
    made = []
    for n in range(REPLICAS):
        env = service_env(
            mqtt_url=brokers.mqtt_url,
            amqp_url=brokers.amqp_url,
            database_url=postgres_url,
            client_id=f"{group}-replica-{n}",
            MQTT_SHARED_GROUP=group,
            MQTT_KEEPALIVE=str(KEEPALIVE),
            REPLICA_LEASE_SECONDS=str(LEASE),
            PRINT_DURATION="0.05",
            SHUTDOWN_TIMEOUT="10",
            LOG_LEVEL="info",
        )
        made.append(ServiceProcess(env=env, log=tmp_path / f"replica-{n}.log"))
    for replica in made:
        replica.start()
    yield made
    for replica in made:
        replica.kill()


def busy_lanes_of(database: str, instance: str) -> set[str]:
    """The lanes `instance` holds that have work: the relay, and queues with unfinished jobs."""
    query = (
        "SELECT l.lane FROM lanes l WHERE l.owner = %s AND (l.lane = '@relay' OR EXISTS ("
        "SELECT 1 FROM jobs j WHERE j.queue_id = l.lane AND j.status IN ('created', 'started')))"
    )
    with psycopg.connect(database) as conn:
        return {row[0] for row in conn.execute(query, (instance,)).fetchall()}


async def all_final(book: Ledger, database: str) -> None:
    try:
        # Generous: on a loaded 2-core machine the shared outbox drains at ~40 events/s.
        await wait_for(lambda: len(book.finals_per_job()) >= JOBS, timeout=150, what="all final")
    except AssertionError:
        with psycopg.connect(database) as conn:
            stuck = conn.execute(
                "SELECT j.job_id, j.status, j.queue_id, l.owner FROM jobs j "
                "LEFT JOIN lanes l ON l.lane = j.queue_id "
                "WHERE j.status IN ('created', 'started') LIMIT 20"
            ).fetchall()
            unsent = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
            relay = conn.execute("SELECT owner FROM lanes WHERE lane = '@relay'").fetchone()
        missing = sorted(set(book.jobs_with("created")) - set(book.finals_per_job()))[:20]
        raise AssertionError(
            f"{len(book.finals_per_job())} of {JOBS} final; not final: {missing}; unfinished "
            f"in the store: {stuck}; outbox rows unsent: {unsent}; relay held by: {relay}"
        ) from None


def check_exactly_once(book: Ledger, ids: list[str]) -> dict[str, int]:
    finals = book.finals_per_job()
    figures = {
        "jobs": len(ids),
        "created": len(book.jobs_with("created")),
        "finished": len(book.jobs_with("finished")),
        "final_states": len(finals),
        "final_twice": sum(1 for n in finals.values() if n > 1),
        "started_twice": sum(1 for n in book.changes("started").values() if n > 1),
        "lost": len(set(ids) - set(finals)),
    }
    assert figures["created"] == len(ids)
    assert figures["final_states"] == len(ids), "every job reached a final state"
    assert figures["final_twice"] == 0, "no job reached a final state twice"
    assert figures["started_twice"] == 0, "no job was printed twice"
    assert figures["lost"] == 0
    return figures


async def test_a_replica_killed_mid_run_is_taken_over_and_no_job_is_printed_twice(
    brokers: Brokers, postgres_url: str, replicas: list[ServiceProcess], report: Report
):
    prefix = f"r{uuid.uuid4().hex[:6]}"
    ids = job_ids(prefix)
    async with ledger(brokers.amqp_url, prefix) as book:
        burst = asyncio.create_task(publish(brokers.mqtt_url, ids))
        await wait_for(lambda: len(book.jobs_with("finished")) >= 800, timeout=120, what="800")
        victim = replicas[0]
        victim_id = victim.env["MQTT_CLIENT_ID"]
        victim.kill()
        killed_at = time.monotonic()
        held = busy_lanes_of(postgres_url, victim_id)
        await wait_for(
            lambda: not busy_lanes_of(postgres_url, victim_id),
            timeout=2 * KEEPALIVE,
            what=f"the others to take over {sorted(held)}",
        )
        takeover = time.monotonic() - killed_at
        sent = await burst
        # The pod's container restarts with its name: the commands its MQTT session held
        # while it was dead are delivered to it then.
        victim.start()
        await all_final(book, postgres_url)
        await asyncio.sleep(1.0)  # a second final state would show now
    figures = check_exactly_once(book, ids)
    report(
        "replicas sigkill",
        replicas=REPLICAS,
        sent=sent,
        busy_lanes_of_killed=len(held),
        takeover_s=round(takeover, 2),
        **figures,
    )
    assert sent == JOBS
    assert takeover <= 2 * KEEPALIVE


async def test_a_rolling_update_with_new_pods_loses_nothing(
    brokers: Brokers, postgres_url: str, replicas: list[ServiceProcess], report: Report
):
    prefix = f"s{uuid.uuid4().hex[:6]}"
    ids = job_ids(prefix)
    exit_codes = []
    async with ledger(brokers.amqp_url, prefix) as book:
        burst = asyncio.create_task(publish(brokers.mqtt_url, ids, per_second=300))
        for n, replica in enumerate(replicas):
            await asyncio.sleep(1.5)
            exit_codes.append(replica.terminate())  # SIGTERM: drain, give lanes back
            # A Deployment's new pod has a new name, so a new MQTT client id: the old
            # session is never resumed, and must not keep a share of the commands.
            replica.env["MQTT_CLIENT_ID"] = f"{replica.env['MQTT_CLIENT_ID']}-new{n}"
            replica.start()
        sent = await burst
        await all_final(book, postgres_url)
        await asyncio.sleep(1.0)
    figures = check_exactly_once(book, ids)
    report("replicas rolling restart", replicas=REPLICAS, sent=sent, exits=exit_codes, **figures)
    assert sent == JOBS
    assert exit_codes == [0] * REPLICAS


async def test_a_frozen_replica_loses_its_lanes_by_lease_and_prints_nothing_twice_on_waking(
    brokers: Brokers, postgres_url: str, replicas: list[ServiceProcess], report: Report
):
    """SIGSTOP: no socket closes, so no last will until the broker's keep-alive runs out;
    the lease is the backstop. Woken up, the replica finds its lease gone and lets go."""
    prefix = f"f{uuid.uuid4().hex[:6]}"
    ids = job_ids(prefix)
    victim = replicas[0]
    assert victim.process is not None
    victim_id = victim.env["MQTT_CLIENT_ID"]
    async with ledger(brokers.amqp_url, prefix) as book:
        burst = asyncio.create_task(publish(brokers.mqtt_url, ids))
        await wait_for(lambda: len(book.jobs_with("finished")) >= 800, timeout=120, what="800")
        victim.process.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        held = busy_lanes_of(postgres_url, victim_id)
        try:
            await wait_for(
                lambda: not busy_lanes_of(postgres_url, victim_id),
                timeout=2 * KEEPALIVE,
                what=f"the others to take over {sorted(held)}",
            )
            takeover = time.monotonic() - frozen_at
        finally:
            victim.process.send_signal(signal.SIGCONT)
        sent = await burst
        await all_final(book, postgres_url)
        await asyncio.sleep(2.0)
    figures = check_exactly_once(book, ids)
    report(
        "replicas frozen",
        replicas=REPLICAS,
        sent=sent,
        busy_lanes_of_frozen=len(held),
        takeover_s=round(takeover, 2),
        **figures,
    )
    assert sent == JOBS
    assert takeover <= 2 * KEEPALIVE
