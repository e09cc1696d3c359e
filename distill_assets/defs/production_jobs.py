"""Targeted retraining jobs.

Why two jobs: a Dagster job has at most one partitions definition, and a run of a partitioned job covers one
partition (or a contiguous range) of its partitioned assets. The per-category assets (seeds through
`clean_dataset`, plus `eval_set` so that new held-out failures join the gate) are partitioned by category; the
training, export and eval assets are not (they consume every category). So:

- `production_retrain_job` (partitioned by CATEGORY): the sensor launches one run per affected category
  partition, and the other partitions are not touched;
- `production_train_job` (unpartitioned): `production_train_sensor` (a run-status sensor) launches it once
  every category run of a wave succeeded. `lora_adapter` reads every partition of `clean_dataset`, so the
  untouched categories' data is reused as it is.

Blocking asset checks of the selected assets run inside these jobs: an ERROR-severity blocking check failure
(e.g. contamination) stops the downstream assets of that run, so a failed category never reaches training,
and a failed category run keeps its wave from training at all.

Selections are by asset key string, so this module loads before (or without) the other stage modules; a test
asserts that, with the whole graph loaded, both jobs select exactly these keys.
"""

from __future__ import annotations

import dagster as dg

from distill_assets.defs.partitions import CATEGORY

TAG_BATCH = "distill/failure_batch"
TAG_CATEGORY = "distill/category"
TAG_WAVE = "distill/failure_wave"
TAG_WAVE_SIZE = "distill/failure_wave_size"
TAG_TRIGGER = "distill/trigger"

CATEGORY_ASSETS = ["seed_prompts", "raw_generations", "quality_filtered", "deduplicated", "judged", "verified",
                   "balanced", "decontaminated", "clean_dataset", "eval_set"]
BASE_ASSET = "student_base_model"
TRAIN_ASSETS = [BASE_ASSET, "lora_adapter", "merged_model", "gguf_export", "awq_export", "eval_report",
                "failure_resolution"]


def _selection(keys: list[str]) -> dg.AssetSelection:
    return dg.AssetSelection.from_string(" or ".join(f'key:"{k}"' for k in keys))


production_retrain_job = dg.define_asset_job(
    "production_retrain_job",
    selection=_selection(CATEGORY_ASSETS),
    partitions_def=CATEGORY,
    tags={"distill/entry": "production"},
    description="Rebuild the data of one category partition (seeds with its production failures, generation, "
                "filters, checks, eval set). Launched by production_failure_sensor per failure batch.",
)

production_train_job = dg.define_asset_job(
    "production_train_job",
    selection=_selection(TRAIN_ASSETS),
    tags={"distill/entry": "production"},
    description="Retrain the adapter on every category's clean_dataset, export, evaluate against the promoted "
                "model (held-out failures + eval set), and resolve the failures a promoted model passes.",
)


def train_run_request(instance: dg.DagsterInstance, wave: str) -> dg.RunRequest:
    """The training run of a wave. The base model is converted only if it was never materialized."""
    keys = TRAIN_ASSETS
    if instance.get_latest_materialization_event(dg.AssetKey(BASE_ASSET)) is not None:
        keys = [k for k in TRAIN_ASSETS if k != BASE_ASSET]
    return dg.RunRequest(run_key=f"train-{wave}", asset_selection=[dg.AssetKey(k) for k in keys],
                         tags={TAG_WAVE: wave, TAG_TRIGGER: "wave_complete"})


def follow_upstream_condition() -> dg.AutomationCondition:
    """Optional automation for downstream assets (documented in docs/production_loop.md): materialize after
    upstream updates, but only once every upstream blocking check has passed and nothing upstream is still
    running. Owners of `lora_adapter` & co. can set `automation_condition=follow_upstream_condition()` and
    enable `default_automation_condition_sensor` instead of relying on production_train_sensor.

    Not `all_deps_blocking_checks_passed()`: a dependency "matches" there when *any* of its partitions does, so an
    unpartitioned `lora_adapter` would train while one category's contamination check is failing. Here no
    partition of any dependency may have a blocking check that is not passed (or about to run this tick)."""
    checks_ok = dg.AutomationCondition.all_checks_match(
        dg.AutomationCondition.check_passed() | dg.AutomationCondition.will_be_requested(), blocking_only=True)
    every_partition_ok = (~dg.AutomationCondition.any_deps_match(~checks_ok)).with_label(
        "every_dep_partition_blocking_checks_passed")
    return (dg.AutomationCondition.eager() & every_partition_ok).with_label("eager_after_blocking_checks")


jobs = [production_retrain_job, production_train_job]
