"""A blocking schema check on every table asset: the partition loaded through the IO manager must match its
pandera schema (distill_assets.lib.schemas), and every row's `category` must be the partition key."""

from typing import Any

import dagster as dg
import pandas as pd

from distill_assets.lib.schemas import SCHEMAS, TABLE_ASSETS, failure_cases


def schema_check_result(table: str, df: pd.DataFrame, category: str | None = None,
                        max_cases: int = 25) -> dg.AssetCheckResult:
    """A blocking-grade result: fails (ERROR) with the pandera failure cases in metadata."""
    fc = failure_cases(table, df, category)
    by_check = (fc.groupby(["column", "check"]).size().sort_values(ascending=False).head(max_cases)
                if not fc.empty else pd.Series(dtype=int))
    md: dict[str, Any] = {
        "rows": dg.MetadataValue.int(int(len(df))),
        "failures": dg.MetadataValue.int(int(len(fc))),
        "schema_columns": dg.MetadataValue.json(list(SCHEMAS[table].columns)),
    }
    if not fc.empty:
        md["failure_cases"] = dg.MetadataValue.md(fc.head(max_cases).to_markdown(index=False))
        md["failures_by_check"] = dg.MetadataValue.json(
            {f"{c} / {k}": int(n) for (c, k), n in by_check.items()})
    return dg.AssetCheckResult(
        passed=fc.empty,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=md,
        description=(f"{table}: matches its schema ({len(df)} rows)" if fc.empty
                     else f"{table}: {len(fc)} schema failure(s)"),
    )


def build_schema_check(table: str, partitions_def: dg.PartitionsDefinition | None,
                       asset_key: str | None = None) -> dg.AssetChecksDefinition:
    """The check of one table; `asset_key` defaults to the table name (tests point it at stand-ins)."""

    @dg.asset_check(asset=asset_key or table, name="schema", blocking=True, partitions_def=partitions_def,
                    description=f"{table} matches its pandera schema (distill_assets/lib/schemas.py); extra columns allowed.")
    def _schema(context: dg.AssetCheckExecutionContext, df: pd.DataFrame) -> dg.AssetCheckResult:
        category = context.partition_key if context.has_partition_key else None
        return schema_check_result(table, df, category)

    return _schema


def build_schema_checks(partitions_def: dg.PartitionsDefinition | None) -> list[dg.AssetChecksDefinition]:
    """The schema check of every table asset (distill_assets.lib.schemas.TABLE_ASSETS)."""
    return [build_schema_check(t, partitions_def) for t in TABLE_ASSETS]
