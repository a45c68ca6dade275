"""`make bench`: the service against the raw-bridge ceiling, on real brokers, in one run.

    python -m bench.run [--jobs N] [--out FILE]

For each mode (flood: as fast as the broker takes commands; rate: half the raw bridge's
flood rate), the raw bridge and the service (embedded defaults: durable SQLite store,
an instant simulated printer) take the same load in turn. One consumer on `events/jobs`'s
exchange times every event against its command's send time. Absolute figures drift between
machines; the ratios measured in the same run do not.

Then what operators run beside the defaults, flooded with `--pg-jobs` commands: the
PostgreSQL store with one replica (`service-pg`), and two replicas sharing the commands
through an MQTT shared subscription and one PostgreSQL schema (`service-pg-x2`). Each row
says jobs/s, its ratio to the raw bridge's flood, p99 command→`created`, and what was lost;
`--no-postgres` leaves them out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiomqtt
import psycopg

from service.adapters.amqp import EVENTS_EXCHANGE, EVENTS_QUEUE, QUEUE_ARGUMENTS, message_body
from service.config import BrokerUrl
from tests.faults.tools import service_env
from tests.integration.brokers import private_mosquitto, reachable

ROOT = Path(__file__).resolve().parents[1]
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# The systems that use PostgreSQL, and how many replicas each runs.
POSTGRES_REPLICAS: dict[str, int] = {"service-pg": 1, "service-pg-x2": 2}
# Extra settings for the service under test (`--set KEY=VALUE`), to compare configurations.
SERVICE_ENV: dict[str, str] = {}


@dataclass
class Result:
    system: str  # "raw" or "service"
    mode: str  # "flood" or "rate"
    jobs: int
    offered_per_s: float | None
    commands_per_s: float
    created_per_s: float
    finished_per_s: float
    created_ms: dict[str, float]
    finished_ms: dict[str, float]
    lost: int
    peak_rss_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {
        "p50": at(0.50),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": round(ordered[-1] * 1000, 1),
        "mean": round(statistics.fmean(ordered) * 1000, 1),
    }


class Timings:
    """Send time per job, and the arrival of its `created` and `finished` events."""

    def __init__(self, job_ids: list[str]) -> None:
        self.sent: dict[str, float] = {}
        self.created: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.expected = set(job_ids)
        self.done = asyncio.Event()

    def on_event(self, job_id: str, status: str) -> None:
        if job_id not in self.expected:
            return
        now = time.monotonic()
        target = self.created if status == "created" else self.finished
        if status in ("created", "finished"):
            target.setdefault(job_id, now)
        if len(self.finished) == len(self.expected):
            self.done.set()


async def consume(timings: Timings) -> aio_pika.abc.AbstractConnection:
    """Consume `events/jobs` itself, emptied first: each system starts from the same broker
    state, not behind the events the previous run left there."""
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=2000)
    exchange = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(EVENTS_QUEUE, durable=True, arguments=QUEUE_ARGUMENTS)
    await queue.bind(exchange, "#")
    await queue.purge()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = json.loads(message_body(message))
        if "jobId" in event:  # not a printer's status, which goes the same way
            timings.on_event(event["jobId"], event["status"])

    await queue.consume(on_message, no_ack=True)
    return connection


async def drive(mqtt_url: str, job_ids: list[str], timings: Timings, rate: float | None) -> float:
    """Publish a create per job (QoS 1); flood, or at `rate` per second. Returns seconds."""
    url = BrokerUrl(mqtt_url, schemes=("mqtt", "mqtts"))
    in_flight = asyncio.Semaphore(500)
    async with aiomqtt.Client(url.host, url.port, max_inflight_messages=500, timeout=60) as client:
        # A flood keeps up to 500 publishes pending by design: not worth a warning each.
        client.pending_calls_threshold = 500

        async def one(job_id: str) -> None:
            async with in_flight:
                timings.sent[job_id] = time.monotonic()
                body = json.dumps({"jobId": job_id, "userId": "bench"})
                await client.publish("commands/bench", body, qos=1)

        started = time.monotonic()
        tasks = []
        for i, job_id in enumerate(job_ids):
            if rate is not None:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(job_id)))
            if rate is None and len(tasks) % 500 == 0:
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return time.monotonic() - started


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


@contextlib.contextmanager
def postgres_schema() -> Any:  # noqa: ANN401 - a contextmanager generator
    """A DATABASE_URL on a fresh schema of the PostgreSQL server, dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE SCHEMA {schema}".encode())
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())


