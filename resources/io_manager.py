"""Asset tables in the project's DuckDB file, one transaction per write, on public Dagster APIs only.

A partitioned asset's partition is replaced (delete + insert) inside one transaction under the store's
cross-process lock, so a crash leaves the old rows or the new ones, and parallel backfills queue instead of
failing on DuckDB's single-writer file lock. An empty frame still creates the table, so a downstream read of an
empty partition keeps the columns.

In the same transaction the IO manager records which partitions it wrote (`_distill_partitions`), so reading
a partition that was never materialized fails with its name instead of passing an empty frame downstream, and
a filter stage's lineage verdicts: a crash leaves the table and its verdicts both old or both new. A stage
says so with output metadata `lineage_stage` (the verdicts are then the frame's keep/verdict/reason/evidence
columns), or returns a `StageTable` when its verdict rows are not its table rows (clean_dataset). The DDL of
both side tables is the ledger's (`schema_sql`, from lib/ledger.py).

On a DuckLake store the same transaction is retried as a whole when its commit conflicts, and a read records
the lake snapshot it read in the frame's `attrs["store_version"]` ("snapshot:<id>"), the dataset version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from resources import lake
from resources.clock import utcnow
from resources.store import DuckDBStore, insert_df, is_lake_connection, table_exists

LINEAGE_STAGE = "lineage_stage"  # output metadata: this output's rows are that stage's verdicts
PARTITIONS_TABLE = "_distill_partitions"
UNPARTITIONED = ""  # the partition key recorded for an unpartitioned table


@dataclass(frozen=True)
class StageTable:
    """A filter stage's output: the table rows and the stage's lineage verdicts (rows in the `lineage` table's
    columns), which the IO manager writes in one transaction."""

    table: pd.DataFrame
    stage: str
    lineage: pd.DataFrame


def _duck_type(series: pd.Series) -> str:
    kind = series.dtype.kind
    return {"b": "BOOLEAN", "i": "BIGINT", "u": "BIGINT", "f": "DOUBLE", "M": "TIMESTAMPTZ"}.get(kind, "VARCHAR")


def normalize_frame(obj: pd.DataFrame) -> pd.DataFrame:
    """All-null object columns would be created as DuckDB type NULL and reject later partitions' strings."""
    out = obj.copy()
    for c in out.columns:
        if out[c].dtype == object and out[c].isna().all():
            out[c] = out[c].astype("string")
    return out


def _table(key: dg.AssetKey) -> str:
    return key.path[-1]


def _partition_expr(metadata: Any) -> str | None:
    expr = (metadata or {}).get("partition_expr")
    return str(expr) if expr else None


def _in_list(keys: list[str]) -> tuple[str, list[str]]:
    return ", ".join("?" for _ in keys), list(keys)


def write_table(conn, schema: str, table: str, obj: pd.DataFrame, partition_expr: str | None,
                partition_keys: list[str]) -> None:
    """Replace `partition_keys` of `table` (or the whole table when unpartitioned) with `obj`."""
    name = f"{schema}.{table}"
    obj = normalize_frame(obj)
    if schema != "main" or not is_lake_connection(conn):  # a no-op DDL on the lake would still commit
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    conn.register("_distill_out", obj)
    try:
        if not table_exists(conn, table, schema):
            conn.execute(f"CREATE TABLE {name} AS SELECT * FROM _distill_out")
            return
        if partition_expr and partition_keys:
            marks, params = _in_list(partition_keys)
            conn.execute(f"DELETE FROM {name} WHERE {partition_expr} IN ({marks})", params)
        else:
            conn.execute(f"DELETE FROM {name}")
        have = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_catalog = current_database() "
            "AND table_schema = ? AND table_name = ?",
            [schema, table]).fetchall()}
        for col in obj.columns:  # a newer code version may add columns
            if col not in have:
                conn.execute(f'ALTER TABLE {name} ADD COLUMN "{col}" {_duck_type(obj[col])}')
        if not obj.empty:
            conn.execute(f"INSERT INTO {name} BY NAME SELECT * FROM _distill_out")
    finally:
        conn.unregister("_distill_out")


