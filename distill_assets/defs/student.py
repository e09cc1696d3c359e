"""`student_base_model`: the HF safetensors student base, registered as an artifact (logic in lib/training/student)."""

import dagster as dg

from distill_assets.lib import ledger
from distill_assets.lib.artifacts import dir_digest
from distill_assets.lib.settings import get_settings, student_base_spec
from distill_assets.lib.training.student import resolve_student_base
from resources.store import DuckDBStore


@dg.asset(
    group_name="training",
    kinds={"pytorch", "safetensors"},
    pool="training",
    code_version="student_base_v1",
    description="HF safetensors student base (STUDENT_BASE, or the packaged SmolLM2-135M GGUF converted).",
)
def student_base_model(context: dg.AssetExecutionContext, store: DuckDBStore) -> dg.MaterializeResult:
    spec = student_base_spec()
    folder, info = resolve_student_base(spec, get_settings().artifacts)
    sha, size = dir_digest(folder)
    artifact_id = f"student_base_model:{sha[:16]}"
    model_id = spec or "embedded:SmolLM2-135M-Instruct.Q4_1.gguf"
    ledger.register_artifact(
        store,
        artifact_id=artifact_id, asset="student_base_model", kind="hf_model", path=str(folder), sha256=sha,
        bytes=size, parent_artifact_id=None, dataset_version=None, run_id=context.run.run_id,
        metadata={"base_model_id": model_id, **info},
    )
    context.log.info(f"student base {model_id} at {folder} ({size / 1e6:.1f} MB)")
    return dg.MaterializeResult(
        metadata={
            "artifact_id": artifact_id,
            "base_model_id": model_id,
            "path": dg.MetadataValue.path(str(folder)),
            "sha256": sha,
            "bytes": size,
            "source": info.get("source"),
            "num_parameters": info.get("num_parameters", -1),
        },
        data_version=dg.DataVersion(sha[:16]),
    )


assets = [student_base_model]