def start_system(
    system: str, mqtt_url: str, workdir: Path, *, database_url: str | None = None
) -> list[subprocess.Popen[bytes]]:
    """The processes of `system`: the raw bridge, or the service's replicas."""
    replicas = POSTGRES_REPLICAS.get(system, 1)
    extra = {"MQTT_SHARED_GROUP": "bench"} if replicas > 1 else {}
    database_url = database_url or f"sqlite:///{workdir}/jobs-{uuid.uuid4().hex[:6]}.db"
    return [
        start_process(system, mqtt_url, workdir, database_url=database_url, **extra)
        for _ in range(replicas)
    ]


def start_process(
    system: str, mqtt_url: str, workdir: Path, *, database_url: str, **extra: str
) -> subprocess.Popen[bytes]:
    log = (workdir / f"{system}.log").open("ab")
    if system == "raw":
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.raw_bridge", mqtt_url, AMQP_URL],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert process.stdout is not None
        process.stdout.readline()  # "ready"
        return process
    # Auth disabled (by service_env) unless --set gives keys: the bench measures the
    # pipeline, and a per-key rate limit would cap it.
    env = service_env(
        mqtt_url=mqtt_url,
        amqp_url=AMQP_URL,
        database_url=database_url,
        client_id=f"bench-{uuid.uuid4().hex[:6]}",
        MQTT_SESSION_EXPIRY="60",
        **extra,
        **SERVICE_ENV,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "run"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while not reachable("127.0.0.1", int(env["HTTP_PORT"]), 0.2):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"service did not start; see {workdir}/service.log")
        time.sleep(0.1)
    time.sleep(0.5)  # connected to both brokers
    return process


async def measure(
    system: str, mode: str, jobs: int, *, rate: float | None, mqtt_url: str, workdir: Path
) -> Result:
    if system in POSTGRES_REPLICAS:
        with postgres_schema() as database_url:
            return await _measure(
                system,
                mode,
                jobs,
                rate=rate,
                mqtt_url=mqtt_url,
                workdir=workdir,
                database_url=database_url,
            )
    return await _measure(system, mode, jobs, rate=rate, mqtt_url=mqtt_url, workdir=workdir)


async def _measure(
    system: str,
    mode: str,
    jobs: int,
    *,
    rate: float | None,
    mqtt_url: str,
    workdir: Path,
    database_url: str | None = None,
) -> Result:
    job_ids = [f"{system}-{mode}-{i}-{uuid.uuid4().hex[:8]}" for i in range(jobs)]
    timings = Timings(job_ids)
    connection = await consume(timings)
    processes = start_system(system, mqtt_url, workdir, database_url=database_url)
    try:
        started = time.monotonic()
        publish_s = await drive(mqtt_url, job_ids, timings, rate)
        # What has not finished by then counts as lost.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(timings.done.wait(), max(120.0, jobs / 50))
        last_created = max(timings.created.values(), default=started)
        last_finished = max(timings.finished.values(), default=started)
        rss = max(peak_rss_mb(process.pid) for process in processes)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(60)
        await connection.close()
    created_lat = [timings.created[j] - timings.sent[j] for j in timings.created]
    finished_lat = [timings.finished[j] - timings.sent[j] for j in timings.finished]
    return Result(
        system=system,
        mode=mode,
        jobs=jobs,
        offered_per_s=rate,
        commands_per_s=round(jobs / publish_s, 1),
        created_per_s=round(len(timings.created) / max(1e-9, last_created - started), 1),
        finished_per_s=round(len(timings.finished) / max(1e-9, last_finished - started), 1),
        created_ms=percentiles(created_lat),
        finished_ms=percentiles(finished_lat),
        lost=jobs - len(timings.finished),
        peak_rss_mb=rss,
    )


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def machine() -> dict[str, Any]:
    def version(command: list[str]) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            return "unknown"
        return (out.stdout + out.stderr).strip().splitlines()[0] if out.stdout + out.stderr else ""

    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "mosquitto": version(["mosquitto", "-h"]),
        "rabbitmq": version(["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"]),
    }