def read_table(conn, schema: str, table: str, partition_expr: str | None,
               partition_keys: list[str] | None) -> pd.DataFrame | None:
    """The rows of `partition_keys` (all rows when None); None when the table does not exist."""
    if not table_exists(conn, table, schema):
        return None
    if partition_expr and partition_keys:
        marks, params = _in_list(partition_keys)
        return conn.execute(f"SELECT * FROM {schema}.{table} WHERE {partition_expr} IN ({marks})", params).df()
    return conn.execute(f"SELECT * FROM {schema}.{table}").df()


def _require(conn, table: str, database: str) -> None:
    if not table_exists(conn, table):
        raise RuntimeError(f"{database} has no {table} table: build the IO manager with the ledger's schema "
                           "(distill_assets.lib.ledger.open_io_manager)")


def mark_written(conn, schema: str, table: str, obj: pd.DataFrame, partition_expr: str | None,
                 partition_keys: list[str], run_id: str, database: str) -> None:
    """Record that `partition_keys` of `table` (or the table) were written, with their row counts."""
    _require(conn, PARTITIONS_TABLE, database)
    keys = partition_keys or [UNPARTITIONED]
    if partition_keys and partition_expr and partition_expr in obj.columns:
        counts = obj[partition_expr].astype(str).value_counts().to_dict()
    else:
        counts = {keys[0]: len(obj)} if len(keys) == 1 else {}
    now = utcnow()
    rows = pd.DataFrame({"asset_table": f"{schema}.{table}", "partition_key": keys,
                         "row_count": [int(counts.get(k, 0)) for k in keys], "run_id": run_id, "written_at": now})
    insert_df(conn, PARTITIONS_TABLE, rows, on_conflict="replace")


def missing_partitions(conn, schema: str, table: str, partition_keys: list[str] | None) -> list[str]:
    """The keys of `partition_keys` (or the table itself, as '') this IO manager never wrote. A table written
    before partitions were recorded (no marker at all) counts as written, as it always did."""
    written: set[str] = set()
    if table_exists(conn, PARTITIONS_TABLE):
        written = {r[0] for r in conn.execute(f"SELECT partition_key FROM {PARTITIONS_TABLE} WHERE asset_table = ?",
                                              [f"{schema}.{table}"]).fetchall()}
    if not written:
        return [] if table_exists(conn, table, schema) else list(partition_keys or [UNPARTITIONED])
    if not partition_keys:
        return []  # the whole table: written (as one, or by partition)
    return [k for k in partition_keys if k not in written]


def write_lineage(conn, stage: StageTable, partition_keys: list[str], database: str) -> None:
    """Replace the stage's verdicts for `partition_keys` (the categories) with `stage.lineage`."""
    _require(conn, "lineage", database)
    rows = stage.lineage
    keys = partition_keys or (sorted(set(rows["category"].astype(str))) if not rows.empty else [])
    if keys:
        marks, params = _in_list(keys)
        conn.execute(f"DELETE FROM lineage WHERE stage = ? AND category IN ({marks})", [stage.stage, *params])
    insert_df(conn, "lineage", rows, on_conflict="replace")


def verdict_rows(frame: pd.DataFrame, stage: str, partition_expr: str | None, partition_keys: list[str],
                 run_id: str) -> pd.DataFrame:
    """Lineage rows from an annotated frame's example_id/verdict/reason/evidence columns."""
    if frame.empty:
        return pd.DataFrame(columns=["example_id", "category", "stage", "verdict", "reason", "evidence", "run_id",
                                     "recorded_at"])
    missing = [c for c in ("example_id", "verdict", "reason", "evidence") if c not in frame.columns]
    if missing:
        raise ValueError(f"{stage}: output metadata {LINEAGE_STAGE!r} needs the annotation columns; missing {missing}")
    if partition_expr and partition_expr in frame.columns:
        category = frame[partition_expr].astype(str).to_numpy()
    elif len(partition_keys) == 1:
        category = partition_keys[0]
    else:
        raise ValueError(f"{stage}: cannot tell the category of its verdict rows (no {partition_expr!r} column)")
    out = pd.DataFrame({
        "example_id": frame["example_id"].astype(str).to_numpy(), "category": category, "stage": stage,
        "verdict": frame["verdict"].astype(str).to_numpy(), "reason": frame["reason"].fillna("").astype(str).to_numpy(),
        "evidence": [e if isinstance(e, str) else json.dumps(e, default=str) for e in frame["evidence"]],
        "run_id": run_id, "recorded_at": utcnow()})
    return out.drop_duplicates(["example_id", "stage"], keep="last")


