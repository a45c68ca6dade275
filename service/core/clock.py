"""Where time and ids come from: injected, so that tests can pin them."""

from __future__ import annotations

import random
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
    """A random (version 4) UUID drawn from `random`, not from the OS as `uuid4` does: an
    event id must be unique, not secret, and `os.urandom` is a system call that gives up the
    GIL (for the store's committer thread to take) for each of a job's ids. `random` is
    seeded from the OS and reseeds itself in a forked child."""
    return uuid.UUID(int=random.getrandbits(128), version=4)
