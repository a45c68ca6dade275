"""The ceiling: MQTT 5 QoS 1 in, three persistent confirmed AMQP publishes out per command.

No validation, no state, no store: what this machine's brokers and client libraries allow.
It publishes what a job's life needs (`created`, `started`, `finished`), to the same
exchange and routes as the service, so one consumer measures both the same way.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine

import aio_pika
import aiomqtt

from service.config import BrokerUrl

STATUSES = ("created", "started", "finished")


async def bridge(mqtt_url: str, amqp_url: str, in_flight: int = 256) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    url = BrokerUrl(mqtt_url, schemes=("mqtt", "mqtts"))
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(
        "print.events", aio_pika.ExchangeType.TOPIC, durable=True
    )
    limit = asyncio.Semaphore(in_flight)

    async def relay(payload: bytes) -> None:
        job_id = json.loads(payload)["jobId"]
        async with limit:
            # In order per job, as the service does; jobs concurrently.
            for sequence, status in enumerate(STATUSES, start=1):
                body = json.dumps(
                    {
                        "jobId": job_id,
                        "status": status,
                        "sequence": sequence,
                        "eventId": str(uuid.uuid4()),
                        "queueId": "bench",
                    }
                ).encode()
                message = aio_pika.Message(
                    body,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/json",
                )
                await exchange.publish(message, routing_key=f"events/{job_id}")

    tasks: set[asyncio.Task[None]] = set()
    # MQTT 5, as the service speaks by default: the same client-side cost per message.
    async with aiomqtt.Client(
        url.host,
        url.port,
        identifier=f"raw-bridge-{uuid.uuid4().hex[:6]}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe("commands/+", qos=1)
        print("ready", flush=True)
        consume = asyncio.create_task(_consume(client, relay, tasks))
        await stop.wait()
        consume.cancel()
        await asyncio.gather(consume, *tasks, return_exceptions=True)
    await connection.close()


async def _consume(
    client: aiomqtt.Client,
    relay: Callable[[bytes], Coroutine[None, None, None]],
    tasks: set[asyncio.Task[None]],
) -> None:
    async for message in client.messages:
        assert isinstance(message.payload, bytes)
        task = asyncio.create_task(relay(message.payload))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


if __name__ == "__main__":
    asyncio.run(bridge(sys.argv[1], sys.argv[2]))
