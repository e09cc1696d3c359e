"""`decontaminated`: drops training rows that overlap the held-out eval set, before `clean_dataset`.

The rules and thresholds are the contamination check's (lib/contamination.py, `Category.contamination`):
word 13-gram and 8-gram overlap after normalization, and instruction/eval-prompt embedding cosine. Every
dropped row's lineage evidence names the matching eval items, the n-grams and the cosine, so the independent
check on `clean_dataset` passes afterwards for the same reasons it would have failed.
"""

import pandas as pd

from distill_assets.lib.contamination import category_shared_text, find_contamination, flag_rows, training_texts
from distill_assets.lib.shared_text import SharedText
from distill_assets.lib.stages import annotate
from distill_assets.lib.tasks import Category


def decontaminate(df: pd.DataFrame, eval_set: pd.DataFrame, category: Category, encode,
                  shared: SharedText | None = None) -> pd.DataFrame:
    """The annotated stage frame: rows matching any eval item by any rule are dropped with their evidence.
    `shared` (default: `category_shared_text`) is what the category's own texts share, ignored as the check does."""
    if df.empty:
        return annotate(df, [], [], [])
    if shared is None:
        shared = category_shared_text(category)
    texts = training_texts(df)
    matches = find_contamination(texts, eval_set, category.contamination, encode, shared)
    flags = flag_rows(texts, matches, category.contamination)
    return annotate(df, ~flags["contaminated"].to_numpy(), flags["reason"].tolist(), flags["evidence"].tolist())
