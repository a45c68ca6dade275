"""The SQLite committer's statements of several rows store exactly what its rows written one
at a time would: the same jobs (one upsert per job, its columns from the right versions), the
same history and outbox rows in the same positions, the same deletions."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from service.adapters.store.rows import JOB_COLUMNS, JOB_UPDATES, OUTBOX_INSERT_COLUMNS, Row
from service.adapters.store.schema import SQLITE, migrations
from service.adapters.store.sqlite import (
    _HISTORY_INSERT,
    _JOB_UPSERT,
    _OUTBOX_INSERT,
    _RUNS,
    _delete,
    _insert,
    _last_of_each_job,
    _runs,
)


def database() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for _, statements in migrations(SQLITE):
        for statement in statements:
            conn.execute(statement)
    return conn


def dump(conn: sqlite3.Connection) -> dict[str, list[Row]]:
    return {
        table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()  # noqa: S608
        for table in ("jobs", "job_history", "outbox")
    }


text = st.text(max_size=8)
job_rows = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),  # few jobs: each written several times
        text,
        st.sampled_from(["created", "started", "finished"]),
        st.integers(1, 9),
        st.integers(0, 9),
        text,
        st.none() | text,
        text,
        text,
        text,
        st.none() | text,
        text,
    ),
    max_size=40,
)


@given(before=job_rows, batch=job_rows)
def test_one_upsert_per_job_stores_what_the_upserts_in_turn_would(
    before: list[Row], batch: list[Row]
) -> None:
    one_at_a_time, merged = database(), database()
    upsert = (
        f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
        f"ON CONFLICT (job_id) DO UPDATE SET {JOB_UPDATES}"
    )
    for conn in (one_at_a_time, merged):
        conn.executemany(upsert, before)  # jobs the database already has, or not
    one_at_a_time.executemany(upsert, batch)
    _insert(merged, _JOB_UPSERT, _last_of_each_job(batch))
    assert dump(merged) == dump(one_at_a_time)


@given(count=st.integers(0, 700))
def test_runs_cover_the_rows_in_order_in_few_statements(count: int) -> None:
    rows = [(i,) for i in range(count)]
    runs = list(_runs(rows))
    assert [row for run in runs for row in run] == rows
    assert all(len(run) in _RUNS for run in runs)
    assert len(runs) <= count // _RUNS[0] + 3 * (len(_RUNS) - 1)


def outbox_row(i: int) -> Row:
    return (f"m{i}", "job_event", f"events.{i}", f"job-{i % 7}", b"\x00body", "c", "created")


def test_outbox_rows_take_positions_in_order_and_deletes_take_exactly_theirs() -> None:
    conn = database()
    rows: Sequence[Row] = [(*outbox_row(i), None, None, None, float(i), None) for i in range(600)]
    assert len(rows[0]) == len(OUTBOX_INSERT_COLUMNS.split(", "))
    _insert(conn, _OUTBOX_INSERT, rows)
    last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    stored = conn.execute("SELECT position, message_id FROM outbox ORDER BY position").fetchall()
    assert stored == [(last - 599 + i, f"m{i}") for i in range(600)]
    sent = [(position,) for position, _ in stored[::3]]
    _delete(conn, "outbox", "position", sent)
    left = conn.execute("SELECT message_id FROM outbox ORDER BY position").fetchall()
    assert left == [(f"m{i}",) for i in range(600) if i % 3]


def test_history_rows_already_there_are_kept_once() -> None:
    conn = database()
    rows = [("job", s, "created", "t", None) for s in (1, 2, 2, 3)]
    _insert(conn, _HISTORY_INSERT, rows)
    _insert(conn, _HISTORY_INSERT, rows[:1])
    assert conn.execute("SELECT sequence FROM job_history").fetchall() == [(1,), (2,), (3,)]
