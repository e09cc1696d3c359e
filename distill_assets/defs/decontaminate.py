"""The `decontaminated` asset: drops balanced rows that overlap the eval set (lib/filters/decontaminate.py)."""

import dagster as dg
import pandas as pd

from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.stage_output import publish_stage
from distill_assets.lib.contamination import category_shared_text, encoder, rule_names
from distill_assets.lib.filters.decontaminate import decontaminate
from distill_assets.lib.stages import kept
from distill_assets.lib.tasks import load_tasks
from resources.embedder import EmbedderResource
from resources.store import DuckDBStore


@dg.asset(
    name="decontaminated",
    ins={"balanced": dg.AssetIn("balanced"), "eval_set": dg.AssetIn("eval_set")},
    partitions_def=CATEGORY,
    group_name="filtering",
    kinds={"duckdb", "pandas"},
    code_version="decontaminate-v2",
    metadata={"partition_expr": "category"},
)
def decontaminated(context: dg.AssetExecutionContext, store: DuckDBStore, embedder: EmbedderResource,
                   balanced: pd.DataFrame, eval_set: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """Every balanced (kept) row of the category, annotated: rows whose instruction or response shares a word
    13-gram or 8-gram with an eval item, or whose instruction is a near-paraphrase of an eval prompt
    (cosine >= contamination.embed_threshold), are dropped as contaminated_13gram / contaminated_8gram /
    contaminated_embedding with the eval_id, n-grams and cosine as evidence. Text the category's seeds and eval
    items share (a prompt template, frequent n-grams) is not overlap; metadata `ignored_shared_text` lists it."""
    category = load_tasks().category(context.partition_key)
    if eval_set.empty:
        raise ValueError(f"eval_set[{category.name}] is empty: materialize eval_set first; decontaminating "
                         "against nothing would pass contaminated rows on")
    shared = category_shared_text(category)
    out = decontaminate(kept(balanced), eval_set, category, encoder(embedder, store), shared)
    dropped = out.loc[~out["keep"], "reason"].value_counts() if not out.empty else pd.Series(dtype=int)
    return publish_stage(context, store, out, stage="decontaminated", extra_metadata={
        "eval_rows": dg.MetadataValue.int(len(eval_set)),
        "contaminated_by_rule": dg.MetadataValue.json({r: int(dropped.get(r, 0)) for r in
                                                       rule_names(category.contamination)}),
        "ignored_shared_text": dg.MetadataValue.json(shared.summary()),
    })


assets = [decontaminated]