def table(results: list[Result]) -> str:
    head = (
        f"{'system':13} {'mode':6} {'jobs':>6} {'offered/s':>9} {'cmds/s':>8} {'created/s':>9} "
        f"{'finished/s':>10} {'created p50/p95/p99/max ms':>28} {'finished p99 ms':>15} "
        f"{'rss MB':>7} {'lost':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        c = r.created_ms
        lines.append(
            f"{r.system:13} {r.mode:6} {r.jobs:>6} {r.offered_per_s or '-':>9} "
            f"{r.commands_per_s:>8} {r.created_per_s:>9} {r.finished_per_s:>10} "
            f"{c.get('p50')}/{c.get('p95')}/{c.get('p99')}/{c.get('max'):>} ".rjust(29)
            + f"{r.finished_ms.get('p99')!s:>15} {r.peak_rss_mb or '-'!s:>7} {r.lost:>5}"
        )
    return "\n".join(lines)


async def main(
    jobs: int, rate_jobs: int, out: Path, rate: float | None = None, pg_jobs: int = 0
) -> int:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, private_mosquitto() as broker:
        workdir = Path(tmp)
        for system in ("raw", "service"):
            results.append(
                await measure(
                    system, "flood", jobs, rate=None, mqtt_url=broker.url, workdir=workdir
                )
            )
            print(table(results[-1:]).splitlines()[-1], flush=True)
        raw_flood = results[0]
        half = rate or round(raw_flood.finished_per_s / 2, 1)
        for system in ("raw", "service"):
            results.append(
                await measure(
                    system, "rate", rate_jobs, rate=half, mqtt_url=broker.url, workdir=workdir
                )
            )
            print(table(results[-1:]).splitlines()[-1], flush=True)
        for system in POSTGRES_REPLICAS if pg_jobs else ():
            results.append(
                await measure(
                    system, "flood", pg_jobs, rate=None, mqtt_url=broker.url, workdir=workdir
                )
            )
            print(table(results[-1:]).splitlines()[-1], flush=True)
    by = {(r.system, r.mode): r for r in results}
    raw_rate = by["raw", "flood"].finished_per_s
    # One row per system as operators run it: its flood against the raw bridge's.
    rows: list[dict[str, Any]] = [
        {
            "system": r.system,
            "jobs": r.jobs,
            "jobs_per_s": r.finished_per_s,
            "ratio": round(r.finished_per_s / raw_rate, 3),
            "p99_created_ms": r.created_ms.get("p99"),
            "lost": r.lost,
        }
        for r in results
        if r.mode == "flood" and r.system != "raw"
    ]
    summary = {
        "jobs_per_s": by["service", "flood"].finished_per_s,
        "raw_jobs_per_s": by["raw", "flood"].finished_per_s,
        "ratio": round(
            by["service", "flood"].finished_per_s / by["raw", "flood"].finished_per_s, 3
        ),
        "half_rate_per_s": half,
        "p99_created_ms_at_half_rate": by["service", "rate"].created_ms.get("p99"),
        "raw_p99_created_ms_at_half_rate": by["raw", "rate"].created_ms.get("p99"),
        "peak_rss_mb": max(r.peak_rss_mb or 0 for r in results if r.system != "raw"),
        "lost": sum(r.lost for r in results if r.system != "raw"),
        "rows": rows,
        "raw_lost": sum(r.lost for r in results if r.system == "raw"),
        "machine": machine(),
        "runs": [asdict(r) for r in results],
    }
    await asyncio.to_thread(_write, out, json.dumps(summary, indent=2))
    print()
    print(table(results))
    print()
    for key in (
        "jobs_per_s",
        "raw_jobs_per_s",
        "ratio",
        "p99_created_ms_at_half_rate",
        "raw_p99_created_ms_at_half_rate",
        "peak_rss_mb",
        "lost",
    ):
        print(f"{key:34} {summary[key]}")
    for row in rows:
        print(
            f"{row['system']:13} {row['jobs_per_s']:>8} jobs/s  ratio {row['ratio']:<6} "
            f"p99 created {row['p99_created_ms']} ms  lost {row['lost']}"
        )
    print(f"\nlost in every mode: {'none' if summary['lost'] == 0 else summary['lost']}")
    print(f"results: {out}")
    return 0 if summary["lost"] == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000, help="commands per flood run")
    parser.add_argument("--rate-jobs", type=int, default=10_000, help="commands per rate run")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench.json")
    parser.add_argument(
        "--pg-jobs", type=int, default=3_000, help="commands per PostgreSQL flood run"
    )
    parser.add_argument("--no-postgres", action="store_true", help="only the embedded defaults")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="commands/s of the rate runs (default: half the raw bridge's flood rate)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the service (repeatable)",
    )
    args = parser.parse_args()
    SERVICE_ENV.update(item.split("=", 1) for item in args.set)
    pg_jobs = 0 if args.no_postgres else args.pg_jobs
    sys.exit(asyncio.run(main(args.jobs, args.rate_jobs, args.out, args.rate, pg_jobs)))
