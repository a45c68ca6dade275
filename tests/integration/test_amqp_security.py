"""Who may do what on RabbitMQ, against a private node started from deploy/rabbitmq.

The node imports the shipped topology and the users `make_users.py` generates (the service,
tenants `acme` and `beta`), and verifies OAuth 2 tokens signed with a key made here. What is
checked is what RabbitMQ itself refuses: a wrong binding key, queue or exchange is an
ACCESS_REFUSED (403) from the broker, a bad token a refused login.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.exceptions import AMQPConnectionError, ChannelAccessRefused
from prometheus_client import CollectorRegistry

from service.adapters.amqp import EVENTS_EXCHANGE, EVENTS_QUEUE, REJECTIONS_EXCHANGE, AmqpPublisher
from service.config import BrokerUrl
from service.core.events import Kind, Outgoing
from service.metrics import Metrics
from tests.integration.rabbitmq_node import (
    DEPLOY,
    INSTALL_HINT,
    PrivateRabbit,
    SigningKey,
    missing_tools,
    private_rabbit,
)

RESOURCE_SERVER = "print_api"
KEY_ID = "print-api-1"


def _load_make_users() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_users", DEPLOY / "make_users.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True, slots=True)
class Node:
    rabbit: PrivateRabbit
    passwords: dict[str, str]
    key: SigningKey
    other_key: SigningKey

    def url(self, user: str) -> str:
        return self.rabbit.url(user, self.passwords[user])

    def token_url(self, token: str, user: str = "ignored") -> str:
        return self.rabbit.url(user, token)

    def token(self, *scopes: str, expires_in: float = 300, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "sub": "client-acme",
            "aud": [RESOURCE_SERVER],
            "iat": now,
            "exp": int(now + expires_in),
            "scope": " ".join(scopes),
            **claims,
        }
        return self.key.token(body)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    if missing := missing_tools():
        pytest.fail(f"a private RabbitMQ node needs {', '.join(missing)}: {INSTALL_HINT}")
    tmp = tmp_path_factory.mktemp("rabbit")
    generated = tmp / "generated"
    make_users = _load_make_users()
    make_users.main(["--out", str(generated), "--tenant", "acme", "--tenant", "beta"])
    passwords = json.loads((generated / "credentials.json").read_text())
    key = SigningKey(tmp, key_id=KEY_ID)
    keys = tmp / "other"
    keys.mkdir()
    other_key = SigningKey(keys, key_id=KEY_ID)
    (tmp / "node").mkdir()
    with private_rabbit(
        tmp / "node", users_json=generated / "users.json", signing_key=key.public
    ) as rabbit:
        yield Node(rabbit, passwords, key, other_key)


@pytest.fixture
async def service(node: Node) -> AsyncIterator[AmqpPublisher]:
    """The service's own AMQP adapter, connected as the generated `print-service` user."""
    publisher = await _publisher(node.url("print-service"))
    try:
        yield publisher
    finally:
        await publisher.close()


async def _publisher(url: str) -> AmqpPublisher:
    publisher = AmqpPublisher(
        url=BrokerUrl(url, schemes=("amqp", "amqps")),
        connection_name=f"test-{uuid.uuid4()}",
        gzip_bodies=False,
        metrics=Metrics(CollectorRegistry()),
    )
    # connect() declares the exchanges and queues and binds them: under least privilege.
    assert await asyncio.wait_for(publisher.connect(asyncio.Event()), 30)
    return publisher


def event(job_id: str, *, kind: Kind = Kind.job_event) -> Outgoing:
    prefix = {Kind.job_event: "events/", Kind.counts: "counts/", Kind.rejection: "rejections/"}
    return Outgoing(
        message_id=str(uuid.uuid4()),
        kind=kind,
        routing_key=prefix[kind] + job_id,
        order_key=job_id,
        body=json.dumps({"jobId": job_id}).encode(),
        correlation_id="corr-1",
        label="created",
        received_at=None,
    )


@pytest.fixture
async def connections() -> AsyncIterator[list[AbstractConnection]]:
    opened: list[AbstractConnection] = []
    yield opened
    for connection in opened:
        await connection.close()


async def channel(url: str, opened: list[AbstractConnection]) -> AbstractChannel:
    connection = await aio_pika.connect(url, timeout=10)
    opened.append(connection)
    return await connection.channel()


async def ignore(message: AbstractIncomingMessage) -> None:
    """A consumer that is never given a message: the broker refuses it first."""
    del message


class Inbox:
    """A consumer's queue: what it received, in order."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def deliver(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        await self.messages.put(message)

    async def next(self) -> str:
        message = await asyncio.wait_for(self.messages.get(), 10)
        return str(json.loads(message.body)["jobId"])


async def subscribe(
    ch: AbstractChannel, queue_name: str, *bindings: tuple[str, str], exclusive: bool = False
) -> Inbox:
    queue = await ch.declare_queue(queue_name, durable=not exclusive, exclusive=exclusive)
    for exchange, key in bindings:
        await queue.bind(exchange, routing_key=key)
    inbox = Inbox()
    await queue.consume(inbox.deliver)
    return inbox


async def only_own(inbox: Inbox, service: AmqpPublisher, tenant: str, other: str) -> None:
    """The other tenant's events are published first: the first to arrive is our own."""
    ours = f"{tenant}.{uuid.uuid4()}"
    await service.publish(event(f"{other}.{uuid.uuid4()}"))
    await service.publish(event(ours))
    assert await inbox.next() == ours
    assert inbox.messages.empty()


