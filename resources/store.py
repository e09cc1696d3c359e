"""The store: a DuckDB file (the default) or a DuckLake (many writers), no lock failures, no half-written partitions.

On a DuckLake (`catalog` set: a Postgres DSN; Parquet under `data_path`) there is no lock: writers run in
parallel and a write is `transact(fn)`, run again as a whole when its commit collides with one that landed
first. The ledger's primary keys are enforced by the writers there (resources/lake.py). Below, the file store.

DuckDB allows one read-write process per file. Instead of retrying the open (dagster-duckdb retries 10 times
over ~100 s and then fails a backfill), every access takes an exclusive `flock` on a sidecar lock file, so
concurrent writers queue rather than fail, and each access is one transaction, so a crash rolls back.
Connections are short: callers batch their writes.

The holder writes who it is (pid, host, command, since when) into the lock file, so a wait that runs out names
it. A process outside distill that has the file open (the duckdb CLI) makes DuckDB's own open fail with
"Could not set lock on file"; that open is retried with backoff within the same bound, and the message then
names the process DuckDB reports. Read-only access (`distill sql`) takes the lock shared.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
from pydantic import Field

from resources import lake
from resources.clock import utcnow

T = TypeVar("T")
_local = threading.local()
_thread_lock = threading.RLock()
_DUCKDB_LOCKED = "Could not set lock on file"


def _pid_command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a).replace("\n", " ")[:200]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(lock_path: str | Path) -> str:
    """Who holds the store lock, as its holder wrote it into the lock file ('' when nobody said)."""
    try:
        info = json.loads(Path(lock_path).read_text() or "{}")
    except (OSError, ValueError):
        return ""
    if not info.get("pid"):
        return ""
    alive = "" if _pid_alive(int(info["pid"])) or info.get("host") != socket.gethostname() else " (no longer running)"
    return (f"pid {info['pid']}{alive} on {info.get('host', '?')} ({info.get('mode', 'exclusive')}, since "
            f"{info.get('since', '?')}): {info.get('command', '')}").strip()


def _say_who(fd: int, mode: str) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "mode": mode,
            "since": utcnow().isoformat(timespec="seconds"), "command": " ".join(sys.argv)[:200]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


@contextmanager
def store_lock(database: str, timeout_s: float, *, shared: bool = False) -> Iterator[float]:
    """The cross-process store lock (exclusive, or shared for readers), waited for up to `timeout_s`;
    yields the deadline that the DuckDB open that follows shares."""
    lock_path = database + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    try:
        delay = 0.02
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    who = lock_holder(lock_path) or "a process that did not say who it is"
                    raise TimeoutError(f"waited {timeout_s:.0f}s for the DuckDB store lock {lock_path}; "
                                       f"it is held by {who}") from None
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)
        _say_who(fd, "shared" if shared else "exclusive")
        try:
            yield deadline
        finally:
            if not shared:  # a shared holder cannot know whether other readers still hold it
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _duckdb_holder(message: str) -> str:
    """'<program> (pid N: <command line>)' from DuckDB's lock error, which names the conflicting process."""
    m = re.search(r"held in (.*?) \(PID (\d+)\)", message)
    if not m:
        return "another process"
    cmd = _pid_command(int(m.group(2)))
    return f"{m.group(1)} (pid {m.group(2)}{': ' + cmd if cmd else ''})"


def connect_with_retry(database: str, deadline: float, timeout_s: float, *,
                       read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retried with backoff while another process (outside the store lock, e.g. the duckdb
    CLI) has the file open; past the deadline the error names that process."""
    delay = 0.05
    while True:
        try:
            return duckdb.connect(database, read_only=read_only, config={"custom_user_agent": "distill"})
        except duckdb.IOException as e:
            if _DUCKDB_LOCKED not in str(e):
                raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s:.0f}s for DuckDB's lock on {database}: "
                                   f"{_duckdb_holder(str(e))} has the file open; close it (use `distill sql` for "
                                   "read-only queries)") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


@contextmanager
def locked_connection(database: str | Path, lock_timeout_s: float = 900.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """One transaction on `database` under a cross-process exclusive lock. Re-entrant within a thread."""
    database = str(database)
    active = getattr(_local, "active", None)
    if active is not None and active[0] == database:
        yield active[1]  # nested use joins the outer transaction
        return
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    with _thread_lock, store_lock(database, lock_timeout_s) as deadline:
        conn = connect_with_retry(database, deadline, lock_timeout_s)
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


@contextmanager
def read_only_connection(database: str | Path, timeout_s: float) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only DuckDB connection under the shared store lock (readers do not block each other)."""
    database = str(database)
    if not Path(database).exists():
        raise FileNotFoundError(f"{database} does not exist yet: materialize something first")
    with store_lock(database, timeout_s, shared=True) as deadline:
        conn = connect_with_retry(database, deadline, timeout_s, read_only=True)
        try:
            yield conn
        finally:
            conn.close()


def table_exists(conn: duckdb.DuckDBPyConnection, table: str, schema: str = "main") -> bool:
    return bool(
        conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
            "AND table_schema = ? AND table_name = ?",
            [schema, table],
        ).fetchall()[0][0]
    )


