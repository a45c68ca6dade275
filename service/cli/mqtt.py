"""Publishing one command as a client would: what the CLI's commands share."""

from __future__ import annotations

from collections.abc import Mapping

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from service.config import Settings

__all__ = ["client_id_for", "publish_command"]

# The service's replicas connect as `print-service-...` (deploy/mosquitto/roles.json): a
# fixed id there could take over a replica's session, so that user publishes with a random
# one (it is bound to no client id).
_SERVICE_CLIENT_ID_PREFIX = "print-service"


def client_id_for(username: str | None) -> str | None:
    """The MQTT client id to publish with: the user name (the broker's dynamic-security
    plugin binds each integrator to a client id equal to its user name and refuses any
    other), or None for a random one when there is no user or it is the service's."""
    if not username or username.startswith(_SERVICE_CLIENT_ID_PREFIX):
        return None
    return username


async def publish_command(
    settings: Settings,
    topic: str,
    payload: bytes,
    *,
    v5: bool,
    user_properties: Mapping[str, str] | None = None,
) -> None:
    """Publish `payload` to `topic` at QoS 1 on the service's broker (`MQTT_URL`, its TLS
    files too), with `user_properties` over MQTT 5; returns once the broker has it."""
    url = settings.mqtt
    properties = None
    if v5 and user_properties:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = list(user_properties.items())
    tls = None
    if url.tls:
        tls = aiomqtt.TLSParameters(
            ca_certs=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
            certfile=str(settings.mqtt_cert_file) if settings.mqtt_cert_file else None,
            keyfile=str(settings.mqtt_key_file) if settings.mqtt_key_file else None,
        )
    async with aiomqtt.Client(
        url.host,
        url.port,
        username=url.username,
        password=url.password,
        identifier=client_id_for(url.username),
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        tls_params=tls,
    ) as client:
        await client.publish(topic, payload, qos=1, properties=properties)
