"""The DuckDB store: one file, many processes, no lock failures, no half-written partitions.

DuckDB allows one read-write process per file. Instead of retrying the open (dagster-duckdb retries 10 times
over ~100 s and then fails a backfill), every access takes an exclusive `flock` on a sidecar lock file, so
concurrent writers queue rather than fail, and each access is one transaction, so a crash rolls back.
Connections are short: callers batch their writes.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
from pydantic import Field

_local = threading.local()
_thread_lock = threading.RLock()


def utcnow() -> datetime:
    return datetime.now(UTC)


@contextmanager
def locked_connection(database: str | Path, lock_timeout_s: float = 900.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """One transaction on `database` under a cross-process exclusive lock. Re-entrant within a thread."""
    database = str(database)
    active = getattr(_local, "active", None)
    if active is not None and active[0] == database:
        yield active[1]  # nested use joins the outer transaction
        return
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    with _thread_lock:
        fd = os.open(database + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + lock_timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"waited {lock_timeout_s:.0f}s for the DuckDB store lock {database}.lock; "
                            "another process holds it"
                        ) from None
                    time.sleep(0.02)
            conn = duckdb.connect(database, config={"custom_user_agent": "distill"})
            try:
                conn.execute("BEGIN TRANSACTION")
                _local.active = (database, conn)
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                else:
                    conn.execute("COMMIT")
                finally:
                    _local.active = None
            finally:
                conn.close()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def table_exists(conn: duckdb.DuckDBPyConnection, table: str, schema: str = "main") -> bool:
    return bool(
        conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        ).fetchall()[0][0]
    )


class DuckDBStore(dg.ConfigurableResource):
    """The project's DuckDB file: transactions under a cross-process lock, inserts by column name, queries."""

    database: str = Field(description="Path of the DuckDB file ($DISTILL_HOME/distill.duckdb).")
    lock_timeout_s: float = 900.0
    schema_sql: list[str] = Field(default_factory=list,
                                  description="Idempotent CREATE statements run when a process first opens the file.")

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with locked_connection(self.database, self.lock_timeout_s) as conn:
            _ensure_schema(conn, self.database, self.schema_sql)
            yield conn

    def query_df(self, sql: str, params: list | dict | None = None) -> pd.DataFrame:
        with self.connect() as conn:
            return conn.execute(sql, params or []).df()

    def execute(self, sql: str, params: list | dict | None = None) -> None:
        with self.connect() as conn:
            conn.execute(sql, params or [])

    def table_exists(self, table: str) -> bool:
        with self.connect() as conn:
            return table_exists(conn, table)

    def insert_df(self, table: str, df: pd.DataFrame, *, on_conflict: str = "error") -> int:
        """Insert rows by column name; on_conflict: 'error' | 'ignore' | 'replace'."""
        if df.empty:
            return 0
        with self.connect() as conn:
            return insert_df(conn, table, df, on_conflict=on_conflict)

    def replace_rows(self, table: str, df: pd.DataFrame, where: str, params: list) -> int:
        """Atomically replace the rows matching `where` with `df` (delete + insert in one transaction)."""
        with self.connect() as conn:
            if table_exists(conn, table):
                conn.execute(f"DELETE FROM {table} WHERE {where}", params)
            return insert_df(conn, table, df, on_conflict="replace") if not df.empty else 0


def _ensure_schema(conn: duckdb.DuckDBPyConnection, database: str, statements: list[str]) -> None:
    if not statements:
        return
    key = (database, hash(tuple(statements)))
    done = getattr(_local, "schema_done", set())
    if key in done:
        return
    for ddl in statements:
        conn.execute(ddl)
    done.add(key)
    _local.schema_done = done


def insert_df(conn: duckdb.DuckDBPyConnection, table: str, df: pd.DataFrame, *, on_conflict: str = "error") -> int:
    if df.empty:
        return 0
    conn.register("_distill_rows", df)
    try:
        cols = ", ".join(f'"{c}"' for c in df.columns)
        if not table_exists(conn, table):
            conn.execute(f"CREATE TABLE {table} AS SELECT {cols} FROM _distill_rows")
            return len(df)
        verb = {"error": "INSERT", "ignore": "INSERT OR IGNORE", "replace": "INSERT OR REPLACE"}[on_conflict]
        conn.execute(f"{verb} INTO {table} ({cols}) SELECT {cols} FROM _distill_rows")
        return len(df)
    finally:
        conn.unregister("_distill_rows")
