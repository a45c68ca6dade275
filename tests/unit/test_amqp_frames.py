"""A publish's frames, written at once, are pamqp's and aiormq's to the byte: the method,
the content header around the properties, the body split as aiormq splits it."""

from __future__ import annotations

import pytest
from aiormq.abc import ChannelFrame
from hypothesis import example, given
from hypothesis import strategies as st
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from service.adapters.amqp import EVENTS_EXCHANGE, REJECTIONS_EXCHANGE
from service.adapters.amqp_frames import PublishFrames


class _Encoded(Basic.Properties):
    """Properties already encoded, as pamqp's content header asks them to be."""

    def __init__(self, encoded: bytes) -> None:
        super().__init__()
        self._encoded = encoded

    def marshal(self) -> bytes:
        return self._encoded


def pamqp_frames(
    exchange: str, channel: int, routing_key: str, properties: bytes, body: bytes, max_body: int
) -> bytes:
    """What aiormq's basic_publish queues (its `_split_body`, pamqp's marshalling)."""
    if max_body < 1:  # aiormq's _split_body, with no frame limit (frame_max 0)
        chunks = [body] if body else []
    else:
        chunks = [body[i : i + max_body] for i in range(0, len(body), max_body)]
    frames: list[Basic.Publish | ContentHeader | ContentBody] = [
        Basic.Publish(exchange=exchange, routing_key=routing_key),
        ContentHeader(properties=_Encoded(properties), body_size=len(body)),
        *map(ContentBody, chunks),
    ]
    return ChannelFrame.marshall(channel_number=channel, frames=frames).payload


routing_keys = st.text(st.characters(exclude_categories=["Cs"]), max_size=80).filter(
    lambda key: len(key.encode()) <= 255
)


@given(
    exchange=st.sampled_from([EVENTS_EXCHANGE, REJECTIONS_EXCHANGE, ""]),
    channel=st.integers(1, 2**16 - 1),
    routing_key=routing_keys,
    properties=st.binary(max_size=300),
    body=st.binary(max_size=3000),
    max_body=st.integers(1, 1200),
)
@example(EVENTS_EXCHANGE, 1, "k", b"", b"x" * 20, -8)  # frame_max 0: no limit
@example(EVENTS_EXCHANGE, 1, "events.jobs.j", b"\x80\x00", b"", 10)
@example(EVENTS_EXCHANGE, 1, "k" * 255, b"", b"x" * 20, 10)  # exactly two full frames
def test_the_frames_are_pamqps(
    exchange: str, channel: int, routing_key: str, properties: bytes, body: bytes, max_body: int
) -> None:
    frames = PublishFrames(exchange).encode(
        channel=channel,
        routing_key=routing_key,
        properties=properties,
        body=body,
        max_body=max_body,
    )
    assert frames == pamqp_frames(exchange, channel, routing_key, properties, body, max_body)


@pytest.mark.parametrize("routing_key", ["k" * 256, "é" * 128, "\udc00"])
def test_a_routing_key_amqp_cannot_carry_raises_value_error(routing_key: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - UnicodeEncodeError is one
        PublishFrames(EVENTS_EXCHANGE).encode(
            channel=1, routing_key=routing_key, properties=b"", body=b"{}", max_body=100
        )
