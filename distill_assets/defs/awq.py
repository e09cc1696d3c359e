"""`awq_export`: W4A16 AWQ of the merged model through llm-compressor, on CPU or GPU (logic in lib/export/awq),
with its blocking parity check. Without the `awq` extra it materializes an explicit skipped record and no file."""

import hashlib
import json
from dataclasses import asdict
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from checks.awq_export import build_awq_export_checks
from checks.upstream import upstream_artifact
from distill_assets.lib import ledger
from distill_assets.lib.artifacts import atomic_dir, dir_digest, is_complete
from distill_assets.lib.export import awq as awq_lib
from distill_assets.lib.settings import get_settings
from resources.store import DuckDBStore


class AWQExportConfig(dg.Config):
    calibration_samples: int = Field(default=64, ge=1, description="calibration blocks of seq_len tokens, packed "
                                                                   "from clean_dataset's training conversations")
    seq_len: int = Field(default=512, ge=8, description="tokens per calibration block")
    batch_size: int = Field(default=8, ge=1, description="calibration blocks per forward pass")
    n_grid: int = Field(default=20, ge=1, description="AWQ scale grid points per mapping (cost is linear in it)")
    duo_scaling: bool = Field(default=True, description="scales from activations and weights (False: activations)")
    weight_observer: Literal["memoryless_minmax", "memoryless_mse"] = Field(
        default="memoryless_minmax", description="memoryless_mse searches each group's clipping range on the weights")

    def settings(self) -> awq_lib.AWQSettings:
        return awq_lib.AWQSettings(calibration_samples=self.calibration_samples, seq_len=self.seq_len,
                                   batch_size=self.batch_size, n_grid=self.n_grid, duo_scaling=self.duo_scaling,
                                   weight_observer=self.weight_observer)


@dg.asset(
    ins={"clean_dataset": dg.AssetIn()},
    deps=["merged_model"],
    group_name="export",
    kinds={"awq", "vllm"},
    pool="training",
    code_version="awq_export_v2",
    description="llm-compressor AWQ, W4A16 asymmetric (group size from the model's shapes, lm_head kept), as a "
                "compressed-tensors pack-quantized folder + its vLLM command; runs on CPU.",
)
def awq_export(context: dg.AssetExecutionContext, config: AWQExportConfig, store: DuckDBStore,
               clean_dataset: pd.DataFrame) -> dg.MaterializeResult:
    merged = upstream_artifact(context, store, "merged_model")
    settings = config.settings()
    reason = awq_lib.awq_unavailable()
    if reason is not None:
        context.log.warning(f"awq_export {reason}; no AWQ folder written")
        return dg.MaterializeResult(metadata={"status": reason, "merged": merged["artifact_id"],
                                              "would_serve_with": awq_lib.vllm_command("<awq dir>")})
    from transformers import AutoTokenizer  # deferred: heavy optional dependency

    calib = awq_lib.calibration_texts(clean_dataset, AutoTokenizer.from_pretrained(merged["path"]))
    # the folder is a function of the merged weights, the recipe and the calibration text
    key = hashlib.sha256(json.dumps([merged["sha256"], asdict(settings), calib]).encode()).hexdigest()[:16]
    out = get_settings().artifacts / "awq_export" / key
    if not is_complete(out):
        with atomic_dir(out) as tmp:
            awq_lib.awq_quantize(merged["path"], tmp, calib, settings)
    info = json.loads((out / "distill_awq.json").read_text())
    sha, size = dir_digest(out)
    artifact_id = f"awq_export:{sha[:16]}"
    cmd = awq_lib.vllm_command(out)
    ledger.register_artifact(
        store,
        artifact_id=artifact_id, asset="awq_export", kind="awq_w4a16", path=str(out), sha256=sha, bytes=size,
        parent_artifact_id=merged["artifact_id"], dataset_version=merged["dataset_version"],
        run_id=context.run.run_id, metadata={**info, "vllm_command": cmd},
    )
    return dg.MaterializeResult(
        metadata={"status": "ok", "artifact_id": artifact_id, "merged": merged["artifact_id"],
                  "path": dg.MetadataValue.path(str(out)), "sha256": sha, "bytes": size, "vllm_command": cmd,
                  "quant_config": dg.MetadataValue.json(info["quant_config"]),
                  "calibration": dg.MetadataValue.json({k: info[k] for k in info if k.startswith("calibration")})},
        data_version=dg.DataVersion(sha[:16]),
    )


assets = [awq_export]
asset_checks = build_awq_export_checks(awq_export.key)
