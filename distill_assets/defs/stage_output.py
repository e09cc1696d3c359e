"""How a filter stage publishes its output: the annotated frame, with output metadata `lineage_stage` so that the
IO manager writes its rows and their lineage verdicts in one transaction, its funnel, a preview and a
content-hash data version."""

from typing import Any

import dagster as dg
import pandas as pd

from distill_assets.lib import ledger
from distill_assets.lib.ids import frame_version
from distill_assets.lib.stages import funnel, preview_markdown, with_stage
from resources.io_manager import LINEAGE_STAGE, StageTable
from resources.store import DuckDBStore


def stage_metadata(store: DuckDBStore, df: pd.DataFrame, category: str,
                   preview_columns: list[str] | None = None, stage: str | None = None) -> dict[str, Any]:
    f = funnel(store, category)
    if stage is not None:
        f = with_stage(f, df, stage, category)
    md: dict[str, Any] = {
        "rows": dg.MetadataValue.int(int(len(df))),
        "kept": dg.MetadataValue.int(int(df["keep"].sum())) if "keep" in df.columns else int(len(df)),
        "funnel": dg.MetadataValue.md(f.to_markdown(index=False, floatfmt=".2f") if not f.empty else "(empty)"),
    }
    if "reason" in df.columns and not df.empty:
        reasons = df.loc[~df["keep"].astype(bool), "reason"].value_counts().head(15)
        md["drop_reasons"] = dg.MetadataValue.json({str(k): int(v) for k, v in reasons.items()})
    md["preview"] = dg.MetadataValue.md(
        preview_markdown(df, preview_columns or ["example_id", "method", "instruction", "response", "verdict", "reason"])
    )
    return md


def stage_table(context: dg.AssetExecutionContext, table: pd.DataFrame, annotated: pd.DataFrame,
                stage: str) -> StageTable:
    """`table` plus the lineage rows of `annotated` (every row the stage saw, with its verdict), for a stage
    whose verdict rows are not its table rows."""
    return StageTable(table=table, stage=stage, lineage=ledger.lineage_frame(
        annotated, stage=stage, category=context.partition_key, run_id=context.run.run_id))


def publish_stage(context: dg.AssetExecutionContext, store: DuckDBStore, df: pd.DataFrame, stage: str,
                  extra_metadata: dict[str, Any] | None = None,
                  preview_columns: list[str] | None = None) -> dg.Output:
    """The annotated frame with every row's verdict, for the IO manager to write together with its lineage."""
    md = stage_metadata(store, df, context.partition_key, preview_columns, stage=stage)
    md.update(extra_metadata or {})
    md[LINEAGE_STAGE] = stage
    return dg.Output(df, metadata=md, data_version=dg.DataVersion(frame_version(df)))
