"""The parts of aiomqtt (and paho under it) that the MQTT adapter relies on beyond their API.

service/adapters/mqtt/client.py and window.py reach into aiomqtt's private attributes: the
paho client it wraps (`Client._client`), the future that ends message iteration
(`Client._disconnected`), the socket reader it schedules from paho's `on_socket_open`, and the
queue behind `Client.messages`. None of that is promised across releases, so pyproject.toml
pins aiomqtt to one minor version, and these checks (on clients that never connect) say which
of those internals changed when the pin is moved. Each failure names the internal.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import socket
import tomllib
from pathlib import Path

import aiomqtt
import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from paho.mqtt import client as paho_client

from service.adapters.mqtt import IngressOptions
from service.adapters.mqtt.client import BrokerError, MqttConnection
from service.config import BrokerUrl

ROOT = Path(__file__).resolve().parents[2]
PROTOCOLS = ("5", "3.1.1")


def options(protocol: str = "5") -> IngressOptions:
    return IngressOptions(
        broker=BrokerUrl("mqtt://127.0.0.1:1", schemes=("mqtt", "mqtts")),
        client_id="internals-check",
        protocol="5" if protocol == "5" else "3.1.1",
        receive_maximum=4,
    )


def connection(protocol: str = "5") -> MqttConnection:
    return MqttConnection(options=options(protocol), will=b"{}", on_pause=lambda: None)


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_aiomqtt_is_pinned_to_the_minor_version_checked_here():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [pin] = [
        Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("aiomqtt")
    ]
    bounds = {s.operator: Version(s.version) for s in pin.specifier}
    assert set(bounds) == {">=", "<"}, f"aiomqtt must be pinned as >=X.Y,<X.(Y+1), not {pin}"
    low, high = bounds[">="], bounds["<"]
    assert (high.major, high.minor) == (low.major, low.minor + 1), (
        f"{pin} spans more than one minor version: the adapter relies on aiomqtt internals"
    )
    installed = Version(importlib.metadata.version("aiomqtt"))
    assert pin.specifier.contains(installed), f"aiomqtt {installed} is installed, outside {pin}"


def test_client_takes_the_keywords_the_adapter_passes():
    wanted = [
        "hostname", "port", "username", "password", "identifier", "protocol", "clean_session",
        "clean_start", "keepalive", "will", "properties", "tls_params",
    ]  # fmt: skip
    missing = set(wanted) - set(parameters(aiomqtt.Client))
    assert not missing, f"aiomqtt.Client() no longer takes {sorted(missing)} (client.py's _client)"
    tls = set(parameters(aiomqtt.TLSParameters))
    assert {"ca_certs", "certfile", "keyfile"} <= tls, f"aiomqtt.TLSParameters takes {tls}"
    will = set(parameters(aiomqtt.Will))
    assert {"topic", "payload", "qos", "retain"} <= will, f"aiomqtt.Will takes {will}"
    assert {aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311} <= set(
        aiomqtt.ProtocolVersion
    )
    assert issubclass(BrokerError, Exception)
    assert BrokerError is aiomqtt.MqttError


def test_paho_client_methods_the_adapter_calls():
    calls = {
        "manual_ack_set": ["on"],  # client.py: manual acknowledgement after commit
        "ack": ["mid", "qos"],  # client.py: MqttConnection.ack
        "loop_read": [],  # window.py: its reader
        "socket": [],  # window.py: is the socket still the one read
    }
    for name, wanted in calls.items():
        method = getattr(paho_client.Client, name, None)
        assert callable(method), f"paho's Client.{name} is gone"
        got = parameters(method)[1:]
        assert got[: len(wanted)] == wanted, f"paho's Client.{name} takes {got}, not {wanted}"
    for hook in ("on_socket_open", "on_socket_close", "on_message"):
        assert isinstance(getattr(paho_client.Client, hook, None), property), (
            f"paho's Client.{hook} is no longer a settable callback property (window.py)"
        )
    assert hasattr(paho_client, "MQTT_CLEAN_START_FIRST_ONLY")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_client_wraps_paho_and_hooks_its_socket(protocol):
    version = aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311
    client = aiomqtt.Client("127.0.0.1", 1, protocol=version)
    paho = getattr(client, "_client", None)
    assert isinstance(paho, paho_client.Client), (
        "aiomqtt.Client._client is no longer the paho client (client.py: self._client._client)"
    )
    disconnected = getattr(client, "_disconnected", None)
    assert isinstance(disconnected, asyncio.Future), (
        "aiomqtt.Client._disconnected is no longer an asyncio.Future (client.py: _broken)"
    )
    assert not disconnected.done()
    opened = paho.on_socket_open
    assert opened is not None, (
        "aiomqtt no longer sets paho's on_socket_open: window.py chains it to take the reader over"
    )
    assert parameters(opened) == ["client", "userdata", "sock"], (
        f"aiomqtt's on_socket_open takes {parameters(opened)} (window.py calls it as paho does)"
    )
    # What MqttConnection does with them, on both protocols.
    made = connection(protocol)
    assert isinstance(made._paho, paho_client.Client)
    assert made.arrived() == 0


async def test_a_failed_disconnected_future_ends_message_iteration():
    """client.py's _broken ends the connection by failing `_disconnected`, as aiomqtt's own
    reader does: a receive waiting on the messages then raises aiomqtt's MqttError."""
    made = connection()
    waiting = asyncio.create_task(made.receive())
    await asyncio.sleep(0)
    cause = ConnectionResetError("read failed")
    made._broken(cause)
    with pytest.raises(BrokerError) as raised:
        await asyncio.wait_for(waiting, timeout=2)
    assert raised.value.__cause__ is cause, (
        "failing aiomqtt.Client._disconnected no longer ends `messages` with that error"
    )


