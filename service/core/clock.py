"""Where time and ids come from: injected, so that tests can pin them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "IdSource", "new_id", "utc_now"]

Clock = Callable[[], datetime]
"""The current time, aware, in UTC."""

IdSource = Callable[[], uuid.UUID]
"""A new unique id (event ids)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()
