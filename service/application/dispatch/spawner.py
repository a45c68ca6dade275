"""Background tasks of the dispatcher, started only while it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["Spawner"]


class Spawner:
    """Starts tasks in the dispatcher's TaskGroup between `open` and `close`; a no-op before
    and after, so that a callback arriving during shutdown (a commit, a lane change) starts
    nothing that would hold the shutdown up."""

    def __init__(self) -> None:
        self._tasks: asyncio.TaskGroup | None = None
        self.stopping = asyncio.Event()
        """Set by `close`: retry loops pause on it, so that they end with the dispatcher."""

    @property
    def running(self) -> bool:
        return self._tasks is not None

    def open(self, tasks: asyncio.TaskGroup) -> None:
        self._tasks = tasks

    def close(self) -> None:
        self._tasks = None
        self.stopping.set()

    def spawn(
        self, work: Coroutine[Any, Any, None], *, name: str | None = None
    ) -> asyncio.Task[None] | None:
        """Run `work` in the group; None (and `work` closed, never run) unless running."""
        if self._tasks is None:
            work.close()
            return None
        try:
            return self._tasks.create_task(work, name=name)
        except RuntimeError:  # the group is aborting (a sibling failed): nothing may start
            work.close()
            return None
