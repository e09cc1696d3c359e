"""How a filter stage publishes its output: verdicts into the lineage ledger, then the annotated frame as the
asset's output with its funnel, a preview and a content-hash data version."""

from typing import Any

import dagster as dg
import pandas as pd

from distill_assets.lib import ledger
from distill_assets.lib.ids import frame_version
from distill_assets.lib.stages import funnel, preview_markdown
from resources.store import DuckDBStore


def stage_metadata(store: DuckDBStore, df: pd.DataFrame, category: str,
                   preview_columns: list[str] | None = None) -> dict[str, Any]:
    f = funnel(store, category)
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


def publish_stage(context: dg.AssetExecutionContext, store: DuckDBStore, df: pd.DataFrame, stage: str,
                  extra_metadata: dict[str, Any] | None = None,
                  preview_columns: list[str] | None = None) -> dg.Output:
    """Record every row's verdict in `lineage` and return the annotated frame as the asset's output."""
    category = context.partition_key
    if not df.empty:
        ledger.record_lineage(store, df, stage=stage, category=category, run_id=context.run.run_id)
    else:
        store.replace_rows("lineage", pd.DataFrame(), "stage = ? AND category = ?", [stage, category])
    md = stage_metadata(store, df, category, preview_columns)
    md.update(extra_metadata or {})
    return dg.Output(df, metadata=md, data_version=dg.DataVersion(frame_version(df)))
