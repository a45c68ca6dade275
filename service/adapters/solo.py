"""The coordinator of a service that runs alone (SQLite or in-memory store): it owns every
lane, since no other replica can share its store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service.ports import LaneCallback

__all__ = ["Solo"]


class Solo:
    def __init__(self, instance: str) -> None:
        self.instance = instance

    def owns(self, lane: str) -> bool:
        del lane
        return True

    def subscribe(
        self,
        *,
        gained: LaneCallback,
        lost: LaneCallback,
        job_changed: Callable[[str, str], None],
    ) -> None:
        del gained, lost, job_changed  # nothing is ever taken over

    async def claim(self, lane: str) -> bool:
        del lane
        return True

    async def replica_died(self, instance: str) -> None:
        del instance

    async def run(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
