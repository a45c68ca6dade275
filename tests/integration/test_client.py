"""`service.client.PrintClient` against the real brokers and a running service."""

from __future__ import annotations

import asyncio
import gc
import warnings
from pathlib import Path

import pytest

from service.app import Service
from service.client import ConfigurationError, ConnectionFailed, PrintClient, Rejected, Timeout
from service.models import (
    CreatePrintJob,
    JobStatus,
    ListPrintJobs,
    Priority,
    RejectionReason,
)
from tests.conftest import Brokers
from tests.integration.brokers import free_port, private_mosquitto, reachable
from tests.integration.conftest import ServiceFactory, eventually, unique
from tests.integration.test_resilience import certificates  # noqa: F401 - a fixture

pytestmark = pytest.mark.brokers


def a_client(brokers: Brokers, **options) -> PrintClient:
    options.setdefault("mqtt_url", brokers.mqtt_url)
    options.setdefault("amqp_url", brokers.amqp_url)
    options.setdefault("queue", unique("q"))
    options.setdefault("timeout", 10.0)
    return PrintClient(**options)


async def test_submit_then_watch_to_the_end(service: Service, brokers: Brokers):
    async with a_client(brokers) as client:
        created = await client.submit(CreatePrintJob(jobId=unique("job"), title="report"))
        assert created.status is JobStatus.created
        assert created.queueId == client.queue
        seen = [event async for event in client.watch(created.jobId)]
    assert seen[-1].status is JobStatus.finished
    assert any(e.snapshot for e in seen), "watch starts from the job's current status"
    assert [e.sequence for e in seen if not e.snapshot] == sorted(
        e.sequence for e in seen if not e.snapshot
    )


