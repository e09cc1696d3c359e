"""The held-out eval set of one category: the task file's separate `eval` file plus held-out production failures.

Same JSONL schema as the seeds (prompt, difficulty, reference, tests, entry_point, reference_response, tags),
validated line by line (errors name file, line and field) and then by pandera. Nothing in generation reads
it: only the contamination checks, the decontaminate stage and evaluation do.
"""

from __future__ import annotations

import pandas as pd

from distill_assets.lib.records import EVAL_COLUMNS, eval_id, gold_reference, load_eval_file
from distill_assets.lib.schemas import validate_table
from distill_assets.lib.tasks import Category
from resources.store import DuckDBStore


def extra_eval_rows(store: DuckDBStore, category: str, verify: str = "none") -> pd.DataFrame:
    """Held-out production failures of the category (split 'heldout', whatever their status, so a resolved one
    keeps gating later adapters) as eval rows; `expected` becomes the reference response, and the gold
    `reference` where `verify` checks answers. Empty when there are none."""
    df = store.query_df(
        "SELECT failure_id, input, expected FROM production_failures "
        "WHERE category = ? AND (split = 'heldout' OR status = 'held_out') ORDER BY failure_id",
        [category],
    )
    if df.empty:
        return pd.DataFrame(columns=EVAL_COLUMNS)
    return pd.DataFrame({
        "eval_id": [eval_id(category, str(i), None, "production_heldout") for i in df["input"]],
        "category": category,
        "prompt": df["input"].astype(str).str.strip(),
        "difficulty": "medium",
        "reference": [gold_reference(verify, e) for e in df["expected"]],
        "tests": "[]",
        "entry_point": None,
        "reference_response": df["expected"].where(df["expected"].notna(), None),
        "source": "production_heldout",
    }, columns=EVAL_COLUMNS).drop_duplicates("eval_id")


def build_eval_frame(category: Category, store: DuckDBStore | None) -> pd.DataFrame:
    """The eval file's rows plus the held-out production failures (when a store is given), validated."""
    df = load_eval_file(category.eval, category)
    if store is not None:
        extra = extra_eval_rows(store, category.name, category.verify)
        if not extra.empty:
            df = pd.concat([df, extra[~extra["eval_id"].isin(df["eval_id"])]], ignore_index=True)
    return validate_table("eval_set", df, category.name)
