"""`awq_export`: AutoAWQ 4-bit (w_bit 4, GEMM, group 128) of the merged model, for vLLM `--quantization awq`.

Needs CUDA and the `gpu` extra (autoawq). Without them the asset materializes an explicit "skipped" record in its
metadata and writes no file. AutoAWQ is deprecated upstream (its repo is archived; vLLM's llm-compressor is the
maintained successor and can write the same AWQ checkpoint format); it is kept here because the guide names it.
Calibration uses the task's own training conversations (128 samples, as LLaMA-Factory does for GPTQ) instead of
AutoAWQ's default pile-val download, which also keeps it offline.
"""

import importlib.util
import json
from pathlib import Path

import dagster as dg
import pandas as pd

from distill_assets.export.merge import merged_model
from distill_assets.settings import get_settings
from distill_assets.training.student import atomic_dir, dir_digest, is_complete, latest_artifact
from resources.store import DuckDBStore

AWQ_QUANT_CONFIG = {"zero_point": True, "q_group_size": 128, "w_bit": 4, "version": "GEMM"}
CALIBRATION_SAMPLES = 128


def awq_availability() -> tuple[bool, str]:
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken torch install is "no CUDA" here
        cuda = False
    if not cuda:
        return False, "skipped: needs CUDA"
    if importlib.util.find_spec("awq") is None:
        return False, "skipped: needs the gpu extra (pip install 'distill[gpu]' for autoawq)"
    return True, "ok"


def vllm_command(model_dir: str | Path, max_model_len: int = 4096) -> str:
    return f"vllm serve {model_dir} --quantization awq --max-model-len {max_model_len} --port 8000"


def calibration_texts(df: pd.DataFrame, tokenizer, n: int = CALIBRATION_SAMPLES) -> list[str]:
    rows = df[df["split"] == "train"] if "split" in df.columns else df
    rows = rows.sort_values("example_id").head(n)
    return [tokenizer.apply_chat_template(json.loads(m), tokenize=False) for m in rows["messages"]]


def awq_quantize(merged_dir: str | Path, out_dir: str | Path, calib: list[str]) -> dict:
    from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    model = AutoAWQForCausalLM.from_pretrained(str(merged_dir), safetensors=True)
    model.quantize(tok, quant_config=dict(AWQ_QUANT_CONFIG), calib_data=calib,
                   n_samples=len(calib), max_calib_seq_len=512)
    model.save_quantized(str(out_dir))
    tok.save_pretrained(str(out_dir))
    info = {"quant_config": AWQ_QUANT_CONFIG, "calibration_samples": len(calib), "merged_dir": str(merged_dir)}
    (Path(out_dir) / "distill_awq.json").write_text(json.dumps(info, indent=2))
    return info


@dg.asset(
    ins={"clean_dataset": dg.AssetIn()},
    deps=[merged_model],
    group_name="export",
    kinds={"awq", "vllm"},
    pool="training",
    code_version="awq_export_v1",
    description="AutoAWQ 4-bit GEMM export + vLLM command (CUDA + gpu extra), else an explicit skipped record.",
)
def awq_export(context: dg.AssetExecutionContext, store: DuckDBStore, clean_dataset: pd.DataFrame) -> dg.MaterializeResult:
    merged = latest_artifact(store, "merged_model")
    ok, status = awq_availability()
    if not ok:
        context.log.warning(f"awq_export {status}; no AWQ file written")
        return dg.MaterializeResult(metadata={
            "status": status, "merged": merged["artifact_id"], "quant_config": dg.MetadataValue.json(AWQ_QUANT_CONFIG),
            "would_serve_with": vllm_command("<awq dir>"),
        })
    from transformers import AutoTokenizer

    out = get_settings().artifacts / "awq_export" / merged["sha256"][:16]
    if not is_complete(out):
        calib = calibration_texts(clean_dataset, AutoTokenizer.from_pretrained(merged["path"]))
        with atomic_dir(out) as tmp:
            awq_quantize(merged["path"], tmp, calib)
    sha, size = dir_digest(out)
    artifact_id = f"awq_export:{sha[:16]}"
    cmd = vllm_command(out)
    store.register_artifact(
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
