"""`decontaminated`: drops training rows that overlap the held-out eval set, before `clean_dataset`.

The rules and thresholds are the contamination check's (checks.contamination, `Category.contamination`):
word 13-gram and 8-gram overlap after normalization, and instruction/eval-prompt embedding cosine. Every
dropped row's lineage evidence names the matching eval items, the n-grams and the cosine, so the independent
check on `clean_dataset` passes afterwards for the same reasons it would have failed.
"""

import dagster as dg
import pandas as pd

from checks.contamination import encoder, find_contamination, flag_rows, rule_names, training_texts
from distill_assets.partitions import CATEGORY
from distill_assets.stages import annotate, kept, publish_stage
from distill_assets.tasks import Category, load_tasks
from resources.embedder import EmbedderResource
from resources.store import DuckDBStore


def decontaminate(df: pd.DataFrame, eval_set: pd.DataFrame, category: Category, encode) -> pd.DataFrame:
    """The annotated stage frame: rows matching any eval item by any rule are dropped with their evidence."""
    if df.empty:
        return annotate(df, [], [], [])
    texts = training_texts(df)
    matches = find_contamination(texts, eval_set, category.contamination, encode)
    flags = flag_rows(texts, matches, category.contamination)
    return annotate(df, ~flags["contaminated"].to_numpy(), flags["reason"].tolist(), flags["evidence"].tolist())


@dg.asset(
    name="decontaminated",
    ins={"balanced": dg.AssetIn("balanced"), "eval_set": dg.AssetIn("eval_set")},
    partitions_def=CATEGORY,
    group_name="filtering",
    kinds={"duckdb", "pandas"},
    code_version="decontaminate-v1",
    metadata={"partition_expr": "category"},
)
def decontaminated(context: dg.AssetExecutionContext, store: DuckDBStore, embedder: EmbedderResource,
                   balanced: pd.DataFrame, eval_set: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """Every balanced (kept) row of the category, annotated: rows whose instruction or response shares a word
    13-gram or 8-gram with an eval item, or whose instruction is a near-paraphrase of an eval prompt
    (cosine >= contamination.embed_threshold), are dropped as contaminated_13gram / contaminated_8gram /
    contaminated_embedding with the eval_id, n-grams and cosine as evidence."""
    category = load_tasks().category(context.partition_key)
    if eval_set.empty:
        raise ValueError(f"eval_set[{category.name}] is empty: materialize eval_set first; decontaminating "
                         "against nothing would pass contaminated rows on")
    out = decontaminate(kept(balanced), eval_set, category, encoder(embedder, store))
    dropped = out.loc[~out["keep"], "reason"].value_counts() if not out.empty else pd.Series(dtype=int)
    return publish_stage(context, store, out, stage="decontaminated", extra_metadata={
        "eval_rows": dg.MetadataValue.int(len(eval_set)),
        "contaminated_by_rule": dg.MetadataValue.json({r: int(dropped.get(r, 0)) for r in
                                                       rule_names(category.contamination)}),
    })


assets = [decontaminated]
