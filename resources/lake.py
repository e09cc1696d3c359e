"""DuckLake: a DuckDB store many processes write at once, catalog in Postgres, data as Parquet on a shared path.

Why: a DuckDB file has one writer process at a time, so parallel runs queue on a lock. DuckLake keeps the
catalog in Postgres and commits optimistically: concurrent transactions run in parallel and a commit that
collides with one that landed first fails with a "Transaction conflict" error, after which the whole
transaction must be run again (`run_with_retry`).

What DuckLake lacks, and the replacements here:
- PRIMARY KEY / UNIQUE (so INSERT OR REPLACE / OR IGNORE / ON CONFLICT): `upsert_df` is a MERGE INTO.
- Conflicts are detected per TABLE, not per row: a delete collides with any concurrent insert into that table.
  Two inserts never collide, so two first-time writers of the same key would both land. `guard(con, table)`
  bumps a per-table guard row inside the transaction, so any two guarded writers of one table collide and
  one of them retries and then sees the other's rows. Every writer of a keyed table must go through it.

The extensions come from PyPI packages (duckdb-extension-ducklake, duckdb-extension-postgres-scanner) whose
wheels carry the signed binaries for exactly one DuckDB version; they are LOADed by path, with auto-install
and auto-load off, so nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb
import pandas as pd

T = TypeVar("T")

# extension name -> the PyPI package (import name) whose wheel ships it
EXTENSION_PACKAGES = {
    "postgres_scanner": "duckdb_extension_postgres_scanner",
    "ducklake": "duckdb_extension_ducklake",
}
# the newest DuckDB for which PyPI has both extension packages (none exist for 2.x)
PACKAGED_VERSION = "1.5.5"
PIP_HINT = (f"pip install duckdb=={PACKAGED_VERSION} duckdb-extension-ducklake=={PACKAGED_VERSION} "
            f"duckdb-extension-postgres-scanner=={PACKAGED_VERSION}")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# commit failures that a fresh run of the same transaction can get past
# ("Failed to initialize DuckLake": processes attaching a new lake at once race to create its catalog tables)
_RETRYABLE = ("Transaction conflict", "duplicate key value violates unique constraint",
              "Failed to initialize DuckLake")


class CommitConflictError(RuntimeError):
    """A transaction still collided with concurrent commits after every retry."""


def extension_file(name: str) -> Path:
    """The extension binary for the running DuckDB version inside its PyPI package; clear error if absent."""
    package = EXTENSION_PACKAGES[name]
    version = duckdb.__version__
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"DuckDB extension {name!r}: package {package} is not installed (DuckDB is "
                           f"{version}); {PIP_HINT}")
    path = Path(spec.origin).parent / "extensions" / f"v{version}" / f"{name}.duckdb_extension"
    if not path.is_file():
        shipped = sorted(p.name for p in (Path(spec.origin).parent / "extensions").glob("v*"))
        raise RuntimeError(f"DuckDB extension {name!r}: {package} ships {shipped or 'nothing'}, not "
                           f"v{version} (an extension loads only into the DuckDB version it was built for); "
                           f"{PIP_HINT}")
    return path


def ducklake_extensions_available() -> tuple[bool, str]:
    """(True, paths) when both extensions can be loaded offline here, else (False, why)."""
    try:
        paths = [str(extension_file(name)) for name in EXTENSION_PACKAGES]
    except RuntimeError as exc:
        return False, str(exc)
    return True, ", ".join(paths)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str, what: str = "identifier") -> str:
    if not _IDENT.match(name):
        raise ValueError(f"{what} {name!r} is not a plain SQL identifier")
    return name


def connect_ducklake(catalog_dsn: str, data_path: str | Path, alias: str = "lake", *,
                     metadata_schema: str | None = None, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the lake attached as `alias` and selected (`USE alias`).

    `catalog_dsn` is a libpq keyword string ("dbname=… host=… port=… user=…"). `data_path` is where the
    Parquet files go; the first ATTACH records it in the catalog and every later one must name the same path.
    `metadata_schema` lets several lakes share one Postgres database.
    """
    config: dict = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    if threads:
        config["threads"] = threads
    con = duckdb.connect(config=config)
    try:
        con.execute("SET enable_progress_bar = false")  # long commits would print bars on stdout
        for name in EXTENSION_PACKAGES:  # postgres_scanner first: the ducklake ATTACH needs it
            con.execute(f"LOAD {_quote(str(extension_file(name)))}")
        data = str(data_path).rstrip("/") + "/"
        # no inlining of small commits into the catalog database: every row lives in Parquet under the data path
        options = [f"DATA_PATH {_quote(data)}", "DATA_INLINING_ROW_LIMIT 0"]
        if metadata_schema:
            options.append(f"METADATA_SCHEMA {_quote(_ident(metadata_schema, 'metadata schema'))}")
        con.execute(f"ATTACH {_quote('ducklake:postgres:' + catalog_dsn)} AS {_ident(alias, 'alias')} "
                    f"({', '.join(options)})")
        con.execute(f"USE {alias}")
    except BaseException:
        con.close()
        raise
    return con


