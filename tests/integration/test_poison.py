"""Poison over real MQTT: each message that used to stop ingestion or go unanswered is
answered with a `commandRejected`, and the next command is processed; after a restart
nothing comes back."""

from __future__ import annotations

import json

import aiomqtt
import pytest

from service.app import Service
from service.config import BrokerUrl
from tests.conftest import Brokers
from tests.integration.conftest import (
    Listener,
    Publisher,
    Received,
    ServiceFactory,
    statuses,
    unique,
)

pytestmark = pytest.mark.brokers

CANCEL = {"x-message-type": "cancelPrintJob"}
CREATE = {"x-message-type": "createPrintJob"}


async def rejections_listener(amqp, *routes: str) -> Listener:
    queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
    for route in routes:
        await queue.bind("print.rejections", route)
    return Listener(amqp, queue)


def statuses_of(received: list[Received]) -> list[tuple[str, str]]:
    """(jobId, status) of the job events among `received`."""
    return [(r.body["jobId"], r.body["status"]) for r in received if r.kind == "printJobEvent"]


async def next_command_works(
    listener: Listener, publisher: Publisher, queue_id: str, *, v5: bool = True
) -> list[Received]:
    """A good command is applied; what came before its event is returned (anything the
    service did with earlier messages is in it)."""
    good = unique("good")
    await listener.bind_job(good)
    if v5:
        await publisher.create(queue_id, good)
    else:
        envelope = {"headers": {"x-message-type": "createPrintJob"}, "payload": {"jobId": good}}
        await publisher.raw(f"commands/{queue_id}", json.dumps(envelope).encode(), v5=False)
    received = await listener.until(lambda r: r.body.get("jobId") == good)
    assert statuses(received)[-1:] == ["created"]
    return received[:-1]


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
async def test_an_envelope_with_an_object_as_message_type(
    service: Service, amqp, publisher: Publisher, queue_id: str, v5: bool
):
    listener = await rejections_listener(amqp, f"rejections/{queue_id}")
    await publisher.raw(
        f"commands/{queue_id}",
        b'{"headers": {"x-message-type": {}, "x-correlation-id": "env-1"}, "payload": {}}',
        v5=v5,
    )
    rejected = await listener.next()
    assert (rejected.body["reason"], rejected.body["correlationId"]) == (
        "unknown_message_type",
        "env-1",
    )
    await next_command_works(listener, publisher, queue_id)


async def test_a_lone_surrogate_in_the_job_id(
    service: Service, amqp, publisher: Publisher, queue_id: str
):
    listener = await rejections_listener(amqp, f"rejections/{queue_id}")
    await publisher.raw(
        f"commands/{queue_id}",
        b'{"jobId": "\\ud800", "force": true}',
        user_properties={"x-correlation-id": "sur-1"},
    )
    rejected = await listener.next()
    assert rejected.body["reason"] == "invalid_encoding"
    assert rejected.body["correlationId"] == "sur-1"
    assert rejected.body["jobId"] == "\ufffd"
    await next_command_works(listener, publisher, queue_id)


async def test_a_correlation_id_too_long_for_amqp(
    service: Service, amqp, publisher: Publisher, queue_id: str
):
    listener = await rejections_listener(amqp, f"rejections/{queue_id}")
    await publisher.raw(
        f"commands/{queue_id}",
        json.dumps({"jobId": unique("j")}).encode(),
        user_properties={**CANCEL, "x-correlation-id": "c" * 256},
    )
    rejected = await listener.next()
    assert rejected.body["reason"] == "schema_violation"
    assert [e["path"] for e in rejected.body["errors"]] == ["headers.x-correlation-id"]
    # Not the sender's (it does not fit): one of ours, valid in AMQP.
    assert rejected.message.correlation_id == rejected.body["correlationId"]
    assert len(rejected.body["correlationId"]) <= 255
    await next_command_works(listener, publisher, queue_id)


async def test_binary_correlation_data_is_echoed_hex_encoded(
    service: Service, amqp, publisher: Publisher, queue_id: str
):
    listener = await rejections_listener(amqp, f"rejections/{queue_id}")
    job_id = unique("unknown")
    await publisher.raw(
        f"commands/{queue_id}",
        json.dumps({"jobId": job_id}).encode(),
        user_properties=CANCEL,
        correlation_data=b"\xff\xfe\x00binary",
    )
    rejected = await listener.next()
    assert rejected.body["reason"] == "unknown_job"
    assert rejected.body["correlationId"] == "0x" + b"\xff\xfe\x00binary".hex()
    assert rejected.message.correlation_id == rejected.body["correlationId"]
    await next_command_works(listener, publisher, queue_id)


