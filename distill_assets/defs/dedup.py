"""The `deduplicated` asset: exact and near-duplicate removal (lib/filters/dedup.py) of the quality-kept rows."""

import dagster as dg
import pandas as pd

from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.stage_output import publish_stage
from distill_assets.lib.filters.dedup import deduplicate
from distill_assets.lib.stages import kept
from distill_assets.lib.tasks import load_tasks
from resources.embedder import EmbedderResource
from resources.store import DuckDBStore


@dg.asset(
    name="deduplicated",
    ins={"quality_filtered": dg.AssetIn("quality_filtered")},
    partitions_def=CATEGORY,
    group_name="filtering",
    kinds={"duckdb", "pandas"},
    code_version="dedup-v1",
    metadata={"partition_expr": "category"},
)
def deduplicated(context: dg.AssetExecutionContext, store: DuckDBStore, embedder: EmbedderResource,
                 quality_filtered: pd.DataFrame):
    """The rows kept by quality_filtered, annotated by exact and near-duplicate removal (filter 2):
    normalized-text hash, then all-MiniLM-L6-v2 cosine >= filters.near_dup_threshold, first in
    (created_at, example_id) order wins and rows kept in other partitions win over this one. Dropped rows
    carry duplicate_of (example_id) and dup_similarity; kept rows are added to the `dedup_index` side table."""
    category = load_tasks().category(context.partition_key)
    out, stats = deduplicate(kept(quality_filtered), category, store, embedder, run_id=context.run.run_id)
    return publish_stage(context, store, out, stage="deduplicated",
                         extra_metadata={"dedup": dg.MetadataValue.json(stats)},
                         preview_columns=["example_id", "response", "verdict", "reason", "duplicate_of",
                                          "dup_similarity"])


assets = [deduplicated]
