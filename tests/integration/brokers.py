"""Finding (or starting) the real brokers the integration tests run against.

MQTT, in order: `MQTT_URL`; a private Mosquitto started from deploy/mosquitto/mosquitto.conf
on a free port when the binary is installed (so the tests run with the config we ship, its
authentication left out: the tests of everything else connect anonymously, as the CI's dev
broker lets them; tests/integration/test_mqtt_security.py starts one with it);
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
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
MAKE_CREDENTIALS = ROOT / "deploy" / "mosquitto" / "make_credentials.py"
# Where distributions install the dynamic-security plugin (the shipped config names the
# eclipse-mosquitto image's path, the last one).
DYNSEC_PLUGINS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib64/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
)
# The shipped config's lines that make clients authenticate.
AUTH_OPTIONS = ("allow_anonymous", "plugin", "plugin_opt_config_file", "password_file", "acl_file")

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

    def __init__(
        self, directory: Path, *, extra: tuple[str, ...] = (), security: Path | None = None
    ) -> None:
        """`security`: a dynamic-security.json (make_credentials.py's) to enforce the shipped
        authentication and roles with; without it, anyone may connect."""
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = free_port()
        self.dir = directory
        self.log = directory / "mosquitto.log"
        self.conf = directory / "mosquitto.conf"
        self.process: subprocess.Popen[bytes] | None = None
        _let_mosquitto_write(directory)
        if security is not None:
            # The broker's own copy, in a directory it may read (it runs as `mosquitto`).
            config = directory / "dynamic-security.json"
            shutil.copyfile(security, config)
            _let_mosquitto_write(config)
        lines = []
        for line in MOSQUITTO_CONF.read_text().splitlines():
            key = line.split(None, 1)[0] if line.strip() else ""
            if key in ("listener", "persistence_location", "pid_file", "log_dest", "user"):
                continue
            if key in AUTH_OPTIONS:
                if security is None:
                    continue
                if key == "plugin":
                    line = f"plugin {dynsec_plugin()}"  # noqa: PLW2901 - this line, rewritten
                elif key == "plugin_opt_config_file":
                    line = f"plugin_opt_config_file {config}"  # noqa: PLW2901
            lines.append(line)
        lines += [
            f"listener {self.port} 127.0.0.1",
            f"persistence_location {directory}/",
            f"log_dest file {self.log}",
            *(() if security is not None else ("allow_anonymous true",)),
            *extra,
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def url_as(self, user: str, password: str) -> str:
        """The broker's URL with credentials, as MQTT_URL carries them."""
        return f"mqtt://{user}:{password}@127.0.0.1:{self.port}"

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
def private_mosquitto(
    *, extra: tuple[str, ...] = (), security: Path | None = None
) -> Iterator[PrivateMosquitto]:
    with tempfile.TemporaryDirectory(prefix="mosquitto-") as tmp:
        broker = PrivateMosquitto(Path(tmp), extra=extra, security=security)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


def dynsec_plugin() -> str:
    """This machine's Mosquitto dynamic-security plugin."""
    for path in DYNSEC_PLUGINS:
        if Path(path).is_file():
            return path
    raise BrokerUnavailableError(
        "no mosquitto_dynamic_security.so (shipped with Mosquitto 2.0) in: "
        + ", ".join(DYNSEC_PLUGINS)
    )


def make_credentials(out: Path) -> dict[str, str]:
    """Run deploy/mosquitto/make_credentials.py into `out`; each user's password."""
    subprocess.run(
        [sys.executable, str(MAKE_CREDENTIALS), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return {path.stem: path.read_text().strip() for path in out.glob("*.password")}


def _let_mosquitto_write(path: Path) -> None:
    """Started as root, Mosquitto drops to the `mosquitto` user: give it its files."""
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        return
    shutil.chown(path, user="mosquitto")


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
