"""The MQTT transport with no broker: a fake connection per attempt, pauses recorded.

What is checked is the reconnect policy (the backoff grows while attempts fail, and starts
afresh only after a connection acknowledged a command, not merely once it was up), what a
connection is asked to subscribe to, and the options built from the settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from service.adapters.mqtt import IngressOptions, MqttIngress
from service.adapters.mqtt.client import BrokerError
from service.adapters.mqtt.intake import Delivery
from service.aio import resolved
from service.config import BrokerUrl, Settings
from service.core.backoff import Backoff
from service.core.codec import Inbound
from service.metrics import Metrics
from service.ports import StoreError

# What one connection attempt does: refused at connect; up, and lost before any command;
# up, one command acknowledged, then lost.
Script = Literal["refused", "lost", "acks"]


class FakeConnection:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.subscribed: list[str] = []
        self.acked: list[int] = []
        self._deliveries = []
        if script == "acks":
            inbound = Inbound(topic="commands/q1", payload=b"{}")
            self._deliveries.append(Delivery(inbound=inbound, last_will=False, mid=7, qos=1))

    async def __aenter__(self) -> Self:
        if self.script == "refused":
            raise BrokerError("connection refused")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    async def subscribe(self, topic: str) -> None:
        self.subscribed.append(topic)

    async def unsubscribe(self, topic: str) -> None:
        self.subscribed.remove(topic)

    async def receive(self) -> Delivery:
        if self._deliveries:
            return self._deliveries.pop(0)
        raise BrokerError("connection lost")

    def arrived(self) -> int:
        return len(self._deliveries)

    def taken(self) -> None:
        pass

    def ack(self, delivery: Delivery) -> None:
        self.acked.append(delivery.mid)

    @property
    def paused(self) -> bool:
        return False

    def held(self) -> int:
        return len(self._deliveries)


class Rig:
    """An ingress whose attempts follow `scripts`; it stops after the last one."""

    def __init__(self, scripts: Sequence[Script], **options: object) -> None:
        self.scripts = list(scripts)
        self.connections: list[FakeConnection] = []
        self.pauses: list[float] = []
        self.stopping = asyncio.Event()
        self.ingress = MqttIngress(
            options=IngressOptions(
                broker=BrokerUrl("mqtt://broker.test", schemes=("mqtt", "mqtts")),
                client_id="svc-1",
                **options,  # type: ignore[arg-type]
            ),
            metrics=Metrics(CollectorRegistry()),
            connect=self._connect,
            backoff=Backoff(first=0.5, cap=30.0),  # no jitter: the pauses are exact
            sleep=self._sleep,
        )

    def _connect(self) -> FakeConnection:
        connection = FakeConnection(self.scripts[len(self.connections)])
        self.connections.append(connection)
        return connection

    async def _sleep(self, stopping: asyncio.Event, seconds: float) -> bool:
        self.pauses.append(seconds)
        if len(self.connections) == len(self.scripts):
            stopping.set()
        return stopping.is_set()

    async def run(self, handle=None) -> None:
        await self.ingress.run(handle or _commit_at_once, self.stopping)


async def _commit_at_once(commands: Sequence[Inbound]) -> asyncio.Future[None]:
    return resolved()


async def test_the_backoff_doubles_while_attempts_fail_up_to_its_cap():
    rig = Rig(["refused"] * 9)
    await rig.run()
    assert rig.pauses == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert not rig.ingress.connected


async def test_a_connection_that_was_up_but_acknowledged_nothing_does_not_reset_the_backoff():
    rig = Rig(["refused", "lost", "refused", "lost"])
    await rig.run()
    assert rig.pauses == [0.5, 1, 2, 4]


async def test_the_backoff_starts_afresh_after_a_connection_acknowledged_a_command():
    rig = Rig(["refused", "refused", "refused", "acks", "refused", "refused"])
    with capture_logs() as logs:
        await rig.run()
    assert rig.pauses == [0.5, 1, 2, 0.5, 1, 2]
    assert rig.connections[3].acked == [7]
    attempts = [entry["attempt"] for entry in logs if entry["event"] == "mqtt_connecting"]
    assert attempts == [1, 2, 3, 4, 1, 2]  # the attempt count starts afresh too
    retries = [entry["retry_in_s"] for entry in logs if entry["event"] == "mqtt_disconnected"]
    assert retries == rig.pauses


async def test_a_store_that_is_away_is_retried_soon():
    async def store_away(commands: Sequence[Inbound]) -> asyncio.Future[None]:
        raise StoreError("database is down")

    rig = Rig(["acks"] * 6)
    with capture_logs() as logs:
        await rig.run(store_away)
    assert rig.pauses == [0.5, 1, 2, 4, 4, 4]  # capped at STORE_RETRY_MAX_S, not 30 s
    assert all(c.acked == [] for c in rig.connections)
    events = [entry["event"] for entry in logs if entry.get("log_level") == "warning"]
    assert events == ["commands_not_acknowledged"] * 6


async def test_a_store_outage_does_not_lengthen_the_next_broker_pause():
    async def store_away(commands: Sequence[Inbound]) -> asyncio.Future[None]:
        raise StoreError("database is down")

    rig = Rig(["acks", "acks", "acks", "refused", "refused"])
    await rig.run(store_away)
    # The store's pauses have their own rule; the broker's starts from its first delay.
    assert rig.pauses == [0.5, 1, 2, 0.5, 1]


async def test_each_connection_subscribes_to_the_commands_and_the_last_wills():
    rig = Rig(["lost"], commands_subscription="commands/+", last_will_topic="/wills")
    await rig.run()
    assert rig.connections[0].subscribed == ["commands/+", "/wills"]


async def test_a_stop_during_a_pause_ends_the_ingress():
    rig = Rig(["refused"])
    with capture_logs() as logs:
        await rig.run()
    assert len(rig.connections) == 1
    assert logs[-1]["event"] == "mqtt_stopped"


# --- options -----------------------------------------------------------------------------------


def test_options_from_settings_carry_the_mqtt_settings(tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    settings = Settings(
        mqtt_url="mqtts://user:secret@broker.example:8884",
        mqtt_client_id="svc-7",
        mqtt_protocol="3.1.1",
        mqtt_keepalive=30,
        mqtt_session_expiry=600,
        mqtt_commands_topic="cmds/+",
        mqtt_shared_group="printers",
        mqtt_last_will_topic="/wills",
        mqtt_batch_size=64,
        mqtt_receive_maximum=128,
        mqtt_ca_file=ca,
    )
    options = IngressOptions.from_settings(settings)
    assert options.broker.redacted() == "mqtts://user@broker.example:8884"
    assert options.broker.tls
    assert options.client_id == "svc-7"
    assert not options.v5
    assert (options.keepalive, options.session_expiry) == (30, 600)
    assert options.commands_subscription == "$share/printers/cmds/+"
    assert options.shared_group == "printers"
    assert options.last_will_topic == "/wills"
    assert (options.batch_size, options.receive_maximum) == (64, 128)
    assert (options.ca_file, options.cert_file, options.key_file) == (ca, None, None)


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"client_id": ""}, "client_id"),
        ({"keepalive": 1}, "keepalive"),
        ({"batch_size": 0}, "batch_size"),
        ({"batches_committing": 0}, "batches_committing"),
        ({"receive_maximum": 70_000}, "receive_maximum"),
        ({"session_expiry": -1}, "session_expiry"),
        ({"shared_group": "g", "commands_subscription": "commands/+"}, "shared group"),
        ({"broker": BrokerUrl("amqp://x", schemes=("amqp", "amqps"))}, "mqtt://"),
    ],
)
def test_options_are_checked_when_made(change: dict[str, object], complaint: str):
    values: dict[str, object] = {
        "broker": BrokerUrl("mqtt://broker.test", schemes=("mqtt", "mqtts")),
        "client_id": "svc-1",
    }
    values.update(change)
    with pytest.raises(ValueError, match=complaint):
        IngressOptions(**values)  # type: ignore[arg-type]
