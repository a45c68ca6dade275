"""Retention: final jobs are forgotten once they have been final for `JOB_RETENTION`.

A background loop, off the hot path: it deletes a small batch (one short transaction), pauses,
and goes on until nothing is left, then sleeps for the interval. A batch is small so that a
backlog (a first start with months of jobs) never holds the store for long, and the pause
lets commands' transactions through between batches. Inline documents are already gone: a
job's is dropped in the commit that makes it final.

Every replica may run it: the stores' purge is idempotent, and PostgreSQL's skips the rows
another replica is deleting, so several purging together only share the work.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from service.aio import sleep_unless
from service.core.backoff import Backoff
from service.core.clock import Clock, utc_now
from service.metrics import Metrics
from service.ports import JobStore, StoreError

__all__ = ["Retention"]

log = structlog.get_logger(__name__)


class Retention:
    def __init__(
        self,
        store: JobStore,
        *,
        retention: timedelta,
        metrics: Metrics,
        batch: int = 500,
        pause: float = 0.5,
        interval: float = 60.0,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._retention = retention
        self._metrics = metrics
        self._batch = batch
        self._pause = pause
        self._interval = interval
        self._clock = clock

    async def purge_once(self) -> int:
        """Purge one batch; how many jobs it forgot (raises StoreError)."""
        purged = await self._store.purge_jobs(self._clock() - self._retention, self._batch)
        if purged:
            self._metrics.jobs_purged.inc(purged)
        return purged

    async def run(self, stopping: asyncio.Event) -> None:
        """Purge until `stopping`; a store outage waits and tries again."""
        backoff = Backoff(first=1.0, cap=60.0, jitter=0.2)
        while not stopping.is_set():
            try:
                purged = await self.purge_once()
            except StoreError as exc:
                log.warning("purge_failed", error=str(exc), retry_in=backoff.current)
                await sleep_unless(stopping, backoff.delay())
                continue
            backoff.reset()
            if purged:
                log.info("jobs_purged", count=purged)
            # A full batch: more are waiting; else caught up until the next interval.
            await sleep_unless(stopping, self._pause if purged >= self._batch else self._interval)