# --- the service's user --------------------------------------------------------------------


async def test_the_service_declares_its_topology_and_publishes(
    node: Node, service: AmqpPublisher
) -> None:
    job_id = f"acme.{uuid.uuid4()}"
    await service.publish(event(job_id))
    await service.publish(event("acme.q1", kind=Kind.counts))
    await service.publish(event("acme.q1", kind=Kind.rejection))
    queues = node.rabbit.ctl("-q", "list_queues", "name", "messages", "--no-table-headers")
    counts = dict(line.split("\t") for line in queues.strip().splitlines())
    assert int(counts[EVENTS_QUEUE]) >= 2  # the job event and the counts
    assert int(counts["events/rejections"]) >= 1


@pytest.mark.parametrize("queue_name", [EVENTS_QUEUE, "events/rejections"])
async def test_the_service_reads_no_queue(
    node: Node, connections: list[AbstractConnection], queue_name: str
) -> None:
    ch = await channel(node.url("print-service"), connections)
    queue = await ch.get_queue(queue_name, ensure=False)
    with pytest.raises(ChannelAccessRefused):
        await queue.consume(ignore)


@pytest.mark.parametrize("queue_name", ["tenants/acme/mine", "elsewhere"])
async def test_the_service_declares_no_other_queue(
    node: Node, connections: list[AbstractConnection], queue_name: str
) -> None:
    ch = await channel(node.url("print-service"), connections)
    with pytest.raises(ChannelAccessRefused):
        await ch.declare_queue(queue_name, durable=True)


async def test_the_service_publishes_only_the_contracts_routing_keys(
    node: Node, connections: list[AbstractConnection]
) -> None:
    ch = await channel(node.url("print-service"), connections)
    exchange = await ch.get_exchange(EVENTS_EXCHANGE, ensure=False)
    with pytest.raises(ChannelAccessRefused):
        await exchange.publish(aio_pika.Message(b"{}"), routing_key="commands/acme.q1")


# --- tenants (internal users) -----------------------------------------------------------------


async def test_a_tenant_reads_its_own_events(
    node: Node, service: AmqpPublisher, connections: list[AbstractConnection]
) -> None:
    ch = await channel(node.url("acme"), connections)
    inbox = await subscribe(ch, "tenants/acme/events", (EVENTS_EXCHANGE, "events/acme.#"))
    await only_own(inbox, service, "acme", "beta")
    rejections = await subscribe(
        ch, "tenants/acme/rejections", (REJECTIONS_EXCHANGE, "rejections/acme.*")
    )
    await service.publish(event("beta.q1", kind=Kind.rejection))
    await service.publish(event("acme.q1", kind=Kind.rejection))
    assert await rejections.next() == "acme.q1"


@pytest.mark.parametrize(
    ("exchange", "key"),
    [
        (EVENTS_EXCHANGE, "#"),
        (EVENTS_EXCHANGE, "*"),
        (EVENTS_EXCHANGE, "events/beta.#"),
        (EVENTS_EXCHANGE, "events/acmex.#"),  # a tenant whose name begins with ours
        (EVENTS_EXCHANGE, "events/acme"),
        (EVENTS_EXCHANGE, "counts/beta.q1"),
        (EVENTS_EXCHANGE, "*.#"),
        (REJECTIONS_EXCHANGE, "#"),
        (REJECTIONS_EXCHANGE, "rejections/beta.q1"),
        (REJECTIONS_EXCHANGE, "rejections/_invalid"),
    ],
)
async def test_a_tenant_cannot_bind_another_tenants_routing_keys(
    node: Node, connections: list[AbstractConnection], exchange: str, key: str
) -> None:
    ch = await channel(node.url("acme"), connections)
    queue = await ch.declare_queue(f"tenants/acme/{uuid.uuid4()}", auto_delete=True)
    with pytest.raises(ChannelAccessRefused, match="topic"):
        await queue.bind(exchange, routing_key=key)


@pytest.mark.parametrize("queue_name", [EVENTS_QUEUE, "events/rejections", "tenants/beta/events"])
async def test_a_tenant_cannot_read_the_shared_or_another_tenants_queue(
    node: Node, connections: list[AbstractConnection], queue_name: str
) -> None:
    beta = await channel(node.url("beta"), connections)
    await beta.declare_queue("tenants/beta/events", durable=True)
    ch = await channel(node.url("acme"), connections)
    queue = await ch.get_queue(queue_name, ensure=False)
    with pytest.raises(ChannelAccessRefused):
        await queue.consume(ignore)


