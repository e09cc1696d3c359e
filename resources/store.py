"""The DuckDB store: one file, many processes, no lock failures, no half-written partitions.

DuckDB allows one read-write process per file. Instead of retrying the open (dagster-duckdb retries 10 times
over ~100 s and then fails a backfill), every access takes an exclusive `flock` on a sidecar lock file, so
concurrent writers queue rather than fail, and each access is one transaction, so a crash rolls back.
Connections are short: callers batch their writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import dagster as dg
from pydantic import Field
import duckdb
import pandas as pd

SIDE_TABLES: dict[str, str] = {
    "teacher_calls": """
        CREATE TABLE IF NOT EXISTS teacher_calls (
            call_key VARCHAR PRIMARY KEY, model VARCHAR, role VARCHAR, status VARCHAR, response VARCHAR,
            finish_reason VARCHAR, prompt_tokens BIGINT, completion_tokens BIGINT, cost_usd DOUBLE,
            latency_s DOUBLE, attempts INTEGER, error VARCHAR, category VARCHAR, run_id VARCHAR,
            request_json VARCHAR, created_at TIMESTAMPTZ)""",
    "lineage": """
        CREATE TABLE IF NOT EXISTS lineage (
            example_id VARCHAR, category VARCHAR, stage VARCHAR, verdict VARCHAR, reason VARCHAR,
            evidence VARCHAR, run_id VARCHAR, recorded_at TIMESTAMPTZ, PRIMARY KEY (example_id, stage))""",
    "artifacts": """
        CREATE TABLE IF NOT EXISTS artifacts (
            artifact_id VARCHAR PRIMARY KEY, asset VARCHAR, kind VARCHAR, path VARCHAR, sha256 VARCHAR,
            bytes BIGINT, parent_artifact_id VARCHAR, dataset_version VARCHAR, run_id VARCHAR,
            metadata VARCHAR, created_at TIMESTAMPTZ)""",
    "production_failures": """
        CREATE TABLE IF NOT EXISTS production_failures (
            failure_id VARCHAR PRIMARY KEY, category VARCHAR, input VARCHAR, bad_output VARCHAR,
            expected VARCHAR, reported_at TIMESTAMPTZ, status VARCHAR, source VARCHAR, ingested_at TIMESTAMPTZ,
            ingest_seq BIGINT, batch_key VARCHAR, updated_at TIMESTAMPTZ, split VARCHAR, source_line INTEGER,
            resolved_by VARCHAR)""",
    "failure_rejects": """
        CREATE TABLE IF NOT EXISTS failure_rejects (
            source VARCHAR, line INTEGER, field VARCHAR, reason VARCHAR, raw VARCHAR, rejected_at TIMESTAMPTZ,
            detail VARCHAR)""",
}

_local = threading.local()
_thread_lock = threading.RLock()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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
    """The project's DuckDB file: side tables (teacher_calls, lineage, artifacts, ...) and ad-hoc queries."""

    database: str = Field(description="Path of the DuckDB file ($DISTILL_HOME/distill.duckdb).")
    lock_timeout_s: float = 900.0

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with locked_connection(self.database, self.lock_timeout_s) as conn:
            _ensure_side_tables(conn, self.database)
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

    def record_lineage(self, rows: pd.DataFrame, stage: str, category: str, run_id: str) -> int:
        """Replace the verdicts of (stage, category) with `rows` (example_id, verdict, reason, evidence)."""
        frame = lineage_frame(rows, stage, category, run_id)
        return self.replace_rows("lineage", frame, "stage = ? AND category = ?", [stage, category])

    def register_artifact(self, **row: Any) -> str:
        row.setdefault("created_at", utcnow())
        if isinstance(row.get("metadata"), (dict, list)):
            row["metadata"] = json.dumps(row["metadata"], default=str)
        self.insert_df("artifacts", pd.DataFrame([row]), on_conflict="replace")
        return row["artifact_id"]


def _ensure_side_tables(conn: duckdb.DuckDBPyConnection, database: str) -> None:
    done = getattr(_local, "schema_done", set())
    if database in done:
        return
    for ddl in SIDE_TABLES.values():
        conn.execute(ddl)
    done.add(database)
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


def lineage_frame(rows: pd.DataFrame, stage: str, category: str, run_id: str) -> pd.DataFrame:
    """Normalize verdict rows into the lineage table's columns; evidence becomes JSON text."""
    out = pd.DataFrame(
        {
            "example_id": rows["example_id"].astype(str).to_numpy(),
            "category": category,
            "stage": stage,
            "verdict": rows["verdict"].astype(str).to_numpy(),
            "reason": rows["reason"].fillna("").astype(str).to_numpy(),
            "evidence": [e if isinstance(e, str) else json.dumps(e, default=str) for e in rows["evidence"]],
            "run_id": run_id,
            "recorded_at": utcnow(),
        }
    )
    return out.drop_duplicates(["example_id", "stage"], keep="last")
