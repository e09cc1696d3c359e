"""dagster-duckdb IO manager made safe for parallel backfills and crashes.

Stock dagster-duckdb deletes a partition and then inserts it with no transaction (a crash in between empties
the partition), skips writing an empty frame (which leaves the old rows deleted and no table), and retries the
file lock only ~100 s. Here every write is one transaction under the store's cross-process lock.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import pandas as pd
from dagster import InputContext, MetadataValue, OutputContext, TableColumn, TableSchema
from dagster._core.definitions.metadata import TableMetadataSet
from dagster._core.storage.db_io_manager import DbIOManager, DbTypeHandler, TableSlice
from dagster_duckdb.io_manager import DuckDbClient, _get_cleanup_statement
from dagster_duckdb_pandas import DuckDBPandasIOManager, DuckDBPandasTypeHandler

from resources.store import locked_connection, table_exists


class TransactionalDuckDbClient(DuckDbClient):
    @staticmethod
    def delete_table_slice(context: OutputContext, table_slice: TableSlice, connection) -> None:
        # checked first: a failed statement would abort the surrounding transaction
        if table_exists(connection, table_slice.table, table_slice.schema):
            connection.execute(_get_cleanup_statement(table_slice))

    @staticmethod
    @contextmanager
    def connect(context, _):
        with locked_connection(context.resource_config["database"]) as conn:
            yield conn


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


class PandasHandler(DuckDBPandasTypeHandler):
    def handle_output(self, context: OutputContext, table_slice: TableSlice, obj: pd.DataFrame, connection):
        name = f"{table_slice.schema}.{table_slice.table}"
        obj = normalize_frame(obj)
        connection.register("_distill_out", obj)
        try:
            if not table_exists(connection, table_slice.table, table_slice.schema):
                # created even when empty, so downstream reads of an empty partition keep the columns
                connection.execute(f"CREATE TABLE {name} AS SELECT * FROM _distill_out")
            else:
                have = {r[0] for r in connection.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
                    [table_slice.schema, table_slice.table]).fetchall()}
                for col in obj.columns:  # a newer code version may add columns
                    if col not in have:
                        connection.execute(f'ALTER TABLE {name} ADD COLUMN "{col}" {_duck_type(obj[col])}')
                if not obj.empty:
                    connection.execute(f"INSERT INTO {name} BY NAME SELECT * FROM _distill_out")
        finally:
            connection.unregister("_distill_out")
        meta = TableMetadataSet(partition_row_count=len(obj), storage_kind="duckdb") if context.has_partition_key else TableMetadataSet(
            row_count=len(obj))
        context.add_output_metadata({
            **meta,
            "dataframe_columns": MetadataValue.table_schema(
                TableSchema(columns=[TableColumn(name=str(n), type=str(t)) for n, t in obj.dtypes.items()])
            ),
        })

    def load_input(self, context: InputContext, table_slice: TableSlice, connection) -> pd.DataFrame:
        if not table_exists(connection, table_slice.table, table_slice.schema):
            return pd.DataFrame()
        return super().load_input(context, table_slice, connection)


class DistillDuckDBIOManager(DuckDBPandasIOManager):
    """Stores table assets in the project DuckDB file; partitions are written with `partition_expr`."""

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler]:
        return [PandasHandler()]

    def create_io_manager(self, context) -> DbIOManager:
        return DbIOManager(
            db_client=TransactionalDuckDbClient(),
            database=self.database,
            schema=self.schema_ or "main",  # one namespace with the side tables
            type_handlers=self.type_handlers(),
            default_load_type=pd.DataFrame,
            io_manager_name="DistillDuckDBIOManager",
        )