async def test_a_tenant_cannot_declare_outside_its_namespace(
    node: Node, connections: list[AbstractConnection]
) -> None:
    ch = await channel(node.url("acme"), connections)
    with pytest.raises(ChannelAccessRefused):
        await ch.declare_queue("tenants/beta/stolen", durable=True)


@pytest.mark.parametrize("exchange", [EVENTS_EXCHANGE, REJECTIONS_EXCHANGE])
async def test_a_tenant_cannot_publish_events(
    node: Node, connections: list[AbstractConnection], exchange: str
) -> None:
    connection = await aio_pika.connect(node.url("acme"), timeout=10)
    connections.append(connection)
    ch = await connection.channel(publisher_confirms=True)
    target = await ch.get_exchange(exchange, ensure=False)
    with pytest.raises(ChannelAccessRefused):
        await target.publish(aio_pika.Message(b"{}"), routing_key="events/acme.forged")


# --- OAuth 2 (the contract's production server) ------------------------------------------------

ACME_TOPICS = (
    f"{RESOURCE_SERVER}.read:%2F/print.events/events%2Facme.*",
    f"{RESOURCE_SERVER}.read:%2F/print.events/counts%2Facme.*",
    f"{RESOURCE_SERVER}.read:%2F/print.rejections/rejections%2Facme.*",
)


async def test_a_token_with_read_job_consumes_its_tenants_events(
    node: Node, service: AmqpPublisher, connections: list[AbstractConnection]
) -> None:
    ch = await channel(node.token_url(node.token("read:job", *ACME_TOPICS)), connections)
    inbox = await subscribe(ch, "", (EVENTS_EXCHANGE, "events/acme.#"), exclusive=True)
    await only_own(inbox, service, "acme", "beta")


async def test_a_token_with_read_job_cannot_bind_another_tenants_keys(
    node: Node, connections: list[AbstractConnection]
) -> None:
    ch = await channel(node.token_url(node.token("read:job", *ACME_TOPICS)), connections)
    queue = await ch.declare_queue("", exclusive=True)
    with pytest.raises(ChannelAccessRefused, match="topic"):
        await queue.bind(EVENTS_EXCHANGE, routing_key="events/beta.#")


@pytest.mark.parametrize(
    "scopes",
    [
        ACME_TOPICS,  # the tenant's keys, but not the contract's scope
        ("write:job", *ACME_TOPICS),
        (f"{RESOURCE_SERVER}.read:%2F/print.events", *ACME_TOPICS),
    ],
)
async def test_a_token_without_read_job_cannot_consume(
    node: Node, connections: list[AbstractConnection], scopes: tuple[str, ...]
) -> None:
    ch = await channel(node.token_url(node.token(*scopes)), connections)
    with pytest.raises(ChannelAccessRefused):
        await ch.declare_queue("", exclusive=True)


async def test_a_token_with_read_job_reads_no_shared_queue(
    node: Node, connections: list[AbstractConnection]
) -> None:
    ch = await channel(node.token_url(node.token("read:job", *ACME_TOPICS)), connections)
    queue = await ch.get_queue(EVENTS_QUEUE, ensure=False)
    with pytest.raises(ChannelAccessRefused):
        await queue.consume(ignore)


def _refused_tokens(node: Node) -> dict[str, str]:
    good = {"sub": "client-acme", "aud": [RESOURCE_SERVER], "scope": "read:job"}
    now = int(time.time())
    return {
        "expired": node.key.token({**good, "exp": now - 5}),
        "another key": node.other_key.token({**good, "exp": now + 300}),
        "another audience": node.key.token({**good, "aud": ["other"], "exp": now + 300}),
        "unknown key id": node.key.token({**good, "exp": now + 300}, key_id="nope"),
        "not a token": "read:job",
    }


@pytest.mark.parametrize(
    "case", ["expired", "another key", "another audience", "unknown key id", "not a token"]
)
async def test_a_bad_token_is_refused_at_login(node: Node, case: str) -> None:
    with pytest.raises(AMQPConnectionError, match="ACCESS_REFUSED"):
        await aio_pika.connect(node.token_url(_refused_tokens(node)[case]), timeout=10)


async def test_a_token_with_write_job_publishes_as_the_service(node: Node) -> None:
    # The service's user id on each message must be the token's user (its `sub`).
    token = node.token("write:job", sub="print-service-oauth")
    publisher = await _publisher(node.token_url(token, user="print-service-oauth"))
    try:
        await publisher.publish(event(f"acme.{uuid.uuid4()}"))
        await publisher.publish(event("acme.q1", kind=Kind.rejection))
    finally:
        await publisher.close()


async def test_a_token_with_write_job_reads_nothing(
    node: Node, connections: list[AbstractConnection]
) -> None:
    ch = await channel(node.token_url(node.token("write:job")), connections)
    queue = await ch.get_queue(EVENTS_QUEUE, ensure=False)
    with pytest.raises(ChannelAccessRefused):
        await queue.consume(ignore)