def is_commit_conflict(exc: BaseException) -> bool:
    """True for the errors a retry can cure: DuckLake's "Transaction conflict" and a lost catalog race."""
    return isinstance(exc, duckdb.Error) and any(marker in str(exc) for marker in _RETRYABLE)


def run_with_retry(fn: Callable[[], T], attempts: int = 50, backoff: float = 0.05, max_backoff: float = 4.0, *,
                   sleep: Callable[[float], None] = time.sleep,
                   on_retry: Callable[[int, BaseException], None] | None = None) -> T:
    """Call `fn` (one whole transaction) until it commits, retrying commit conflicts with jittered backoff.

    `fn` must redo all of its reads and writes on each call: a conflicting commit has already been rolled back.
    Other errors propagate at once; after `attempts` conflicts a CommitConflictError names the last one.
    The defaults come from 8 processes committing to one table in a tight loop on 2 cores: with a 4 s cap
    every commit landed within 33 tries; with a 1 s cap the retries kept colliding and some gave up at 40.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except duckdb.Error as exc:
            if not is_commit_conflict(exc):
                raise
            if attempt == attempts:
                raise CommitConflictError(f"gave up after {attempts} conflicting commits; last: "
                                          f"{str(exc).splitlines()[-1]}") from exc
            if on_retry is not None:
                on_retry(attempt, exc)
            # full jitter: colliding writers spread out instead of colliding again in lock-step
            sleep(random.uniform(0, min(max_backoff, backoff * 2 ** (attempt - 1))))
    raise AssertionError("unreachable")


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN … COMMIT; ROLLBACK when the body raises. A failed COMMIT has already rolled back."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass  # the failing statement may already have ended the transaction
        raise
    con.execute("COMMIT")


def guard_table(table: str) -> str:
    return f"_guard_{_ident(table, 'table')}"


def ensure_guard(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Create `table`'s guard (one row) if missing; its own retried transaction, safe to race."""
    name = guard_table(table)

    def create() -> None:
        with transaction(con):
            con.execute(f"CREATE TABLE IF NOT EXISTS {name} (bumps BIGINT)")
            if con.execute(f"SELECT count(*) FROM {name}").fetchone()[0] == 0:
                con.execute(f"INSERT INTO {name} VALUES (0)")

    run_with_retry(create)


