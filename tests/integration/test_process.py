"""The service as an operator runs it: a process with signals, a last will, an HTTP port."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from service.app import Service
from service.config import BrokerUrl
from tests.conftest import Brokers
from tests.integration.brokers import free_port
from tests.integration.conftest import (
    Listener,
    Publisher,
    counter,
    eventually,
    statuses,
    unique,
)

pytestmark = pytest.mark.brokers


class ServiceProcess:
    """`python -m service run` with its logs in a file (a pipe could fill and block it)."""

    def __init__(self, brokers: Brokers, log_dir: Path, **env: str) -> None:
        self.client_id = unique("proc")
        self.port = free_port()
        self.env = {
            **os.environ,
            "MQTT_URL": brokers.mqtt_url,
            "AMQP_URL": brokers.amqp_url,
            "MQTT_CLIENT_ID": self.client_id,
            "MQTT_SESSION_EXPIRY": "30",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(self.port),
            "LOG_FORMAT": "json",
            "PRINT_DURATION": "0.2",
            "DATABASE_URL": f"sqlite:///{log_dir}/jobs.db",
            "AUTH_DISABLED": "true",
            **env,
        }
        self.log_path = log_dir / f"{self.client_id}.log"
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "run"],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"service exited: {self.log_path.read_text()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("service not ready in time")

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def service_process(brokers: Brokers, tmp_path: Path) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(brokers, tmp_path)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.kill()


async def test_last_will_is_published_when_the_process_is_killed(
    brokers: Brokers, service_process: ServiceProcess
):
    url = BrokerUrl(brokers.mqtt_url, schemes=("mqtt", "mqtts"))
    async with aiomqtt.Client(url.host, url.port, identifier=unique("will-watcher")) as watcher:
        await watcher.subscribe("/last-wills", qos=2)
        service_process.process.send_signal(signal.SIGKILL)
        async with asyncio.timeout(10):
            async for message in watcher.messages:
                will = json.loads(message.payload)
                if will.get("instance") == service_process.client_id:
                    break
    assert will["status"] == "dead"
    assert service_process.client_id in will["message"]
    assert message.qos == 2
    assert not message.retain


async def test_sigterm_drains_and_exits_zero(
    brokers: Brokers, service_process: ServiceProcess, amqp, publisher: Publisher
):
    queue_id, job_id = unique("q"), unique("job")
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind("print.events", f"events/{job_id}")
    await publisher.create(queue_id, job_id)
    listener = Listener(amqp, queue)
    assert statuses([await listener.next()]) == ["created"]

    service_process.process.send_signal(signal.SIGTERM)
    assert service_process.process.wait(20) == 0
    events = [e["event"] for e in service_process.logs()]
    assert events.index("shutdown_requested") < events.index("mqtt_stopped")
    assert events[-1] == "service_stopped"


async def test_http_endpoints(service_process: ServiceProcess):
    status, body = service_process.get("/healthz")
    assert (status, json.loads(body)) == (200, {"status": "alive"})
    status, body = service_process.get("/readyz")
    assert status == 200
    assert json.loads(body) == {
        "ready": True,
        "checks": {"mqtt": True, "amqp": True, "store": True, "outbox": True, "accepting": True},
    }
    status, body = service_process.get("/metrics")
    text = body.decode()
    assert status == 200
    for name in (
        "print_commands_received_total",
        "print_events_published_total",
        "print_rejections_total",
        "print_command_to_event_seconds",
        "print_jobs",
        "print_outbox_depth 0.0",
        "print_outbox_oldest_unsent_age_seconds 0.0",
        "print_store_commits_total",
        "print_outbox_redeliveries_total",
        'print_broker_connected{broker="mqtt"} 1.0',
        'print_broker_connected{broker="amqp"} 1.0',
    ):
        assert name in text
    assert service_process.get("/nope")[0] == 404


def test_readyz_is_503_while_a_broker_is_unreachable(brokers: Brokers, tmp_path: Path):
    proc = ServiceProcess(brokers, tmp_path, MQTT_URL=f"mqtt://127.0.0.1:{free_port()}")
    try:
        deadline = time.monotonic() + 10
        status, body = 0, b""
        while time.monotonic() < deadline:
            try:
                status, body = proc.get("/readyz")
                break
            except OSError:
                time.sleep(0.05)
        assert status == 503
        assert json.loads(body)["checks"]["mqtt"] is False
        assert proc.get("/healthz")[0] == 200
        # It keeps trying, and says so each time.
        deadline = time.monotonic() + 10
        while [e["event"] for e in proc.logs()].count("mqtt_disconnected") < 2:
            assert time.monotonic() < deadline, "no reconnect attempts logged"
            time.sleep(0.1)
        assert proc.get("/readyz")[0] == 503
        proc.process.send_signal(signal.SIGTERM)
        assert proc.process.wait(20) == 0
    finally:
        proc.kill()


def test_bad_configuration_is_refused_with_a_clear_message(brokers: Brokers):
    proc = subprocess.run(
        [sys.executable, "-m", "service", "run"],
        env={**os.environ, "MQTT_URL": "http://nowhere", "HTTP_PORT": "99999"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 3
    err = proc.stderr.decode()
    assert "MQTT_URL" in err
    assert "HTTP_PORT" in err


async def test_other_instances_last_wills_are_logged_and_counted(
    service: Service, brokers: Brokers
):
    url = BrokerUrl(brokers.mqtt_url, schemes=("mqtt", "mqtts"))
    will = {"instance": "print-service-elsewhere", "status": "dead", "message": "gone"}
    async with aiomqtt.Client(url.host, url.port) as client:
        await client.publish("/last-wills", json.dumps(will), qos=2)
    assert await eventually(lambda: counter(service, "print_last_wills_received_total") == 1)


def test_an_unreachable_database_stops_the_start_with_a_clear_message(brokers: Brokers):
    proc = subprocess.run(
        [sys.executable, "-m", "service", "run"],
        env={
            **os.environ,
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/none",
            "STORE_OPEN_TIMEOUT": "1",
            "HTTP_PORT": "0",
            "AUTH_DISABLED": "true",
            "MQTT_URL": brokers.mqtt_url,
            "AMQP_URL": brokers.amqp_url,
        },
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 4
    assert "the job store is unavailable" in proc.stderr.decode()


def test_once_ready_the_start_up_objects_are_left_out_of_full_collections(
    service_process: ServiceProcess,
):
    # A full collection walking every start-up object paused the loop 20-25 ms under load:
    # the process that is the service's alone freezes them once ready (tests sharing a
    # process with the service don't). Modules, models, validators: tens of thousands.
    def ready() -> list[dict[str, Any]]:
        return [line for line in service_process.logs() if line["event"] == "service_ready"]

    deadline = time.monotonic() + 5  # /readyz answers 200 a moment before this is logged
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    (line,) = ready()
    assert line["frozen_objects"] > 10_000
