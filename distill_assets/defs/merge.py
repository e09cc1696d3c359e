"""`merged_model`: base + LoRA merged (logic in lib/export/merge), with its blocking parity check."""

import json

import dagster as dg

from checks.merged_model import build_merged_model_checks
from checks.upstream import upstream_artifact
from distill_assets.lib import ledger
from distill_assets.lib.artifacts import atomic_dir, dir_digest, is_complete
from distill_assets.lib.export.merge import merge_adapter
from distill_assets.lib.settings import get_settings
from resources.store import DuckDBStore


@dg.asset(
    deps=["lora_adapter"],
    group_name="training",
    kinds={"pytorch", "safetensors"},
    pool="training",
    code_version="merged_model_v1",
    description="Base + LoRA merged (merge_and_unload), fp32 safetensors with tokenizer and chat template.",
)
def merged_model(context: dg.AssetExecutionContext, store: DuckDBStore) -> dg.MaterializeResult:
    adapter = upstream_artifact(context, store, "lora_adapter")
    base_dir = adapter["metadata"]["base_model_path"]
    out = get_settings().artifacts / "merged_model" / adapter["sha256"][:16]
    if not is_complete(out):
        with atomic_dir(out) as tmp:
            info = merge_adapter(base_dir, adapter["path"], tmp)
    else:
        info = json.loads((out / "distill_merge.json").read_text())
    sha, size = dir_digest(out)
    artifact_id = f"merged_model:{sha[:16]}"
    ledger.register_artifact(
        store,
        artifact_id=artifact_id, asset="merged_model", kind="hf_model", path=str(out), sha256=sha, bytes=size,
        parent_artifact_id=adapter["artifact_id"], dataset_version=adapter["dataset_version"],
        run_id=context.run.run_id,
        metadata={**info, "adapter_artifact_id": adapter["artifact_id"],
                  "base_artifact_id": adapter["metadata"].get("base_artifact_id"),
                  "base_model_id": adapter["metadata"].get("base_model_id")},
    )
    return dg.MaterializeResult(
        metadata={"artifact_id": artifact_id, "path": dg.MetadataValue.path(str(out)), "sha256": sha,
                  "bytes": size, "adapter": adapter["artifact_id"], "dataset_version": adapter["dataset_version"],
                  "num_parameters": info.get("num_parameters", -1)},
        data_version=dg.DataVersion(sha[:16]),
    )


assets = [merged_model]
asset_checks = build_merged_model_checks(merged_model.key)
