"""A private RabbitMQ node started from the shipped deploy/rabbitmq files, and RS256 tokens.

The node has its own name, ports, data and log directories, Erlang cookie (HOME) and enabled
plugins, so it never touches the shared broker the other tests use. Its configuration is the
shipped rabbitmq.conf with only the machine-specific lines rewritten (listener, definitions
directory, signing key path); advanced.config is the shipped one as it is.

Tokens are signed with the `openssl` command line (RS256 is RSASSA-PKCS1-v1_5 with SHA-256,
what `openssl dgst -sha256 -sign` computes), as no JWT library is a dependency of ours.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

from tests.integration.brokers import free_port, reachable

__all__ = [
    "DEPLOY",
    "PrivateRabbit",
    "SigningKey",
    "missing_tools",
    "private_rabbit",
]

ROOT: Final = Path(__file__).resolve().parents[2]
DEPLOY: Final = ROOT / "deploy" / "rabbitmq"
SERVER: Final = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL: Final = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
PLUGIN: Final = "rabbitmq_auth_backend_oauth2"
START_TIMEOUT_S: Final = 60.0
INSTALL_HINT: Final = (
    "apt-get install rabbitmq-server openssl (RabbitMQ 3.10+, bundles the OAuth 2 plugin)"
)


def missing_tools() -> list[str]:
    """What this machine lacks to run a private node and sign tokens."""
    missing = [str(p) for p in (SERVER, CTL) if not p.exists()]
    if shutil.which("openssl") is None:
        missing.append("openssl")
    plugins = list(Path("/usr/lib/rabbitmq/lib").glob(f"rabbitmq_server-*/plugins/{PLUGIN}-*"))
    if SERVER.exists() and not plugins:
        missing.append(f"the {PLUGIN} plugin")
    return missing


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SigningKey:
    """An RSA key pair made for one test run; `token` signs a JWT with it."""

    def __init__(self, directory: Path, *, key_id: str) -> None:
        self.key_id = key_id
        self.private = directory / f"{key_id}.key.pem"
        self.public = directory / f"{key_id}.pem"
        subprocess.run(
            [
                *("openssl", "genpkey", "-algorithm", "RSA"),
                *("-pkeyopt", "rsa_keygen_bits:2048", "-out", str(self.private)),
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["openssl", "pkey", "-in", str(self.private), "-pubout", "-out", str(self.public)],
            check=True,
            capture_output=True,
        )

    def token(self, claims: Mapping[str, object], *, key_id: str | None = None) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": key_id or self.key_id}
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.private)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return f"{signing_input}.{_b64url(signature)}"


class PrivateRabbit:
    """One RabbitMQ node in `directory`, configured from the shipped files."""

    def __init__(self, directory: Path, *, users_json: Path, signing_key: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.node = f"amqpsec-{uuid.uuid4().hex[:8]}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        definitions = directory / "definitions.d"
        definitions.mkdir()
        shutil.copy(DEPLOY / "definitions.json", definitions / "10-topology.json")
        shutil.copy(users_json, definitions / "20-users.json")
        self.config = directory / "rabbitmq.conf"
        self.config.write_text(
            _rewrite(
                (DEPLOY / "rabbitmq.conf").read_text(),
                {
                    "listeners.tcp.default": f"127.0.0.1:{self.port}",
                    "load_definitions": str(definitions),
                    "auth_oauth2.signing_keys.print-api-1": str(signing_key),
                },
            )
        )
        self.log_dir = directory / "log"
        self.env = {
            **os.environ,
            "HOME": str(directory),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(DEPLOY / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(DEPLOY / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "RABBITMQ_PID_FILE": str(directory / "rabbit.pid"),
        }
        (directory / "rabbitmq-env.conf").write_text("")

    def url(self, user: str, password: str) -> str:
        from urllib.parse import quote  # noqa: PLC0415

        return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/"

    def start(self) -> None:
        with (self.dir / "stdout").open("wb") as stdout:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [str(SERVER)],
                env=self.env,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        # The AMQP listener opens once the boot (definitions included) is complete.
        while not reachable("127.0.0.1", self.port, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the private RabbitMQ node did not start within {START_TIMEOUT_S:.0f} s:\n"
                    + self.logs()
                )
            time.sleep(0.1)

    def logs(self) -> str:
        parts = [(self.dir / "stdout").read_text(errors="replace")[-4000:]]
        parts += [p.read_text(errors="replace")[-4000:] for p in self.log_dir.glob("*.log")]
        return "\n".join(parts)

    def ctl(self, *args: str) -> str:
        result = subprocess.run(
            [str(CTL), "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # The server script stops the node on SIGTERM and waits for it.
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait(10)


def _rewrite(config: str, values: Mapping[str, str]) -> str:
    """The config with these keys' values replaced; each key must be in the shipped file."""
    out = config
    for key, value in values.items():
        pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.MULTILINE)
        out, count = pattern.subn(f"{key} = {value}".replace("\\", "\\\\"), out)
        if count != 1:
            raise AssertionError(f"deploy/rabbitmq/rabbitmq.conf should set {key} once")
    return out


@contextlib.contextmanager
def private_rabbit(
    directory: Path, *, users_json: Path, signing_key: Path
) -> Iterator[PrivateRabbit]:
    node = PrivateRabbit(directory, users_json=users_json, signing_key=signing_key)
    node.start()
    try:
        yield node
    finally:
        node.stop()
