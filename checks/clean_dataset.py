"""Checks of `clean_dataset`, all blocking: no eval contamination, no duplicates, yield within its bands.

Each recomputes its rule from the rows themselves (logic in lib/contamination.py, lib/filters/dedup_check.py and
lib/yields.py), independently of the filter stages' annotations.
"""

import json
from typing import Any

import dagster as dg
import pandas as pd

from checks.contamination_result import contamination_check_result
from distill_assets.lib.contamination import Encode, category_shared_text, encoder, held_out, training_texts
from distill_assets.lib.filters.dedup_check import PAIR_COLUMNS, find_duplicates
from distill_assets.lib.stages import funnel, written_rows
from distill_assets.lib.tasks import Category, load_tasks
from distill_assets.lib.yields import ERROR, WARN, YieldReport, evaluate_yield
from resources.embedder import EmbedderResource
from resources.store import DuckDBStore

_SEVERITY = {ERROR: dg.AssetCheckSeverity.ERROR, WARN: dg.AssetCheckSeverity.WARN}


def dedup_check_result(df: pd.DataFrame, category: Category, encode: Encode, top: int = 20) -> dg.AssetCheckResult:
    pairs, n_exact, n_near = find_duplicates(df, category, encode)
    texts = training_texts(df).set_index("example_id")
    shown = pairs.sort_values("cosine", ascending=False).head(top).copy()
    for side in ("a", "b"):
        shown[f"response_{side}"] = shown[f"example_{side}"].map(
            lambda e: str(texts["response"].get(e, ""))[:80].replace("\n", " "))
    md: dict[str, Any] = {
        "rows": dg.MetadataValue.int(int(len(df))),
        "exact_duplicates": dg.MetadataValue.int(n_exact),
        "near_duplicate_pairs": dg.MetadataValue.int(n_near),
        "near_dup_threshold": dg.MetadataValue.float(float(category.filters.near_dup_threshold)),
        "embedded_text": dg.MetadataValue.text(
            f"response (>= {category.filters.near_dup_min_tokens} tokens); instruction among equal short responses"),
        "top_pairs": dg.MetadataValue.md(shown.to_markdown(index=False) if not shown.empty else "(none)"),
        "pairs": dg.MetadataValue.json(json.loads(shown[PAIR_COLUMNS].to_json(orient="records"))),
    }
    ok = n_exact == 0 and n_near == 0
    return dg.AssetCheckResult(
        passed=ok, severity=dg.AssetCheckSeverity.ERROR, metadata=md,
        description=("no duplicates" if ok else f"{n_exact} exact duplicate(s) and {n_near} near-duplicate pair(s) "
                                                f"above cosine {category.filters.near_dup_threshold}"))


def yield_check_result(rep: YieldReport, category: Category) -> dg.AssetCheckResult:
    md: dict[str, Any] = {
        "raw_rows": dg.MetadataValue.int(rep.raw),
        "clean_rows": dg.MetadataValue.int(rep.clean),
        "clean_train_rows": dg.MetadataValue.int(rep.train),
        "yield": dg.MetadataValue.float(round(rep.yield_, 4) if rep.yield_ is not None else float("nan")),
        "yield_band": dg.MetadataValue.json(list(category.yield_band)),
        "yield_floor": dg.MetadataValue.float(float(category.yield_floor)),
        "min_train_examples": dg.MetadataValue.int(category.min_train_examples),
        "funnel": dg.MetadataValue.md(rep.stages.to_markdown(index=False) if not rep.stages.empty else "(empty)"),
        "funnel_json": dg.MetadataValue.json(rep.stages.astype(object).where(rep.stages.notna(), None)
                                             .to_dict("records")),
        "issues": dg.MetadataValue.json([{"level": lvl, "message": m} for lvl, m in rep.issues]),
    }
    desc = (f"yield {rep.yield_:.1%} ({rep.clean}/{rep.raw}), every stage within its band" if rep.passed
            else "; ".join(m for _, m in rep.issues))
    return dg.AssetCheckResult(passed=rep.passed, severity=_SEVERITY[rep.level], metadata=md, description=desc)


def build_clean_contamination_check(partitions_def: dg.PartitionsDefinition | None,
                                    clean_key: str = "clean_dataset",
                                    eval_key: str = "eval_set") -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=clean_key, name="no_eval_contamination", blocking=True, partitions_def=partitions_def,
                    additional_ins={"eval_set": dg.AssetIn(eval_key, metadata={"allow_missing": True})},
                    description="Training instructions and responses share no 13-/8-gram with the held-out eval "
                                "set and no instruction is within the embedding threshold of an eval prompt.")
    def clean_contamination(context: dg.AssetCheckExecutionContext, clean: pd.DataFrame, eval_set: pd.DataFrame,
                            store: DuckDBStore, embedder: EmbedderResource) -> dg.AssetCheckResult:
        cat = load_tasks().category(context.partition_key)
        return contamination_check_result(training_texts(clean), held_out(eval_set, cat, store), cat.contamination,
                                          encoder(embedder, store), subject="training rows",
                                          shared=category_shared_text(cat))

    return clean_contamination


def build_dedup_check(partitions_def: dg.PartitionsDefinition | None,
                      clean_key: str = "clean_dataset") -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=clean_key, name="no_duplicates", blocking=True, partitions_def=partitions_def,
                    description="Zero exact duplicates (normalized instruction+response) and zero pairs above the "
                                "category's near_dup_threshold, recomputed from the rows themselves.")
    def clean_dedup(context: dg.AssetCheckExecutionContext, clean: pd.DataFrame, store: DuckDBStore,
                    embedder: EmbedderResource) -> dg.AssetCheckResult:
        category = load_tasks().category(context.partition_key)
        return dedup_check_result(clean, category, encoder(embedder, store))

    return clean_dedup


def build_yield_check(partitions_def: dg.PartitionsDefinition | None, clean_key: str = "clean_dataset",
                      raw_key: str = "raw_generations") -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=clean_key, name="yield_within_band", blocking=True, partitions_def=partitions_def,
                    additional_ins={"raw_generations": dg.AssetIn(raw_key)},
                    description="clean/raw within yield_band and each stage's loss within stage_loss_bands (WARN); "
                                "below yield_floor or under min_train_examples clean train rows (ERROR, blocks).")
    def clean_yield(context: dg.AssetCheckExecutionContext, clean: pd.DataFrame, raw_generations: pd.DataFrame,
                    store: DuckDBStore) -> dg.AssetCheckResult:
        category = load_tasks().category(context.partition_key)
        rep = evaluate_yield(len(raw_generations), clean, funnel(store, category.name), category,
                             written=written_rows(store, category.name))
        return yield_check_result(rep, category)

    return clean_yield


def build_clean_dataset_checks(partitions_def: dg.PartitionsDefinition | None, clean_key: str = "clean_dataset",
                               eval_key: str = "eval_set",
                               raw_key: str = "raw_generations") -> list[dg.AssetChecksDefinition]:
    """Every check of clean_dataset: no_eval_contamination, no_duplicates, yield_within_band."""
    return [build_clean_contamination_check(partitions_def, clean_key, eval_key),
            build_dedup_check(partitions_def, clean_key),
            build_yield_check(partitions_def, clean_key, raw_key)]
