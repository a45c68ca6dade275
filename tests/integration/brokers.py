"""Finding (or starting) the real brokers the integration tests run against.

MQTT, in order: `MQTT_URL`; a private Mosquitto started from deploy/mosquitto/mosquitto.conf
on a free port when the binary is installed (so the tests run with the config we ship);
a broker listening on 127.0.0.1:1883; a testcontainers Mosquitto when Docker is there.
AMQP: `AMQP_URL`; 127.0.0.1:5672; a testcontainers RabbitMQ. With none, the run fails and
says what to start.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"

HOW_TO_START = (
    "start them, or point MQTT_URL / AMQP_URL at running brokers:\n"
    "  mosquitto -d -c /etc/mosquitto/mosquitto.conf   (or apt-get install mosquitto)\n"
    "  rabbitmq-server -detached                        (or apt-get install rabbitmq-server)\n"
    "  or run a Docker engine, for testcontainers"
)


class BrokerUnavailableError(RuntimeError):
    pass


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20)
    return result.returncode == 0


class PrivateMosquitto:
    """Mosquitto with our shipped config, on a free port, with its own persistence dir.

    It can be stopped and started again on the same port with the same persistence, as a
    broker restart is.
    """

    def __init__(self, directory: Path, *, extra: tuple[str, ...] = ()) -> None:
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = free_port()
        self.dir = directory
        self.log = directory / "mosquitto.log"
        self.conf = directory / "mosquitto.conf"
        self.process: subprocess.Popen[bytes] | None = None
        _let_mosquitto_write(directory)
        lines = []
        for line in MOSQUITTO_CONF.read_text().splitlines():
            key = line.split(None, 1)[0] if line.strip() else ""
            if key in ("listener", "persistence_location", "pid_file", "log_dest", "user"):
                continue
            lines.append(line)
        lines += [
            f"listener {self.port} 127.0.0.1",
            f"persistence_location {directory}/",
            f"log_dest file {self.log}",
            *extra,
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", self.port, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                err = self.log.read_text() if self.log.exists() else ""
                raise BrokerUnavailableError(f"private mosquitto did not start: {err}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextlib.contextmanager
def private_mosquitto(*, extra: tuple[str, ...] = ()) -> Iterator[PrivateMosquitto]:
    with tempfile.TemporaryDirectory(prefix="mosquitto-") as tmp:
        broker = PrivateMosquitto(Path(tmp), extra=extra)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


def _let_mosquitto_write(directory: Path) -> None:
    """Started as root, Mosquitto drops to the `mosquitto` user: give it its directory."""
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        return
    shutil.chown(directory, user="mosquitto")


@contextlib.contextmanager
def mqtt_broker() -> Iterator[str]:
    if url := os.environ.get("MQTT_URL"):
        yield url
    elif shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        with private_mosquitto() as broker:
            yield broker.url
    elif reachable("127.0.0.1", 1883):
        yield "mqtt://127.0.0.1:1883"
    elif docker_available():
        from testcontainers.mqtt import MosquittoContainer  # noqa: PLC0415

        with MosquittoContainer() as container:
            port = container.get_exposed_port(container.MQTT_PORT)
            yield f"mqtt://{container.get_container_host_ip()}:{port}"
    else:
        raise BrokerUnavailableError(f"no MQTT broker: {HOW_TO_START}")


@contextlib.contextmanager
def amqp_broker() -> Iterator[str]:
    if url := os.environ.get("AMQP_URL"):
        yield url
    elif reachable("127.0.0.1", 5672):
        yield "amqp://guest:guest@127.0.0.1:5672/"
    elif docker_available():
        from testcontainers.rabbitmq import RabbitMqContainer  # noqa: PLC0415

        with RabbitMqContainer() as container:
            port = container.get_exposed_port(container.port)
            yield f"amqp://guest:guest@{container.get_container_host_ip()}:{port}/"
    else:
        raise BrokerUnavailableError(f"no AMQP broker: {HOW_TO_START}")
