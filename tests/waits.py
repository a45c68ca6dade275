"""Condition waits for tests: wait for what should happen, and say what did not.

A test waits for a condition (bounded by a generous timeout, which only decides how long a
broken run takes to fail), never for a duration. To show that something did not happen,
wait for a later thing that could only happen after it would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["wait_until", "wait_until_async"]

_POLL_S = 0.01
_T = TypeVar("_T")


async def wait_until(check: Callable[[], _T | None], *, what: str, timeout: float = 10.0) -> _T:
    """The first truthy value of `check`, polled; fails the test saying `what` did not
    happen within `timeout` seconds."""

    async def checked() -> _T | None:
        return check()

    return await wait_until_async(checked, what=what, timeout=timeout)


async def wait_until_async(
    check: Callable[[], Awaitable[_T | None]], *, what: str, timeout: float = 10.0
) -> _T:
    """`wait_until` for a check that has to wait itself (a store read, a request)."""
    try:
        async with asyncio.timeout(timeout):
            while not (value := await check()):
                await asyncio.sleep(_POLL_S)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None
    return value