async def test_messages_view_counts_and_yields_what_paho_delivers():
    """`arrived` counts a `messages` view taken once, at construction: it must stay live."""
    made = connection()
    paho = made._paho
    message = paho_client.MQTTMessage(mid=41, topic=b"commands/q1")
    message.payload = b'{"x": 1}'
    message.qos = 1
    assert paho.on_message is not None, "aiomqtt no longer sets paho's on_message"
    paho.on_message(paho, None, message)
    assert made.arrived() == 1, "aiomqtt.Client.messages is no longer a live view of its queue"
    delivery = await asyncio.wait_for(made.receive(), timeout=2)
    assert (delivery.mid, delivery.qos) == (41, 1), "aiomqtt.Message lost mid or qos"
    assert delivery.inbound.topic == "commands/q1"
    assert delivery.inbound.payload == b'{"x": 1}'
    assert not delivery.inbound.retained
    assert not delivery.last_will
    assert made.arrived() == 0


async def test_the_windows_reader_replaces_aiomqtts(monkeypatch):
    """window.py schedules its reader after aiomqtt's, from the same on_socket_open call, so
    that ours is the one left on the socket: aiomqtt must not add its reader later."""
    made = connection()
    paho = made._paho
    read_by: list[str] = []

    def ours() -> None:
        read_by.append("window")
        ours_end.recv(64)

    def aiomqtts() -> int:
        read_by.append("aiomqtt")
        ours_end.recv(64)
        return paho_client.MQTT_ERR_SUCCESS

    monkeypatch.setattr(made._window, "_read", ours)
    monkeypatch.setattr(paho, "loop_read", aiomqtts)
    ours_end, peer = socket.socketpair()
    with ours_end, peer:
        assert paho.on_socket_open is not None
        paho.on_socket_open(paho, None, ours_end)
        for _ in range(3):
            await asyncio.sleep(0.05)  # aiomqtt's misc task starts and ends (not connected)
        peer.send(b"x")
        for _ in range(40):
            if read_by:
                break
            await asyncio.sleep(0.05)
        assert paho.on_socket_close is not None
        paho.on_socket_close(paho, None, ours_end)  # aiomqtt removes the reader
        await asyncio.sleep(0.05)
    assert read_by == ["window"], (
        f"the socket was read by {read_by}: aiomqtt's _on_socket_open no longer schedules its "
        "reader with call_soon_threadsafe (window.py's must replace it)"
    )
