"""The distill code location: one `dg.Definitions` wiring assets, checks, resources, sensors and jobs."""

from __future__ import annotations

import importlib

import dagster as dg

from distill_assets.resources_factory import build_resources

# Each module exposes any of: assets, asset_checks, sensors, jobs, schedules (lists).
MODULES = [
    "distill_assets.training",
    "distill_assets.export",
    "checks.parity",
    "distill_assets.seeds",
    "distill_assets.generation",
    "distill_assets.filters.judge",
    "distill_assets.filters.verify",
    "distill_assets.filters.quality", "distill_assets.filters.dedup", "distill_assets.filters.balance", "distill_assets.dataset",
    "distill_assets.eval_set",
    "distill_assets.evaluation.assets",
    "checks.eval_gate",
    "distill_assets.filters.decontaminate",
    "checks.schema_checks",
    "checks.contamination",
    "checks.dedup",
    "checks.yield_check",
    "distill_assets.production.jobs",
    "distill_assets.production.sensor",
    "distill_assets.production.promotion",
]


# Who answers for each stage in the UI (asset owners) and the tags the catalog filters on. Edit here, not per asset.
STAGE_OWNERS = {
    "seeds": "team:data", "generation": "team:data", "filtering": "team:data", "dataset": "team:data",
    "training": "team:training", "export": "team:training", "evaluation": "team:eval", "production": "team:eval",
}
# Assets that use a GPU when one is there (vLLM teacher, QLoRA, AWQ) and run on CPU otherwise, or need one.
ACCELERATOR = {"raw_generations": "cuda-optional", "lora_adapter": "cuda-optional",
               "eval_report": "cuda-optional", "awq_export": "cuda"}


def _ownership(spec: dg.AssetSpec) -> dg.AssetSpec:
    group = spec.group_name or "default"
    tags = {"stage": group, "accelerator": ACCELERATOR.get(spec.key.to_user_string(), "cpu"), **(spec.tags or {})}
    return spec.replace_attributes(owners=list(spec.owners) or [STAGE_OWNERS.get(group, "team:distill")],
                                   tags=tags)


def _collect(attr: str) -> list:
    out = []
    for name in MODULES:
        out.extend(getattr(importlib.import_module(name), attr, []))
    return out


defs = dg.Definitions(
    assets=dg.map_asset_specs(_ownership, _collect("assets")),
    asset_checks=_collect("asset_checks"),
    sensors=_collect("sensors"),
    jobs=_collect("jobs"),
    schedules=_collect("schedules"),
    resources=build_resources(),
)
