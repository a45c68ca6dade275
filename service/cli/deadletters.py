"""`print-service dead-letters`: list, replay or drop what the service parked.

A parked command is replayed by publishing its raw bytes again to its topic, with its user
properties, as any client would (the service then handles it as new); a parked event was
refused by the AMQP broker and is only listed and dropped (fix the cause, then the job's
status can be asked for again with `getPrintJobStatus`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime

from service.client.transport import CommandPublisher
from service.client.wire import Outbound
from service.config import Settings
from service.ports import DeadLetter, JobStore
from service.tls import mqtt_ssl_context

__all__ = ["dead_letters_command"]

_PUBLISH_TIMEOUT_S = 30.0


async def dead_letters_command(
    settings: Settings,
    store: JobStore,
    *,
    replay: Sequence[int],
    drop: Sequence[int],
    limit: int,
    as_json: bool,
) -> int:
    """Returns the exit code: 0 done, 1 when a requested id is not a parked letter."""
    await store.open()
    try:
        letters = {letter.id: letter for letter in await store.dead_letters(max(limit, 100_000))}
        missing = [i for i in (*replay, *drop) if i not in letters]
        if missing:
            print(f"no dead letter with id {', '.join(map(str, missing))}")
            return 1
        for id_ in replay:
            letter = letters[id_]
            if letter.source != "command":
                print(f"dead letter {id_} is an event the broker refused: drop it, not replay")
                return 1
            await _publish(settings, letter)
            print(f"replayed {id_} to {letter.address}")
        if done := [*replay, *drop]:
            await store.drop_dead_letters(done)
            print(f"dropped {len(done)}")
            return 0
        for letter in list(letters.values())[:limit]:
            print(_render(letter, as_json=as_json))
        return 0
    finally:
        await store.close()


async def _publish(settings: Settings, letter: DeadLetter) -> None:
    publisher = CommandPublisher(
        url=settings.mqtt,
        v5=settings.mqtt_protocol == "5",
        tls=mqtt_ssl_context(settings),
        timeout=_PUBLISH_TIMEOUT_S,
    )
    await publisher.open()
    try:
        await publisher.publish(
            letter.address,
            Outbound(payload=letter.payload, user_properties=dict(letter.properties)),
        )
    finally:
        await publisher.close()


def _render(letter: DeadLetter, *, as_json: bool) -> str:
    at = datetime.fromtimestamp(letter.at, UTC).isoformat(timespec="seconds")
    if as_json:
        return json.dumps(
            {
                "id": letter.id,
                "source": letter.source,
                "at": at,
                "reason": letter.reason,
                "address": letter.address,
                "attempts": letter.attempts,
                "properties": dict(letter.properties),
                "payload_base64": base64.b64encode(letter.payload).decode(),
            }
        )
    preview = letter.payload[:80].decode("utf-8", "replace").replace("\n", " ")
    return (
        f"{letter.id}  {at}  {letter.source}  {letter.address}  attempts={letter.attempts}  "
        f"{letter.reason}\n    {len(letter.payload)} bytes: {preview!r}"
    )
