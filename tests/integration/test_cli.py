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
