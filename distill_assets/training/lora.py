"""`lora_adapter`: LoRA / QLoRA SFT of the student on `clean_dataset` (trl SFTTrainer + peft), optional logit KD.

Loss is on assistant tokens only: each conversation becomes a conversational prompt-completion pair (prompt = every
turn before the final assistant turn, completion = that assistant turn), and trl masks the prompt (labels -100).
This works with any chat template; trl's `assistant_only_loss` instead needs `{% generation %}` markers, which
SmolLM2's ChatML template lacks and trl cannot patch in.
"""


import base64
import hashlib
import io
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dagster as dg
import pandas as pd

from distill_assets.errors import InputError
from distill_assets.ids import frame_version
from distill_assets.settings import get_settings
from distill_assets.training.config import TrainConfig, TrainPlan, resolve_plan
from distill_assets.training.student import atomic_dir, dir_digest, latest_artifact, student_base_model
from resources.store import DuckDBStore


class TrainingDivergedError(RuntimeError):
    """Loss or gradient norm became NaN/inf: training stopped instead of saving a broken adapter."""


# ------------------------------------------------------------------------------------------------------- data
def conversation_to_prompt_completion(messages_json: str, where: str = "clean_dataset") -> dict:
    try:
        msgs = json.loads(messages_json) if isinstance(messages_json, str) else list(messages_json)
    except json.JSONDecodeError as e:
        raise InputError(where, None, "messages", f"not valid JSON: {e}") from None
    if not msgs or not isinstance(msgs, list):
        raise InputError(where, None, "messages", "empty conversation")
    for m in msgs:
        if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
            raise InputError(where, None, "messages", f"each message needs role and string content, got {m!r:.80}")
    if msgs[-1]["role"] != "assistant":
        raise InputError(where, None, "messages", "the last message must be the assistant's answer")
    if not msgs[-1]["content"].strip():
        raise InputError(where, None, "messages", "empty assistant answer")
    prompt = [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]]
    if not any(m["role"] == "user" for m in prompt):
        raise InputError(where, None, "messages", "no user turn before the assistant answer")
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": msgs[-1]["content"]}]}


def split_dataset(df: pd.DataFrame, val_fraction: float = 0.05) -> tuple[list[dict], list[dict], list[str]]:
    """(train records, validation records, notes). Uses the `split` column; carves a validation set if absent."""
    notes: list[str] = []
    if df.empty:
        raise ValueError("clean_dataset is empty: nothing to train on")
    recs = []
    for i, row in enumerate(df.itertuples(index=False)):
        try:
            pc = conversation_to_prompt_completion(row.messages)
        except InputError as e:
            raise InputError("clean_dataset", i + 1, "messages", f"example {row.example_id}: {e.message}") from None
        recs.append({**pc, "example_id": str(row.example_id),
                     "split": str(getattr(row, "split", "train") or "train")})
    train = [r for r in recs if r["split"] == "train"]
    val = [r for r in recs if r["split"] == "validation"]
    if not val:
        # deterministic carve-out by id hash, so reruns see the same validation set
        ranked = sorted(train, key=lambda r: hashlib.sha256(r["example_id"].encode()).hexdigest())
        k = max(1, int(round(len(ranked) * val_fraction)))
        if len(ranked) < 2:
            raise ValueError("clean_dataset needs at least 2 examples (train + validation)")
        val_ids = {r["example_id"] for r in ranked[:k]}
        val = [r for r in train if r["example_id"] in val_ids]
        train = [r for r in train if r["example_id"] not in val_ids]
        notes.append(f"no validation split in clean_dataset: held out {k} train examples by id hash")
    if not train:
        raise ValueError("clean_dataset has no train rows")
    strip = lambda rs: [{"prompt": r["prompt"], "completion": r["completion"], "example_id": r["example_id"]}
                        for r in rs]
    return strip(train), strip(val), notes