# -- DuckLake connections: one per thread and lake, kept open (attaching costs a catalog round trip) --------
_LAKE_KEYS: dict[int, dict[str, list[str]]] = {}  # id(connection) -> the ledger's keys, for insert_df
_retries = {"conflicts": 0}


def conflicts_retried() -> int:
    """How many lake commits this process has run again after a conflict (for tests and benchmarks)."""
    return _retries["conflicts"]


def _lake_connection(catalog: str, data_path: str, statements: list[str]) -> duckdb.DuckDBPyConnection:
    cache = getattr(_local, "lakes", None)
    if cache is None:
        cache = _local.lakes = {}
    key = (catalog, data_path, hash(tuple(statements)))
    if key not in cache:
        con = lake.run_with_retry(lambda: lake.connect_ducklake(catalog, data_path), attempts=20)
        ddl, keys = lake.lake_ddl(statements)
        lake.create_schema(con, ddl, keys)
        _LAKE_KEYS[id(con)] = keys
        cache[key] = con
    return cache[key]


def _drop_lake_connection(catalog: str, data_path: str, statements: list[str]) -> None:
    con = getattr(_local, "lakes", {}).pop((catalog, data_path, hash(tuple(statements))), None)
    if con is not None:
        _LAKE_KEYS.pop(id(con), None)
        con.close()


@contextmanager
def lake_transaction(catalog: str, data_path: str, statements: list[str]) -> Iterator[duckdb.DuckDBPyConnection]:
    """One lake transaction (nested use joins the outer one). A conflicting COMMIT raises; `transact` retries."""
    name = f"ducklake:{catalog}|{data_path}"
    active = getattr(_local, "active", None)
    if active is not None and active[0] == name:
        yield active[1]
        return
    conn = _lake_connection(catalog, data_path, statements)
    with lake.transaction(conn):
        _local.active = (name, conn)
        try:
            yield conn
        finally:
            _local.active = None


