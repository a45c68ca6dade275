"""Who prints which lane, when several replicas share one PostgreSQL store.

Each replica holds a lease (a row in `replicas`, renewed every third of its length). A lane
(a queue and its printers) is printed by the replica named in `lanes`, and only while that
replica's lease is valid: so a job is printed by exactly one replica, and a printer is
driven by one. Each replica publishes the outbox rows of the lanes it holds, so one job's
events have one publisher and keep their order; the relay's own lane (`@relay`) is for the
rows of no lane (replies, rejections, printer statuses, and rows written before lanes).

A replica whose lease lapsed, or that was declared dead by its MQTT last will, loses its
lanes; the others take them over at their next scan (every renewal, and at once on a last
will or a notification that lanes were released). A replica that finds its own lease gone
gives its lanes up before it renews: it may have been taken over meanwhile.

Job changes reach the owner through NOTIFY: every transaction that writes a job notifies
`print_jobs` with `<instance> <queueId> <jobId>`, delivered on commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Final

import psycopg
import structlog
from psycopg.rows import TupleRow

from service.aio import first_of, sleep_unless
from service.core.backoff import Backoff
from service.ports import LaneCallback, OutboxLanes, StoreError

__all__ = ["JOB_CHANNEL", "RELAY_LANE", "PostgresLeases", "notify_payloads"]

log = structlog.get_logger(__name__)

JOB_CHANNEL: Final = "print_jobs"
# Not a valid queueId (those start with a letter or digit): it cannot clash with a queue.
RELAY_LANE: Final = "@relay"
# Stop taking jobs this long before the lease ends, for clock drift and a slow renewal.
_MARGIN: Final = 0.2
_NOTHING: Final = OutboxLanes(held=frozenset(), unlaned=False)

_CLAIM: Final = """
    INSERT INTO lanes (lane, owner) VALUES (%(lane)s, %(me)s)
    ON CONFLICT (lane) DO UPDATE SET owner = EXCLUDED.owner
    WHERE lanes.owner IS NULL OR lanes.owner = EXCLUDED.owner OR NOT EXISTS (
        SELECT 1 FROM replicas r WHERE r.instance = lanes.owner AND r.lease_until > now())
    RETURNING lane
