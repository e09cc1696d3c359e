"""Stand-in assets with the retraining jobs' real keys and dependencies (the real assets need a teacher)."""

import dagster as dg

from distill_assets.defs import production_jobs as jobs
from distill_assets.defs.partitions import CATEGORY


def standins(train_assets=jobs.TRAIN_ASSETS) -> list[dg.AssetsDefinition]:
    """No-op assets: the category chain of production_retrain_job, then `train_assets` (unpartitioned)."""
    out, prev = [], None
    for k in jobs.CATEGORY_ASSETS:
        deps = [prev] if prev and k != "eval_set" else []

        @dg.asset(name=k, partitions_def=CATEGORY, deps=deps)
        def _a():
            return None
        out.append(_a)
        if k != "eval_set":
            prev = k
    for k in train_assets:
        @dg.asset(name=k, deps=["clean_dataset"] if k == "lora_adapter" else [])
        def _b():
            return None
        out.append(_b)
    return out
