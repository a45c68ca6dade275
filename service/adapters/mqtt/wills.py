"""Last wills: the one the broker publishes for us if we vanish, and reading those of peers.

A replica that dies without disconnecting leaves its work behind; the broker tells the others
by publishing its will. Ours comes back to us too (a previous connection of ours was lost),
and an unreadable one is only counted: neither is a peer to take over from.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from pydantic import ValidationError

from service.models import LastWill, Status

__all__ = ["LastWills", "will_payload"]

log = structlog.get_logger(__name__)


def will_payload(client_id: str) -> bytes:
    """What the broker publishes for `client_id` when its connection is lost."""
    will = LastWill(
        instance=client_id,
        status=Status.dead,
        message=f"print service instance {client_id} died without disconnecting",
    )
    return will.model_dump_json(exclude_none=True).encode()


class LastWills:
    """Reads the wills that arrive; calls `on_peer_will` with a dead peer's client id."""

    def __init__(
        self,
        *,
        own_id: str,
        on_peer_will: Callable[[str], None],
        on_will: Callable[[], None] = lambda: None,
    ) -> None:
        self._own_id = own_id
        self._on_peer_will = on_peer_will
        self._on_will = on_will  # every will seen, readable or not (a metric)

    def __call__(self, payload: bytes) -> None:
        self._on_will()
        try:
            will = LastWill.model_validate_json(payload)
        except ValidationError:
            log.warning("last_will_unreadable", size=len(payload))
            return
        if will.instance == self._own_id:
            log.info("own_last_will_seen", detail="a previous connection of ours was lost")
        else:
            log.warning("peer_last_will", instance=will.instance, detail=will.message)
            self._on_peer_will(will.instance)