class DistillDuckDBIOManager(dg.ConfigurableIOManager):
    """Stores table assets in the project DuckDB file; partitions are written with `partition_expr`."""

    database: str = Field(description="Path of the DuckDB file ($DISTILL_HOME/distill.duckdb).")
    schema_: str | None = Field(default=None, alias="schema",
                                description="schema of the asset tables; `main`, beside the side tables")
    catalog: str | None = Field(default=None, description="DuckLake: the Postgres catalog DSN (DISTILL_STORE).")
    data_path: str | None = Field(default=None, description="DuckLake: the Parquet folder or s3:// prefix.")
    lock_timeout_s: float = 900.0
    schema_sql: list[str] = Field(default_factory=list,
                                  description="Idempotent CREATE statements (the ledger's) run on first use.")

    @property
    def _schema(self) -> str:
        return self.schema_ or "main"

    @property
    def _store(self) -> DuckDBStore:
        return DuckDBStore(database=self.database, catalog=self.catalog, data_path=self.data_path,
                           lock_timeout_s=self.lock_timeout_s, schema_sql=self.schema_sql)

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame | StageTable) -> None:
        if obj is None:
            return
        stage = obj if isinstance(obj, StageTable) else None
        frame = stage.table if stage is not None else obj
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()}: the DuckDB IO manager stores DataFrames, "
                            f"got {type(frame).__name__}")
        expr = _partition_expr(context.definition_metadata)
        keys = list(context.asset_partition_keys) if context.has_asset_partitions else []
        named = (context.output_metadata or {}).get(LINEAGE_STAGE)
        named = getattr(named, "value", named)
        if stage is None and named:
            stage = StageTable(table=frame, stage=str(named),
                               lineage=verdict_rows(frame, str(named), expr, keys, context.run_id))
        table = _table(context.asset_key)

        def write(conn) -> None:  # one transaction for all of it
            write_table(conn, self._schema, table, frame, expr, keys)
            mark_written(conn, self._schema, table, frame, expr, keys, context.run_id, self.database)
            if stage is not None:
                write_lineage(conn, stage, keys, self.database)

        self._store.transact(write)
        rows = {"dagster/partition_row_count": len(frame)} if keys else {"dagster/row_count": len(frame)}
        context.add_output_metadata({
            **rows,
            "dagster/storage_kind": "ducklake" if self.catalog else "duckdb",
            "dataframe_columns": dg.MetadataValue.table_schema(
                dg.TableSchema(columns=[dg.TableColumn(name=str(n), type=str(t)) for n, t in frame.dtypes.items()])
            ),
        })

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        upstream = context.upstream_output
        expr = _partition_expr(upstream.definition_metadata if upstream is not None else None)
        keys = list(context.asset_partition_keys) if context.has_asset_partitions else None
        table = _table(context.asset_key)
        store = self._store
        with store.connect() as conn:
            missing = missing_partitions(conn, self._schema, table, keys)
            df = None if missing else read_table(conn, self._schema, table, expr, keys)
            version = f"snapshot:{lake.current_snapshot(conn)}" if is_lake_connection(conn) else None
        if missing and (context.definition_metadata or {}).get("allow_missing"):
            # the consumer takes what exists (e.g. training on the categories materialized so far) or has its own
            # fallback (the task's eval file for eval_set); the log says what was missing
            context.log.warning(f"{context.asset_key.to_user_string()}: partitions {missing} were never "
                                "materialized; reading the others")
            present = [k for k in (keys or []) if k not in missing]
            if not present:
                return pd.DataFrame()
            with store.connect() as conn:
                df = read_table(conn, self._schema, table, expr, present)
                version = f"snapshot:{lake.current_snapshot(conn)}" if is_lake_connection(conn) else None
            return _versioned(pd.DataFrame() if df is None else df, version)
        if missing:
            name = context.asset_key.to_user_string()
            what = ", ".join(f"{name}[{k}]" for k in missing) if missing != [UNPARTITIONED] else name
            one = len(missing) == 1
            raise dg.Failure(f"{what} {'has' if one else 'have'} never been materialized: materialize "
                             f"{('that partition' if keys else 'it') if one else 'them'} first")
        return _versioned(pd.DataFrame() if df is None else df, version)


def _versioned(df: pd.DataFrame, version: str | None) -> pd.DataFrame:
    if version:
        df.attrs["store_version"] = version  # the lake snapshot these rows were read at
    return df
