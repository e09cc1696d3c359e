"""The distill code location: everything under `defs/`, with owners and catalog tags set in one place."""

from pathlib import Path

import dagster as dg

# Who answers for each stage in the UI (asset owners) and the tags the catalog filters on. Edit here, not per asset.
STAGE_OWNERS = {
    "seeds": "team:data", "generation": "team:data", "filtering": "team:data", "dataset": "team:data",
    "training": "team:training", "export": "team:training", "evaluation": "team:eval", "production": "team:eval",
}
# Assets that use a GPU when one is there (vLLM teacher, QLoRA, AWQ calibration, vLLM eval of AWQ) and run on
# CPU otherwise.
ACCELERATOR = {"raw_generations": "cuda-optional", "lora_adapter": "cuda-optional",
               "eval_report": "cuda-optional", "awq_export": "cuda-optional"}


def _ownership(spec: dg.AssetSpec) -> dg.AssetSpec:
    group = spec.group_name or "default"
    tags = {"stage": group, "accelerator": ACCELERATOR.get(spec.key.to_user_string(), "cpu"), **(spec.tags or {})}
    return spec.replace_attributes(owners=list(spec.owners) or [STAGE_OWNERS.get(group, "team:distill")],
                                   tags=tags)


@dg.definitions
def defs() -> dg.Definitions:
    loaded = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return loaded.map_asset_specs(func=_ownership)