@pytest.mark.parametrize("level", ["q" * 300, "é" * 200], ids=["ascii-300", "utf8-400-bytes"])
async def test_a_topic_level_too_long_for_a_routing_key(
    service: Service, amqp, publisher: Publisher, queue_id: str, level: str
):
    listener = await rejections_listener(amqp, f"rejections/{queue_id}", "rejections/_invalid")
    await publisher.raw(
        f"commands/{level}",
        json.dumps({"jobId": unique("j")}).encode(),
        user_properties={**CREATE, "x-correlation-id": "long-topic"},
    )
    rejected = await listener.next()
    assert rejected.message.routing_key == "rejections/_invalid"
    assert (rejected.body["reason"], rejected.body["correlationId"]) == (
        "schema_violation",
        "long-topic",
    )
    assert len(rejected.body["queueId"].encode()) <= 255
    await next_command_works(listener, publisher, queue_id)


async def test_control_characters_in_text_fields_are_refused_before_the_store(
    start_service: ServiceFactory, amqp, publisher: Publisher, queue_id: str, postgres_url: str
):
    """PostgreSQL text holds no NUL: such a command once failed its whole batch, forever."""
    async with start_service(database_url=postgres_url):
        listener = await rejections_listener(amqp, f"rejections/{queue_id}")
        await publisher.raw(
            f"commands/{queue_id}",
            json.dumps({"jobId": unique("j"), "userId": "a\u0000b"}).encode(),
            user_properties={**CREATE, "x-correlation-id": "nul-1"},
        )
        rejected = await listener.next()
        assert rejected.body["reason"] == "schema_violation"
        assert [e["path"] for e in rejected.body["errors"]] == ["userId"]
        await next_command_works(listener, publisher, queue_id)


async def test_without_an_api_key_nothing_else_is_read(
    start_service: ServiceFactory, amqp, publisher: Publisher, queue_id: str
):
    async with start_service(api_keys=frozenset({"the-key"})):
        listener = await rejections_listener(amqp, f"rejections/{queue_id}")
        await publisher.raw(
            f"commands/{queue_id}",
            b'{"headers": {"x-message-type": [1], "x-api-key": 7}, "payload": {"jobId": "x"}}',
            v5=False,
        )
        rejected = await listener.next()
        assert rejected.body["reason"] == "unauthorized"
        assert "jobId" not in rejected.body
        assert "messageType" not in rejected.body


async def test_poison_is_not_replayed_after_a_restart(
    start_service: ServiceFactory, amqp, publisher: Publisher, queue_id: str
):
    client_id = unique("svc-poison")
    listener = await rejections_listener(amqp, f"rejections/{queue_id}")
    async with start_service(mqtt_client_id=client_id):
        await publisher.raw(
            f"commands/{queue_id}",
            b'{"headers": {"x-message-type": {}}, "payload": {"jobId": "\\udfff"}}',
            v5=False,
        )
        first = await listener.next()
        assert first.body["reason"] in {"unknown_message_type", "invalid_encoding"}
    async with start_service(mqtt_client_id=client_id):
        before = await next_command_works(listener, publisher, queue_id)
        assert before == [], "a poison message came back after the restart"


async def retain(brokers: Brokers, topic: str, payload: bytes) -> None:
    url = BrokerUrl(brokers.mqtt_url, schemes=("mqtt", "mqtts"))
    async with aiomqtt.Client(url.host, url.port) as client:
        await client.publish(topic, payload, qos=1, retain=True)


async def test_a_retained_command_is_never_applied(
    start_service: ServiceFactory, brokers: Brokers, amqp, publisher: Publisher, queue_id: str
):
    """MQTT 5 asks for no retained messages; 3.1.1 gets them, and rejects them."""
    job_id = unique("retained")
    topic = f"commands/{queue_id}"
    body = json.dumps(
        {"headers": {"x-message-type": "createPrintJob", "x-correlation-id": "ret-1"},
         "payload": {"jobId": job_id}}
    ).encode()  # fmt: skip
    listener = await rejections_listener(amqp, f"rejections/{queue_id}")
    await listener.bind_job(job_id)
    await retain(brokers, topic, body)
    try:
        async with start_service(mqtt_protocol="5"):
            # A retained command would come at the subscription, before this one.
            before = await next_command_works(listener, publisher, queue_id)
            assert before == [], "the retained command was neither applied nor rejected"
        async with start_service(mqtt_protocol="3.1.1"):
            # The events of the first service's good job may still be coming.
            events = await listener.until(lambda r: r.kind == "commandRejected")
            rejected = events[-1]
            assert (rejected.body["reason"], rejected.body["correlationId"]) == (
                "retained_command",
                "ret-1",
            )
            assert not [e for e in statuses_of(events) if e[0] == job_id], "never applied"
            before = await next_command_works(listener, publisher, queue_id, v5=False)
        assert not [e for e in statuses_of(before) if e[0] == job_id], "never applied"
    finally:
        await retain(brokers, topic, b"")
