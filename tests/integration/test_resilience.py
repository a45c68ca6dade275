"""Brokers come and go: the service reconnects by itself, and its persistent session keeps
the commands published while it was away."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.integration.brokers import free_port, private_mosquitto, reachable
from tests.integration.conftest import Listener, Publisher, ServiceFactory, eventually, unique
from tests.waits import wait_until

pytestmark = pytest.mark.brokers


@pytest.fixture(autouse=True)
def _needs_mosquitto_binary() -> None:
    # Not a skip: a missing component fails the run and says what to install.
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("restarting a broker needs Mosquitto installed: apt-get install mosquitto")


async def test_service_reconnects_after_a_mosquitto_restart(
    start_service: ServiceFactory, amqp, queue_id: str
):
    with private_mosquitto() as broker:
        async with start_service(mqtt_url=broker.url) as service:
            with capture_logs() as logs:
                broker.stop()
                assert await eventually(lambda: not service.ingress.connected)
                assert service.readiness()["mqtt"] is False
                await wait_until(
                    lambda: sum(e["event"] == "mqtt_connecting" for e in logs) >= 2,
                    what="two attempts to connect to the stopped broker",
                    timeout=30,
                )
                broker.start()
                assert await eventually(lambda: service.ingress.connected, timeout=40)
            attempts = [e["attempt"] for e in logs if e["event"] == "mqtt_connecting"]
            assert len(attempts) >= 2, "each attempt is logged"
            assert attempts == sorted(attempts)

            queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
            listener = Listener(amqp, queue)
            job_id = unique("job")
            await listener.bind_job(job_id)
            await Publisher(broker.url).create(queue_id, job_id)
            assert (await listener.next()).body["status"] == "created"


async def test_commands_queued_for_the_service_survive_a_mosquitto_restart(
    start_service: ServiceFactory, amqp, queue_id: str
):
    client_id = unique("svc-restart")
    with private_mosquitto() as broker:
        async with start_service(mqtt_url=broker.url, mqtt_client_id=client_id):
            pass  # the persistent session exists on the broker; the service is gone
        queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
        listener = Listener(amqp, queue)
        job_ids = [unique("queued") for _ in range(20)]
        for job_id in job_ids:
            await listener.bind_job(job_id)
            await Publisher(broker.url).create(queue_id, job_id)
        broker.stop()  # Mosquitto writes its persistence file on a clean stop
        broker.start()
        async with start_service(mqtt_url=broker.url, mqtt_client_id=client_id):
            created: set[str] = set()
            while created != set(job_ids):
                received = await listener.next()
                if received.body["status"] == "created":
                    created.add(received.body["jobId"])
        print(f"\n[mosquitto-restart] queued={len(job_ids)} created={len(created)} lost=0")


async def test_commands_published_while_the_service_is_away_are_delivered(
    start_service: ServiceFactory, amqp, publisher: Publisher, queue_id: str
):
    client_id = unique("svc-persistent")
    async with start_service(mqtt_client_id=client_id, mqtt_session_expiry=300):
        pass  # the session (and its subscription) now exists on the broker
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    listener = Listener(amqp, queue)
    job_ids = [unique("away") for _ in range(5)]
    for job_id in job_ids:
        await listener.bind_job(job_id)
        await publisher.create(queue_id, job_id)

    async with start_service(mqtt_client_id=client_id, mqtt_session_expiry=300):
        created: list[str] = []
        while len(created) < len(job_ids):
            received = await listener.next()
            if received.body["status"] == "created":
                created.append(received.body["jobId"])
        assert sorted(created) == sorted(job_ids), "each queued command became one job"


async def test_more_commands_queued_than_the_service_reads_ahead_are_all_taken(
    start_service: ServiceFactory, amqp, publisher: Publisher, queue_id: str
):
    """The broker sends a session's queued commands before the answer to SUBSCRIBE: the
    receive window must not stop reading before the service consumes (it did once, and the
    service waited for that answer forever)."""
    client_id = unique("svc-window")
    settings = {"mqtt_client_id": client_id, "mqtt_session_expiry": 300}
    async with start_service(**settings, mqtt_receive_maximum=8):
        pass
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    listener = Listener(amqp, queue)
    job_ids = [unique("window") for _ in range(100)]
    for job_id in job_ids:
        await listener.bind_job(job_id)
        await publisher.create(queue_id, job_id)

    async with start_service(**settings, mqtt_receive_maximum=8):
        created: set[str] = set()
        async with asyncio.timeout(60):
            while len(created) < len(job_ids):
                received = await listener.next()
                if received.body["status"] == "created":
                    created.add(received.body["jobId"])
        assert created == set(job_ids)


def _make_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    for name, extra in (("server", ["-addext", "subjectAltName=IP:127.0.0.1"]), ("client", [])):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            *extra,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-copy_extensions",
            "copy",
            "-out",
            f"{name}.pem",
        )
    for path in directory.iterdir():
        path.chmod(0o644)  # Mosquitto reads them as its own user; test keys only
    return {
        name: directory / name
        for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    }


@pytest.fixture
def certificates() -> Iterator[dict[str, Path]]:
    if shutil.which("openssl") is None:
        pytest.fail("the TLS test needs openssl: apt-get install openssl")
    # Not pytest's tmp_path: its parents are private to us, and Mosquitto runs as its own user.
    with tempfile.TemporaryDirectory(prefix="certs-") as tmp:
        Path(tmp).chmod(0o755)
        yield _make_certificates(Path(tmp))


async def test_mqtts_with_a_client_certificate(
    start_service: ServiceFactory, amqp, queue_id: str, certificates: dict[str, Path]
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
        async with start_service(
            mqtt_url=f"mqtts://127.0.0.1:{tls_port}",
            mqtt_ca_file=certs["ca.pem"],
            mqtt_cert_file=certs["client.pem"],
            mqtt_key_file=certs["client.key"],
        ):
            queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
            listener = Listener(amqp, queue)
            job_id = unique("tls")
            await listener.bind_job(job_id)
            await Publisher(broker.url).create(queue_id, job_id)  # plain listener, same broker
            assert (await listener.next()).body["status"] == "created"


async def test_replicas_in_a_shared_group_each_take_a_share_of_the_commands(
    start_service: ServiceFactory, amqp, publisher: Publisher, queue_id: str, tmp_path: Path
):
    group = unique("group")
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    listener = Listener(amqp, queue)
    job_ids = [unique("shared") for _ in range(40)]
    for job_id in job_ids:
        await listener.bind_job(job_id)
    async with (
        start_service(
            mqtt_shared_group=group, database_url=f"sqlite:///{tmp_path}/a.db", print_duration=0
        ) as a,
        start_service(
            mqtt_shared_group=group, database_url=f"sqlite:///{tmp_path}/b.db", print_duration=0
        ) as b,
    ):
        for job_id in job_ids:
            await publisher.create(queue_id, job_id)
        # Until every job has finished; then each command was accepted once, by one replica
        # (one taken twice would count twice, and its second `created` come with the rest).
        created: list[str] = []
        finished: set[str] = set()
        async with asyncio.timeout(60):
            while len(finished) < len(job_ids):
                received = await listener.next()
                if received.body["status"] == "created":
                    created.append(received.body["jobId"])
                elif received.body["status"] == "finished":
                    finished.add(received.body["jobId"])
        taken = [
            s.metrics.commands.labels("createPrintJob", "accepted")._value.get() for s in (a, b)
        ]
    assert sorted(created) == sorted(job_ids), "each command became exactly one job"
    assert sum(taken) == len(job_ids)
    assert min(taken) > 0, f"both replicas took commands: {taken}"