"""

JobCallback = Callable[[str, str], None]


def _retry_pause() -> Backoff:
    """Pauses between tries to reach PostgreSQL: replicas cut off together spread out."""
    return Backoff(first=0.5, cap=10.0, jitter=0.2)


class PostgresLeases:
    """The `Coordinator` for replicas sharing PostgreSQL."""

    def __init__(
        self,
        url: str,
        *,
        instance: str,
        lease_seconds: float,
        lane_of: Callable[[str], str],
    ) -> None:
        self.instance = instance
        self._url = url
        self._lease = lease_seconds
        self._lane_of = lane_of
        self._owned: set[str] = set()
        self._publishing: OutboxLanes | None = None  # built from `_owned` when it changes
        self._valid_until = 0.0  # monotonic: the lease as this replica last renewed it
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        self._lock = asyncio.Lock()
        self._scan_now = asyncio.Event()
        self._on_gained: LaneCallback = lambda _: None
        self._on_lost: LaneCallback = lambda _: None
        self._on_job: JobCallback = lambda _q, _j: None

    def owns(self, lane: str) -> bool:
        return lane in self._owned and time.monotonic() < self._valid_until - _MARGIN

    def outbox_lanes(self) -> OutboxLanes:
        """The outbox rows this replica publishes now: its lanes' (none once its lease is
        in doubt, like `owns`), and with the relay's lane the rows of no lane. Asked for
        every row the relay publishes: a check of the clock, then the same value."""
        if time.monotonic() >= self._valid_until - _MARGIN:
            return _NOTHING
        if self._publishing is None:
            self._publishing = OutboxLanes(
                held=frozenset(self._owned - {RELAY_LANE}), unlaned=RELAY_LANE in self._owned
            )
        return self._publishing

    def _forget_lanes(self) -> None:
        self._owned.clear()
        self._publishing = None

    def subscribe(
        self, *, gained: LaneCallback, lost: LaneCallback, job_changed: JobCallback
    ) -> None:
        self._on_gained, self._on_lost, self._on_job = gained, lost, job_changed

    async def claim(self, lane: str) -> bool:
        """Take `lane` if no live replica has it; True if it is ours now."""
        if self.owns(lane):
            return True
        if not await self._claim_row(lane):
            return False
        if lane not in self._owned:
            self._gain(lane)
            self._on_gained([lane])
        return True

    async def _claim_row(self, lane: str) -> bool:
        """Whether the store now names this replica as the lane's holder."""
        if time.monotonic() >= self._valid_until - _MARGIN:
            return False  # no valid lease of our own: take nothing
        return bool(await self._execute(_CLAIM, {"lane": lane, "me": self.instance}))

    def _gain(self, lane: str) -> None:
        self._owned.add(lane)
        self._publishing = None
        log.info("lane_claimed", lane=lane, instance=self.instance)

    async def replica_died(self, instance: str) -> None:
        """A peer's last will: end its lease now, and take over its lanes."""
        if instance == self.instance:
            return
        revoked = await self._execute(
            "UPDATE replicas SET lease_until = now() WHERE instance = %(i)s "
            "AND lease_until > now() RETURNING instance",
            {"i": instance},
        )
        if revoked:
            log.warning("replica_lease_revoked", instance=instance, by="last_will")
        self._scan_now.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Renew, scan for lanes to take over, and follow job notifications until stopped."""
        listener = await self._connect(stopping)
        if listener is None:
            # Stopped before PostgreSQL could be reached: nothing held, nothing to give (a
            # claim meanwhile may have opened the connection for statements: close it).
            if self._conn is not None:
                await self._conn.close()
            return
        # The task owns the connection now: it replaces it after a failure, and closes it.
        listen = asyncio.create_task(self._listen(listener, stopping))
        try:
            await self._renew()
            while not stopping.is_set():
                await self._scan()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._lease / 3):
                        await first_of(self._scan_now.wait(), stopping.wait())
                self._scan_now.clear()
                await self._renew()
        finally:
            listen.cancel()
            await asyncio.gather(listen, return_exceptions=True)
            await self._release()
            if self._conn is not None:
                await self._conn.close()

    async def _renew(self) -> None:
        try:
            renewed = await self._execute(
                "UPDATE replicas SET lease_until = now() + make_interval(secs => %(s)s) "
                "WHERE instance = %(i)s AND lease_until > now() RETURNING instance",
                {"s": self._lease, "i": self.instance},
            )
            if not renewed:
                await self._register()
                return
        except StoreError as exc:
            log.warning("lease_renewal_failed", error=str(exc))
            return  # `owns` turns false by itself when the lease runs out
        self._valid_until = time.monotonic() + self._lease

    async def _register(self) -> None:
        """Start a new lease; lanes held under an old one are given up first."""
        if self._owned:
            lost = sorted(self._owned)
            self._forget_lanes()
            log.warning("lease_lost", instance=self.instance, lanes=lost)
            self._on_lost(lost)
        await self._execute(
            "UPDATE lanes SET owner = NULL WHERE owner = %(i)s", {"i": self.instance}
        )
        await self._execute(
            "INSERT INTO replicas (instance, lease_until) "
            "VALUES (%(i)s, now() + make_interval(secs => %(s)s)) "
            "ON CONFLICT (instance) DO UPDATE SET lease_until = EXCLUDED.lease_until",
            {"i": self.instance, "s": self._lease},
        )
        self._valid_until = time.monotonic() + self._lease
        log.info("lease_started", instance=self.instance, seconds=self._lease)

    async def _scan(self) -> None:
        """Claim the relay and every lane with unfinished jobs or unsent outbox rows (a dead
        replica's last events) that no live replica holds."""
        try:
            rows = await self._execute(
                "SELECT DISTINCT queue_id FROM jobs WHERE status IN ('created', 'started', 'held')",
                {},
            )
            unsent = await self._execute(
                "SELECT DISTINCT lane FROM outbox WHERE lane IS NOT NULL", {}
            )
        except StoreError as exc:
            log.warning("lane_scan_failed", error=str(exc))
            return
        lanes = {RELAY_LANE} | {self._lane_of(row[0]) for row in rows} | {r[0] for r in unsent}
        gained = []
        for lane in sorted(lanes - self._owned):
            try:
                if await self._claim_row(lane):
                    self._gain(lane)
                    gained.append(lane)
            except StoreError as exc:
                # Most likely a transaction of the lane's old holder still has it locked
                # (a frozen replica's, until the server ends it): the next scan retries.
                log.info("lane_claim_deferred", lane=lane, error=str(exc))
        if gained:
            # Announced together: the dispatcher loads all their jobs in one read.
            self._on_gained(gained)

    async def _listen(
        self, conn: psycopg.AsyncConnection[TupleRow], stopping: asyncio.Event
    ) -> None:
        pause = _retry_pause()
        try:
            while not stopping.is_set():
                try:
                    await self._follow(conn)
                    pause.reset()  # the connection served a whole wait
                except psycopg.Error as exc:
                    log.warning("job_notifications_lost", error=str(exc))
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()
                    if await sleep_unless(stopping, pause.delay()):
                        return
                    reconnected = await self._connect(stopping)
                    if reconnected is None:
                        return
                    conn = reconnected
                    self._scan_now.set()  # what was missed: the scan and a reload catch up
        finally:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def _follow(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        """Hand on the job notifications that come within a second."""
        async for notice in conn.notifies(timeout=1.0):
            instance, _, rest = notice.payload.partition(" ")
            if instance == self.instance:
                continue
            queue_id, _, job_id = rest.partition(" ")
            if queue_id == "*":  # lanes were released: take them over now
                self._scan_now.set()
            elif self._lane_of(queue_id) in self._owned:
                self._on_job(queue_id, job_id)

    async def _release(self) -> None:
        """A clean stop: give the lanes back and tell the others to take them."""
        self._forget_lanes()
        with contextlib.suppress(StoreError):
            await self._execute(
                "UPDATE lanes SET owner = NULL WHERE owner = %(i)s", {"i": self.instance}
            )
            await self._execute("DELETE FROM replicas WHERE instance = %(i)s", {"i": self.instance})
            await self._execute(
                "SELECT pg_notify(%(c)s, %(p)s)", {"c": JOB_CHANNEL, "p": f"{self.instance} * *"}
            )
        log.info("lanes_released", instance=self.instance)

    async def _connect(self, stopping: asyncio.Event) -> psycopg.AsyncConnection[TupleRow] | None:
        """A connection listening for job notifications, or None once `stopping` is set."""
        pause = _retry_pause()
        while not stopping.is_set():
            conn: psycopg.AsyncConnection[TupleRow] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
                await conn.execute(f"LISTEN {JOB_CHANNEL}")
            except psycopg.Error as exc:
                log.warning("lease_connection_failed", error=str(exc))
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()
                await sleep_unless(stopping, pause.delay())
            else:
                return conn
        return None

    async def _execute(self, sql: str, params: dict[str, object]) -> list[TupleRow]:
        async with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
                    # A claim blocked by a lock must not hold up the renewal of our lease.
                    await self._conn.execute(
                        f"SET lock_timeout = {int(self._lease * 100)}".encode()
                    )
                cursor = await self._conn.execute(sql.encode(), params)
                return await cursor.fetchall() if cursor.description else []
            except psycopg.Error as exc:
                raise StoreError(f"lease query failed: {exc}") from exc


def notify_payloads(instance: str, jobs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The NOTIFY arguments for jobs written by `instance`: (channel, payload) per job."""
    return [(JOB_CHANNEL, f"{instance} {queue_id} {job_id}") for queue_id, job_id in jobs]
