"""Checks of `seed_prompts`: no seed overlaps the held-out eval set (rules in lib/contamination.py)."""

import dagster as dg
import pandas as pd

from checks.contamination_result import contamination_check_result
from distill_assets.lib.contamination import category_shared_text, encoder, held_out, seed_texts
from distill_assets.lib.tasks import load_tasks
from resources.embedder import EmbedderResource
from resources.store import DuckDBStore


def build_seed_prompts_checks(partitions_def: dg.PartitionsDefinition | None, seeds_key: str = "seed_prompts",
                              eval_key: str = "eval_set") -> list[dg.AssetChecksDefinition]:
    """The blocking ERROR contamination check of seed_prompts against the partition's eval_set."""

    @dg.asset_check(asset=seeds_key, name="no_eval_contamination", blocking=True, partitions_def=partitions_def,
                    additional_ins={"eval_set": dg.AssetIn(eval_key, metadata={"allow_missing": True})},
                    description="Seed prompts share no n-gram with, and are not paraphrases of, held-out eval items.")
    def seed_contamination(context: dg.AssetCheckExecutionContext, seeds: pd.DataFrame, eval_set: pd.DataFrame,
                           store: DuckDBStore, embedder: EmbedderResource) -> dg.AssetCheckResult:
        cat = load_tasks().category(context.partition_key)
        return contamination_check_result(seed_texts(seeds), held_out(eval_set, cat, store), cat.contamination,
                                          encoder(embedder, store), subject="seed prompts",
                                          shared=category_shared_text(cat))

    return [seed_contamination]
