"""The schema is written once and rendered per dialect: each dialect's migrations are, version
for version, the DDL that dialect applied before the two were merged (copied below as they
were released), so a database that recorded a version keeps meaning the same tables."""

from __future__ import annotations

from typing import Final

import pytest

from service.adapters.store.schema import MIGRATIONS, POSTGRES, SQLITE, Dialect, migrations

# As released, in service/adapters/store/sqlite.py: split on ";" when applied.
OLD_SQLITE: Final = (
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        queue_id TEXT NOT NULL,
        status TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        priority TEXT NOT NULL,
        user_id TEXT,
        document_name TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX jobs_unfinished ON jobs (created_at) WHERE status IN ('created', 'started');
    CREATE TABLE job_history (
        job_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        status TEXT NOT NULL,
        at TEXT NOT NULL,
        reason TEXT,
        PRIMARY KEY (job_id, sequence)
    );
    CREATE TABLE outbox (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        order_key TEXT NOT NULL,
        body BLOB NOT NULL,
        correlation_id TEXT NOT NULL,
        label TEXT NOT NULL,
        received_at REAL,
        enqueued_at REAL NOT NULL
    );
    """,
    """
    ALTER TABLE jobs ADD COLUMN details TEXT;
    CREATE INDEX jobs_by_queue ON jobs (queue_id, status);
    CREATE TABLE documents (
        job_id TEXT PRIMARY KEY,
        data BLOB NOT NULL
    );
    """,
    """
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        at REAL NOT NULL,
        reason TEXT NOT NULL,
        address TEXT NOT NULL,
        payload BLOB NOT NULL,
        properties TEXT NOT NULL,
        attempts INTEGER NOT NULL
    );
    """,
    """
    CREATE INDEX jobs_listing ON jobs (queue_id, created_at, job_id);
    CREATE INDEX jobs_final ON jobs (updated_at) WHERE status IN ('finished', 'canceled', 'failed')
    """,
    """
    DROP INDEX jobs_unfinished;
    CREATE INDEX jobs_unfinished ON jobs (created_at) WHERE status IN ('created', 'started', 'held')
    """,
    """
    ALTER TABLE outbox ADD COLUMN traceparent TEXT;
    ALTER TABLE outbox ADD COLUMN tracestate TEXT
    """,
    """
    ALTER TABLE outbox ADD COLUMN lane TEXT;
    CREATE INDEX outbox_by_lane ON outbox (lane, position);
    CREATE INDEX outbox_by_order_key ON outbox (order_key, position)
    """,
)


# As released, in service/adapters/store/postgres.py.
OLD_POSTGRES: Final = (
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        queue_id TEXT NOT NULL,
        status TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        priority TEXT NOT NULL,
        user_id TEXT,
        document_name TEXT,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        correlation_id TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX jobs_unfinished ON jobs (created_at) WHERE status IN ('created', 'started');
    CREATE TABLE job_history (
        job_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        status TEXT NOT NULL,
        at TIMESTAMPTZ NOT NULL,
        reason TEXT,
        PRIMARY KEY (job_id, sequence)
    );
    CREATE TABLE outbox (
        position BIGSERIAL PRIMARY KEY,
        message_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        order_key TEXT NOT NULL,
        body BYTEA NOT NULL,
        correlation_id TEXT NOT NULL,
        label TEXT NOT NULL,
        received_at DOUBLE PRECISION,
        enqueued_at DOUBLE PRECISION NOT NULL
    )
    """,
    """
    ALTER TABLE jobs ADD COLUMN details TEXT;
    CREATE INDEX jobs_by_queue ON jobs (queue_id, status);
    CREATE TABLE documents (
        job_id TEXT PRIMARY KEY,
        data BYTEA NOT NULL
    )
    """,
    """
    CREATE TABLE replicas (
        instance TEXT PRIMARY KEY,
        lease_until TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE lanes (
        lane TEXT PRIMARY KEY,
        owner TEXT
    )
    """,
    """
    CREATE TABLE dead_letters (
        id BIGSERIAL PRIMARY KEY,
        source TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL,
        address TEXT NOT NULL,
        payload BYTEA NOT NULL,
        properties TEXT NOT NULL,
        attempts INTEGER NOT NULL
    )
    """,
    """
    CREATE INDEX jobs_listing ON jobs (queue_id, created_at, job_id);
    CREATE INDEX jobs_final ON jobs (updated_at) WHERE status IN ('finished', 'canceled', 'failed')
    """,
    """
    DROP INDEX jobs_unfinished;
    CREATE INDEX jobs_unfinished ON jobs (created_at) WHERE status IN ('created', 'started', 'held')
    """,
    """
    ALTER TABLE outbox ADD COLUMN traceparent TEXT;
    ALTER TABLE outbox ADD COLUMN tracestate TEXT
    """,
    """
    ALTER TABLE outbox ADD COLUMN lane TEXT;
    CREATE INDEX outbox_by_lane ON outbox (lane, position);
    CREATE INDEX outbox_by_order_key ON outbox (order_key, position)
    """,
)


def statements(script: str) -> tuple[str, ...]:
    """The statements of a released script as it was applied, whitespace aside."""
    return tuple(" ".join(s.split()) for s in script.split(";") if s.strip())


@pytest.mark.parametrize(("dialect", "released"), [(SQLITE, OLD_SQLITE), (POSTGRES, OLD_POSTGRES)])
def test_each_version_renders_the_ddl_it_was_released_with(
    dialect: Dialect, released: tuple[str, ...]
):
    rendered = {
        version: tuple(" ".join(s.split()) for s in ddl) for version, ddl in migrations(dialect)
    }
    assert rendered == {
        version: statements(script) for version, script in enumerate(released, start=1)
    }


def test_versions_count_from_one_without_gaps_in_each_dialect():
    for dialect in (SQLITE, POSTGRES):
        versions = [m.versions[dialect] for m in MIGRATIONS if dialect in m.versions]
        assert versions == list(range(1, len(versions) + 1)), dialect.name