class DuckDBStore(dg.ConfigurableResource):
    """The project's store: transactions (under a cross-process lock on a file; retried on a lake), inserts by
    column name, queries."""

    database: str = Field(description="Path of the DuckDB file ($DISTILL_HOME/distill.duckdb); on a DuckLake "
                                      "store only its folder is used (this host's call journal).")
    catalog: str | None = Field(default=None, description="DuckLake: the Postgres catalog DSN (DISTILL_STORE).")
    data_path: str | None = Field(default=None, description="DuckLake: the Parquet folder or s3:// prefix.")
    lock_timeout_s: float = 900.0
    schema_sql: list[str] = Field(default_factory=list,
                                  description="Idempotent CREATE statements run when a process first opens the store.")

    @property
    def is_lake(self) -> bool:
        return bool(self.catalog)

    @property
    def location(self) -> str:
        """The store as DISTILL_STORE names it."""
        return f"ducklake:postgres:{self.catalog}" if self.is_lake else f"duckdb:{self.database}"

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction. On a lake a write inside it can fail to commit on a conflict: writers use transact."""
        if self.is_lake:
            if not self.data_path:
                raise ValueError(f"DuckLake store {self.catalog!r} has no data_path (DISTILL_DATA_PATH)")
            with lake_transaction(self.catalog, self.data_path, self.schema_sql) as conn:
                yield conn
            return
        with locked_connection(self.database, self.lock_timeout_s) as conn:
            ensure_schema(conn, self.database, self.schema_sql)
            yield conn

    def transact(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """`fn(conn)` in one transaction; on a lake, run again as a whole while its commit conflicts. `fn` must
        only read and write the store (it may run more than once). Inside an open transaction it joins it."""
        active = getattr(_local, "active", None)
        if not self.is_lake or active is not None:
            with self.connect() as conn:
                return fn(conn)

        def once() -> T:
            try:
                with self.connect() as conn:
                    return fn(conn)
            except duckdb.Error as exc:
                if lake.is_commit_conflict(exc):  # the next try attaches afresh: no catalog state of this one
                    _drop_lake_connection(self.catalog, self.data_path, self.schema_sql)
                raise

        return lake.run_with_retry(once, on_retry=lambda attempt, exc: _count_retry())

    @contextmanager
    def reader(self, timeout_s: float) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for read-only queries (`distill sql`): a read-only file under the shared lock, or a lake
        connection of its own."""
        if not self.is_lake:
            with read_only_connection(self.database, timeout_s) as conn:
                yield conn
            return
        con = lake.connect_ducklake(self.catalog, self.data_path)
        try:
            yield con
        finally:
            con.close()

    def snapshot(self) -> int | None:
        """The lake's latest snapshot id (None on a file store)."""
        if not self.is_lake:
            return None
        with self.connect() as conn:
            return lake.current_snapshot(conn)

    def query_df(self, sql: str, params: list | dict | None = None) -> pd.DataFrame:
        with self.connect() as conn:
            return conn.execute(sql, params or []).df()

    def execute(self, sql: str, params: list | dict | None = None) -> None:
        self.transact(lambda conn: conn.execute(sql, params or []))

    def table_exists(self, table: str) -> bool:
        with self.connect() as conn:
            return table_exists(conn, table)

    def insert_df(self, table: str, df: pd.DataFrame | pa.Table, *, on_conflict: str = "error") -> int:
        """Insert rows (a DataFrame or an Arrow table) by column name; on_conflict: 'error' | 'ignore' | 'replace'."""
        if _rows(df) == 0:
            return 0
        return self.transact(lambda conn: insert_df(conn, table, df, on_conflict=on_conflict))

    def replace_rows(self, table: str, df: pd.DataFrame, where: str, params: list) -> int:
        """Atomically replace the rows matching `where` with `df` (delete + insert in one transaction)."""
        def replace(conn: duckdb.DuckDBPyConnection) -> int:
            if table_exists(conn, table):
                conn.execute(f"DELETE FROM {table} WHERE {where}", params)
            return insert_df(conn, table, df, on_conflict="replace") if _rows(df) else 0

        return self.transact(replace)


def _count_retry() -> None:
    _retries["conflicts"] += 1


def is_lake_connection(conn: Any) -> bool:
    return id(conn) in _LAKE_KEYS


def _rows(df: pd.DataFrame | pa.Table) -> int:
    return df.num_rows if isinstance(df, pa.Table) else len(df)


def ensure_schema(conn: duckdb.DuckDBPyConnection, database: str, statements: list[str]) -> None:
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


def arrow_of(result: duckdb.DuckDBPyConnection) -> pa.Table:
    """A query result as an Arrow table (DuckDB 2.x `to_arrow_table`, 1.x `fetch_arrow_table`)."""
    return (getattr(result, "to_arrow_table", None) or result.fetch_arrow_table)()


def insert_df(conn: duckdb.DuckDBPyConnection, table: str, df: pd.DataFrame | pa.Table, *,
              on_conflict: str = "error") -> int:
    """Insert `df` (DataFrame or Arrow table) by column name into `table` (created from it when missing)."""
    if _rows(df) == 0:
        return 0
    keys = _LAKE_KEYS.get(id(conn))
    if keys is not None:
        frame = df.to_pandas() if isinstance(df, pa.Table) else df
        return lake.insert_rows(conn, table, frame, keys.get(table), on_conflict)
    conn.register("_distill_rows", df)
    try:
        names = df.column_names if isinstance(df, pa.Table) else df.columns
        cols = ", ".join(f'"{c}"' for c in names)
        if not table_exists(conn, table):
            conn.execute(f"CREATE TABLE {table} AS SELECT {cols} FROM _distill_rows")
            return _rows(df)
        verb = {"error": "INSERT", "ignore": "INSERT OR IGNORE", "replace": "INSERT OR REPLACE"}[on_conflict]
        conn.execute(f"{verb} INTO {table} ({cols}) SELECT {cols} FROM _distill_rows")
        return _rows(df)
    finally:
        conn.unregister("_distill_rows")
