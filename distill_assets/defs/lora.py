"""`lora_adapter`: LoRA/QLoRA adapter trained on every category of clean_dataset (logic in lib/training)."""

import base64
from pathlib import Path

import dagster as dg
import pandas as pd

from checks.upstream import upstream_artifact
from distill_assets.lib import ledger
from distill_assets.lib.artifacts import dir_digest
from distill_assets.lib.generation.logprobs import example_logprobs
from distill_assets.lib.ids import frame_version
from distill_assets.lib.settings import get_settings
from distill_assets.lib.tasks import load_tasks
from distill_assets.lib.training.data import register_dataset_version, split_dataset
from distill_assets.lib.training.lora import adapter_run_key, train_lora
from distill_assets.lib.training.plan import TrainOptions, resolve_plan
from resources.store import DuckDBStore


class TrainConfig(dg.Config, TrainOptions):
    """Run config of `lora_adapter` (launchpad: ops/assets -> lora_adapter -> config); fields: TrainOptions."""


def _loss_markdown(epochs: list[dict], png: Path) -> str:
    b64 = base64.b64encode(png.read_bytes()).decode()
    fmt = lambda v: "-" if v is None else f"{v:.4f}"
    lines = ["| epoch | step | train loss | validation loss |", "|---:|---:|---:|---:|"]
    lines += [f"| {e['epoch']} | {e['step']} | {fmt(e['train_loss'])} | {fmt(e['val_loss'])} |" for e in epochs]
    return f"![loss curve](data:image/png;base64,{b64})\n\n" + "\n".join(lines) + f"\n\nPNG: `{png}`\n"


@dg.asset(
    # the categories materialized so far: a category without clean_dataset yet is left out, with a warning
    ins={"clean_dataset": dg.AssetIn(metadata={"allow_missing": True})},
    deps=["student_base_model"],
    group_name="training",
    kinds={"pytorch", "peft"},
    pool="training",
    code_version="lora_adapter_v2",
    description="LoRA/QLoRA adapter trained with trl SFTTrainer on all categories of clean_dataset.",
)
def lora_adapter(
    context: dg.AssetExecutionContext, config: TrainConfig, store: DuckDBStore, clean_dataset: pd.DataFrame
) -> dg.MaterializeResult:
    plan = resolve_plan(config)
    context.log.info(f"training profile: {plan.profile_reason}; QLoRA: {plan.qlora_status}")
    base = upstream_artifact(context, store, "student_base_model")
    base_dir = Path(base["path"])
    content = frame_version(clean_dataset)
    # the version that trained it: the lake snapshot the rows were read at, or their content on the file store
    version = clean_dataset.attrs.get("store_version") or content
    dataset_artifact = register_dataset_version(store, clean_dataset, version, context.run.run_id,
                                                content_version=content)
    fractions = {c.name: c.validation_fraction for c in load_tasks().categories}
    train, val, data_notes = split_dataset(clean_dataset, fractions)
    for n in data_notes:
        context.log.warning(n)
    # sparse_kd: each row's teacher logprobs, through lineage (generation_id -> call_key -> teacher_logprobs)
    teacher = example_logprobs(store, clean_dataset) if plan.mode == "sparse_kd" else None
    out_dir = get_settings().artifacts / "lora_adapter" / adapter_run_key(base["sha256"], content, plan)
    res = train_lora(
        base_dir, train, val, plan, out_dir,
        base_model_id=base["metadata"].get("base_model_id", base["artifact_id"]), dataset_version=version,
        log=context.log.info, teacher_logprobs=teacher,
    )
    for w in res.warnings:
        context.log.warning(w)
    if res.tool_format == "plain_text":
        context.log.warning(next(n for n in res.notes if "no tool support" in n))
    sha, size = dir_digest(res.adapter_dir)
    artifact_id = f"lora_adapter:{sha[:16]}"
    ledger.register_artifact(
        store,
        artifact_id=artifact_id, asset="lora_adapter", kind="peft_adapter", path=str(res.adapter_dir), sha256=sha,
        bytes=size, parent_artifact_id=dataset_artifact, dataset_version=version, run_id=context.run.run_id,
        metadata={"base_artifact_id": base["artifact_id"], "base_model_path": str(base_dir),
                  "base_model_id": base["metadata"].get("base_model_id"), "plan": plan.to_dict(),
                  "epochs": res.epochs, "warnings": res.warnings, "global_step": res.global_step,
                  "resumed_from": res.resumed_from, "kd": res.kd, "tool_format": res.tool_format,
                  "notes": res.notes},
    )
    last = res.epochs[-1] if res.epochs else {}
    return dg.MaterializeResult(
        metadata={
            "artifact_id": artifact_id,
            "path": dg.MetadataValue.path(str(res.adapter_dir)),
            "profile": plan.profile,
            "profile_reason": plan.profile_reason,
            "qlora": plan.qlora_status,
            "mode": plan.mode,
            "dataset_version": version,
            "base_model": base["artifact_id"],
            "train_examples": len(train),
            "validation_examples": len(val),
            "global_step": res.global_step,
            "resumed_from_checkpoint": res.resumed_from or "no",
            "final_train_loss": float(last.get("train_loss") or float("nan")),
            "final_val_loss": float(last.get("val_loss") or float("nan")),
            "loss": dg.MetadataValue.md(_loss_markdown(res.epochs, res.adapter_dir / "loss_curve.png")),
            "overfitting_warnings": dg.MetadataValue.json(res.warnings),
            "tokens_per_s": round(res.tokens_per_s, 1),
            "train_tokens": res.train_tokens,
            "peak_rss_mb": round(res.peak_rss_mb, 1),
            "plan": dg.MetadataValue.json(plan.to_dict()),
            "kd": dg.MetadataValue.json(res.kd or {}),
            "tool_format": dg.MetadataValue.text(res.tool_format or "no tools"),
            "notes": dg.MetadataValue.json(res.notes),
            "sha256": sha,
            "bytes": size,
        },
        data_version=dg.DataVersion(sha[:16]),
    )


assets = [lora_adapter]