async def test_configured_from_the_services_environment(
    service: Service, brokers: Brokers, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MQTT_URL", brokers.mqtt_url)
    monkeypatch.setenv("AMQP_URL", brokers.amqp_url)
    async with PrintClient.from_env(queue=unique("q")) as client:  # README's example
        job = await client.submit(title="report", copies=2)
        statuses = [event.status async for event in client.watch(job.jobId)]
    assert statuses[-1] is JobStatus.finished
    monkeypatch.setenv("MQTT_CA_FILE", "/nonexistent/ca.pem")
    with pytest.raises(ConfigurationError, match="MQTT_CA_FILE"):
        PrintClient.from_env()


@pytest.mark.parametrize("mqtt_version", ["5", "3.1.1"])
async def test_fields_gzip_and_either_mqtt_version(
    service: Service, brokers: Brokers, mqtt_version
):
    async with a_client(brokers, mqtt_version=mqtt_version, gzip=True) as client:
        created = await client.submit(priority=Priority.high, copies=2, userId="alice")
        (job,) = (await client.list_jobs()).jobs
        assert (job.jobId, job.priority, job.userId) == (created.jobId, Priority.high, "alice")
        status = await client.status(created.jobId)
        assert status.snapshot
        assert status.jobId == created.jobId


async def test_rejections_are_raised_with_their_reason(service: Service, brokers: Brokers):
    async with a_client(brokers) as client:
        with pytest.raises(Rejected) as unknown:
            await client.status("no-such-job")
        assert unknown.value.reason is RejectionReason.unknown_job
        assert unknown.value.job_id == "no-such-job"

        job = await client.submit()
        async with asyncio.timeout(10):
            async for _ in client.watch(job.jobId):
                pass
        with pytest.raises(Rejected) as final:
            await client.cancel(job.jobId)
        assert final.value.reason is RejectionReason.job_final
        with pytest.raises(Rejected, match="unknown_job"):
            async for _ in client.watch("no-such-job"):
                pass


async def test_update_move_cancel_and_counts(start_service: ServiceFactory, brokers: Brokers):
    # One simulated printer per queue, busy long enough that a second job waits.
    async with start_service(print_duration=30), a_client(brokers) as client:
        busy = await client.submit()
        waiting = await client.submit(priority=Priority.low)
        updated = await client.update(waiting.jobId, priority=Priority.high)
        assert updated.updated is not None
        assert [f.value for f in updated.updated] == ["priority"]
        assert updated.priority is Priority.high

        counts = await client.counts()
        assert counts.queueId == client.queue
        assert counts.counts.created + counts.counts.started == 2

        elsewhere = unique("q")
        moved = await client.move(waiting.jobId, elsewhere)
        assert (moved.movedFrom, moved.queueId) == (client.queue, elsewhere)

        canceled = await client.cancel(busy.jobId, force=True)
        assert canceled.status is JobStatus.canceled
        waiting_now = await client.status(waiting.jobId, queue=elsewhere)
        assert waiting_now.queueId == elsewhere


async def test_job_lists_page_by_page(service: Service, brokers: Brokers):
    async with a_client(brokers) as client:
        made = {(await client.submit()).jobId for _ in range(3)}
        first = await client.list_jobs(limit=2)
        assert len(first.jobs) == 2
        assert first.nextCursor is not None
        pages = [page async for page in client.job_pages(ListPrintJobs(limit=2))]
        assert [len(p.jobs) for p in pages] == [2, 1]
        assert {job.jobId async for job in client.all_jobs(limit=1)} == made
        with pytest.raises(Rejected) as bad:
            await client.list_jobs(cursor="bm8tc2VwYXJhdG9y")
        assert bad.value.reason is RejectionReason.schema_violation


async def test_printer_statuses_answer(service: Service, brokers: Brokers):
    async with a_client(brokers) as client:
        await client.submit()
        statuses = await client.printer_statuses()
    assert statuses.queueId == client.queue


async def test_the_api_key_is_sent(start_service: ServiceFactory, brokers: Brokers):
    key = unique("key") + "-0123456789abcdef"
    async with start_service(api_keys=frozenset({key})):
        async with a_client(brokers, api_key=key) as client:
            assert (await client.submit()).status is JobStatus.created
        async with a_client(brokers) as anonymous:
            with pytest.raises(Rejected) as refused:
                await anonymous.submit()
            assert refused.value.reason is RejectionReason.unauthorized


async def test_a_repeated_create_is_not_answered_and_times_out(service: Service, brokers: Brokers):
    # The service ignores a create it already applied (idempotent): there is no answer.
    async with a_client(brokers, timeout=1.5) as client:
        job = CreatePrintJob(jobId=unique("job"))
        await client.submit(job)
        with pytest.raises(Timeout, match="no answer about job"):
            await client.submit(job)


async def test_no_service_is_a_timeout(start_service: ServiceFactory, brokers: Brokers):
    async with start_service():
        pass  # it declared the exchanges, and has stopped: nobody answers now
    async with a_client(brokers, timeout=1.0) as client:
        with pytest.raises(Timeout, match="no answer to getPrintCounts"):
            await client.counts()
        with pytest.raises(TimeoutError):  # a Timeout is one
            await client.status("any-job")


async def test_an_unreachable_broker_is_a_connection_failure(brokers: Brokers):
    with pytest.raises(ConnectionFailed, match="AMQP broker"):
        async with PrintClient(amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/"):
            pass
    with pytest.raises(ConnectionFailed, match="MQTT broker"):
        async with PrintClient(
            mqtt_url=f"mqtt://127.0.0.1:{free_port()}", amqp_url=brokers.amqp_url
        ):
            pass


async def test_tls_to_a_broker_of_a_private_ca(
    start_service: ServiceFactory,
    brokers: Brokers,
    certificates: dict[str, Path],  # noqa: F811 - the fixture imported above
):
    certs = certificates
    tls_port = free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1",
        f"cafile {certs['ca.pem']}",
        f"certfile {certs['server.pem']}",
        f"keyfile {certs['server.key']}",
        "require_certificate true",
    )
    with private_mosquitto(extra=extra) as broker:
        assert await eventually(lambda: reachable("127.0.0.1", tls_port), timeout=5)
        tls_url = f"mqtts://127.0.0.1:{tls_port}"
        async with start_service(mqtt_url=broker.url):  # the service on the plain listener
            # The settings of the service's own MQTTS test: a private CA, a client certificate.
            async with a_client(
                brokers,
                mqtt_url=tls_url,
                mqtt_ca_file=certs["ca.pem"],
                mqtt_cert_file=certs["client.pem"],
                mqtt_key_file=certs["client.key"],
            ) as client:
                assert (await client.submit()).status is JobStatus.created
            # Without the private CA the broker is not trusted. paho-mqtt 2.1 leaves the
            # socket of a failed handshake open (Client._ssl_wrap_socket): collected here,
            # its ResourceWarning is the library's and not this test's failure.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                with pytest.raises(ConnectionFailed, match="certificate verify failed"):
                    async with a_client(
                        brokers,
                        mqtt_url=tls_url,
                        mqtt_cert_file=certs["client.pem"],
                        mqtt_key_file=certs["client.key"],
                    ):
                        pass
                gc.collect()
    with pytest.raises(ConfigurationError, match="mqtt TLS files"):
        a_client(brokers, mqtt_url=tls_url, mqtt_ca_file=certs["client.key"])


async def test_hold_and_release(service: Service, brokers: Brokers):
    async with a_client(brokers) as client:
        held = await client.submit(hold="indefinite", releasePin="8080")
        assert held.status is JobStatus.held
        with pytest.raises(Rejected) as refused:
            await client.release(held.jobId, pin="1111")
        assert refused.value.reason is RejectionReason.release_refused
        released = await client.release(held.jobId, pin="8080")
        assert (released.status, released.reason) == (JobStatus.created, "released")
        again = await client.release(held.jobId, pin="8080")  # not held now: its status
        assert again.snapshot
        statuses = [event.status async for event in client.watch(held.jobId)]
    assert statuses[-1] is JobStatus.finished
