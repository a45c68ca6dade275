"""`print-service submit | cancel | status | watch`, as a person runs them."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping

import pytest

from service.app import Service
from service.cli.apikey import ENV_VAR
from tests.conftest import Brokers
from tests.integration.conftest import ServiceFactory, unique

pytestmark = pytest.mark.brokers


async def cli(
    brokers: Brokers, *args: str, timeout: float = 30, env: Mapping[str, str] | None = None
) -> tuple[int, list[str]]:
    # Not the caller's PRINT_API_KEY: each test says which key it sends.
    base = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        env={**base, "MQTT_URL": brokers.mqtt_url, "AMQP_URL": brokers.amqp_url, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, (out + err).decode().splitlines()


async def test_submit_follows_the_job_to_the_end(service: Service, brokers: Brokers):
    queue, job_id = unique("q"), unique("job")
    code, lines = await cli(
        brokers,
        "submit",
        "--queue",
        queue,
        "--job-id",
        job_id,
        "--user",
        "alice",
        "--correlation-id",
        "cli-corr-1",
    )
    assert code == 0, lines
    assert lines[0] == f"sent createPrintJob job={job_id} correlation=cli-corr-1"
    events = lines[1:]
    assert [line.split()[2] for line in events] == ["created", "started", "finished"]
    assert all(line.endswith("correlation=cli-corr-1") for line in events)


async def test_status_cancel_and_watch(service: Service, brokers: Brokers):
    queue, job_id = unique("q"), unique("job")
    code, _ = await cli(brokers, "submit", "--queue", queue, "--job-id", job_id, "--no-follow")
    assert code == 0

    code, lines = await cli(brokers, "watch", job_id, "--queue", queue)
    assert code == 0
    assert lines[-1].split()[2] == "finished"

    code, lines = await cli(brokers, "status", job_id, "--queue", queue, "--json")
    assert code == 0
    assert '"snapshot": true' in lines[-1]
    assert '"status": "finished"' in lines[-1]

    code, lines = await cli(brokers, "cancel", job_id, "--queue", queue, "--mqtt-version", "3.1.1")
    assert code == 1, "a refused cancel exits 1 and says why"
    assert lines[-1].startswith("REJECTED job_final:")


async def test_submit_with_gzip_and_mqtt311(service: Service, brokers: Brokers):
    code, lines = await cli(
        brokers,
        "submit",
        "--queue",
        unique("q"),
        "--gzip",
        "--mqtt-version",
        "3.1.1",
        "--priority",
        "high",
    )
    assert code == 0, lines
    assert lines[-1].split()[2] == "finished"


async def test_the_api_key_comes_from_the_environment_or_a_private_file(
    start_service: ServiceFactory, brokers: Brokers, tmp_path
):
    key = os.urandom(16).hex()
    key_file = tmp_path / "key"
    key_file.write_text(f"{key}\n")
    key_file.chmod(0o600)
    async with start_service(api_keys=frozenset({key})):
        queue, job_id = unique("q"), unique("job")
        code, lines = await cli(
            brokers, "submit", "--queue", queue, "--job-id", job_id, env={ENV_VAR: key}
        )
        assert code == 0, lines
        assert lines[-1].split()[2] == "finished"

        code, lines = await cli(
            brokers, "status", job_id, "--queue", queue, "--api-key-file", str(key_file)
        )
        assert code == 0, lines
        assert "finished (current)" in lines[-1]

        # The file is the explicit choice: it wins over a stale key in the environment.
        code, lines = await cli(
            brokers,
            "status",
            job_id,
            "--queue",
            queue,
            "--api-key-file",
            str(key_file),
            env={ENV_VAR: "stale-key"},
        )
        assert code == 0, lines

        code, lines = await cli(brokers, "status", job_id, "--queue", queue)
        assert code == 1
        assert lines[-1].startswith("REJECTED unauthorized: x-api-key is missing")

        code, lines = await cli(brokers, "status", job_id, "--queue", queue, "--api-key", key)
        assert code == 2
        assert "--api-key is not accepted" in "\n".join(lines)
        assert key not in "\n".join(lines)


async def test_move_says_why_a_job_that_ended_is_not_moved(service: Service, brokers: Brokers):
    queue, job_id = unique("q"), unique("job")
    code, lines = await cli(brokers, "submit", "--queue", queue, "--job-id", job_id)
    assert code == 0, lines

    code, lines = await cli(brokers, "move", job_id, "--to", unique("q"), "--queue", queue)
    assert code == 1, lines
    assert lines[0].startswith(f"sent movePrintJob job={job_id}")
    assert lines[-1].startswith("REJECTED job_final:")


async def test_hold_and_release_with_a_pin_that_never_reaches_argv_or_the_output(
    service: Service, brokers: Brokers, tmp_path
):
    queue, job_id = unique("q"), unique("held")
    pin = "5792-cli"
    code, lines = await cli(
        brokers,
        "submit",
        "--queue",
        queue,
        "--job-id",
        job_id,
        "--hold",
        env={"PRINT_RELEASE_PIN": pin},
    )
    assert code == 0, lines
    assert [line.split()[2] for line in lines[1:]] == ["held"]

    code, lines = await cli(
        brokers, "release", job_id, "--queue", queue, env={"PRINT_RELEASE_PIN": "0000"}
    )
    assert code == 1, lines
    assert lines[-1].startswith("REJECTED release_refused: wrong PIN (4 attempts left)")

    loose = tmp_path / "pin"
    loose.write_text(pin + "\n")
    loose.chmod(0o644)
    code, lines = await cli(brokers, "release", job_id, "--queue", queue, "--pin-file", str(loose))
    assert code == 3, lines
    assert "--pin-file" in lines[-1]
    assert "chmod 600" in lines[-1]

    loose.chmod(0o600)
    code, lines = await cli(brokers, "release", job_id, "--queue", queue, "--pin-file", str(loose))
    assert code == 0, lines
    assert [line.split()[2] for line in lines[1:]] == ["created"]
    code, lines = await cli(brokers, "watch", job_id, "--queue", queue)
    assert code == 0, lines
    assert lines[-1].split()[2] == "finished"
    assert not any(pin in line for line in lines)


async def test_a_pin_without_a_hold_and_a_bad_pin_are_refused_before_sending(
    service: Service, brokers: Brokers, tmp_path
):
    secret = tmp_path / "pin"
    secret.write_text("1234\n")
    secret.chmod(0o600)
    code, lines = await cli(brokers, "submit", "--pin-file", str(secret))
    assert code == 1, lines
    assert "--pin-file needs --hold" in lines[-1]
    code, lines = await cli(brokers, "submit", "--hold", env={"PRINT_RELEASE_PIN": "a b"})
    assert code == 1, lines
    assert "releasePin" in lines[-1]
    assert "a b" not in lines[-1]
