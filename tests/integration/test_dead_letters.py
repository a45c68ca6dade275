"""Dead letters: kept with their raw bytes, listed, replayed to the service, dropped."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from service.adapters.store.sqlite import SqliteStore
from service.cli.deadletters import dead_letters_command
from service.config import Settings
from service.ports import DeadLetter
from tests.conftest import Brokers
from tests.integration.conftest import Listener, ServiceFactory, statuses, unique

pytestmark = pytest.mark.brokers


async def test_a_parked_command_is_listed_replayed_and_dropped(
    start_service: ServiceFactory,
    brokers: Brokers,
    amqp,
    tmp_path: Path,
    queue_id: str,
    capsys: pytest.CaptureFixture[str],
):
    database = tmp_path / "jobs.db"
    job_id = unique("parked")
    letter = DeadLetter(
        source="command",
        reason="neither applied nor answered: test",
        address=f"commands/{queue_id}",
        payload=json.dumps({"jobId": job_id}).encode(),
        properties={"x-message-type": "createPrintJob", "x-correlation-id": "replayed-1"},
        attempts=1,
        at=time.time(),
    )
    async with start_service(database_url=f"sqlite:///{database}") as service:
        await service.store.park(letter)
        queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
        listener = Listener(amqp, queue)
        await listener.bind_job(job_id)
        settings = Settings(mqtt_url=brokers.mqtt_url, database_url=f"sqlite:///{database}")

        assert await _command(settings, database, replay=[], as_json=True) == 0
        out = capsys.readouterr().out.splitlines()
        (listed,) = [json.loads(line) for line in out if line.startswith("{")]
        assert (listed["source"], listed["address"]) == ("command", f"commands/{queue_id}")

        assert await _command(settings, database, replay=[listed["id"]]) == 0
        events = await listener.until(lambda r: r.body.get("status") == "created")
        assert statuses(events) == ["created"]
        assert events[-1].message.correlation_id == "replayed-1"
        assert await service.store.dead_letters(10) == []
        assert await _command(settings, database, replay=[listed["id"]]) == 1


async def _command(
    settings: Settings, database: Path, *, replay: list[int], as_json: bool = False
) -> int:
    return await dead_letters_command(
        settings, SqliteStore(database), replay=replay, drop=[], limit=10, as_json=as_json
    )
