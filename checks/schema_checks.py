"""A blocking schema check on every table asset: the partition loaded through the IO manager must match its
pandera schema (checks.schemas), and every row's `category` must be the partition key."""

import dagster as dg
import pandas as pd

from checks.schemas import TABLE_ASSETS, schema_check_result
from distill_assets.partitions import CATEGORY


def build_schema_check(table: str, partitions_def: dg.PartitionsDefinition | None = CATEGORY,
                       asset_key: str | None = None) -> dg.AssetChecksDefinition:
    """The check of one table; `asset_key` defaults to the table name (tests point it at stand-ins)."""

    @dg.asset_check(asset=asset_key or table, name="schema", blocking=True, partitions_def=partitions_def,
                    description=f"{table} matches its pandera schema (checks/schemas.py); extra columns allowed.")
    def _schema(context: dg.AssetCheckExecutionContext, df: pd.DataFrame) -> dg.AssetCheckResult:
        category = context.partition_key if context.has_partition_key else None
        return schema_check_result(table, df, category)

    return _schema


asset_checks = [build_schema_check(t) for t in TABLE_ASSETS]