# -------------------------------------------------------------------------------------------------- callbacks
def _callbacks():
    from transformers import TrainerCallback

    class NaNGuard(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            for key in ("loss", "grad_norm", "eval_loss"):
                v = (logs or {}).get(key)
                if v is not None and not math.isfinite(float(v)):
                    raise TrainingDivergedError(
                        f"training stopped at step {state.global_step} (epoch {state.epoch or 0:.2f}): {key} is {v}. "
                        "Lower learning_rate, check the data for empty/garbled answers, or disable QLoRA; "
                        "no adapter was saved."
                    )

    return NaNGuard


@dataclass
class TrainResult:
    adapter_dir: Path
    history: list[dict]
    epochs: list[dict]
    warnings: list[str]
    resumed_from: str | None
    global_step: int
    train_tokens: int
    train_runtime_s: float
    tokens_per_s: float
    peak_rss_mb: float
    notes: list[str] = field(default_factory=list)
    kd: dict | None = None


def epoch_table(history: list[dict]) -> list[dict]:
    """Per-epoch mean train loss and the eval loss logged at the end of that epoch."""
    rows: dict[int, dict] = {}
    for h in history:
        ep = h.get("epoch")
        if ep is None:
            continue
        idx = max(1, math.ceil(float(ep) - 1e-6))
        r = rows.setdefault(idx, {"epoch": idx, "train_losses": [], "val_loss": None, "step": 0})
        if "loss" in h:
            r["train_losses"].append(float(h["loss"]))
        if "eval_loss" in h:
            r["val_loss"] = float(h["eval_loss"])
        r["step"] = max(r["step"], int(h.get("step", 0)))
    out = []
    for idx in sorted(rows):
        r = rows[idx]
        tl = r.pop("train_losses")
        out.append({**r, "train_loss": (sum(tl) / len(tl)) if tl else None})
    return out


def overfitting_warnings(epochs: list[dict]) -> list[str]:
    warns = []
    for prev, cur in zip(epochs, epochs[1:]):
        if None in (prev["val_loss"], cur["val_loss"], prev["train_loss"], cur["train_loss"]):
            continue
        if cur["val_loss"] > prev["val_loss"] and cur["train_loss"] < prev["train_loss"]:
            warns.append(
                f"possible overfitting at epoch {cur['epoch']}: validation loss rose "
                f"{prev['val_loss']:.4f} -> {cur['val_loss']:.4f} while train loss fell "
                f"{prev['train_loss']:.4f} -> {cur['train_loss']:.4f}; consider fewer epochs or more data"
            )
    return warns


def loss_curve_png(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    ev = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    if tr:
        ax.plot(*zip(*tr), label="train", lw=1.2)
    if ev:
        ax.plot(*zip(*ev), "o-", label="validation", lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------------- training
def load_student(base_dir: str | Path, plan: TrainPlan):
    import torch
    from transformers import AutoModelForCausalLM

    if plan.use_qlora:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=plan.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=getattr(torch, plan.bnb_4bit_compute_dtype),
            bnb_4bit_use_double_quant=plan.bnb_4bit_use_double_quant,
        )
        model = AutoModelForCausalLM.from_pretrained(
            str(base_dir), quantization_config=bnb, device_map={"": 0}, dtype=torch.bfloat16
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=plan.gradient_checkpointing)
    else:
        dtype = torch.bfloat16 if plan.bf16 else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
    model.config.use_cache = False
    return model


def build_sft_config(plan: TrainPlan, output_dir: Path, **overrides):
    from trl import SFTConfig

    kw = dict(
        output_dir=str(output_dir),
        num_train_epochs=plan.num_train_epochs,
        max_steps=plan.max_steps,
        per_device_train_batch_size=plan.per_device_batch_size,
        per_device_eval_batch_size=plan.per_device_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        learning_rate=plan.learning_rate,
        lr_scheduler_type=plan.lr_scheduler_type,
        warmup_steps=plan.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=plan.weight_decay,
        max_length=plan.max_seq_len,
        completion_only_loss=True,
        packing=False,
        eval_strategy="epoch",
        save_strategy="steps",
        save_steps=plan.save_steps,
        save_total_limit=2,
        logging_steps=1,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        bf16=plan.bf16,
        fp16=False,
        activation_checkpointing=plan.gradient_checkpointing,  # transformers 5 name of gradient_checkpointing
        seed=plan.seed,
        data_seed=plan.seed,
        dataloader_pin_memory=plan.device == "cuda",
        dataloader_num_workers=0,
        optim="paged_adamw_8bit" if plan.use_qlora else "adamw_torch",
    )
    kw.update(overrides)
    return SFTConfig(**kw)


def train_lora(
    base_dir: str | Path,
    train_records: list[dict],
    val_records: list[dict],
    plan: TrainPlan,
    output_dir: str | Path,
    *,
    base_model_id: str,
    dataset_version: str,
    extra_callbacks: list | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train a LoRA adapter; checkpoints under output_dir/checkpoints, final adapter in output_dir/adapter."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    output_dir = Path(output_dir)
    ckpt_dir = output_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if plan.num_threads:
        torch.set_num_threads(plan.num_threads)
    torch.manual_seed(plan.seed)

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(f"the student tokenizer at {base_dir} has no chat template")
    model = load_student(base_dir, plan)
    peft_config = LoraConfig(
        r=plan.lora_r, lora_alpha=plan.lora_alpha, lora_dropout=plan.lora_dropout,
        target_modules=list(plan.target_modules), bias="none", task_type="CAUSAL_LM",
    )
    cols = ["prompt", "completion"]
    train_ds = Dataset.from_list([{k: r[k] for k in cols} for r in train_records])
    val_ds = Dataset.from_list([{k: r[k] for k in cols} for r in val_records])
    args = build_sft_config(plan, ckpt_dir)

    trainer_kwargs = dict(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
        peft_config=peft_config, callbacks=[_callbacks()(), *(extra_callbacks or [])],
    )
    kd_info = None
    if plan.mode == "logit_kd":
        from distill_assets.training.kd import LogitKDTrainer, load_teacher

        teacher, kd_info = load_teacher(plan.teacher_model_path, tokenizer, model)
        trainer = LogitKDTrainer(
            teacher_model=teacher, temperature=plan.kd_temperature, alpha=plan.kd_alpha,
            divergence=plan.kd_divergence, **trainer_kwargs,
        )
    else:
        trainer = SFTTrainer(**trainer_kwargs)

    last = get_last_checkpoint(str(ckpt_dir)) if plan.resume else None
    if last:
        log(f"resuming from checkpoint {last}")
    t0 = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - t0
    history = list(trainer.state.log_history)
    # validation every epoch; a max_steps run can end mid-epoch, so evaluate the final weights too
    gs = trainer.state.global_step
    if not any("eval_loss" in h and h.get("step") == gs for h in history):
        trainer.evaluate()
        history = list(trainer.state.log_history)
    for h in history:
        for k in ("loss", "eval_loss"):
            if k in h and not math.isfinite(float(h[k])):
                raise TrainingDivergedError(f"{k} is {h[k]} at step {h.get('step')}; no adapter was saved")

    epochs = epoch_table(history)
    warns = overfitting_warnings(epochs)
    train_tokens = int(max((h.get("num_tokens", 0) for h in history), default=0))
    runtime = float(out.metrics.get("train_runtime", wall))

    final = output_dir / "adapter"
    with atomic_dir(final) as tmp:
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "training_config.json").write_text(json.dumps(plan.to_dict(), indent=2, default=str))
        meta = {
            "base_model_id": base_model_id,
            "base_model_path": str(base_dir),
            "dataset_version": dataset_version,
            "mode": plan.mode,
            "kd": kd_info,
            "train_examples": len(train_records),
            "validation_examples": len(val_records),
            "global_step": trainer.state.global_step,
            "resumed_from": last,
            "epochs": epochs,
            "warnings": warns,
        }
        (tmp / "distill_training.json").write_text(json.dumps(meta, indent=2, default=str))
        (tmp / "train_manifest.json").write_text(json.dumps(
            {"train": [r["example_id"] for r in train_records if "example_id" in r],
             "validation": [r["example_id"] for r in val_records if "example_id" in r]}, indent=1))
        (tmp / "loss_history.json").write_text(json.dumps(history, indent=1, default=str))
        loss_curve_png(history, tmp / "loss_curve.png")
    # the adapter is safely in place: checkpoints are only crash insurance
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return TrainResult(
        adapter_dir=final, history=history, epochs=epochs, warnings=warns, resumed_from=last,
        global_step=trainer.state.global_step, train_tokens=train_tokens, train_runtime_s=runtime,
        tokens_per_s=(train_tokens / runtime) if runtime > 0 else 0.0, peak_rss_mb=_peak_rss_mb(),
        notes=list(plan.notes), kd=kd_info,
    )


# ---------------------------------------------------------------------------------------------------- asset
def _loss_markdown(epochs: list[dict], png: Path) -> str:
    b64 = base64.b64encode(png.read_bytes()).decode()
    fmt = lambda v: "-" if v is None else f"{v:.4f}"
    lines = ["| epoch | step | train loss | validation loss |", "|---:|---:|---:|---:|"]
    lines += [f"| {e['epoch']} | {e['step']} | {fmt(e['train_loss'])} | {fmt(e['val_loss'])} |" for e in epochs]
    return f"![loss curve](data:image/png;base64,{b64})\n\n" + "\n".join(lines) + f"\n\nPNG: `{png}`\n"


def register_dataset_version(store: DuckDBStore, df: pd.DataFrame, version: str, run_id: str) -> str:
    """The dataset version as an `artifacts` row, so adapter -> dataset -> examples (lineage table) is joinable."""
    artifact_id = f"dataset:{version}"
    counts = df.groupby("split").size().to_dict() if "split" in df.columns else {"train": len(df)}
    cats = sorted(df["category"].astype(str).unique().tolist()) if "category" in df.columns else []
    store.register_artifact(
        artifact_id=artifact_id, asset="clean_dataset", kind="dataset",
        path=f"duckdb:{store.database}#clean_dataset", sha256=version, bytes=None, parent_artifact_id=None,
        dataset_version=version, run_id=run_id,
        metadata={"rows": len(df), "splits": counts, "categories": cats,
                  "examples": "lineage.example_id where stage = 'clean_dataset'",
                  "example_ids": sorted(df["example_id"].astype(str).tolist())},
    )
    return artifact_id


@dg.asset(
    ins={"clean_dataset": dg.AssetIn()},
    deps=[student_base_model],
    group_name="training",
    kinds={"pytorch", "peft"},
    pool="training",
    code_version="lora_adapter_v1",
    description="LoRA/QLoRA adapter trained with trl SFTTrainer on all categories of clean_dataset.",
)
def lora_adapter(
    context: dg.AssetExecutionContext, config: TrainConfig, store: DuckDBStore, clean_dataset: pd.DataFrame
) -> dg.MaterializeResult:
    plan = resolve_plan(config)
    context.log.info(f"training profile: {plan.profile_reason}; QLoRA: {plan.qlora_status}")
    base = latest_artifact(store, "student_base_model")
    base_dir = Path(base["path"])
    version = frame_version(clean_dataset)
    dataset_artifact = register_dataset_version(store, clean_dataset, version, context.run.run_id)
    train, val, data_notes = split_dataset(clean_dataset)
    for n in data_notes:
        context.log.warning(n)
    key = hashlib.sha256(f"{base['sha256']}|{version}|{plan.fingerprint()}".encode()).hexdigest()[:16]
    out_dir = get_settings().artifacts / "lora_adapter" / key
    res = train_lora(
        base_dir, train, val, plan, out_dir,
        base_model_id=base["metadata"].get("base_model_id", base["artifact_id"]), dataset_version=version,
        log=context.log.info,
    )
    for w in res.warnings:
        context.log.warning(w)
    sha, size = dir_digest(res.adapter_dir)
    artifact_id = f"lora_adapter:{sha[:16]}"
    store.register_artifact(
        artifact_id=artifact_id, asset="lora_adapter", kind="peft_adapter", path=str(res.adapter_dir), sha256=sha,
        bytes=size, parent_artifact_id=dataset_artifact, dataset_version=version, run_id=context.run.run_id,
        metadata={"base_artifact_id": base["artifact_id"], "base_model_path": str(base_dir),
                  "base_model_id": base["metadata"].get("base_model_id"), "plan": plan.to_dict(),
                  "epochs": res.epochs, "warnings": res.warnings, "global_step": res.global_step,
                  "resumed_from": res.resumed_from, "kd": res.kd},
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
            "sha256": sha,
            "bytes": size,
        },
        data_version=dg.DataVersion(sha[:16]),
    )
