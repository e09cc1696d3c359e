"""LoRA / QLoRA SFT of the student (trl SFTTrainer + peft), optional logit KD, with crash-safe checkpoints.

`train_lora` takes conversation records (lib/training/data.py: messages, tools, example_id), tokenized here with
assistant-only labels across every turn, and a resolved `TrainPlan`; it validates
every epoch, stops on NaN/inf, resumes from the last checkpoint, and writes the adapter atomically with its plan,
provenance, train manifest, loss history and loss curve.
"""

import dataclasses
import hashlib
import json
import math
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from distill_assets.lib.artifacts import atomic_dir
from distill_assets.lib.chat_template import TOOL_FORMAT_PLAIN
from distill_assets.lib.generation.logprobs import TeacherTokens
from distill_assets.lib.training.data import tokenize_records
from distill_assets.lib.training.kd import load_teacher, logit_kd_trainer_class
from distill_assets.lib.training.plan import TrainPlan
from distill_assets.lib.training.sparse_kd import sparse_kd_trainer


class TrainingDivergedError(RuntimeError):
    """Loss or gradient norm became NaN/inf: training stopped instead of saving a broken adapter."""


def adapter_run_key(base_sha256: str, dataset_version: str, plan: TrainPlan) -> str:
    """Output folder key of a training run: same base, same data, same weight-changing plan -> same folder."""
    return hashlib.sha256(f"{base_sha256}|{dataset_version}|{plan.fingerprint()}".encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------------------- callbacks
def _callbacks():
    from transformers import TrainerCallback  # deferred: heavy optional dependency

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
    tool_format: str | None = None  # how tool calls were rendered (chat_template | plain_text); None: no tools


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
    import matplotlib  # deferred: heavy optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: heavy optional dependency

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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------------- training
def load_student(base_dir: str | Path, plan: TrainPlan):
    import torch  # deferred: heavy optional dependency
    from transformers import AutoModelForCausalLM  # deferred: heavy optional dependency

    if plan.use_qlora:
        from peft import prepare_model_for_kbit_training  # deferred: heavy optional dependency
        from transformers import BitsAndBytesConfig  # deferred: heavy optional dependency

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
        # bf16 weights only on CUDA; on CPU bf16 is autocast over fp32 master weights
        dtype = torch.bfloat16 if plan.bf16 and plan.device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
    model.config.use_cache = False
    return model


def build_sft_config(plan: TrainPlan, output_dir: Path, **overrides):
    from trl import SFTConfig  # deferred: heavy optional dependency

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
        # batches of similar lengths: a few long rows (tool lists, long answers) otherwise pad every batch to them
        train_sampling_strategy="group_by_length" if plan.per_device_batch_size > 1 else "random",
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
        use_cpu=plan.device == "cpu",
        seed=plan.seed,
        data_seed=plan.seed,
        dataloader_pin_memory=plan.device == "cuda",
        dataloader_num_workers=0,
        optim="paged_adamw_8bit" if plan.use_qlora else "adamw_torch",
    )
    # transformers 5.24 renamed gradient_checkpointing to activation_checkpointing; 5.17 (with the awq extra) has
    # the old name
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    kw["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = \
        plan.gradient_checkpointing
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
    teacher_logprobs: dict[str, TeacherTokens] | None = None,
) -> TrainResult:
    """Train a LoRA adapter; checkpoints under output_dir/checkpoints, final adapter in output_dir/adapter.
    Mode sparse_kd needs `teacher_logprobs` by example_id (lib/generation/logprobs.example_logprobs)."""
    import torch  # deferred: heavy optional dependency
    from datasets import Dataset  # deferred: heavy optional dependency
    from peft import LoraConfig  # deferred: heavy optional dependency
    from transformers import AutoTokenizer  # deferred: heavy optional dependency
    from transformers.trainer_utils import get_last_checkpoint  # deferred: heavy optional dependency
    from trl import SFTTrainer  # deferred: heavy optional dependency

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
    train_tok, info = tokenize_records(tokenizer, train_records)
    val_tok, _ = tokenize_records(tokenizer, val_records)
    notes = list(plan.notes)
    if info["tool_format"] == TOOL_FORMAT_PLAIN:
        msg = (f"the student chat template at {base_dir} has no tool support: {info['rows_with_tools']} training "
               "row(s) with tools use the plain-text tool-call form (function list in the system prompt, one "
               '{"tool_call": {...}} JSON line per call); evaluation parses the same form')
        log(f"warning: {msg}")
        notes.append(msg)
    train_ds = Dataset.from_list(train_tok)
    val_ds = Dataset.from_list(val_tok)
    # KD losses return full logits with the loss; evaluation must not gather them ([rows, L, vocab] floats)
    args = build_sft_config(plan, ckpt_dir, **({"prediction_loss_only": True} if plan.mode != "sft" else {}))

    trainer_kwargs = dict(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
        peft_config=peft_config, callbacks=[_callbacks()(), *(extra_callbacks or [])],
    )
    kd_info = None
    if plan.mode == "logit_kd":
        teacher, kd_info = load_teacher(plan.teacher_model_path, tokenizer, model)
        trainer = logit_kd_trainer_class()(
            teacher_model=teacher, temperature=plan.kd_temperature, alpha=plan.kd_alpha,
            divergence=plan.kd_divergence, **trainer_kwargs,
        )
    elif plan.mode == "sparse_kd":
        if teacher_logprobs is None:
            raise ValueError("mode 'sparse_kd' needs the teacher logprobs of the records (teacher_logprobs=...)")
        trainer, kd_info = sparse_kd_trainer(trainer_kwargs, tokenizer, train_records, val_records,
                                             teacher_logprobs, plan)
        log(f"sparse_kd rows: {kd_info['rows']}")
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
            "tool_format": info["tool_format"],
            "notes": notes,
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
        notes=notes, kd=kd_info, tool_format=info["tool_format"],
    )
