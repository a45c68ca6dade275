"""What the MQTT ingress needs to know, and nothing else of the service's configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from service.config import BrokerUrl, Settings

__all__ = ["BATCHES_COMMITTING", "IngressOptions"]

# Batches applied and waiting for their commit at once: the next batch is applied while
# the previous ones are committed (one fsync may serve several).
BATCHES_COMMITTING: Final = 4
MAX_CLIENT_ID: Final = 64  # what every broker must accept (MQTT 3.1.1 asks for 23)
MAX_RECEIVE_MAXIMUM: Final = 65_535  # a two-byte integer on the wire


@dataclass(frozen=True, slots=True, kw_only=True)
class IngressOptions:
    """The broker, the session and the subscriptions of the ingress; checked when made."""

    broker: BrokerUrl
    client_id: str
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = 60
    # MQTT 5: how long the broker keeps the session (and its commands) after we disconnect.
    session_expiry: int = 86_400
    # The filter subscribed to: a shared subscription ("$share/<group>/...") when in a group.
    commands_subscription: str = "commands/+"
    shared_group: str = ""
    last_will_topic: str = "/last-wills"
    batch_size: int = 256
    # At most this many received commands not yet taken (MQTT 5 asks the broker; the receive
    # window holds it whatever the protocol).
    receive_maximum: int = 1024
    batches_committing: int = BATCHES_COMMITTING
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.broker.scheme not in {"mqtt", "mqtts"}:
            problems.append(f"broker must be an mqtt:// or mqtts:// URL, not {self.broker.scheme}")
        if not 0 < len(self.client_id) <= MAX_CLIENT_ID:
            problems.append(f"client_id must have 1 to {MAX_CLIENT_ID} characters")
        if self.protocol not in {"5", "3.1.1"}:
            problems.append(f"protocol must be 5 or 3.1.1, not {self.protocol!r}")
        if not 5 <= self.keepalive <= 65_535:
            problems.append(f"keepalive must be 5 to 65535 s, not {self.keepalive}")
        if self.session_expiry < 0:
            problems.append(f"session_expiry must not be negative, not {self.session_expiry}")
        if not self.commands_subscription or not self.last_will_topic:
            problems.append("commands_subscription and last_will_topic must not be empty")
        if self.shared_group and not self.commands_subscription.startswith(
            f"$share/{self.shared_group}/"
        ):
            problems.append(
                f"commands_subscription {self.commands_subscription!r} is not one of "
                f"shared group {self.shared_group!r}"
            )
        if self.batch_size < 1 or self.batches_committing < 1:
            problems.append("batch_size and batches_committing must be at least 1")
        if not 1 <= self.receive_maximum <= MAX_RECEIVE_MAXIMUM:
            problems.append(f"receive_maximum must be 1 to {MAX_RECEIVE_MAXIMUM}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def v5(self) -> bool:
        return self.protocol == "5"

    @classmethod
    def from_settings(cls, settings: Settings) -> IngressOptions:
        """The options the service's settings describe (already validated by `Settings`)."""
        return cls(
            broker=settings.mqtt,
            client_id=settings.mqtt_client_id,
            protocol=settings.mqtt_protocol,
            keepalive=settings.mqtt_keepalive,
            session_expiry=settings.mqtt_session_expiry,
            commands_subscription=settings.commands_subscription,
            shared_group=settings.mqtt_shared_group,
            last_will_topic=settings.mqtt_last_will_topic,
            batch_size=settings.mqtt_batch_size,
            receive_maximum=settings.mqtt_receive_maximum,
            ca_file=settings.mqtt_ca_file,
            cert_file=settings.mqtt_cert_file,
            key_file=settings.mqtt_key_file,
        )
