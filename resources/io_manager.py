"""Asset tables in the project's DuckDB file, one transaction per write, on public Dagster APIs only.

A partitioned asset's partition is replaced (delete + insert) inside one transaction under the store's
cross-process lock, so a crash leaves the old rows or the new ones, and parallel backfills queue instead of
failing on DuckDB's single-writer file lock. An empty frame still creates the table, so a downstream read of an
empty partition keeps the columns.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from resources.store import locked_connection, table_exists


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
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
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


class DistillDuckDBIOManager(dg.ConfigurableIOManager):
    """Stores table assets in the project DuckDB file; partitions are written with `partition_expr`."""

    database: str = Field(description="Path of the DuckDB file ($DISTILL_HOME/distill.duckdb).")
    schema_: str | None = Field(default=None, alias="schema",
                                description="schema of the asset tables; `main`, beside the side tables")
    lock_timeout_s: float = 900.0

    @property
    def _schema(self) -> str:
        return self.schema_ or "main"

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:
            return
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()}: the DuckDB IO manager stores DataFrames, "
                            f"got {type(obj).__name__}")
        expr = _partition_expr(context.definition_metadata)
        keys = list(context.asset_partition_keys) if context.has_asset_partitions else []
        with locked_connection(self.database, self.lock_timeout_s) as conn:
            write_table(conn, self._schema, _table(context.asset_key), obj, expr, keys)
        rows = {"dagster/partition_row_count": len(obj)} if keys else {"dagster/row_count": len(obj)}
        context.add_output_metadata({
            **rows,
            "dagster/storage_kind": "duckdb",
            "dataframe_columns": dg.MetadataValue.table_schema(
                dg.TableSchema(columns=[dg.TableColumn(name=str(n), type=str(t)) for n, t in obj.dtypes.items()])
            ),
        })

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        upstream = context.upstream_output
        expr = _partition_expr(upstream.definition_metadata if upstream is not None else None)
        keys = list(context.asset_partition_keys) if context.has_asset_partitions else None
        with locked_connection(self.database, self.lock_timeout_s) as conn:
            df = read_table(conn, self._schema, _table(context.asset_key), expr, keys)
        return pd.DataFrame() if df is None else df
