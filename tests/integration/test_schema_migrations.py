"""A database that any released version left, in either dialect, migrates to the schema a
fresh one gets from the released DDL, and the store works on it."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.adapters.store.postgres import PostgresStore
from service.adapters.store.sqlite import SqliteStore
from service.core import jobs
from service.models import CreatePrintJob
from service.ports import OutboxLanes
from tests.unit.test_schema import OLD_POSTGRES, OLD_SQLITE, statements


def a_job() -> jobs.Job:
    created = jobs.create(
        None,
        CreatePrintJob.model_validate(
            {
                "jobId": f"m-{uuid.uuid4().hex[:8]}",
                "document": {"contentType": "application/pdf", "data": "JVBERi0xLjQK"},
            }
        ),
        queue_id="q1",
        correlation_id="c",
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert isinstance(created, jobs.Job)
    return created


def released_versions(released: tuple[str, ...]) -> list[int]:
    """The versions a database records: every released one."""
    return list(range(1, len(released) + 1))


# --- SQLite ------------------------------------------------------------------------------------


def sqlite_released(path: Path, versions: int) -> None:
    """The database the released code left after applying its first `versions` migrations."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        for version, script in enumerate(OLD_SQLITE[:versions], start=1):
            for statement in statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, datetime('now'))", (version,))
    finally:
        conn.close()


def sqlite_schema(path: Path) -> tuple[list[tuple[str, str, str]], list[int]]:
    """Every table and index as its DDL (without whitespace: an added column's is SQLite's
    own), and the versions recorded."""
    conn = sqlite3.connect(path)
    try:
        objects = [
            (kind, name, "".join(sql.split()))
            for kind, name, sql in conn.execute(
                "SELECT type, name, sql FROM sqlite_master "
                "WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    finally:
        conn.close()
    return objects, versions


@pytest.mark.parametrize("at", range(len(OLD_SQLITE) + 1))
async def test_an_sqlite_database_at_each_released_version_migrates(tmp_path: Path, at: int):
    old, reference = tmp_path / "old.db", tmp_path / "reference.db"
    sqlite_released(old, at)
    sqlite_released(reference, len(OLD_SQLITE))

    store = SqliteStore(old, commit_delay=0.001)
    await store.open()
    try:
        job = a_job()
        async with store.transaction() as tx:
            tx.put(job)
            tx.put_document(job.job_id, b"%PDF")
        assert await store.read_job(job.job_id) == job
        assert await store.document(job.job_id) == b"%PDF"
    finally:
        await store.close()

    assert sqlite_schema(old) == sqlite_schema(reference)
    assert sqlite_schema(old)[1] == released_versions(OLD_SQLITE)


# An outbox row as the code before lanes wrote it (no lane column yet).
OLD_OUTBOX_ROW = (
    "INSERT INTO outbox (message_id, kind, routing_key, order_key, body, correlation_id, "
    "label, received_at, enqueued_at) VALUES ('m-1', 'printJobEvent', 'events/j-1', 'j-1', "
    "{body}, 'c', 'created', NULL, 1.0)"
)
NO_LANE = OutboxLanes(held=frozenset(), unlaned=True)
A_LANE = OutboxLanes(held=frozenset({"q1"}), unlaned=False)


async def test_sqlite_rows_written_before_lanes_are_the_relay_lanes(tmp_path: Path):
    old = tmp_path / "old.db"
    sqlite_released(old, len(OLD_SQLITE) - 1)
    conn = sqlite3.connect(old, isolation_level=None)
    try:
        conn.execute(OLD_OUTBOX_ROW.format(body="X'7b7d'"))
    finally:
        conn.close()
    store = SqliteStore(old, commit_delay=0.001)
    await store.open()
    try:
        assert [r.lane for r in await store.unsent(10)] == [None]
        assert [r.message.message_id for r in await store.unsent(10, lanes=NO_LANE)] == ["m-1"]
        assert await store.unsent(10, lanes=A_LANE) == []
    finally:
        await store.close()


# --- PostgreSQL --------------------------------------------------------------------------------


async def pg_released(conn: psycopg.AsyncConnection, versions: int) -> None:
    """What the released code left in the connection's schema after `versions` migrations."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    for version, script in enumerate(OLD_POSTGRES[:versions], start=1):
        for statement in statements(script):
            await conn.execute(statement.encode())
        await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))


async def pg_schema(
    conn: psycopg.AsyncConnection,
) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]], list[int]]:
    """The columns, indexes and recorded versions of the connection's current schema."""
    cursor = await conn.execute("SELECT current_schema()")
    row = await cursor.fetchone()
    assert row is not None
    schema = row[0]
    cursor = await conn.execute(
        "SELECT table_name, ordinal_position, column_name, data_type, is_nullable, "
        "column_default FROM information_schema.columns WHERE table_schema = %s ORDER BY 1, 2",
        (schema,),
    )
    columns = await cursor.fetchall()
    cursor = await conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s ORDER BY 1", (schema,)
    )
    indexes = [(name, sql.replace(f"{schema}.", "")) for name, sql in await cursor.fetchall()]
    cursor = await conn.execute("SELECT version FROM schema_migrations ORDER BY 1")
    versions = [v for (v,) in await cursor.fetchall()]
    return columns, indexes, versions


@pytest.mark.parametrize("at", range(len(OLD_POSTGRES) + 1))
async def test_a_postgres_database_at_each_released_version_migrates(postgres_url: str, at: int):
    reference = f"ref_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await pg_released(conn, at)
        store = PostgresStore(postgres_url, pool_size=2)
        await store.open()
        try:
            job = a_job()
            async with store.transaction() as tx:
                tx.put(job)
                tx.put_document(job.job_id, b"%PDF")
            assert await store.read_job(job.job_id) == job
            assert await store.document(job.job_id) == b"%PDF"
        finally:
            await store.close()
        migrated = await pg_schema(conn)

        await conn.execute(f"CREATE SCHEMA {reference}".encode())
        try:
            await conn.execute(f"SET search_path = {reference}".encode())
            await pg_released(conn, len(OLD_POSTGRES))
            expected = await pg_schema(conn)
        finally:
            await conn.execute(f"DROP SCHEMA {reference} CASCADE".encode())

    assert migrated == expected
    assert migrated[2] == released_versions(OLD_POSTGRES)


async def test_postgres_rows_written_before_lanes_are_the_relay_lanes(postgres_url: str):
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await pg_released(conn, len(OLD_POSTGRES) - 1)
        await conn.execute(OLD_OUTBOX_ROW.format(body="'\\x7b7d'::bytea").encode())
    store = PostgresStore(postgres_url, pool_size=2)
    await store.open()
    try:
        assert [r.lane for r in await store.unsent(10)] == [None]
        assert [r.message.message_id for r in await store.unsent(10, lanes=NO_LANE)] == ["m-1"]
        assert await store.unsent(10, lanes=A_LANE) == []
    finally:
        await store.close()
