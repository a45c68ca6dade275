"""Does the broker honour an MQTT 5 client's Receive Maximum? (`python -m bench.receive_maximum`)

A subscriber with manual acknowledgement asks for at most N unacknowledged QoS 1 messages,
takes them in batches of up to 256, and acknowledges each batch after 50 ms (as the service
does after its commit). Another process publishes 6,000 messages. Printed: the most
messages the subscriber held unacknowledged at once. A broker that honours Receive Maximum
never exceeds N; Mosquitto 2.0.11 does once acknowledgements flow, which is where the
service's memory goes in a flood.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.integration.brokers import private_mosquitto

MESSAGES = 6_000

_PUBLISHER = """
import asyncio, sys
import aiomqtt

async def main():
    async with aiomqtt.Client("127.0.0.1", int(sys.argv[1]), max_inflight_messages=500) as c:
        for start in range(0, int(sys.argv[2]), 500):
            await asyncio.gather(*(c.publish("t/x", b"m", qos=1) for _ in range(500)))

asyncio.run(main())
"""


async def peak_unacknowledged(receive_maximum: int) -> int:
    with private_mosquitto() as broker:
        port = int(broker.url.rsplit(":", 1)[1])
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 60
        properties.ReceiveMaximum = receive_maximum
        subscriber = aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier="receive-maximum-probe",
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=properties,
        )
        subscriber._client.manual_ack_set(on=True)  # noqa: SLF001 - what the service does
        async with subscriber:
            await subscriber.subscribe("t/+", qos=1)
            publisher = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _PUBLISHER,
                str(port),
                str(MESSAGES),
                stderr=asyncio.subprocess.DEVNULL,
            )
            peak = taken = 0
            messages = subscriber.messages
            async for first in messages:
                batch = [first]
                while len(batch) < 256 and len(messages) > 0:
                    batch.append(await anext(messages))
                peak = max(peak, len(messages) + len(batch))
                await asyncio.sleep(0.05)
                for message in batch:
                    subscriber._client.ack(message.mid, message.qos)  # noqa: SLF001
                taken += len(batch)
                if taken >= MESSAGES:
                    break
            await publisher.wait()
    return peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("receive_maximum", type=int, nargs="*", default=[20, 100, 1024])
    for value in parser.parse_args().receive_maximum:
        peak = asyncio.run(peak_unacknowledged(value))
        verdict = "honoured" if peak <= value else "EXCEEDED"
        print(f"Receive Maximum {value:>5}: at most {peak:>5} unacknowledged at once ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
