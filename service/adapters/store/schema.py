"""The schema of both SQL stores: one list of migrations, rendered for each dialect.

A migration is written once, with the few types that differ as placeholders. Its version is
given per dialect, and never changes once released: it is what each database recorded in
`schema_migrations` when it applied the migration. A migration that only one dialect needs
(the lanes of replicas sharing PostgreSQL) has no version in the other.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["MIGRATIONS", "POSTGRES", "SQLITE", "Dialect", "Migration", "migrations"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Dialect:
    """How one database spells the types that differ."""

    name: str
    timestamp: str  # a moment with its offset (SQLite: ISO 8601 text)
    blob: str
    real: str
    # An integer key the database assigns, increasing and never reused (the outbox's order).
    serial_key: str

    def render(self, statement: str) -> str:
        types = {
            "timestamp": self.timestamp,
            "blob": self.blob,
            "real": self.real,
            "serial_key": self.serial_key,
        }
        return textwrap.dedent(statement).strip().format_map(types)


SQLITE: Final = Dialect(
    name="sqlite",
    timestamp="TEXT",
    blob="BLOB",
    real="REAL",
    serial_key="INTEGER PRIMARY KEY AUTOINCREMENT",
)
POSTGRES: Final = Dialect(
    name="postgresql",
    timestamp="TIMESTAMPTZ",
    blob="BYTEA",
    real="DOUBLE PRECISION",
    serial_key="BIGSERIAL PRIMARY KEY",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    """Statements applied together, once, under the version each dialect records for them."""

    versions: Mapping[Dialect, int]
    statements: tuple[str, ...]


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        versions={SQLITE: 1, POSTGRES: 1},
        statements=(
            """
            CREATE TABLE jobs (
                job_id TEXT PRIMARY KEY,
                queue_id TEXT NOT NULL,
                status TEXT NOT NULL,
                sequence INTEGER NOT NULL,
                priority TEXT NOT NULL,
                user_id TEXT,
                document_name TEXT,
                created_at {timestamp} NOT NULL,
                updated_at {timestamp} NOT NULL,
                correlation_id TEXT NOT NULL,
                reason TEXT
            )
            """,
            "CREATE INDEX jobs_unfinished ON jobs (created_at) "
            "WHERE status IN ('created', 'started')",
            """
            CREATE TABLE job_history (
                job_id TEXT NOT NULL,
                sequence INTEGER NOT NULL,
                status TEXT NOT NULL,
                at {timestamp} NOT NULL,
                reason TEXT,
                PRIMARY KEY (job_id, sequence)
            )
            """,
            """
            CREATE TABLE outbox (
                position {serial_key},
                message_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                routing_key TEXT NOT NULL,
                order_key TEXT NOT NULL,
                body {blob} NOT NULL,
                correlation_id TEXT NOT NULL,
                label TEXT NOT NULL,
                received_at {real},
                enqueued_at {real} NOT NULL
            )
            """,
        ),
    ),
    Migration(
        versions={SQLITE: 2, POSTGRES: 2},
        statements=(
            "ALTER TABLE jobs ADD COLUMN details TEXT",
            "CREATE INDEX jobs_by_queue ON jobs (queue_id, status)",
            """
            CREATE TABLE documents (
                job_id TEXT PRIMARY KEY,
                data {blob} NOT NULL
            )
            """,
        ),
    ),
    Migration(
        # Leases of replicas sharing the store; SQLite has one replica.
        versions={POSTGRES: 3},
        statements=(
            """
            CREATE TABLE replicas (
                instance TEXT PRIMARY KEY,
                lease_until {timestamp} NOT NULL
            )
            """,
            """
            CREATE TABLE lanes (
                lane TEXT PRIMARY KEY,
                owner TEXT
            )
            """,
        ),
    ),
    Migration(
        versions={SQLITE: 3, POSTGRES: 4},
        statements=(
            """
            CREATE TABLE dead_letters (
                id {serial_key},
                source TEXT NOT NULL,
                at {real} NOT NULL,
                reason TEXT NOT NULL,
                address TEXT NOT NULL,
                payload {blob} NOT NULL,
                properties TEXT NOT NULL,
                attempts INTEGER NOT NULL
            )
            """,
        ),
    ),
    Migration(
        # `listPrintJobs` pages a queue newest first: an index walk, never a scan. Retention
        # finds the oldest final jobs by when they ended.
        versions={SQLITE: 4, POSTGRES: 5},
        statements=(
            "CREATE INDEX jobs_listing ON jobs (queue_id, created_at, job_id)",
            "CREATE INDEX jobs_final ON jobs (updated_at) "
            "WHERE status IN ('finished', 'canceled', 'failed')",
        ),
    ),
    Migration(
        # Held jobs are unfinished too: recovery and takeover load them (their hold timers
        # live with the lane's holder), so the index that finds unfinished jobs holds them.
        versions={SQLITE: 5, POSTGRES: 6},
        statements=(
            "DROP INDEX jobs_unfinished",
            "CREATE INDEX jobs_unfinished ON jobs (created_at) "
            "WHERE status IN ('created', 'started', 'held')",
        ),
    ),
    Migration(
        # The W3C trace context of the command that caused an outbox message (tracing on):
        # it is published later, by the relay, in that trace.
        versions={SQLITE: 6, POSTGRES: 7},
        statements=(
            "ALTER TABLE outbox ADD COLUMN traceparent TEXT",
            "ALTER TABLE outbox ADD COLUMN tracestate TEXT",
        ),
    ),
    Migration(
        # Replicas share the publishing: each publishes the rows of the lanes it holds (the
        # lane of the job whose event a row is; NULL, for rows written before and for rows of
        # no job, is published by the relay lane's holder). An index for each relay's read,
        # and one for the check that a job's earlier row in another lane was sent first.
        versions={SQLITE: 7, POSTGRES: 8},
        statements=(
            "ALTER TABLE outbox ADD COLUMN lane TEXT",
            "CREATE INDEX outbox_by_lane ON outbox (lane, position)",
            "CREATE INDEX outbox_by_order_key ON outbox (order_key, position)",
        ),
    ),
)


def migrations(dialect: Dialect) -> Sequence[tuple[int, tuple[str, ...]]]:
    """`dialect`'s migrations as (version, rendered statements), in version order."""
    mine = sorted((m.versions[dialect], m.statements) for m in MIGRATIONS if dialect in m.versions)
    return [(version, tuple(map(dialect.render, statements))) for version, statements in mine]
