"""Small asyncio helpers the background loops share."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["first_of", "resolved", "sleep_unless"]


def resolved() -> asyncio.Future[None]:
    """A future that is already done: for an effect that had nothing to wait for."""
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


async def first_of(*waits: Coroutine[Any, Any, object]) -> None:
    """Wait for the first of several coroutines; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def sleep_unless(event: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`, or less if `event` is set first (a retry loop's pause that must
    not hold up shutdown). Whether `event` is set."""
    if not event.is_set():
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            return False
    return True