def guard(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Inside a transaction: make it collide with every other guarded transaction on `table`."""
    con.execute(f"UPDATE {guard_table(table)} SET bumps = bumps + 1")


def table_exists(con: duckdb.DuckDBPyConnection, table: str, schema: str = "main") -> bool:
    """Whether `table` is in the current catalog (registered DataFrames show up in `temp`, so filter)."""
    return bool(con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema = ? AND table_name = ? AND table_type = 'BASE TABLE'", [schema, table]).fetchone()[0])


def upsert_df(con: duckdb.DuckDBPyConnection, table: str, df: pd.DataFrame, keys: Sequence[str], *,
              on_conflict: str = "replace") -> int:
    """INSERT OR REPLACE ('replace') / INSERT OR IGNORE ('ignore') for a table without a primary key.

    Run it inside a guarded transaction (`guard(con, table)` first) so a concurrent writer of the same key
    collides instead of adding a second row. Rows repeating a key in `df` keep the last, as a key would force.
    Returns the number of rows inserted or updated.
    """
    view = f"_upsert_{_ident(table, 'table')}"
    if on_conflict not in ("replace", "ignore"):
        raise ValueError(f"on_conflict must be 'replace' or 'ignore', got {on_conflict!r}")
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise ValueError(f"upsert into {table}: key columns {missing} are not in the frame ({list(df.columns)})")
    if df.empty:
        return 0
    rows = df.drop_duplicates(list(keys), keep="last")
    cols = [str(c) for c in rows.columns]
    on = " AND ".join(f't."{k}" IS NOT DISTINCT FROM s."{k}"' for k in keys)
    col_list = ", ".join(f'"{c}"' for c in cols)
    values = ", ".join(f's."{c}"' for c in cols)
    actions = ""
    updates = [c for c in cols if c not in keys]
    if on_conflict == "replace" and updates:
        actions = "WHEN MATCHED THEN UPDATE SET " + ", ".join(f'"{c}" = s."{c}"' for c in updates) + " "
    actions += f"WHEN NOT MATCHED THEN INSERT ({col_list}) VALUES ({values})"
    con.register(view, rows)
    try:
        return int(con.execute(f"MERGE INTO {table} AS t USING {view} AS s ON {on} {actions}").fetchone()[0])
    finally:
        con.unregister(view)


def replace_rows(con: duckdb.DuckDBPyConnection, table: str, df: pd.DataFrame, where: str,
                 params: Sequence) -> int:
    """Inside a guarded transaction: delete the rows matching `where`, insert `df` by column name."""
    view = f"_replace_{_ident(table, 'table')}"
    con.execute(f"DELETE FROM {table} WHERE {where}", list(params))
    if df.empty:
        return 0
    con.register(view, df)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {view}")
    finally:
        con.unregister(view)
    return len(df)


def current_snapshot(con: duckdb.DuckDBPyConnection, alias: str = "lake") -> int:
    """The lake's latest snapshot id, by anyone; inside a transaction, the one it reads from."""
    return int(con.execute(f"SELECT id FROM {_ident(alias, 'alias')}.current_snapshot()").fetchone()[0])


def last_committed_snapshot(con: duckdb.DuckDBPyConnection, alias: str = "lake") -> int | None:
    """The snapshot id THIS connection's last commit created (None before its first): a version to record,
    and what `AT (VERSION => id)` reads back. Unlike `current_snapshot`, other writers do not move it."""
    row = con.execute(f"SELECT id FROM {_ident(alias, 'alias')}.last_committed_snapshot()").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def set_commit_message(con: duckdb.DuckDBPyConnection, author: str, message: str, *,
                       extra_info: str | None = None, alias: str = "lake") -> None:
    """Inside a transaction: label the snapshot it will commit (e.g. the run id), shown by `snapshots`."""
    con.execute(f"CALL {_ident(alias, 'alias')}.set_commit_message(?, ?, extra_info => ?)",
                [author, message, extra_info])


def snapshots(con: duckdb.DuckDBPyConnection, alias: str = "lake") -> pd.DataFrame:
    """Every snapshot: snapshot_id, snapshot_time, schema_version, changes, author, commit_message, …"""
    return con.execute(f"SELECT * FROM {_ident(alias, 'alias')}.snapshots() ORDER BY snapshot_id").df()


# -- the ledger's DDL on a lake -----------------------------------------------------------------------------
_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)\s*\((.*)\)\s*$", re.S | re.I)
_CREATE_VIEW = re.compile(r"CREATE (?:OR REPLACE )?VIEW (?:IF NOT EXISTS )?(\w+)", re.I)
_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN IF NOT EXISTS (\w+)", re.I)
_KEY_CLAUSE = re.compile(r",\s*PRIMARY KEY\s*\(([^)]*)\)", re.I)
_INLINE_KEY = re.compile(r"(\w+)\s+(\w+(?:\[\])?)\s+PRIMARY KEY", re.I)


