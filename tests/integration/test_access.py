"""Who may do what, on real brokers: keys from API_KEYS_FILE with scopes, queues and rates,
reloaded while the service runs, and a service that does not start without keys."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from service.app import Service
from tests.conftest import Brokers
from tests.integration.conftest import Listener, Publisher, ServiceFactory, unique
from tests.waits import wait_until

pytestmark = pytest.mark.brokers


def entry(name: str, key: str, *, queues: str, scopes: str, limit: str = "") -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return (
        f'[keys.{name}]\nsha256 = "{digest}"\nqueues = [{queues}]\nscopes = [{scopes}]\n{limit}\n'
    )


def write(path: Path, text: str) -> None:
    temporary = path.with_suffix(".new")
    temporary.write_text(text)
    os.replace(temporary, path)


class Keys:
    """Generated keys (none is committed) and the file that names them."""

    def __init__(self, path: Path, tenant: str) -> None:
        self.path = path
        self.tenant = tenant
        self.writer = secrets.token_urlsafe(24)
        self.reader = secrets.token_urlsafe(24)
        self.other = secrets.token_urlsafe(24)
        write(path, self.text())

    def text(self, *, writer_limit: str = "") -> str:
        own = f'"{self.tenant}-*"'
        return (
            entry("writer", self.writer, queues=own, scopes='"write:job"', limit=writer_limit)
            + entry("reader", self.reader, queues=own, scopes='"read:job"')
            + entry("other", self.other, queues='"other-*"', scopes='"write:job", "read:job"')
        )


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys.toml", unique("t"))


async def a_listener(amqp: Any, *queues: str) -> Listener:
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    for queue_id in queues:
        await queue.bind("print.rejections", f"rejections/{queue_id}")
        await queue.bind("print.events", f"counts/{queue_id}")
    return Listener(amqp, queue)


async def answer(
    listener: Listener,
    publisher: Publisher,
    queue: str,
    key: str | None,
    message_type: str,
    payload: dict[str, Any],
) -> dict[str, Any]:
    """The first answer to one command: found by its correlation id (a job's later events
    may come in between)."""
    correlation_id = unique("c")
    await publisher.command(
        queue, message_type, payload, api_key=key, correlation_id=correlation_id
    )
    received = await listener.until(lambda r: r.message.correlation_id == correlation_id)
    return received[-1].body


def reloads(service: Service, outcome: str) -> float:
    value = service.metrics.registry.get_sample_value(
        "print_api_key_reloads_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_each_scope_and_queue_rule(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, keys: Keys
):
    queue, foreign = f"{keys.tenant}-1", unique("other")
    async with start_service(api_keys_file=keys.path, print_duration=30.0):
        listener = await a_listener(amqp, queue, foreign)
        job_id = unique("job")
        await listener.bind_job(job_id)

        async def ask(key: str | None, message_type: str, payload: dict[str, Any], **kw: Any):
            target = kw.get("queue", queue)
            return await answer(listener, publisher, target, key, message_type, payload)

        created = await ask(keys.writer, "createPrintJob", {"jobId": job_id})
        assert (created["jobId"], created["status"]) == (job_id, "created")
        status = await ask(keys.reader, "getPrintJobStatus", {"jobId": job_id})
        assert status["jobId"] == job_id
        assert status["status"] in {"created", "started"}  # it may be printing already
        counts = await ask(keys.reader, "getPrintCounts", {})
        assert counts["queueId"] == queue

        refused = [
            await ask(keys.reader, "cancelPrintJob", {"jobId": job_id, "force": True}),
            await ask(keys.reader, "updatePrintJob", {"jobId": job_id, "priority": "high"}),
            await ask(keys.reader, "createPrintJob", {"jobId": unique("job")}),
            await ask(keys.writer, "getPrintJobStatus", {"jobId": job_id}),
            await ask(keys.writer, "getPrintCounts", {}),
            await ask(keys.writer, "createPrintJob", {"jobId": unique("j")}, queue=foreign),
            await ask(keys.other, "getPrintJobStatus", {"jobId": job_id}),
        ]
        assert [r["reason"] for r in refused] == ["forbidden"] * 7
        assert all(keys.writer not in r["message"] for r in refused)
        assert (await ask("wrong", "getPrintJobStatus", {"jobId": job_id}))["reason"] == (
            "unauthorized"
        )
        canceled = await ask(keys.writer, "cancelPrintJob", {"jobId": job_id, "force": True})
        assert (canceled["jobId"], canceled["status"]) == (job_id, "canceled")


async def test_a_job_of_another_queue_is_an_unknown_job(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, keys: Keys
):
    home, elsewhere = f"{keys.tenant}-home", f"{keys.tenant}-elsewhere"
    async with start_service(api_keys_file=keys.path, print_duration=30.0):
        listener = await a_listener(amqp, home, elsewhere)
        job_id, missing = unique("job"), unique("job")
        await listener.bind_job(job_id)
        created = await answer(
            listener, publisher, home, keys.writer, "createPrintJob", {"jobId": job_id}
        )
        assert created["status"] == "created"

        commands: list[tuple[str, str, dict[str, Any]]] = [
            (keys.writer, "cancelPrintJob", {"force": True}),
            (keys.writer, "updatePrintJob", {"priority": "high"}),
            (keys.reader, "getPrintJobStatus", {}),
        ]
        for key, message_type, payload in commands:
            via_elsewhere, unknown = [
                await answer(
                    listener, publisher, elsewhere, key, message_type, {"jobId": target, **payload}
                )
                for target in (job_id, missing)
            ]
            assert via_elsewhere["reason"] == unknown["reason"] == "unknown_job"
            assert via_elsewhere["message"] == unknown["message"].replace(missing, job_id)
            assert set(via_elsewhere) == set(unknown)

        # Untouched: its own queue still answers with the job as it was.
        status = await answer(
            listener, publisher, home, keys.reader, "getPrintJobStatus", {"jobId": job_id}
        )
        assert status["status"] in {"created", "started"}  # neither canceled nor updated
        assert "updated" not in status


async def test_keys_are_reloaded_and_a_bad_file_keeps_them(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, keys: Keys
):
    queue = f"{keys.tenant}-1"
    async with start_service(api_keys_file=keys.path) as service:
        listener = await a_listener(amqp, queue)
        newcomer = secrets.token_urlsafe(24)

        async def counts_with(key: str) -> dict[str, Any]:
            return await answer(listener, publisher, queue, key, "getPrintCounts", {})

        assert (await counts_with(newcomer))["reason"] == "unauthorized"

        # The reader is revoked, a newcomer may read.
        write(
            keys.path,
            entry("writer", keys.writer, queues=f'"{keys.tenant}-*"', scopes='"write:job"')
            + entry("newcomer", newcomer, queues=f'"{keys.tenant}-*"', scopes='"read:job"'),
        )
        await wait_until(lambda: reloads(service, "applied") == 1, what="the new file applied")
        assert (await counts_with(newcomer))["queueId"] == queue
        assert (await counts_with(keys.reader))["reason"] == "unauthorized"

        write(keys.path, "[keys.newcomer\nthis is not TOML")
        await wait_until(lambda: reloads(service, "refused") == 1, what="the bad file refused")
        assert (await counts_with(newcomer))["queueId"] == queue


async def test_a_key_over_its_rate_is_refused_while_another_key_is_applied(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, keys: Keys
):
    # Two at once, then one in a hundred seconds: what is refused does not hang on timing.
    write(keys.path, keys.text(writer_limit="rate = 0.01\nburst = 2"))
    queue, theirs = f"{keys.tenant}-1", unique("other")
    async with start_service(api_keys_file=keys.path, print_duration=30.0):
        listener = await a_listener(amqp, queue, theirs)
        jobs = [unique("w") for _ in range(4)]
        others = [unique("o") for _ in range(4)]
        for job_id in jobs + others:
            await listener.bind_job(job_id)
        answers: list[dict[str, Any]] = []
        for mine, other in zip(jobs, others, strict=True):
            create = "createPrintJob"
            answers.append(
                await answer(listener, publisher, queue, keys.writer, create, {"jobId": mine})
            )
            answers.append(
                await answer(listener, publisher, theirs, keys.other, create, {"jobId": other})
            )

        created = {r["jobId"] for r in answers if r.get("status") == "created"}
        assert created == {*jobs[:2], *others}
        limited = [r for r in answers if "reason" in r]
        assert [r["reason"] for r in limited] == ["rate_limited", "rate_limited"]
        assert all(90 < r["retryAfter"] <= 100 for r in limited)
        assert all("retry after" in r["message"] for r in limited)


def run_cli(brokers: Brokers, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    settings = {
        "MQTT_URL": brokers.mqtt_url,
        "AMQP_URL": brokers.amqp_url,
        "HTTP_PORT": "0",
        "DATABASE_URL": f"sqlite:///{tmp_path}/jobs.db",
        **env,
    }
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k not in {"API_KEYS", "API_KEYS_FILE", "AUTH_DISABLED"}
    }
    return subprocess.run(
        [sys.executable, "-m", "service", "run"],
        env={**inherited, **settings},
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "no API keys: set API_KEYS or API_KEYS_FILE, or AUTH_DISABLED=true"),
        ({"AUTH_DISABLED": "false", "API_KEYS": ""}, "no API keys"),
        ({"AUTH_DISABLED": "true", "API_KEYS": "k"}, "unset AUTH_DISABLED"),
        ({"API_KEYS_FILE": "/nonexistent/keys.toml"}, "API_KEYS_FILE"),
        ({"API_KEYS_FILE": "{bad}"}, "API_KEYS_FILE: invalid keys file"),
    ],
    ids=["nothing", "empty-keys", "both", "missing-file", "bad-file"],
)
def test_without_usable_keys_the_service_does_not_start(
    brokers: Brokers, tmp_path: Path, env: dict[str, str], says: str
):
    if env.get("API_KEYS_FILE") == "{bad}":
        bad = tmp_path / "keys.toml"
        bad.write_text('[keys.a]\nsha256 = "not a digest"\nqueues = ["*"]\nscopes = ["read:job"]')
        env = {"API_KEYS_FILE": str(bad)}
    done = run_cli(brokers, tmp_path, **env)
    assert done.returncode == 3, done.stderr.decode()
    assert says in done.stderr.decode()
    assert b"service_ready" not in done.stdout + done.stderr


async def test_auth_disabled_explicitly_is_said_at_start(start_service: ServiceFactory):
    with capture_logs() as logs:
        async with start_service(auth_disabled=True):
            pass
    (warning,) = [e for e in logs if e["event"] == "auth_disabled"]
    assert warning["log_level"] == "warning"
    assert "AUTH_DISABLED=true" in warning["detail"]
