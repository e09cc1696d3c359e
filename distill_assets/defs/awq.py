"""`awq_export`: 4-bit AWQ of the merged model for vLLM (CUDA + gpu extra), else an explicit skipped record."""

import dagster as dg
import pandas as pd

from checks.upstream import upstream_artifact
from distill_assets.lib import ledger
from distill_assets.lib.artifacts import atomic_dir, dir_digest, is_complete
from distill_assets.lib.export.awq_autoawq import (
    AWQ_QUANT_CONFIG,
    awq_availability,
    awq_quantize,
    calibration_texts,
    vllm_command,
)
from distill_assets.lib.settings import get_settings
from resources.store import DuckDBStore


@dg.asset(
    ins={"clean_dataset": dg.AssetIn()},
    deps=["merged_model"],
    group_name="export",
    kinds={"awq", "vllm"},
    pool="training",
    code_version="awq_export_v1",
    description="AutoAWQ 4-bit GEMM export + vLLM command (CUDA + gpu extra), else an explicit skipped record.",
)
def awq_export(context: dg.AssetExecutionContext, store: DuckDBStore, clean_dataset: pd.DataFrame) -> dg.MaterializeResult:
    merged = upstream_artifact(context, store, "merged_model")
    ok, status = awq_availability()
    if not ok:
        context.log.warning(f"awq_export {status}; no AWQ file written")
        return dg.MaterializeResult(metadata={
            "status": status, "merged": merged["artifact_id"], "quant_config": dg.MetadataValue.json(AWQ_QUANT_CONFIG),
            "would_serve_with": vllm_command("<awq dir>"),
        })
    from transformers import AutoTokenizer  # deferred: heavy optional dependency

    out = get_settings().artifacts / "awq_export" / merged["sha256"][:16]
    if not is_complete(out):
        calib = calibration_texts(clean_dataset, AutoTokenizer.from_pretrained(merged["path"]))
        with atomic_dir(out) as tmp:
            awq_quantize(merged["path"], tmp, calib)
    sha, size = dir_digest(out)
    artifact_id = f"awq_export:{sha[:16]}"
    cmd = vllm_command(out)
    ledger.register_artifact(
        store,
        artifact_id=artifact_id, asset="awq_export", kind="awq_w4_gemm", path=str(out), sha256=sha, bytes=size,
        parent_artifact_id=merged["artifact_id"], dataset_version=merged["dataset_version"],
        run_id=context.run.run_id, metadata={"quant_config": AWQ_QUANT_CONFIG, "vllm_command": cmd},
    )
    return dg.MaterializeResult(
        metadata={"status": "ok", "artifact_id": artifact_id, "path": dg.MetadataValue.path(str(out)),
                  "sha256": sha, "bytes": size, "vllm_command": cmd,
                  "quant_config": dg.MetadataValue.json(AWQ_QUANT_CONFIG)},
        data_version=dg.DataVersion(sha[:16]),
    )


assets = [awq_export]
