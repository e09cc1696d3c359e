"""The `quality_filtered` asset: basic-quality rules (lib/filters/quality.py) over the raw generations."""

import dagster as dg
import pandas as pd

from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.stage_output import publish_stage
from distill_assets.lib.filters.quality import quality_filter
from distill_assets.lib.stages import kept
from distill_assets.lib.tasks import load_tasks
from resources.store import DuckDBStore


@dg.asset(
    name="quality_filtered",
    ins={"raw_generations": dg.AssetIn("raw_generations")},
    partitions_def=CATEGORY,
    group_name="filtering",
    kinds={"duckdb", "pandas"},
    code_version="quality-v2",
    metadata={"partition_expr": "category"},
)
def quality_filtered(context: dg.AssetExecutionContext, store: DuckDBStore, raw_generations: pd.DataFrame):
    """Every raw generation of the category, annotated by the basic-quality rules (filter 1):
    token-length bounds (student tokenizer), encoding errors, empty/refusal, excess whitespace, repetition and
    wrong language. Malformed raw rows are quarantined. Columns: raw_generations' + keep/verdict/reason/evidence."""
    category = load_tasks().category(context.partition_key)
    out = quality_filter(kept(raw_generations), category)
    return publish_stage(context, store, out, stage="quality_filtered")


assets = [quality_filtered]
