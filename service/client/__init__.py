"""A typed asyncio client of the print service: commands out on MQTT, answers in on AMQP.

    from service.client import PrintClient

    async with PrintClient.from_env(queue="office", api_key=key) as client:
        created = await client.submit(title="report", copies=2)
        async for event in client.watch(created.jobId):
            print(event.status)

Modules: `client` (PrintClient), `errors` (what it raises), `transport` (the MQTT and AMQP
connections), `wire` (the contract's encoding, pure).
"""

from service.client.client import ClientOptions, JobCommand, JobEvents, PrintClient
from service.client.errors import (
    ClientError,
    ConfigurationError,
    ConnectionFailed,
    Rejected,
    Timeout,
)
from service.client.wire import Reply

__all__ = [
    "ClientError",
    "ClientOptions",
    "ConfigurationError",
    "ConnectionFailed",
    "JobCommand",
    "JobEvents",
    "PrintClient",
    "Rejected",
    "Reply",
    "Timeout",
]
