"""The `balanced` asset: diversity balancing (lib/filters/balance.py) of the verified rows."""

import dagster as dg
import numpy as np
import pandas as pd

from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.stage_output import publish_stage
from distill_assets.lib.filters.balance import balance_frame, response_tokens
from distill_assets.lib.stages import kept
from distill_assets.lib.tasks import load_tasks
from resources.store import DuckDBStore


@dg.asset(
    name="balanced",
    ins={"verified": dg.AssetIn("verified")},
    partitions_def=CATEGORY,
    group_name="filtering",
    kinds={"duckdb", "pandas"},
    code_version="balance-v1",
    metadata={"partition_expr": "category"},
)
def balanced(context: dg.AssetExecutionContext, store: DuckDBStore, verified: pd.DataFrame):
    """The verified rows of the category, annotated by diversity balancing (filter 5): caps per
    difficulty, response-length bucket (student tokens), method and total from `balance`, deterministic
    round-robin over strata preferring higher judge scores. Adds response_tokens and length_bucket; the metadata
    holds the coverage table and the under-represented buckets (share < balance.min_bucket_share)."""
    category = load_tasks().category(context.partition_key)
    rows = kept(verified)
    out, cov = balance_frame(rows, category, response_tokens(rows) if len(rows) else np.zeros(0, dtype=np.int64))
    table = cov["coverage"]
    if cov["under_represented"]:
        context.log.warning(f"{category.name}: under-represented buckets {cov['under_represented']}; "
                            "generate more data for them")
    return publish_stage(context, store, out, stage="balanced", extra_metadata={
        "coverage": dg.MetadataValue.md(table.to_markdown(index=False) if not table.empty else "(empty)"),
        "under_represented": dg.MetadataValue.json(cov["under_represented"]),
    }, preview_columns=["example_id", "difficulty", "length_bucket", "method", "verdict", "reason"])


assets = [balanced]