def lake_ddl(statements: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The statements with PRIMARY KEYs taken out (DuckLake has none), and each table's key columns, which
    the writers enforce instead (`insert_rows`)."""
    out, keys = [], {}
    for sql in statements:
        m = _CREATE_TABLE.match(sql.strip())
        if m:
            body = m.group(2)
            clause = _KEY_CLAUSE.search(body)
            if clause:
                keys[m.group(1)] = [c.strip().strip('"') for c in clause.group(1).split(",")]
                body = _KEY_CLAUSE.sub("", body)
            inline = _INLINE_KEY.search(body)
            if inline:
                keys[m.group(1)] = [inline.group(1)]
                body = _INLINE_KEY.sub(r"\1 \2", body)
            sql = f"CREATE TABLE IF NOT EXISTS {m.group(1)} ({body})"
        out.append(sql)
    return out, keys


def schema_complete(con: duckdb.DuckDBPyConnection, statements: Sequence[str], keys: dict[str, list[str]]) -> bool:
    """Whether every table, view, guard and migrated column of `statements` is already in the lake: then a
    process opening it commits no DDL (a no-op DDL commit would still collide with concurrent writers)."""
    have = {(r[0], r[1]) for r in con.execute(
        "SELECT table_name, table_type FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema = 'main'").fetchall()}
    names = {n for n, _ in have}
    for sql in statements:
        for pattern in (_CREATE_TABLE, _CREATE_VIEW):
            m = pattern.match(sql.strip())
            if m and m.group(1) not in names:
                return False
    if any(guard_table(t) not in names for t in keys):
        return False
    cols = {(r[0], r[1]) for r in con.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_catalog = current_database() "
        "AND table_schema = 'main'").fetchall()}
    return all((m.group(1), m.group(2)) in cols for m in map(_ADD_COLUMN.match, statements) if m)


def create_schema(con: duckdb.DuckDBPyConnection, statements: Sequence[str], keys: dict[str, list[str]]) -> None:
    """Run the (key-less) DDL and create each keyed table's guard row, as one retried transaction."""
    def once() -> None:
        with transaction(con):
            for sql in statements:
                con.execute(sql)
            for table in keys:
                name = guard_table(table)
                con.execute(f"CREATE TABLE IF NOT EXISTS {name} (bumps BIGINT)")
                con.execute(f"INSERT INTO {name} SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM {name})")

    if not schema_complete(con, statements, keys):
        run_with_retry(once)


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, df: pd.DataFrame, keys: Sequence[str] | None,
                on_conflict: str = "error") -> int:
    """Inside a transaction: what INSERT / INSERT OR IGNORE / INSERT OR REPLACE do on a keyed DuckDB table.

    A keyed table's guard is bumped first, so two writers of the same new key collide and one retries.
    'error' fails like a primary key would, naming the first repeated key."""
    if df.empty:
        return 0
    if not table_exists(con, table):
        _over_frame(con, df, f"_create_{_ident(table, 'table')}", f"CREATE TABLE {table} AS SELECT * FROM {{view}}")
        return len(df)
    if keys:
        guard(con, table)
        if on_conflict != "error":
            return upsert_df(con, table, df, keys, on_conflict=on_conflict)
        _check_new_keys(con, table, df, keys)
    _over_frame(con, df, f"_insert_{_ident(table, 'table')}", f"INSERT INTO {table} BY NAME SELECT * FROM {{view}}")
    return len(df)


def _over_frame(con: duckdb.DuckDBPyConnection, df: pd.DataFrame, view: str, sql: str) -> None:
    """Run `sql` with `df` registered as `{view}`, unregistered afterwards."""
    con.register(view, df)
    try:
        con.execute(sql.format(view=view))
    finally:
        con.unregister(view)


def _check_new_keys(con: duckdb.DuckDBPyConnection, table: str, df: pd.DataFrame, keys: Sequence[str]) -> None:
    repeated = df[df.duplicated(list(keys), keep=False)]
    if repeated.empty:
        view = f"_keys_{_ident(table, 'table')}"
        con.register(view, df[list(keys)])
        try:
            on = " AND ".join(f't."{k}" IS NOT DISTINCT FROM s."{k}"' for k in keys)
            repeated = con.execute(f"SELECT s.* FROM {view} s JOIN {table} t ON {on} LIMIT 1").df()
        finally:
            con.unregister(view)
    if not repeated.empty:
        key = ", ".join(f"{k}: {repeated.iloc[0][k]}" for k in keys)
        raise duckdb.ConstraintException(f'Constraint Error: Duplicate key "{key}" violates primary key '
                                         f"constraint of {table} (enforced by distill on the lake)")
